"""Sequence mixers of the non-transformer architectures: each maps (B, T, d) to (B, T, d), causally.

LSTM and GRU are torch.nn's. The others are linear recurrences (models/recurrence.py) that differ
in their queries, keys, values and decays:
- linear attention (Katharopoulos et al.): feature map elu + 1, no decay, normalised outputs;
- retention (RetNet): a fixed decay gamma_h = 1 - 2^(-5-h) per head, group norm, swish gate;
- gated linear attention (Yang et al.): data-dependent decays sigmoid(x W)^(1/16) per key dim;
- Mamba (Gu and Dao): selective state space, decays exp(Delta_t A) per channel and state, after a
  causal depthwise convolution, gated by SiLU(z);
- S4D (Gu et al., the real diagonal variant S4D-Real, or S4D-Inv's complex modes): a fixed diagonal
  state space per channel, ZOH, computed as a causal convolution by FFT.
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
    and a per-head LayerNorm without gain or bias (that undoes both scalings but for its eps).
    `gla_yang` makes GLA Yang et al.'s layer as that code runs it: queries and keys half the width,
    keys scaled by 1 / sqrt(d / heads), biases on the output gate and on the decay map's second
    layer only, log-decays clamped at -3 a step, and the same per-head LayerNorm. `attn_dropout`
    drops unnormalised linear attention's scores in training (as that code's linear transformer)."""

    def __init__(
        self,
        kind: str,
        d: int,
        heads: int,
        chunk: int,
        feature_map: str = "elu",
        bias: bool = False,
        retnet: bool = False,
        gla_yang: bool = False,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind, self.heads, self.chunk = kind, heads, chunk
        self.feature_map, self.retnet = feature_map, retnet
        self.gla_yang, self.attn_dropout = gla_yang, attn_dropout
        dv, bias = (2 * d, True) if retnet else (d, bias)
        self.dk = d // 2 if gla_yang else d  # the queries' and keys' width
        self.scale = math.sqrt(d // heads)  # scores' divisor: the full head width, gla_yang's too
        self.qkv = nn.Linear(d, 2 * self.dk + dv, bias=bias)
        self.out = nn.Linear(dv, d, bias=bias)
        if kind != "linear_attention":
            self.gate = nn.Linear(d, dv, bias=bias or gla_yang)
            if not (retnet or gla_yang):
                self.norm = nn.GroupNorm(heads, dv)
        if kind == "retention":
            gamma = 1 - 2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float))
            self.register_buffer("log_gamma", gamma.log()[None, None, :, None], persistent=False)
        if kind == "gla":
            self.decay = nn.Sequential(nn.Linear(d, 16, bias=False), nn.Linear(16, self.dk))
        if retnet:  # RetNet's angles, 10000^-linspace(0, 1, e / 2), on rotate-half pairs
            e = d // heads
            self.register_buffer("freq", 10000.0 ** -torch.linspace(0, 1, e // 2).repeat(2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).split([self.dk, self.dk, self.out.in_features], -1)
        q, k, v = (_heads(t, self.heads) for t in qkv)  # q, k (B, T, H, e); v (B, T, H, e or 2e)
        if self.kind == "linear_attention":
            no_decay = torch.zeros(1, 1, 1, 1, device=x.device)
            if self.feature_map == "none":  # y_t = sum over s <= t of (q_t . k_s / sqrt(e)) v_s
                if self.training and self.attn_dropout:  # the scores themselves, to drop some
                    scores = (torch.einsum("bthe,bshe->bhts", q, k) / self.scale).tril()  # (B, H, T, T)
                    y = torch.einsum("bhts,bshv->bthv", F.dropout(scores, self.attn_dropout), v)
                else:
                    y = linear_recurrence(q / self.scale, k, v, no_decay, self.chunk)
                return self.out(y.reshape(B, T, -1))
            y, sums = weighted_sums(F.elu(q) + 1, F.elu(k) + 1, v, no_decay, self.chunk)
            return self.out((y / sums.clamp(min=1e-6)).reshape(B, T, -1))
        q = q / self.scale
        if self.kind == "gla":
            log_decay = F.logsigmoid(self.decay(x)) / 16
            if self.gla_yang:  # as their kernels: no less than -3 a step (not below -80 / chunk either)
                log_decay = log_decay.clamp(min=-3.0)
            y = linear_recurrence(q, k, v, _heads(log_decay, self.heads), self.chunk)
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
        # group norm per position (over a head's channels only), or per head without gain or bias
        y = self.norm(y.reshape(B * T, -1)) if hasattr(self, "norm") else F.layer_norm(y, y.shape[-1:])
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
    """Diagonal linear time-invariant state space per channel, ZOH-discretised: S4D-Real (real
    modes A_n = -(n + 1/2), B = 1, D = 1), or with `inverse` S4D-Inv as Gu et al.'s code builds it
    (d_state / 2 complex modes w_n = -1/2 + i (N / pi) (N / (2n + 1) - 1) shared by every channel,
    a random B folded into C, D ~ N(0, 1)), whose step sizes and modes take no weight decay."""

    def __init__(self, d: int, d_state: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        modes = (1, d_state // 2) if inverse else (d, d_state)
        self.log_dt = nn.Parameter(torch.empty(d))  # log step size
        self.A_log = nn.Parameter(torch.empty(modes))  # log -Re(A)
        if inverse:
            self.A_imag = nn.Parameter(torch.empty(modes))
        self.C = nn.Parameter(torch.empty(d, modes[1], 2) if inverse else torch.empty(d, d_state))  # re, im
        self.D = nn.Parameter(torch.empty(d))
        self.out = nn.Linear(d, d)

    def no_weight_decay(self) -> set[str]:
        """The parameters Gu et al.'s code trains without weight decay (S4D-Inv's only here)."""
        return {"log_dt", "A_log", "A_imag"} if self.inverse else set()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The state-space parameters' init (MixerLM's reset_parameters calls it; the output map is
        the model's to initialise)."""
        self.log_dt.uniform_(math.log(1e-3), math.log(1e-1), generator=generator)
        n = torch.arange(self.A_log.shape[1], dtype=torch.float, device=self.A_log.device)
        if not self.inverse:
            self.A_log.copy_(torch.log(0.5 + n).expand_as(self.A_log))
            self.C.normal_(0.0, 1.0, generator=generator)
            self.D.fill_(1.0)
            return
        N = 2 * len(n)
        self.A_log.fill_(math.log(0.5 + 1e-4))  # as theirs: log(-Re(w) + 1e-4)
        self.A_imag.copy_(N / math.pi * (N / (1 + 2 * n) - 1))
        w = torch.complex(torch.full_like(n, -0.5), self.A_imag[0])  # (N/2,), before theirs adds 1e-4
        B = torch.complex(*torch.randn(2, len(n), generator=generator, device=n.device) / math.sqrt(2))
        B = B / (2 * (B / w).abs().square().sum()).sqrt()  # unit variance of the kernel's sum
        C = torch.complex(
            *torch.randn(2, *self.C.shape[:2], generator=generator, device=n.device) / math.sqrt(2)
        )
        self.C.copy_(torch.view_as_real(C * B))
        self.D.normal_(0.0, 1.0, generator=generator)

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel K[i, l] = sum_n C[i, n] gain[i, n] exp(dt A[i, n] l) (S4D-Inv: twice
        its real part, over one of each conjugate pair), gain = (exp(dt A) - 1) / A the ZOH input
        matrix with B = 1 (or folded into C): (d, length). S4D-Inv's complex numbers are written as
        pairs of reals (Inductor generates no code for complex operators)."""
        steps = torch.arange(length, device=self.C.device, dtype=self.C.dtype)
        dt = self.log_dt.exp()[:, None]  # (d, 1)
        if not self.inverse:
            A = -self.A_log.exp()  # (d, N)
            dtA = dt * A
            return torch.einsum("dn,dnl->dl", self.C * (torch.expm1(dtA) / A), (dtA[..., None] * steps).exp())
        a, b = -self.A_log.exp(), self.A_imag  # A = a + ib: (1, N/2)
        decay, turn = dt * a, dt * b  # dt A: (d, N/2)
        # exp(dt A) - 1 = x + iy, with cos - 1 as -2 sin^2(turn / 2) (no cancellation for small steps)
        x = torch.expm1(decay) * turn.cos() - 2 * (turn / 2).sin().square()
        y = decay.exp() * turn.sin()
        norm = a.square() + b.square()
        gain = ((x * a + y * b) / norm, (y * a - x * b) / norm)  # (x + iy) / A
        g = _complex_product((self.C[..., 0], self.C[..., 1]), gain)  # C gain: (d, N/2) each
        magnitude, angle = (decay[..., None] * steps).exp(), turn[..., None] * steps  # (d, N/2, length)
        real = torch.einsum("dn,dnl->dl", g[0], magnitude * angle.cos())
        return 2 * (real - torch.einsum("dn,dnl->dl", g[1], magnitude * angle.sin()))

    def forward(self, x: Tensor) -> Tensor:
        # time-invariant, so the recurrence is a causal convolution: by FFT, zero-padded to 2T
        T = x.shape[1]
        spectrum = torch.fft.rfft(x.transpose(1, 2), n=2 * T) * torch.fft.rfft(self.kernel(T), n=2 * T)
        y = torch.fft.irfft(spectrum, n=2 * T)[..., :T].transpose(1, 2)
        return self.out(F.gelu(y + self.D * x))


def _complex_product(z: tuple[Tensor, Tensor], w: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The product of two complex numbers given as (real, imaginary) pairs, as such a pair."""
    return z[0] * w[0] - z[1] * w[1], z[0] * w[1] + z[1] * w[0]
