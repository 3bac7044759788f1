"""Metrics and progress measures; each module registers its metrics by name."""

from icl_lab.metrics.base import LOSS_UNIT, METRICS, EvalContext, Metric, metric, value_unit
from icl_lab.registry import import_submodules

import_submodules(__name__)

__all__ = ["LOSS_UNIT", "METRICS", "EvalContext", "Metric", "metric", "value_unit"]
