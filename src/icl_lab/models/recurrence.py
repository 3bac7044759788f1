"""The linear recurrences behind linear attention, retention and gated linear attention

    S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T,     o_t = q_t^T S_t     (per head),

computed in chunks with the state carried from chunk to chunk, and Mamba's selective scan, whose
state is diagonal (one value per channel and state dimension), computed step by step (or by a
native kernel).
"""

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from icl_lab.models import native_mamba
from icl_lab.training.compiled import kernel_compiles


def linear_recurrence(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk: int = 64) -> Tensor:
    """q, k: (B, T, H, K); v: (B, T, H, V); log_decay <= 0, broadcastable to (B, T, H, K).
    Returns o: (B, T, H, V).

    Inside a chunk the decay from s to t factorises, exp(L_t - L_s) = exp(L_t) exp(-L_s), so the
    scores are one matmul of q exp(L) with k exp(-L). To keep exp(-L) inside float32, per-step
    log-decays are clamped at -MAX_CUMULATIVE_DECAY / chunk (e.g. -2.5 for chunks of 32): a state
    that decays faster than that has forgotten its past within a step or two anyway.
    """
    B, T, H, K = q.shape
    log_decay = log_decay.clamp(min=-MAX_CUMULATIVE_DECAY / chunk).expand(B, T, H, K)
    state = q.new_zeros(B, H, K, v.shape[-1])
    outputs = []
    # split, not slicing: a slice's backward writes a full-length zero gradient, quadratic in T
    for qc, kc, vc, decay in zip(*(x.split(chunk, 1) for x in (q, k, v, log_decay)), strict=True):
        L = decay.cumsum(1).transpose(1, 2)  # (B, H, C, K): decay since the chunk began
        qh, kh, vh = qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)  # (B, H, C, .)
        scores = ((qh * L.exp()) @ (kh * (-L).exp()).transpose(-1, -2)).tril()  # (B, H, C, C)
        end = L[:, :, -1:]  # (B, H, 1, K)
        outputs.append((scores @ vh + (qh * L.exp()) @ state).transpose(1, 2))
        state = end.transpose(-1, -2).exp() * state + (kh * (end - L).exp()).transpose(-1, -2) @ vh
    return torch.cat(outputs, 1)


MAX_CUMULATIVE_DECAY = 80.0  # exp(80) ~ 5.5e34 stays inside float32

SCAN_CHUNK = 8  # steps per call of Mamba's chunk step (and per compiled kernel)


def selective_scan(dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor, native: bool = True) -> Tensor:
    """Mamba's scan, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = sum over state of C_t h_t, with
    dt, u (B, T, C), A (C, N), Bs, Cs (B, T, N) -> y (B, T, C).

    Where the trainer allows compiled kernels, a float32 scan on the CPU runs as the native kernel
    (models/native_mamba.py; `native` False under vmap, which it does not support). Otherwise step
    by step: each step touches one (B, C, N) state, which stays in the cache, and the whole
    (B, T, C, N) decays never exist at once. On a CPU this is 2-3x faster than the chunked
    cumulative-sum form, and exact (no clamped decays). The steps run in chunks of SCAN_CHUNK; where
    compiled kernels are allowed but the native one does not apply (a GPU, an ensemble), the chunk
    is compiled, which fuses its steps into one loop."""
    if native and native_mamba.allowed(dt, A, u, Bs, Cs):
        return native_mamba.selective_scan(dt, A, u, Bs, Cs)
    step = _selective_chunk
    if kernel_compiles(dt.shape[0] * SCAN_CHUNK * A.numel()):  # one chunk's (B, chunk, C, N)
        step = _compiled_selective_chunk()
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[-1])  # (B, C, N)
    outputs = []
    for dtc, uc, bc, cc in zip(*(x.split(SCAN_CHUNK, 1) for x in (dt, u, Bs, Cs)), strict=True):
        y, h = step(dtc, uc, bc, cc, A, h)
        outputs.append(y)
    return torch.cat(outputs, 1)


def _selective_chunk(
    dt: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor, A: Tensor, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of Mamba's scan: dt, u (B, chunk, C), Bs, Cs (B, chunk, N), A (C, N), from the state
    h (B, C, N) -> (y (B, chunk, C), the state at the chunk's end)."""
    outputs = []
    for t in range(dt.shape[1]):
        h = (dt[:, t, :, None] * A).exp() * h + (dt[:, t] * u[:, t])[..., None] * Bs[:, t, None, :]
        outputs.append((h * Cs[:, t, None, :]).sum(-1))  # (B, C)
    return torch.stack(outputs, 1), h


@functools.cache
def _compiled_selective_chunk() -> Callable[..., tuple[Tensor, Tensor]]:
    """The chunk step compiled once per process (torch.compile compiles on first call, per shape)."""
    return torch.compile(_selective_chunk)


def sequential_recurrence(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """The same recurrence one step at a time (the reference the chunked form is tested against)."""
    B, T, H, K = q.shape
    log_decay = log_decay.expand(B, T, H, K)
    state = q.new_zeros(B, H, K, v.shape[-1])
    outputs = []
    for t in range(T):
        state = log_decay[:, t].exp()[..., None] * state + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    return torch.stack(outputs, 1)
