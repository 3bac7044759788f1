"""A trained transformer as a TransformerLens `HookedTransformer` (TL 3.x): its config and a state
dict in TL's names and layouts (ours already follow them), written as `tl_config.json` and
`tl_weights.safetensors`, and loaded where TransformerLens is installed.

What TL cannot express is refused with ExportError: post-LayerNorm, n-gram layers, readouts (logits
at chosen positions only, with or without an MLP), vector inputs, no output projection, or a final
LayerNorm that disagrees with the blocks'. Learned positions are TL's "standard"; sinusoidal codes
and no positions are "standard" with W_pos fixed to those codes or to zero; RoPE is TL's rotary
(rotate-half pairs) over the whole head.
"""

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from icl_lab.errors import ExportError
from icl_lab.files import atomic_write_text, save_tensors
from icl_lab.models import Model
from icl_lab.models.transformer import Transformer

CONFIG, WEIGHTS = "tl_config.json", "tl_weights.safetensors"


def tl_config(model: Model, model_name: str = "icl-lab") -> dict[str, Any]:
    """The HookedTransformerConfig arguments of a model; ExportError if TL cannot express it."""
    if not isinstance(model, Transformer):
        kind = type(model).__name__
        raise ExportError(f"only transformers export to TransformerLens (this model is a {kind})")
    cfg, io = model.cfg, model.io
    refusals = {
        "post-LayerNorm blocks": cfg.norm == "post",
        "a final LayerNorm that differs from the blocks'": cfg.final_norm not in (None, cfg.norm == "pre"),
        "n-gram layers": bool(cfg.ngram_layers),
        "a readout (logits at chosen positions only)": cfg.readout is not None,
        "vector inputs": io.d_vocab is None,
        "heads without an output projection": not cfg.output_projection,
    }
    refused = [what for what, present in refusals.items() if present]
    if refused:
        raise ExportError(f"TransformerLens cannot express {', '.join(refused)}")
    return {
        "model_name": model_name,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_ctx": io.n_ctx,
        "d_head": cfg.head_dim,
        "n_heads": cfg.n_heads,
        "d_mlp": None if cfg.attn_only else (cfg.d_mlp or 4 * cfg.d_model),
        "d_vocab": io.d_vocab,
        "d_vocab_out": io.d_out,
        "attn_only": cfg.attn_only,
        "act_fn": None if cfg.attn_only else cfg.act_fn,  # TL's names: gelu exact (erf), gelu_new tanh
        "normalization_type": "LN" if cfg.norm == "pre" else None,
        "eps": 1e-5,
        "positional_embedding_type": "rotary" if cfg.positional == "rope" else "standard",
        "rotary_dim": cfg.head_dim if cfg.positional == "rope" else None,
        "rotary_base": cfg.rope_base,
        "rotary_adjacent_pairs": False,
        "use_attn_scale": cfg.attn_scale,
        "default_prepend_bos": False,
    }


@torch.no_grad()
def tl_state_dict(model: Transformer) -> dict[str, Tensor]:
    """The model's weights under TL's names; absent biases as zeros, fixed positions as W_pos."""
    state = {k: p.detach().clone() for k, p in model.named_parameters()}
    cfg, d = model.cfg, model.cfg.d_model
    if cfg.positional == "sinusoidal":
        state["pos_embed.W_pos"] = model.pos_codes.clone()
    elif cfg.positional == "none":
        state["pos_embed.W_pos"] = torch.zeros(model.io.n_ctx, d)
    H, e = cfg.n_heads, cfg.head_dim
    zeros = {"attn.b_Q": (H, e), "attn.b_K": (H, e), "attn.b_V": (H, e), "attn.b_O": (d,)}
    if not cfg.attn_only:
        zeros |= {"mlp.b_in": (cfg.d_mlp or 4 * d,), "mlp.b_out": (d,)}
    for layer in range(cfg.n_layers):
        for name, shape in zeros.items():
            state.setdefault(f"blocks.{layer}.{name}", torch.zeros(shape))
    state.setdefault("unembed.W_U", model.unembed.W_U.detach().clone())  # tied: W_E^T
    state.setdefault("unembed.b_U", torch.zeros(model.io.d_out))
    return state


def export_transformer_lens(model: Model, directory: str | Path, model_name: str = "icl-lab") -> Path:
    """Write tl_config.json and tl_weights.safetensors into directory (created); returns it."""
    directory = Path(directory)
    config = tl_config(model, model_name)
    tensors = {k: v.contiguous() for k, v in tl_state_dict(model).items()}
    save_tensors(directory / WEIGHTS, tensors)
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=1))
    return directory


def hooked_transformer(config: dict[str, Any], state: dict[str, Tensor]) -> Any:
    """A TransformerLens HookedTransformer with these weights (TL 3.x must be installed)."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        raise ExportError("TransformerLens is not installed: pip install 'icl-lab[interop]'") from None
    with warnings.catch_warnings():  # TL 3 announces HookedTransformer's replacement in TL 4
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(HookedTransformerConfig(**config))
    missing, unexpected = tl.load_state_dict(state, strict=False)  # TL's buffers (masks, rotary) stay
    weights = [k for k in missing if k in dict(tl.named_parameters())]
    if unexpected or weights:
        raise ExportError(f"TransformerLens's model does not fit: missing {weights}, unexpected {unexpected}")
    return tl.eval()


def to_hooked_transformer(model: Model, model_name: str = "icl-lab") -> Any:
    """The model as a TransformerLens HookedTransformer, in memory."""
    return hooked_transformer(tl_config(model, model_name), tl_state_dict(model))


def load_hooked_transformer(directory: str | Path) -> Any:
    """A HookedTransformer from what export_transformer_lens wrote."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise ExportError(f"{directory} holds no TransformerLens export ({CONFIG} and {WEIGHTS})")
    try:
        config, state = json.loads((directory / CONFIG).read_text()), load_file(str(directory / WEIGHTS))
        return hooked_transformer(config, state)
    except ExportError:
        raise
    except Exception as e:  # a damaged file: safetensors, json and TransformerLens raise their own
        raise ExportError(
            f"{directory} holds a damaged TransformerLens export ({type(e).__name__}: {e}); export it again"
        ) from None
