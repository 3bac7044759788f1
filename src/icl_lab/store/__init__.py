"""Run directories: config, metrics table, checkpoints and manifest."""

from icl_lab.store.run import Run

__all__ = ["Run"]
