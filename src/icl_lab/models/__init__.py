"""Hookable sequence models; each module registers its models by name."""

from icl_lab.models.base import MODELS, Model, ModelIO
from icl_lab.registry import import_submodules

import_submodules(__name__)

__all__ = ["MODELS", "Model", "ModelIO"]
