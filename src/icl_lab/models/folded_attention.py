"""The fused attention kernel for vmapped ensembles: members folded into the kernel's batch axis.

torch.func.vmap has no batching rule for the CPU's fused attention kernel, so under vmap
F.scaled_dot_product_attention runs once per member (with a performance warning), and the
unfused path's batched matmuls are slower still. `attend` is a custom op whose vmap rule moves the
member axis into the sequence batch and calls the kernel once for every member. Its gradient is the
kernel's own: the rule runs below the autograd that records it (an outer .backward() or
torch.func.grad), and torch.compile traces through it.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.library.custom_op("icl_lab::attend", mutates_args=())
def attend(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float
) -> Tensor:
    """F.scaled_dot_product_attention for q (B, H, P, e), k and v (B, H, T, e) and attn_mask (P, T)
    or None; under vmap, one kernel call for every member (it is not differentiable outside vmap:
    models call it only when vmapped)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


@attend.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, scale: float) -> Tensor:
    return q.new_empty(q.shape[:-1] + v.shape[-1:])


def _folded(
    info: object,  # torch's VmapInfo: batch_size, randomness
    in_dims: tuple[int | None, ...],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None,
    is_causal: bool,
    scale: float,
) -> tuple[Tensor, int]:
    """attend's vmap rule: the member axis folded into the kernel's batch axis, and out again."""
    M = info.batch_size  # type: ignore[attr-defined]
    # each (M, B, H, L, e), flattened to (M * B, H, L, e) for one kernel call
    q, k, v = (
        x.movedim(d, 0) if d is not None else x.expand(M, *x.shape)
        for x, d in zip((q, k, v), in_dims[:3], strict=True)
    )
    B = q.shape[1]
    mask = attn_mask
    if mask is not None and in_dims[3] is not None:  # each member's own (M, P, T) -> (M * B, 1, P, T)
        mask = mask.movedim(in_dims[3], 0)
        mask = mask[:, None, None].expand(M, B, 1, *mask.shape[1:]).flatten(0, 1)
    z = F.scaled_dot_product_attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask, is_causal=is_causal, scale=scale
    )
    return z.view(M, B, *z.shape[1:]), 0


attend.register_vmap(_folded)
