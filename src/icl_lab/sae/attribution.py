"""Where an attention SAE's features come from (Kissane et al.): direct feature attribution to
each head and each source position, head attribution by decoder norm, and a family label per
feature (short-range, long-range, induction) with each head's polysemanticity.

The encoder is linear in hook_z, and hook_z of head h at a destination is the attention-weighted
sum of the values at the sources: z_h[dest] = sum_src A_h[dest, src] v_h[src]. So a feature's
pre-activation minus its bias terms, scale x z . W_enc[:, f], splits exactly into parts per head
and per (source, head).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from icl_lab.models.base import Model
from icl_lab.sae.activations import hook_z
from icl_lab.sae.base import SAE

FAMILIES = ("short-range", "long-range", "induction")
SHORT_RANGE = 4  # sources at most this many tokens before the destination are "near"


@dataclass
class Attribution:
    """Direct feature attribution of features F on a batch: per head (B, T, H, F) and per
    source position (B, T_dest, T_src, H, F); per_source summed over sources gives per_head."""

    per_head: Tensor
    per_source: Tensor


def _attention(model: Model, inputs: Tensor, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """hook_z, hook_v and hook_pattern of `layer` on inputs: (B, T, H, e), (B, T, H, e), (B, H, T, T)."""
    attn = f"blocks.{layer}.attn"
    names = [hook_z(layer), f"{attn}.hook_v", f"{attn}.hook_pattern"]
    _, cache = model.run_with_cache(inputs, names_filter=lambda n: n in names)
    z, v, pattern = (cache[n] for n in names)
    return z, v, pattern


def _encoder_by_head(sae: SAE, features: Tensor | slice, n_heads: int, scale: float) -> Tensor:
    """(H, e, F): each head's slice of the encoder columns of `features`, in hook_z's scale."""
    return sae.W_enc[:, features].view(n_heads, sae.d_in // n_heads, -1) * scale


@torch.no_grad()
def direct_feature_attribution(
    model: Model, inputs: Tensor, layer: int, sae: SAE, features: Tensor, scale: float = 1.0
) -> Attribution:
    """DFA of the given features (indices) of an SAE on hook_z at `layer` (inputs in the SAE's
    scale: x = scale x hook_z)."""
    z, v, pattern = _attention(model, inputs, layer)
    W = _encoder_by_head(sae, features, z.shape[2], scale)  # (H, e, F)
    per_head = torch.einsum("bthe,hef->bthf", z, W)
    value_parts = torch.einsum("bshe,hef->bshf", v, W)  # (B, T_src, H, F)
    per_source = torch.einsum("bhts,bshf->btshf", pattern, value_parts)
    return Attribution(per_head, per_source)


def decoder_head_shares(sae: SAE, n_heads: int) -> Tensor:
    """(d_sae, H): each head's share of a feature's decoder norm, |W_dec[f, h]| / sum_h' |W_dec[f, h']|."""
    norms = sae.W_dec.detach().view(sae.d_sae, n_heads, -1).norm(dim=-1)  # (d_sae, H)
    return norms / norms.sum(1, keepdim=True).clamp(min=1e-12)


def source_families(tokens: Tensor) -> Tensor:
    """(B, T_dest, T_src) family index of every (destination, source) pair of each sequence:
    induction where the source follows an earlier occurrence of the destination's token, else
    short-range within SHORT_RANGE tokens back, else long-range (-1 for future sources)."""
    B, T = tokens.shape
    dest, src = torch.arange(T)[:, None], torch.arange(T)[None, :]
    previous = torch.cat([torch.full((B, 1), -1, dtype=tokens.dtype), tokens[:, :-1]], 1)  # token before src
    induction = (previous[:, None, :] == tokens[:, :, None]) & (src >= 1) & (src <= dest)
    family = torch.where(dest - src <= SHORT_RANGE, 0, 1).expand(B, T, T).clone()
    family[induction] = 2
    family[:, src > dest] = -1
    return family


def family_shares(attribution: Attribution, families: Tensor, active: Tensor) -> Tensor:
    """(3, F) positive per-source attribution of each feature carried by each family of sources
    (families: (B, T, T) from source_families), summed over the (B, T, F) `active` destinations."""
    mass = attribution.per_source.clamp(min=0).sum(3) * active[:, :, None, :]  # (B, T_dest, T_src, F)
    return torch.stack([(mass * (families == k)[..., None]).sum((0, 1, 2)) for k in range(len(FAMILIES))])


def label_families(shares: Tensor) -> Tensor:
    """(F,) the family carrying the largest share of each feature's attribution; -1 for none."""
    return torch.where(shares.sum(0) > 0, shares.argmax(0), -1)


def feature_families(attribution: Attribution, tokens: Tensor, active: Tensor) -> Tensor:
    """(F,) family index of each feature: the family of sources that carries the largest share of
    its positive per-source attribution, summed over the (B, T, F) `active` destinations; -1 for a
    feature never active."""
    return label_families(family_shares(attribution, source_families(tokens), active))


def head_polysemanticity(shares: Tensor, families: Tensor, min_share: float = 0.5) -> list[set[int]]:
    """Per head, the families of the features it dominates (decoder share of at least min_share);
    a head whose features span two or more families is polysemantic by this measure."""
    heads = []
    for h in range(shares.shape[1]):
        mine = (shares[:, h] >= min_share) & (families >= 0)
        heads.append(set(families[mine].tolist()))
    return heads


@torch.no_grad()
def all_feature_families(
    model: Model, inputs: Tensor, layer: int, sae: SAE, scale: float = 1.0, chunk: int = 1024
) -> Tensor:
    """(d_sae,) family of every feature on a batch of token sequences (-1: never active): the same
    as feature_families on the whole batch at once, without its (B, T, T, H, F) per-source tensor.

    The pattern is non-negative, so a per-source attribution A[t, s] (v_s . W_f) is positive exactly
    where the value part v_s . W_f is: a family's positive mass is the pattern restricted to the
    family's (destination, source) pairs times the positive value parts, one matrix product per
    sequence, family and `chunk` features."""
    z, v, pattern = _attention(model, inputs, layer)
    features = sae.encode(z.flatten(2) * scale)  # (B, T, d_sae)
    families = source_families(inputs)  # (B, T, T)
    shares = torch.zeros(len(FAMILIES), sae.d_sae)
    for b in range(len(inputs)):
        by_family = [pattern[b] * (families[b] == k) for k in range(len(FAMILIES))]  # each (H, T, T)
        for start in range(0, sae.d_sae, chunk):
            index = slice(start, start + chunk)
            active = features[b, :, index] > 0  # (T, F)
            if not active.any():
                continue
            W = _encoder_by_head(sae, index, z.shape[2], scale)  # (H, e, F)
            positive = torch.einsum("she,hef->hsf", v[b], W).clamp(min=0)  # (H, T_src, F)
            for k, masked in enumerate(by_family):
                shares[k, index] += ((masked @ positive).sum(0) * active).sum(0)  # (T, F) -> (F,)
    return label_families(shares)
