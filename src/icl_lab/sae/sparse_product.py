"""The decoder's product f W_dec summed over the non-zero features alone. A trained SAE fires a few of
its thousands of features per input, so the dense product, and the two products of its backward
pass, spend nearly all their arithmetic on zeros."""

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_DENSITY = 0.03
"""share of non-zero features up to which the sparse sum is used: on one CPU core it beats the dense
product, forward and backward, at 4% and loses at 8% (benchmarks/sae_throughput.py)"""


def sparse_product(features: Tensor, W: Tensor) -> Tensor | None:
    """features (..., F) @ W (F, d) over the non-zero features only, or None when more than
    MAX_DENSITY of them are non-zero or they are not on the CPU (there the dense product is as
    fast; on a GPU, finding the non-zeros would also wait for the device).

    Its gradient with respect to features is zero where they are zero, where the dense product's
    is not: right for an activation whose backward discards those entries anyway (ReLU, TopK)."""
    if features.device.type != "cpu":
        return None
    flat = features.reshape(-1, features.shape[-1])  # (N, F)
    rows, cols = flat.detach().bool().nonzero(as_tuple=True)  # (nnz,) each, row-major
    if len(rows) > MAX_DENSITY * flat.numel():
        return None
    starts = torch.searchsorted(rows, torch.arange(len(flat), device=rows.device))  # (N,) each row's first
    # one fused gather-scale-sum per row: no (nnz, d) intermediate, forward or backward
    out = F.embedding_bag(cols, W, starts, mode="sum", per_sample_weights=flat[rows, cols])  # (N, d)
    return out.view(*features.shape[:-1], W.shape[1])
