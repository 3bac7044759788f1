"""Sequence mixers of the non-transformer architectures: each maps (B, T, d) to (B, T, d), causally.

LSTM and GRU are torch.nn's. The others are linear recurrences (models/recurrence.py) that differ
in their queries, keys, values and decays:
- linear attention (Katharopoulos et al.): feature map elu + 1, no decay, normalised outputs;
- retention (RetNet): a fixed decay gamma_h = 1 - 2^(-5-h) per head, group norm, swish gate;
- gated linear attention (Yang et al.): data-dependent decays sigmoid(x W)^(1/16) per key dim;
- Mamba (Gu and Dao): selective state space, decays exp(Delta_t A) per channel and state, after a
  causal depthwise convolution, gated by SiLU(z);
- S4D (Gu et al., the real diagonal variant): a fixed diagonal state space per channel, ZOH,
  computed as a causal convolution by FFT.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icl_lab.models import native_mamba
from icl_lab.models.recurrence import linear_recurrence, selective_scan
from icl_lab.models.transformer import rotate


class Recurrent(nn.Module):
    """LSTM or GRU over the sequence."""

    def __init__(self, kind: str, d: int) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(d, d, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0]


def _heads(x: Tensor, n: int) -> Tensor:
    return x.view(*x.shape[:2], n, -1)


def weighted_sums(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """The linear recurrence over v (B, T, H, V) and over ones: each output and the sum of the
    weights it took its values with, (B, T, H, V) and (B, T, H, 1)."""
    both = linear_recurrence(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), log_decay, chunk)
    return both[..., :-1], both[..., -1:]


class LinearAttention(nn.Module):
    """Causal linear attention, or retention / gated linear attention with decays. `retnet` makes
    retention RetNet's MultiScaleRetention (Sun et al. 2023, as Akyurek et al.'s code runs it):
    queries and keys rotated by position, values and gate twice the width, biases on every map, the
    decay mask's rows scaled by 1 / sqrt(their sum), the scores' rows divided by max(|their sum|, 1),
    and a per-head LayerNorm without gain or bias (that undoes both scalings but for its eps)."""

    def __init__(
        self,
        kind: str,
        d: int,
        heads: int,
        chunk: int,
        feature_map: str = "elu",
        bias: bool = False,
        retnet: bool = False,
    ) -> None:
        super().__init__()
        self.kind, self.heads, self.chunk = kind, heads, chunk
        self.feature_map, self.retnet = feature_map, retnet
        dv, bias = (2 * d, True) if retnet else (d, bias)
        self.qkv = nn.Linear(d, 2 * d + dv, bias=bias)
        self.out = nn.Linear(dv, d, bias=bias)
        if kind != "linear_attention":
            self.gate = nn.Linear(d, dv, bias=bias)
            if not retnet:
                self.norm = nn.GroupNorm(heads, dv)
        if kind == "retention":
            gamma = 1 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float))
            self.register_buffer("log_gamma", gamma.log()[None, None, :, None], persistent=False)
        if kind == "gla":
            self.decay = nn.Sequential(nn.Linear(d, 16, bias=False), nn.Linear(16, d))
        if retnet:  # RetNet's angles, 10000^-linspace(0, 1, e / 2), on rotate-half pairs
            e = d // heads
            self.register_buffer("freq", 10000.0 ** -torch.linspace(0, 1, e // 2).repeat(2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = (_heads(t, self.heads) for t in self.qkv(x).split([d, d, self.out.in_features], -1))
        # q, k (B, T, H, e); v (B, T, H, e or 2e)
        if self.kind == "linear_attention":
            no_decay = torch.zeros(1, 1, 1, 1, device=x.device)
            if self.feature_map == "none":  # y_t = sum over s <= t of (q_t . k_s / sqrt(e)) v_s
                y = linear_recurrence(q / math.sqrt(q.shape[-1]), k, v, no_decay, self.chunk)
                return self.out(y.reshape(B, T, -1))
            y, sums = weighted_sums(F.elu(q) + 1, F.elu(k) + 1, v, no_decay, self.chunk)
            return self.out((y / sums.clamp(min=1e-6)).reshape(B, T, -1))
        q = q / math.sqrt(q.shape[-1])
        if self.kind == "gla":
            y = linear_recurrence(q, k, v, _heads(F.logsigmoid(self.decay(x)) / 16, self.heads), self.chunk)
        elif not self.retnet:
            y = linear_recurrence(q, k, v, self.log_gamma, self.chunk)
        else:
            angle = torch.arange(T, device=x.device, dtype=x.dtype)[:, None, None] * self.freq  # (T, 1, e)
            cos, sin = angle.cos(), angle.sin()
            y, sums = weighted_sums(rotate(q, cos, sin), rotate(k, cos, sin), v, self.log_gamma, self.chunk)
            # the decay mask's row t sums to (1 - gamma^(t+1)) / (1 - gamma): (1, T, H, 1)
            gamma = self.log_gamma.exp()
            steps = torch.arange(1, T + 1, device=x.device, dtype=x.dtype)[None, :, None, None]
            row = ((1 - gamma**steps) / (1 - gamma)).rsqrt()
            y = y * row / (sums.detach() * row).abs().clamp(min=1)
            y = F.layer_norm(y, y.shape[-1:])  # per head, no gain or bias
        if not self.retnet:
            y = self.norm(y.reshape(B * T, -1))  # group norm per position (over a head's channels only)
        return self.out(y.reshape(B, T, -1) * F.silu(self.gate(x)))


class Mamba(nn.Module):
    """Selective state-space block: in-projection, causal depthwise conv, selective scan, gate."""

    def __init__(self, d: int, d_state: int, expand: int, conv: int = 4) -> None:
        super().__init__()
        inner = expand * d
        self.inner, self.d_state = inner, d_state
        self.in_proj = nn.Linear(d, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, conv, groups=inner, padding=conv - 1)
        self.dt_rank = max(1, math.ceil(d / 16))
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, d, bias=False)
        self.native = True  # native kernels (no vmap rule): MixerLM.batched turns them off

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        u, z = self.in_proj(x).chunk(2, -1)  # (B, T, inner)
        if self.native and native_mamba.allowed(u, self.conv.weight):
            u = native_mamba.causal_conv_silu(u, self.conv.weight.squeeze(1), self.conv.bias)
        else:
            u = F.silu(self.conv(u.transpose(1, 2))[..., :T].transpose(1, 2))
        dt, Bs, Cs = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], -1)
        dt = F.softplus(self.dt_proj(dt))  # (B, T, inner)
        A = -self.A_log.exp()  # (inner, N): a state of N values per channel
        y = selective_scan(dt, A, u, Bs, Cs, self.native) + self.D * u
        return self.out_proj(y * F.silu(z))


class S4D(nn.Module):
    """Diagonal linear time-invariant state space per channel (S4D-Real), ZOH-discretised."""

    def __init__(self, d: int, d_state: int) -> None:
        super().__init__()
        self.log_dt = nn.Parameter(torch.empty(d))  # log step size, U(log 0.001, log 0.1) at init
        self.A_log = nn.Parameter(torch.log(0.5 + torch.arange(d_state, dtype=torch.float)).repeat(d, 1))
        self.C = nn.Parameter(torch.empty(d, d_state))
        self.D = nn.Parameter(torch.ones(d))
        self.out = nn.Linear(d, d)

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel K[i, l] = sum_n C[i, n] gain[i, n] exp(dt A[i, n] l): (d, length)."""
        dtA = self.log_dt.exp()[:, None] * -self.A_log.exp()  # (d, N)
        gain = torch.expm1(dtA) / -self.A_log.exp()  # ZOH input matrix, with B = 1
        steps = torch.arange(length, device=dtA.device, dtype=dtA.dtype)
        return torch.einsum("dn,dnl->dl", self.C * gain, (dtA[..., None] * steps).exp())

    def forward(self, x: Tensor) -> Tensor:
        # time-invariant, so the recurrence is a causal convolution: by FFT, zero-padded to 2T
        T = x.shape[1]
        spectrum = torch.fft.rfft(x.transpose(1, 2), n=2 * T) * torch.fft.rfft(self.kernel(T), n=2 * T)
        y = torch.fft.irfft(spectrum, n=2 * T)[..., :T].transpose(1, 2)
        return self.out(F.gelu(y + self.D * x))
