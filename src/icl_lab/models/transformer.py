"""A decoder-only causal transformer whose variants (the papers' models) are all configuration.

Parameter names and shapes follow TransformerLens (W_Q: head, d_model, d_head; W_O: head, d_head,
d_model; ...), and so do hook names and activation layouts (hook_z: batch, pos, head, d_head;
hook_pattern: batch, head, query, key). Read top to bottom: norm -> attention -> MLP -> block -> model.
"""

import functools
import itertools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor, nn

from icl_lab.config import ModelConfig, StrictModel
from icl_lab.models.base import MODELS, Model, ModelIO
from icl_lab.models.folded_attention import attend
from icl_lab.models.hooks import HookPoint
from icl_lab.models.ngram_layer import NgramLayerConfig, insert_ngram_layers, ngram_modules


class ReadoutConfig(StrictModel):
    """Logits read out at chosen positions only, through an optional ReLU MLP."""

    later_fields = ("hidden_bias",)  # 2026-12-05
    positions: list[int] = Field(default_factory=lambda: [-1])
    hidden: list[PositiveInt] = Field(default_factory=list, description="widths of hidden layers")
    bias: bool = Field(True, description="a bias per logit (and per hidden unit, unless hidden_bias says)")
    hidden_bias: Literal["unit", "scalar", "none"] | None = Field(
        None,
        description="the hidden layers' biases: one per unit (starting at 0), one scalar per layer "
        "(starting at N(0, 1/fan_in), as Reddy's code) or none; default: as `bias`",
    )

    def hidden_bias_kind(self) -> str:
        """The hidden layers' bias kind, `bias` deciding where hidden_bias is unset."""
        return self.hidden_bias or ("unit" if self.bias else "none")


class TransformerConfig(ModelConfig):
    """Shape and variant of the transformer; input/output sizes come from the task."""

    name: Literal["transformer"] = "transformer"
    later_fields = ("embed_dropout", "attn_dropout", "tie_unembed", "attn_init_std")  # 2026-12-04, -05
    n_layers: PositiveInt = 2
    n_heads: PositiveInt = 4
    d_model: PositiveInt = 64
    d_head: PositiveInt | None = Field(None, description="default: d_model // n_heads")
    attn_only: bool = False
    d_mlp: PositiveInt | None = Field(None, description="default: 4 * d_model")
    act_fn: Literal["relu", "gelu", "gelu_new"] = Field(
        "gelu", description="the MLPs' activation: gelu exact (erf), gelu_new its tanh approximation"
    )
    norm: Literal["none", "pre", "post"] = "pre"
    final_norm: bool | None = Field(None, description="LayerNorm before the output; default: norm == pre")
    positional: Literal["learned", "sinusoidal", "rope", "none"] = "learned"
    rope_base: float = Field(10000.0, gt=0)
    attn_scale: bool = Field(True, description="divide attention scores by sqrt(d_head)")
    bias: bool = Field(True, description="biases on attention, MLP, read-in and unembedding")
    read_in: bool = Field(True, description="vector inputs: linear read-in (False: they are the residual)")
    output_projection: bool = Field(True, description="W_O (False: heads' outputs are concatenated)")
    readout: ReadoutConfig | None = None
    ngram_layers: list[NgramLayerConfig] = Field(default_factory=list, description="hard-wired n-gram layers")
    init: Literal["normal", "gpt2", "fan_in", "uniform_fan_in"] = Field(
        "normal",
        description="normal: N(0, init_std); gpt2: normal but W_O and W_out (the residual branches' "
        "outputs) N(0, init_std / sqrt(2 n_layers)); fan_in: N(0, 1/fan_in); uniform_fan_in: "
        "U(+-1/sqrt(fan_in)) (Equinox's and PyTorch Linear's default). Readout hidden layers are "
        "He-initialised",
    )
    init_std: float = Field(0.02, gt=0)
    attn_init_std: float | None = Field(
        None, gt=0, description="std of the attention weights' normal init, in place of what init gives them"
    )
    embed_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the embedded inputs, in training")
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention patterns, in training")
    tie_unembed: bool = Field(False, description="unembed with W_E's transpose (W_U = W_E^T), no bias")

    @model_validator(mode="after")
    def _head_size(self) -> "TransformerConfig":
        if self.d_head is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); set d_head"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even d_head (got {self.head_dim})")
        if not self.output_projection and self.n_heads * self.head_dim != self.d_model:
            raise ValueError("output_projection false needs n_heads * d_head == d_model")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    def check_io(self, io: ModelIO) -> None:
        """Raise ValueError if this model cannot serve the task's inputs and targets."""
        if self.ngram_layers and io.d_vocab is None:
            raise ValueError("n-gram layers read token ids: the task must give tokens")
        if any(layer.after >= self.n_layers for layer in self.ngram_layers):
            raise ValueError(
                f"an n-gram layer is placed after a block the model lacks ({self.n_layers} blocks)"
            )
        if not self.read_in and io.d_input != self.d_model:
            raise ValueError(
                f"read_in false needs vector inputs of d_model ({self.d_model}) dims, got {io.d_input}"
            )
        if self.tie_unembed and (self.readout or io.d_vocab is None or io.d_out != io.d_vocab):
            raise ValueError("tie_unembed needs token inputs, as many outputs as tokens and no readout")
        if self.readout is None:
            return
        for p in self.readout.positions:
            if not -io.n_ctx <= p < io.n_ctx:
                raise ValueError(f"readout position {p} is outside a context of {io.n_ctx}")
        wanted = io.target_positions
        if wanted is None:
            raise ValueError(
                f"a readout (at positions {self.readout.positions}) serves tasks with targets at fixed "
                "positions, and this task has one at every position: remove model.readout"
            )
        if [p % io.n_ctx for p in self.readout.positions] != [p % io.n_ctx for p in wanted]:
            raise ValueError(
                f"readout positions {self.readout.positions} differ from the task's target "
                f"positions {list(wanted)}"
            )


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens parameter names (w, b)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.w.shape, self.w, self.b, 1e-5)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (rotate-half form) of x: (batch, pos, head, d_head)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    """Multi-head causal self-attention with per-head hook points."""

    def __init__(self, cfg: TransformerConfig, n_ctx: int) -> None:
        super().__init__()
        H, d, e = cfg.n_heads, cfg.d_model, cfg.head_dim
        self.W_Q = nn.Parameter(torch.empty(H, d, e))
        self.W_K = nn.Parameter(torch.empty(H, d, e))
        self.W_V = nn.Parameter(torch.empty(H, d, e))
        if cfg.output_projection:
            self.W_O = nn.Parameter(torch.empty(H, e, d))
        self.output_projection = cfg.output_projection
        if cfg.bias:
            self.b_Q = nn.Parameter(torch.zeros(H, e))
            self.b_K = nn.Parameter(torch.zeros(H, e))
            self.b_V = nn.Parameter(torch.zeros(H, e))
            self.b_O = nn.Parameter(torch.zeros(d)) if cfg.output_projection else None
        self.bias = cfg.bias
        self.dropout = cfg.attn_dropout
        self.vmapped = False  # under vmap the fused kernel runs as folded_attention.attend
        self.scale = 1 / math.sqrt(e) if cfg.attn_scale else 1.0
        self.register_buffer("future", torch.ones(n_ctx, n_ctx).triu(1).bool(), persistent=False)
        self.rope = cfg.positional == "rope"
        if self.rope:
            freq = cfg.rope_base ** (-torch.arange(0, e, 2).float() / e)
            angle = torch.arange(n_ctx).float()[:, None] * torch.cat([freq, freq])[None]  # (T, e)
            self.register_buffer("rope_cos", angle.cos()[:, None], persistent=False)  # (T, 1, e)
            self.register_buffer("rope_sin", angle.sin()[:, None], persistent=False)
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z = HookPoint()

    def qkv(self, x: Tensor, first: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Every head's query (B, T - first, H, e) at the positions from `first` on, and key and
        value (B, T, H, e) at every position, from the attention's input x (B, T, d)."""
        B, T, d = x.shape
        H, e = self.W_Q.shape[0], self.W_Q.shape[2]
        # one fused linear map for q, k and v: far faster on CPU than einsum's batched matmuls
        W = torch.stack([self.W_Q, self.W_K, self.W_V]).transpose(2, 3).reshape(3 * H * e, d)
        b = torch.stack([self.b_Q, self.b_K, self.b_V]).flatten() if self.bias else None
        if not first:
            return F.linear(x, W, b).view(B, T, 3, H, e).unbind(2)
        n = H * e  # queries only where they are read: a third of a readout model's last projection
        q = F.linear(x[:, first:], W[:n], None if b is None else b[:n]).view(B, T - first, H, e)
        k, v = F.linear(x, W[n:], None if b is None else b[n:]).view(B, T, 2, H, e).unbind(2)
        return q, k, v

    def forward(self, x: Tensor, first: int = 0) -> Tensor:
        """x (B, T, d) -> the heads' output (B, P, d) at the P = T - first positions from `first` on
        (keys and values still come from every position)."""
        B, T, d = x.shape
        H, e = self.W_Q.shape[0], self.W_Q.shape[2]
        q, k, v = self.qkv(x, first)  # q (B, P, H, e), k and v (B, T, H, e)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        rows = slice(first, T)
        if self.rope:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
            q = self.hook_rot_q(rotate(q, cos[rows], sin[rows]))
            k = self.hook_rot_k(rotate(k, cos, sin))
        future = self.future[rows, :T]  # (P, T): the keys each query may not see
        if tiny_heads(B * H, T, e):
            z = self.tiny_attention(q, k, v, future)
        elif self.hook_attn_scores.fns or self.hook_pattern.fns:
            # in place: each (B, H, T, T) copy saved is 134 MB in text_lm's evaluation (128 x 4 x 256^2)
            scores = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).mul_(self.scale)  # (B, H, P, T)
            scores = self.hook_attn_scores(scores.masked_fill_(future, float("-inf")))
            pattern = self._drop(self.hook_pattern(scores.softmax(dim=-1)))
            z = (pattern @ v.transpose(1, 2)).transpose(1, 2)  # (B, P, H, e)
        else:  # nobody looks at the pattern: the fused kernel computes the same thing faster
            # is_causal aligns the mask's corner top-left; the last position alone sees every key
            mask = None if first in (0, T - 1) else ~future
            fused = attend if self.vmapped else F.scaled_dot_product_attention
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, P or T, e)
            # dropout in training only (a model with dropout is never vmapped: attend takes none)
            drop = {"dropout_p": self.dropout} if self.training and self.dropout else {}
            z = fused(q, k, v, attn_mask=mask, is_causal=first == 0, scale=self.scale, **drop).transpose(1, 2)
        z = self.hook_z(z).reshape(B, z.shape[1], H * e)  # the hook sees (B, P, H, e)
        if not self.output_projection:
            return z
        return F.linear(z, self.W_O.reshape(H * e, d).T, self.b_O if self.bias else None)

    def _drop(self, pattern: Tensor) -> Tensor:
        """The pattern with attention dropout while training (after its hook, as TransformerLens)."""
        return F.dropout(pattern, self.dropout) if self.training and self.dropout else pattern

    def tiny_attention(self, q: Tensor, k: Tensor, v: Tensor, future: Tensor) -> Tensor:
        """Attention of tiny heads as broadcast products: q (B, P, H, e) and k, v (B, T, H, e), with
        future (P, T) the keys each query may not see -> z (B, P, H, e).

        Each product is a broadcast product summed over its inner axis, which inductor fuses into
        one loop; on a CPU a batched GEMM call costs far more per tiny matrix than its arithmetic.
        The batch is the last, contiguous axis, so those loops run full SIMD vectors (in
        (B, H, T, T) they ran a few lanes of T or e), and a clamp's per-head mask or per-sequence
        pattern stays a plain broadcast in them; the hooks still see (B, H, T, T). Eager, the same
        products on batch-last copies beat the fused kernel's and batched matmuls' per-head loops
        when there are many tiny heads (see tiny_heads)."""
        q, k, v = (x.permute(1, 3, 2, 0).contiguous() for x in (q, k, v))  # (P or T, e, H, B)

        def hooked(x: Tensor, hook: HookPoint) -> Tensor:  # (P, T, H, B), the hook seeing (B, H, P, T)
            if not hook.fns:
                return x
            # a replacement comes back laid out as the hook saw it: batch-last again for the products
            return hook(x.permute(3, 2, 0, 1)).permute(2, 3, 1, 0).contiguous()

        scores = (q[:, None] * k[None]).sum(2) * self.scale  # (P query, T key, H, B)
        scores = hooked(scores.masked_fill(future[:, :, None, None], float("-inf")), self.hook_attn_scores)
        pattern = self._drop(hooked(scores.softmax(dim=1), self.hook_pattern))
        z = (pattern[:, :, None] * v[None]).sum(1)  # (P, e, H, B)
        if z.requires_grad and not torch.compiler.is_compiling():
            # z's gradient arrives laid out (B, T, H, e); the products' backward runs 7x faster on
            # a batch-last copy than on that view
            z = ContiguousGradient.apply(z)
        return z.permute(3, 0, 2, 1)


class ContiguousGradient(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple, output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad.contiguous()


SMALL_MATMUL = 4096
"""largest T * d_head * T for which compiled code computes attention as fused loops (tiny_attention)"""
SMALL_EAGER, MANY_HEADS, LARGEST_PRODUCT = 256, 256, 1 << 20
"""eager code computes attention as broadcast products (tiny_attention) where T * d_head * T is at
most SMALL_EAGER, there are at least MANY_HEADS (sequence, head) pairs and the products hold at
most LARGEST_PRODUCT elements (T * T * d_head * pairs). Measured on one CPU thread for Singh's
attention layer (T 5, d_head 8, 8 heads; qkv, RoPE and W_O included), against the faster of the
fused kernel and batched matmuls: forward and backward 0.86-0.90x from 32 to 512 sequences, 1.18x
at 16 and 1.05x at 4,096; forward alone 0.76-0.79x at 128 and 512 sequences, 1.05-1.15x at 32 and
64, and 1.2-1.4x batched matmuls' time at 78,400 (an evaluation over Singh's whole training set)."""


def tiny_heads(n_heads: int, T: int, e: int) -> bool:
    """Whether attention over n_heads (sequence, head) pairs of T positions and e dims is computed
    as broadcast products (Attention.tiny_attention)."""
    if torch.compiler.is_compiling():  # inductor's fused loops win
        return T * e * T <= SMALL_MATMUL
    return T * e * T <= SMALL_EAGER and MANY_HEADS <= n_heads <= LARGEST_PRODUCT // (T * e * T)


class MLP(nn.Module):
    """Two-layer perceptron with TransformerLens names (W_in, W_out)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d_mlp = cfg.d_mlp or 4 * cfg.d_model
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp)) if cfg.bias else None
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.bias else None
        self.act = {
            "relu": F.relu,
            "gelu": F.gelu,
            "gelu_new": functools.partial(F.gelu, approximate="tanh"),
        }[cfg.act_fn]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = x @ self.W_in
        post = self.hook_post(self.act(self.hook_pre(pre if self.b_in is None else pre + self.b_in)))
        out = post @ self.W_out
        return out if self.b_out is None else out + self.b_out


class Block(nn.Module):
    """Attention (+ MLP) with residual connections and pre-, post- or no LayerNorm."""

    def __init__(self, cfg: TransformerConfig, n_ctx: int) -> None:
        super().__init__()
        self.norm = cfg.norm
        self.ln1 = LayerNorm(cfg.d_model) if cfg.norm != "none" else nn.Identity()
        self.attn = Attention(cfg, n_ctx)
        self.mlp = None if cfg.attn_only else MLP(cfg)
        if self.mlp is not None:
            self.ln2 = LayerNorm(cfg.d_model) if cfg.norm != "none" else nn.Identity()
            self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = (
            HookPoint(),
            HookPoint(),
            HookPoint(),
        )

    def keys(self, resid: Tensor) -> Tensor:
        """The keys (B, T, H, e) this block's heads compute from a residual stream (before RoPE)."""
        return self.attn.qkv(self.ln1(resid) if self.norm == "pre" else resid)[1]

    def forward(self, x: Tensor, first: int = 0) -> Tensor:
        """Residual stream (B, T, d) -> (B, T - first, d): the positions from `first` on."""
        pre = self.norm == "pre"
        x = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(x) if pre else x, first))
        x = (x[:, first:] if first else x) + attn_out
        if self.norm == "post":
            x = self.ln1(x)
        if self.mlp is not None:
            x = self.hook_resid_mid(x)
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x) if pre else x))
            if self.norm == "post":
                x = self.ln2(x)
        return self.hook_resid_post(x)


class TiedUnembed(nn.Module):
    """The unembedding of tied weights: W_U = W_E^T of the embedding it is given, no bias."""

    b_U = None  # noqa: N815 (TransformerLens's name)

    def __init__(self, embed: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "embed", embed)  # not a submodule: W_E stays the embedding's parameter

    @property
    def W_U(self) -> Tensor:  # noqa: N802 (TransformerLens's name)
        return self.embed.W_E.T  # (d_model, d_vocab)


def fan_in(name: str, p: Tensor) -> int:
    """Input dimension of a TransformerLens-layout weight (W_O reads H * d_head inputs)."""
    return p.shape[0] * p.shape[1] if name.endswith("W_O") else p.shape[-2]


def sinusoidal(n_ctx: int, d: int) -> Tensor:
    """Fixed sine/cosine position codes of Vaswani et al.: (n_ctx, d)."""
    pos = torch.arange(n_ctx).float()[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2).float() / d)
    codes = torch.zeros(n_ctx, d)
    codes[:, 0::2] = torch.sin(pos * freq)
    codes[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return codes


@MODELS.register("transformer")
class Transformer(Model):
    """Decoder-only transformer: token embedding or linear read-in -> blocks -> unembed or readout."""

    Config = TransformerConfig

    def __init__(self, cfg: TransformerConfig, io: ModelIO) -> None:
        super().__init__()
        self.cfg, self.io = cfg, io
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        d = cfg.d_model
        self.embed = nn.Module()
        if io.d_vocab is not None:
            self.embed.W_E = nn.Parameter(torch.empty(io.d_vocab, d))
        elif cfg.read_in:
            self.embed.W_E = nn.Parameter(torch.empty(io.d_input, d))
            self.embed.b_E = nn.Parameter(torch.zeros(d)) if cfg.bias else None
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = nn.Module()
            self.pos_embed.W_pos = nn.Parameter(torch.empty(io.n_ctx, d))
        elif cfg.positional == "sinusoidal":
            self.register_buffer("pos_codes", sinusoidal(io.n_ctx, d), persistent=False)
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([Block(cfg, io.n_ctx) for _ in range(cfg.n_layers)])
        self.ngram = ngram_modules(cfg.ngram_layers, d)
        final_norm = cfg.norm == "pre" if cfg.final_norm is None else cfg.final_norm
        self.ln_final = LayerNorm(d) if final_norm else nn.Identity()
        self.readout_positions = cfg.readout.positions if cfg.readout else None
        widths = [d, *(cfg.readout.hidden if cfg.readout else [])]
        out_bias = cfg.readout.bias if cfg.readout else cfg.bias
        hidden_bias = cfg.readout.hidden_bias_kind() if cfg.readout else "none"
        self.readout = nn.ModuleList(
            [nn.Linear(a, b, bias=hidden_bias == "unit") for a, b in itertools.pairwise(widths)]
        )
        if hidden_bias == "scalar":  # one learned number added to every unit of the layer
            for layer in self.readout:
                layer.bias = nn.Parameter(torch.empty(1))
        if cfg.tie_unembed:
            self.unembed: nn.Module = TiedUnembed(self.embed)
        else:
            self.unembed = nn.Module()
            self.unembed.W_U = nn.Parameter(torch.empty(widths[-1], io.d_out))
            self.unembed.b_U = nn.Parameter(torch.zeros(io.d_out)) if out_bias else None
        self.hook_logits = HookPoint()
        self.takes_table = io.d_vocab is None and cfg.read_in
        self.setup_hooks()
        self.last_block_hooks = [m for m in self.blocks[-1].modules() if isinstance(m, HookPoint)]
        self.reset_parameters()

    def batched(self, vmapped: bool) -> None:
        for block in self.blocks:
            block.attn.vmapped = vmapped

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weights as `init` says (attention's N(0, attn_init_std) where set); readout MLP layers
        He-initialised (N(0, 2/fan_in)), their scalar biases N(0, 1/fan_in); other biases 0,
        LayerNorm gains 1."""
        for name, p in self.named_parameters():
            if name.startswith("ngram."):  # n-gram layers start as identity plus a small n-gram read
                with torch.no_grad():
                    p.copy_(torch.eye(p.shape[0])) if name.endswith("keep.weight") else p.zero_()
                if name.endswith("read.weight"):
                    nn.init.normal_(p, 0.0, self.cfg.init_std, generator=generator)
            elif name.startswith("readout.") and name.endswith("weight"):
                nn.init.normal_(p, 0.0, math.sqrt(2 / p.shape[1]), generator=generator)
            elif name.startswith("readout.") and self.cfg.readout.hidden_bias == "scalar":  # Reddy's init
                fan = self.readout[int(name.split(".")[1])].in_features
                nn.init.normal_(p, 0.0, 1 / math.sqrt(fan), generator=generator)
            elif ".attn.W_" in name and self.cfg.attn_init_std is not None:
                nn.init.normal_(p, 0.0, self.cfg.attn_init_std, generator=generator)
            elif name.split(".")[-1].startswith("W_") and self.cfg.init == "uniform_fan_in":
                bound = 1 / math.sqrt(fan_in(name, p))
                nn.init.uniform_(p, -bound, bound, generator=generator)
            elif name.split(".")[-1].startswith("W_"):
                std = 1 / math.sqrt(fan_in(name, p)) if self.cfg.init == "fan_in" else self.cfg.init_std
                if self.cfg.init == "gpt2" and name.endswith(("W_O", "W_out")):
                    std /= math.sqrt(2 * self.cfg.n_layers)
                nn.init.normal_(p, 0.0, std, generator=generator)
            elif name.endswith(".w"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def last_block_first(self, T: int) -> int:
        """The first position the last block computes: the first readout position where every hook
        function on the block takes a suffix of positions (hooks.takes_suffix) and no n-gram layer
        follows it, else 0."""
        if self.readout_positions is None:
            return 0
        if any(not getattr(fn, "takes_suffix", False) for h in self.last_block_hooks for fn in h.fns):
            return 0
        if any(layer.after == self.n_layers - 1 for layer in self.cfg.ngram_layers):
            return 0
        return min(p % T for p in self.readout_positions)

    def forward(self, inputs: Tensor, table: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
        """inputs: (B, T) token ids or (B, T, d_input) vectors -> logits (B, T or P, d_out). Vector
        inputs may come with the table (N, d_input) and (B, T) rows they are read from
        (Batch.table): the read-in then projects the N rows rather than the B * T tokens."""
        if self.io.d_vocab is not None:
            x = F.embedding(inputs, self.embed.W_E)
        elif self.cfg.read_in and table is not None:
            # a one-hot product, not a gather: its backward is a matrix product too, deterministic
            # where a compiled scatter-add on several threads is not
            picks = (rows[..., None] == torch.arange(len(table), device=rows.device)).to(
                table.dtype
            )  # (B, T, N)
            x = picks @ (table @ self.embed.W_E)  # (B, T, d_model)
            if self.embed.b_E is not None:
                x = x + self.embed.b_E
        elif self.cfg.read_in:
            x = F.linear(inputs, self.embed.W_E.T, self.embed.b_E)
        else:
            x = inputs
        x = self.hook_embed(x)  # (B, T, d_model)
        if self.cfg.positional in ("learned", "sinusoidal"):
            codes = self.pos_embed.W_pos if self.cfg.positional == "learned" else self.pos_codes
            x = x + self.hook_pos_embed(codes[: x.shape[1]].expand_as(x))
        if self.training and self.cfg.embed_dropout:
            x = F.dropout(x, self.cfg.embed_dropout)
        x = insert_ngram_layers(self.ngram, self.cfg.ngram_layers, -1, x, inputs)
        *blocks, last = self.blocks
        for i, block in enumerate(blocks):
            x = insert_ngram_layers(self.ngram, self.cfg.ngram_layers, i, block(x), inputs)
        T, first = x.shape[1], self.last_block_first(x.shape[1])
        x = insert_ngram_layers(self.ngram, self.cfg.ngram_layers, len(blocks), last(x, first), inputs)
        x = self.ln_final(x)  # (B, T - first, d_model)
        if self.readout_positions is not None:
            readout = [p % T - first for p in self.readout_positions]
            if readout != list(range(T - first)):
                x = x[:, readout]  # (B, P, d_model)
            for layer in self.readout:
                x = F.relu(layer(x))
        logits = x @ self.unembed.W_U
        if self.unembed.b_U is not None:
            logits = logits + self.unembed.b_U
        return self.hook_logits(logits)
