"""Linear self-attention (von Oswald et al. 2023): attention without softmax, LayerNorm or MLP.

Each layer updates every token from the context tokens only (keys and values exclude the query,
the last token):

    e_t <- e_t + sum_h sum_{s < T-1} (e_s W_V^h)(e_s W_K^h . e_t W_Q^h) W_O^h

in TransformerLens's row-vector layout (W_Q, W_K, W_V: heads x d x d; W_O: heads x d x d, the
paper's projection P). The prediction is minus the last coordinate of each token's output, so
that a query token entering with y = 0 leaves with -y_hat. `gd_construction` sets the weights that
make each layer one step of gradient descent on the in-context least-squares loss. With
share_weights one layer's weights serve every layer (its hooks fire once per application); clip
bounds the residual stream after every layer, as the authors' code does for deep models.
"""

from typing import Literal

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from icl_lab.config import ModelConfig
from icl_lab.models.base import MODELS, Model, ModelIO
from icl_lab.models.hooks import HookPoint

TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated at +-2


class LinearSelfAttentionConfig(ModelConfig):
    """A stack of linear self-attention layers reading (x, y) tokens."""

    name: Literal["linear_self_attention"] = "linear_self_attention"
    later_fields = ("clip",)  # 2026-12-05
    n_layers: PositiveInt = 1
    n_heads: PositiveInt = 1
    init: Literal["normal", "variance_scaling"] = Field(
        "normal",
        description="normal: every weight N(0, init_std^2); variance_scaling: Haiku's "
        "VarianceScaling(init_scale), as the authors' code: a normal truncated at two standard "
        "deviations with variance init_scale / fan_in (fan_in d for W_Q, W_K, W_V; heads x d for W_O)",
    )
    init_std: PositiveFloat = Field(0.002, description="std of the normal init of every weight")
    init_scale: PositiveFloat = Field(0.002, description="variance_scaling's scale")
    share_weights: bool = Field(False, description="one layer's weights applied n_layers times")
    clip: NonNegativeFloat = Field(
        0.0, description="clip every residual-stream entry to +-clip after each layer (0: no clipping)"
    )

    def check_io(self, io: ModelIO) -> None:
        if io.d_input is None or io.d_out != 1:
            raise ValueError("linear_self_attention reads (x, y) vectors and predicts one number")


class LinearAttentionLayer(nn.Module):
    def __init__(self, heads: int, d: int) -> None:
        super().__init__()
        self.W_Q, self.W_K, self.W_V, self.W_O = (nn.Parameter(torch.empty(heads, d, d)) for _ in range(4))
        self.hook_attn_scores = HookPoint()  # (B, H, query, key) over the context keys
        self.hook_z = HookPoint()  # (B, T, H, d)

    def forward(self, e: Tensor) -> Tensor:
        context = e[:, :-1]
        q = torch.einsum("btd,hde->bthe", e, self.W_Q)
        k = torch.einsum("bsd,hde->bshe", context, self.W_K)
        v = torch.einsum("bsd,hde->bshe", context, self.W_V)
        scores = self.hook_attn_scores(torch.einsum("bthe,bshe->bhts", q, k))
        z = self.hook_z(torch.einsum("bhts,bshe->bthe", scores, v))
        return torch.einsum("bthe,hed->btd", z, self.W_O)


@MODELS.register("linear_self_attention")
class LinearSelfAttention(Model):
    """Linear self-attention layers on the residual stream; output -e[..., -1]."""

    Config = LinearSelfAttentionConfig

    def __init__(self, cfg: LinearSelfAttentionConfig, io: ModelIO) -> None:
        super().__init__()
        self.cfg, self.io = cfg, io
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        distinct = 1 if cfg.share_weights else cfg.n_layers
        self.blocks = nn.ModuleList(LinearAttentionLayer(cfg.n_heads, io.d_input) for _ in range(distinct))
        self.hook_resid = nn.ModuleList(HookPoint() for _ in range(cfg.n_layers))
        self.setup_hooks()
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        cfg = self.cfg
        with torch.no_grad():
            for name, p in self.named_parameters():
                if cfg.init == "normal":
                    p.normal_(0.0, cfg.init_std, generator=generator)
                    continue
                fan_in = p.shape[1] * (cfg.n_heads if name.endswith("W_O") else 1)
                # the std of the untruncated normal whose 2-sd truncation has variance scale / fan_in
                std = (cfg.init_scale / fan_in) ** 0.5 / TRUNCATED_STD
                nn.init.trunc_normal_(p, 0.0, std, -2 * std, 2 * std, generator=generator)

    def forward(self, inputs: Tensor) -> Tensor:
        e = inputs
        clip = self.cfg.clip
        for layer, hook in enumerate(self.hook_resid):
            e = e + self.blocks[layer % len(self.blocks)](e)
            e = hook(e.clamp(-clip, clip) if clip else e)
        return -e[..., -1:]


def gd_construction(model: LinearSelfAttention, lr: float, n_points: int, gamma: float = 0.0) -> None:
    """Set every layer to one gradient-descent step of size lr on L(w) = sum_i (w^T x_i - y_i)^2 / 2N
    (head 0 does the step, other heads are zeroed): W_Q = W_K = [I 0; 0 0], W_V = [0 0; 0 -1],
    W_O = (lr / N) e_y e_y^T. Stacked layers take successive steps. gamma > 0 gives GD++: W_V's
    x-block -I and W_O's gamma I also move every x by -gamma sum_i x_i x_i^T x (curvature correction)."""
    d = model.io.d_input
    x_part = torch.eye(d)
    x_part[-1, -1] = 0
    with torch.no_grad():
        for block in model.blocks:
            for p in (block.W_Q, block.W_K, block.W_V, block.W_O):
                p.zero_()
            block.W_Q[0] = x_part
            block.W_K[0] = x_part
            block.W_V[0] = -torch.eye(d) if gamma else -(torch.eye(d) - x_part)
            block.W_O[0] = gamma * x_part
            block.W_O[0, -1, -1] = lr / n_points


def gd_predictions(tokens: Tensor, lr: float, steps: int) -> Tensor:
    """Closed-form reference: y_hat_q after `steps` GD steps from w = 0 on the context of (x, y)
    tokens (B, N + 1, d + 1), loss sum_i (w^T x_i - y_i)^2 / 2N. Returns (B,)."""
    x, y = tokens[:, :-1, :-1], tokens[:, :-1, -1]
    w = torch.zeros(x.shape[0], x.shape[2], dtype=x.dtype, device=x.device)
    for _ in range(steps):
        residual = torch.einsum("bnd,bd->bn", x, w) - y
        w = w - lr / x.shape[1] * torch.einsum("bn,bnd->bd", residual, x)
    return torch.einsum("bd,bd->b", w, tokens[:, -1, :-1])


def gd_plus_plus_predictions(tokens: Tensor, lr: float, gamma: float, steps: int) -> Tensor:
    """Closed-form reference of GD++ on the tokens themselves: each step moves every x by
    -gamma A x (A = sum_i x_i x_i^T over the context) and every y by -(lr / N) sum_i y_i x_i^T x, both
    from the step's start; the query's y collects -y_hat. gamma = 0 is plain GD. Returns (B,)."""
    x, y = tokens[..., :-1], tokens[..., -1]
    n = x.shape[1] - 1
    for _ in range(steps):
        context_x, context_y = x[:, :-1], y[:, :-1]
        y = y - lr / n * (x @ (context_y[:, None] @ context_x).transpose(1, 2))[..., 0]
        if gamma:
            x = x - gamma * x @ (context_x.transpose(1, 2) @ context_x)  # A = sum_i x_i x_i^T
    return -y[:, -1]


def best_gd_lr(tokens: Tensor, targets: Tensor) -> tuple[float, float]:
    """The one-step GD learning rate that minimises the half squared error on a batch, in closed
    form (the one-step prediction is linear in lr), and that loss."""
    a = gd_predictions(tokens, 1.0, 1)
    lr = float((a * targets).sum() / (a * a).sum())
    return lr, float((0.5 * (lr * a - targets) ** 2).mean())
