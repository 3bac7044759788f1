"""Sparse autoencoders on attention outputs (Kissane et al. 2024); each architecture is a module
here that registers itself."""

from icl_lab.registry import import_submodules
from icl_lab.sae.base import SAE, SAES, SAEConfig, SAEOutput, build_sae

import_submodules(__name__)

__all__ = ["SAE", "SAES", "SAEConfig", "SAEOutput", "build_sae"]
