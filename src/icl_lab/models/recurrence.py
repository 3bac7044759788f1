"""The linear recurrences behind linear attention, retention and gated linear attention

    S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T,     o_t = q_t^T S_t     (per head),

and behind Mamba and S4D, whose state is diagonal (one value per channel and state dimension)

    h_t = exp(log_decay_t) * h_{t-1} + b_t,               y_t = sum over state of c_t * h_t.

Both are computed in chunks, with the state carried from chunk to chunk.
"""

import functools
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

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

DIAGONAL_CHUNK = 8
MAX_DECAY = MAX_CUMULATIVE_DECAY / DIAGONAL_CHUNK  # per-step log-decays are clamped at -10 (see below)


def diagonal_recurrence(log_decay: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """log_decay, b, c broadcastable to (B, T, H, K) -> y (B, T, H).

    Inside a chunk h_t = exp(L_t) (h_start + sum_{s<=t} b_s exp(-L_s)) with L the cumulative
    log-decay: cumulative sums, no pairwise C^2 work. exp(-L_s) grows with the chunk, so decays
    are clamped at exp(-10) per step and chunks hold 8 steps (|L| <= 80 stays inside float32); a
    state dimension that decays faster than that has forgotten its past within a step anyway.
    """
    shape = torch.broadcast_shapes(log_decay.shape, b.shape, c.shape)
    chunks = zip(*(x.expand(shape).split(DIAGONAL_CHUNK, 1) for x in (log_decay, b, c)), strict=True)
    return _scan(_diagonal_chunk, chunks, b.new_zeros(shape[0], *shape[2:]))


def selective_scan(dt: Tensor, A: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor) -> Tensor:
    """Mamba's scan, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, y_t = sum over state of C_t h_t, with
    dt, u (B, T, C), A (C, N), Bs, Cs (B, T, N) -> y (B, T, C). The same chunked recurrence as
    diagonal_recurrence, but each chunk's (B, chunk, C, N) decays and inputs are formed inside the
    chunk's step: the whole (B, T, C, N) tensors never exist (2x faster on a CPU, where they
    overflow the cache). Where the trainer allows compiled kernels, the step is compiled, which
    fuses its elementwise work (1.7x faster quick ICLL Mamba steps on a CPU)."""
    step = _selective_chunk
    if kernel_compiles(dt.shape[0] * DIAGONAL_CHUNK * A.numel()):  # one chunk's (B, chunk, C, N)
        step = _compiled_selective_chunk()
    chunks = (
        (dtc, uc, bc, cc, A)
        for dtc, uc, bc, cc in zip(*(x.split(DIAGONAL_CHUNK, 1) for x in (dt, u, Bs, Cs)), strict=True)
    )
    return _scan(step, chunks, u.new_zeros(u.shape[0], u.shape[2], A.shape[-1]))


def _scan(
    step: Callable[..., tuple[Tensor, Tensor]], chunks: Iterable[tuple[Tensor, ...]], h: Tensor
) -> Tensor:
    """Runs `step(*chunk, h) -> (y, h)` over the chunks from the state h, concatenating y in time."""
    outputs = []
    for chunk in chunks:
        y, h = step(*chunk, h)
        outputs.append(y)
    return torch.cat(outputs, 1)


def _diagonal_chunk(decay: Tensor, b: Tensor, c: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of the diagonal recurrence: decay, b, c (B, chunk, H, K) from the state h (B, H, K)
    -> (y (B, chunk, H), the state at the chunk's end)."""
    L = decay.clamp(min=-MAX_DECAY).cumsum(1)
    states = L.exp() * ((b * (-L).exp()).cumsum(1) + h[:, None])
    return (c * states).sum(-1), states[:, -1]


def _selective_chunk(
    dt: Tensor, u: Tensor, Bs: Tensor, Cs: Tensor, A: Tensor, h: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of Mamba's scan: dt, u (B, chunk, C), Bs, Cs (B, chunk, N), A (C, N), h (B, C, N)."""
    return _diagonal_chunk(dt[..., None] * A, (dt * u)[..., None] * Bs[:, :, None, :], Cs[:, :, None, :], h)


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
