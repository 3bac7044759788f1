"""Synthetic in-context-learning tasks; each module registers its task by name."""

from icl_lab.registry import import_submodules
from icl_lab.tasks.base import TASKS, Batch, Task

import_submodules(__name__)

__all__ = ["TASKS", "Batch", "Task"]
