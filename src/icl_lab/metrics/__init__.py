"""Metrics and progress measures; each module registers its metrics by name."""

from icl_lab.metrics.base import METRICS, EvalContext, Metric, metric
from icl_lab.registry import import_submodules

import_submodules(__name__)

__all__ = ["METRICS", "EvalContext", "Metric", "metric"]
