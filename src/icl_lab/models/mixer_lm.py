"""Language models whose sequence mixer is not attention: LSTM, GRU, linear attention, retention,
gated linear attention, Mamba, S4D. Token embedding -> blocks (pre-LN mixer, then pre-LN MLP, both
residual; or, bare, the mixer alone) with optional hard-wired n-gram layers between them -> final LN
(not when bare) -> unembedding."""

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from icl_lab.config import ModelConfig
from icl_lab.models.base import MODELS, Model, ModelIO
from icl_lab.models.hooks import HookPoint
from icl_lab.models.mixers import S4D, LinearAttention, Mamba, Recurrent
from icl_lab.models.ngram_layer import NgramLayerConfig, insert_ngram_layers, ngram_modules

Mixer = Literal["lstm", "gru", "linear_attention", "retention", "gla", "mamba", "s4d"]
ATTENTION_LIKE = ("linear_attention", "retention", "gla")  # the mixers with heads: LinearAttention


class MixerLMConfig(ModelConfig):
    """A non-attention language model."""

    name: Literal["mixer_lm"] = "mixer_lm"
    # 2026-12-04, 2026-12-05
    later_fields = (
        "embed_dropout",
        "feature_map",
        "positional",
        "init",
        "tie_unembed",
        "layout",
        "embed_std",
        "retnet",
        "mixer_bias",
        "recurrent_init",
        "gla_yang",
        "attn_dropout",
        "s4d_init",
        "act_fn",
    )
    mixer: Mixer
    n_layers: PositiveInt = 2
    d_model: PositiveInt = 64
    n_heads: PositiveInt = Field(4, description="heads of linear attention, retention and GLA")
    d_state: PositiveInt = Field(16, description="state size per channel of Mamba and S4D")
    expand: PositiveInt = Field(2, description="Mamba's inner width, in multiples of d_model")
    mlp: bool = True
    layout: Literal["pre_norm", "bare"] = Field(
        "pre_norm",
        description="pre_norm: blocks x + mixer(LN(x)) then x + MLP(LN(x)), a final LayerNorm; bare: "
        "blocks x = mixer(x), no norms, residuals or MLPs (Akyuerek et al.'s lm_simple_noffn)",
    )
    chunk: PositiveInt = Field(32, description="chunk length of linear attention, retention and GLA")
    feature_map: Literal["elu", "none"] = Field(
        "elu",
        description="linear attention's: elu + 1 on queries and keys, normalised by the keys' sum "
        "(Katharopoulos et al.); none: scaled scores q.k / sqrt(d_head), unnormalised (the linear "
        "transformer of Akyuerek et al.'s code)",
    )
    positional: Literal["none", "learned"] = Field("none", description="learned position embeddings")
    retnet: bool = Field(
        False,
        description="retention as RetNet's (rotary queries and keys, values and gate twice the width, "
        "biases, RetNet's normalisations and per-head LayerNorm)",
    )
    mixer_bias: bool = Field(
        False,
        description="biases on the query, key, value, gate and output maps of linear attention, "
        "retention and GLA",
    )
    gla_yang: bool = Field(
        False,
        description="GLA as Yang et al.'s layer (as Akyuerek et al.'s code runs it): queries and keys "
        "half the width, keys scaled by 1/sqrt(d_model / n_heads), biases on the output gate and the "
        "decay map's second layer only, a per-head LayerNorm without gain or bias, log-decays clamped "
        "at -3 a step (set chunk <= 26 so that the recurrence's own clamp, -80 / chunk, is lower)",
    )
    attn_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout on unnormalised linear attention's scores, in training"
    )
    s4d_init: Literal["real", "inv"] = Field(
        "real",
        description="S4D's state space: real: S4D-Real (A_n = -(n + 1/2), B = 1, D = 1); inv: S4D-Inv "
        "as Gu et al.'s code (d_state / 2 complex modes shared by the channels, random B folded into "
        "C, D ~ N(0, 1), no weight decay on step sizes and modes)",
    )
    act_fn: Literal["gelu", "gelu_new"] = Field(
        "gelu", description="the MLPs' activation: gelu exact (erf), gelu_new its tanh approximation"
    )
    ngram_layers: list[NgramLayerConfig] = Field(default_factory=list)
    embed_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the embedded tokens, in training")
    init: Literal["fan_in", "gpt2"] = Field(
        "fan_in",
        description="linear layers' weights: fan_in: U(+-1/sqrt(fan_in)) (PyTorch's default); gpt2: N(0, "
        "0.02), and N(0, 0.02 / sqrt(2 n_layers)) for the output maps of the MLPs and of every mixer but "
        "S4D (GPT-2's scheme as Akyuerek et al.'s code applies it). Either way positions N(0, 0.02), "
        "biases 0, state-space parameters their own",
    )
    recurrent_init: Literal["pytorch", "keras"] = Field(
        "pytorch",
        description="LSTM and GRU weights: pytorch: U(+-1/sqrt(d_model)); keras: Glorot-uniform input "
        "weights, orthogonal recurrent weights, biases 0 but the LSTM's forget gate's 1",
    )
    tie_unembed: bool = Field(False, description="unembed with the token embedding's transpose, no bias")
    embed_std: float = Field(0.02, gt=0, description="the token embedding's standard deviation at init")

    def check_io(self, io: ModelIO) -> None:
        if io.d_vocab is None or io.target_positions is not None:
            raise ValueError("mixer_lm reads token ids and predicts every position")
        if self.layout == "bare" and self.mlp:
            raise ValueError("layout bare has no MLPs: set mlp false")
        if self.tie_unembed and io.d_out != io.d_vocab:
            raise ValueError(f"tie_unembed needs as many outputs ({io.d_out}) as tokens ({io.d_vocab})")
        if self.feature_map != "elu" and self.mixer != "linear_attention":
            raise ValueError("feature_map applies to linear_attention only")
        if self.recurrent_init != "pytorch" and self.mixer not in ("lstm", "gru"):
            raise ValueError("recurrent_init applies to lstm and gru only")
        if self.mixer_bias and self.mixer not in ATTENTION_LIKE:
            raise ValueError("mixer_bias applies to linear_attention, retention and gla only")
        if self.retnet and self.mixer != "retention":
            raise ValueError("retnet applies to retention only")
        if self.gla_yang and self.mixer != "gla":
            raise ValueError("gla_yang applies to gla only")
        if self.gla_yang and self.d_model % (2 * self.n_heads):
            raise ValueError(
                f"gla_yang splits half of d_model ({self.d_model}) into n_heads ({self.n_heads}) keys"
            )
        if self.attn_dropout and (self.mixer, self.feature_map) != ("linear_attention", "none"):
            raise ValueError("attn_dropout applies to linear_attention with feature_map none only")
        if self.s4d_init != "real" and self.mixer != "s4d":
            raise ValueError("s4d_init applies to s4d only")
        if self.s4d_init == "inv" and self.d_state % 2:
            raise ValueError(f"s4d_init inv pairs conjugate modes: d_state ({self.d_state}) must be even")
        if self.retnet and self.d_model // self.n_heads % 2:
            raise ValueError(
                f"retnet rotates pairs: d_model / n_heads ({self.d_model // self.n_heads}) must be even"
            )
        if self.mixer in ATTENTION_LIKE and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads})")
        for layer in self.ngram_layers:
            if layer.after >= self.n_layers:
                raise ValueError(f"an n-gram layer after block {layer.after} of {self.n_layers}")


class MixerBlock(nn.Module):
    def __init__(self, cfg: MixerLMConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.bare = cfg.layout == "bare"
        if not self.bare:
            self.ln1 = nn.LayerNorm(d)
        if cfg.mixer in ("lstm", "gru"):
            self.mixer: nn.Module = Recurrent(cfg.mixer, d)
        elif cfg.mixer == "mamba":
            self.mixer = Mamba(d, cfg.d_state, cfg.expand)
        elif cfg.mixer == "s4d":
            self.mixer = S4D(d, cfg.d_state, inverse=cfg.s4d_init == "inv")
        else:
            self.mixer = LinearAttention(
                cfg.mixer,
                d,
                cfg.n_heads,
                cfg.chunk,
                cfg.feature_map,
                cfg.mixer_bias,
                cfg.retnet,
                cfg.gla_yang,
                cfg.attn_dropout,
            )
        if cfg.mlp:
            self.ln2 = nn.LayerNorm(d)
            gelu = nn.GELU("tanh" if cfg.act_fn == "gelu_new" else "none")
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), gelu, nn.Linear(4 * d, d))
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if self.bare:
            return self.hook_resid_post(self.mixer(x))
        x = x + self.mixer(self.ln1(x))
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.ln2(x))
        return self.hook_resid_post(x)


def keras_init(leaf: str, p: Tensor, lstm: bool, generator: torch.Generator | None) -> None:
    """Keras's init of one LSTM or GRU parameter: Glorot-uniform input weights, orthogonal
    recurrent weights (the gates' stacked (gates x d, d) matrix), zero biases but 1 on the LSTM's
    forget gate (rows d..2d of bias_ih: PyTorch orders its gates i, f, g, o)."""
    if leaf.startswith("weight_ih"):
        nn.init.xavier_uniform_(p, generator=generator)
    elif leaf.startswith("weight_hh"):
        nn.init.orthogonal_(p, generator=generator)
    else:
        p.zero_()
        if lstm and leaf.startswith("bias_ih"):
            p[p.shape[0] // 4 : p.shape[0] // 2] = 1.0


@MODELS.register("mixer_lm")
class MixerLM(Model):
    """Embedding (+ learned positions) -> mixer blocks (+ n-gram layers) -> LayerNorm -> unembedding."""

    Config = MixerLMConfig

    def __init__(self, cfg: MixerLMConfig, io: ModelIO) -> None:
        super().__init__()
        self.cfg, self.io = cfg, io
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.embed = nn.Embedding(io.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = nn.Embedding(io.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList([MixerBlock(cfg) for _ in range(cfg.n_layers)])
        self.ngram = ngram_modules(cfg.ngram_layers, cfg.d_model)
        self.ln_final = nn.LayerNorm(cfg.d_model) if cfg.layout == "pre_norm" else nn.Identity()
        if not cfg.tie_unembed:
            self.unembed = nn.Linear(cfg.d_model, io.d_out)
        self.hook_logits = HookPoint()
        self.setup_hooks()
        self.reset_parameters()

    def batched(self, vmapped: bool) -> None:
        for block in self.blocks:
            if isinstance(block.mixer, Mamba):
                block.mixer.native = not vmapped

    @classmethod
    def ensemble_refusal(cls, cfg: MixerLMConfig) -> str | None:
        # torch's LSTM and GRU have no vmap rule: "Batching rule not implemented for aten::lstm.input"
        # on a CPU (torch 2.13); on a GPU cuDNN's kernel cannot take batched weights (an H200, torch
        # 2.11: "Cannot access data pointer of Tensor that doesn't have storage")
        if cfg.mixer in ("lstm", "gru"):
            return f"{cfg.mixer} models do not train as one vmapped ensemble (torch's has no vmap rule)"
        return None

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Linear weights as `init` says, each architecture's own init for its state-space
        parameters, identity for the n-gram layers' skip map."""
        out_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            with torch.no_grad():
                owner = self.get_submodule(name.rsplit(".", 1)[0])
                if isinstance(owner, S4D):  # its own, drawn in its order at its first parameter
                    if leaf == "log_dt":
                        owner.reset_parameters(generator)
                elif leaf == "A_log":  # Mamba: A_n = -(n + 1)
                    p.copy_(
                        torch.log(1 + torch.arange(p.shape[1], dtype=p.dtype, device=p.device)).expand_as(p)
                    )
                elif name.endswith("dt_proj.bias"):  # softplus(bias) log-uniform in [0.001, 0.1]
                    dt = (
                        torch.empty_like(p)
                        .uniform_(math.log(1e-3), math.log(1e-1), generator=generator)
                        .exp()
                    )
                    p.copy_(dt + torch.log(-torch.expm1(-dt)))
                elif self.cfg.recurrent_init == "keras" and isinstance(owner, nn.RNNBase):
                    keras_init(leaf, p, isinstance(owner, nn.LSTM), generator)
                elif leaf == "D" or (leaf == "weight" and isinstance(owner, nn.LayerNorm | nn.GroupNorm)):
                    p.fill_(1.0)
                elif name.endswith("keep.weight"):
                    p.copy_(torch.eye(p.shape[0]))
                elif name == "embed.weight":
                    p.normal_(0.0, self.cfg.embed_std, generator=generator)
                elif name.startswith(("pos_embed.", "unembed.weight")):
                    p.normal_(0.0, 0.02, generator=generator)
                elif leaf == "bias" and isinstance(owner, nn.Conv1d):  # PyTorch's default, as mamba-ssm's
                    bound = 1 / math.sqrt(owner.weight[0].numel())
                    p.uniform_(-bound, bound, generator=generator)
                elif p.dim() == 1:
                    p.zero_()
                elif (
                    self.cfg.init == "gpt2"
                    and isinstance(owner, nn.Linear)
                    and not name.endswith("dt_proj.weight")
                ):
                    # the residual branches' output maps are scaled down; S4D's is not, as in Akyurek
                    # et al.'s code, where its name (output_linear) escapes the rescaling
                    mixer = self.get_submodule(name.rsplit(".", 2)[0])
                    scaled = name.endswith(("mixer.out_proj.weight", "mlp.2.weight")) or (
                        name.endswith("mixer.out.weight") and isinstance(mixer, LinearAttention)
                    )
                    p.normal_(0.0, out_std if scaled else 0.02, generator=generator)
                else:
                    bound = 1 / math.sqrt(p.shape[1] * (p[0, 0].numel() if p.dim() > 2 else 1))
                    p.uniform_(-bound, bound, generator=generator)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.hook_embed(self.embed(tokens))
        if self.cfg.positional == "learned":
            x = x + self.pos_embed.weight[: tokens.shape[1]]
        if self.training and self.cfg.embed_dropout:
            x = torch.nn.functional.dropout(x, self.cfg.embed_dropout)
        x = insert_ngram_layers(self.ngram, self.cfg.ngram_layers, -1, x, tokens)
        for i, block in enumerate(self.blocks):
            x = insert_ngram_layers(self.ngram, self.cfg.ngram_layers, i, block(x), tokens)
        x = self.ln_final(x)
        return self.hook_logits(x @ self.embed.weight.T if self.cfg.tie_unembed else self.unembed(x))
