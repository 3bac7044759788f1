"""The activations of one forward pass, indexable as in TransformerLens.

`cache["blocks.0.attn.hook_pattern"]` and `cache["pattern", 0]` are the same tensor; short names
follow TransformerLens' `get_act_name` (q k v z pattern attn_scores rot_q rot_k: attention;
pre post: MLP; resid_pre resid_mid resid_post attn_out mlp_out: block; embed pos_embed logits:
model), a negative layer counts from the last, and `stack_activation` / `stack_head_results`
stack over layers and heads.
"""

import torch
from torch import Tensor

from icl_lab.models.hooks import HookedModule

ATTENTION = {"q", "k", "v", "z", "pattern", "attn_scores", "rot_q", "rot_k"}
MLP = {"pre", "post"}
ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "query": "q", "key": "k", "value": "v"}


def act_name(name: str, layer: int | None = None) -> str:
    """The full hook name of a TransformerLens short name and layer ('pattern', 0 ->
    'blocks.0.attn.hook_pattern'); a full name is returned unchanged."""
    if "." in name or name.startswith("hook_"):
        return name
    name = ALIASES.get(name, name)
    if layer is None:
        return f"hook_{name}"
    where = "attn." if name in ATTENTION else "mlp." if name in MLP else ""
    return f"blocks.{layer}.{where}hook_{name}"


class ActivationCache(dict[str, Tensor]):
    """{hook name: activation} of one pass, with TransformerLens-style keys and helpers."""

    def __init__(self, activations: dict[str, Tensor], model: HookedModule) -> None:
        super().__init__(activations)
        self.model = model

    def _name(self, key: str | tuple) -> str:
        if isinstance(key, str):
            return act_name(key)
        name, layer = key[0], key[1] if len(key) > 1 else None
        if layer is not None and layer < 0:
            layer += self.model.n_layers
        return act_name(name, layer)

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._name(key)
        if not dict.__contains__(self, name):
            raise KeyError(f"{name!r} is not in the cache (cached: {', '.join(self) or 'nothing'})")
        return dict.__getitem__(self, name)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | tuple) and dict.__contains__(self, self._name(key))

    def stack_activation(self, name: str, layer: int = -1) -> Tensor:
        """One activation stacked over the layers before `layer` (-1: every layer): (layers, ...)."""
        last = self.model.n_layers if layer == -1 else layer
        return torch.stack([self[name, i] for i in range(last)])

    def stack_head_results(self, layer: int = -1, return_labels: bool = False) -> Tensor | tuple:
        """Each head's output written into the residual stream, z_h W_O[h], for the heads of the
        layers before `layer` (-1: every layer): (layers * heads, batch, pos, d_model), with labels
        'L{l}H{h}' if asked. Needs hook_z cached and a model with W_O."""
        last = self.model.n_layers if layer == -1 else layer
        results, labels = [], []
        for i in range(last):
            W_O = self.model.blocks[i].attn.W_O  # (H, e, d)
            results.append(torch.einsum("bphe,hed->hbpd", self["z", i], W_O))  # (H, B, T, d)
            labels += [f"L{i}H{h}" for h in range(W_O.shape[0])]
        stacked = torch.cat(results)
        return (stacked, labels) if return_labels else stacked
