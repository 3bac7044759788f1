"""Interventions as data: clamp kinds register themselves by name."""

from icl_lab.interventions.base import CLAMPS, Clamp
from icl_lab.registry import import_submodules

import_submodules(__name__)

__all__ = ["CLAMPS", "Clamp"]
