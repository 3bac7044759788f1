"""Reproductions of the papers' headline results; each module registers one by name."""

from icl_lab.registry import import_submodules
from icl_lab.reproduce.base import REPRODUCTIONS, Claim, reproduce, reproduce_all

import_submodules(__name__)

__all__ = ["REPRODUCTIONS", "Claim", "reproduce", "reproduce_all"]
