"""Path clamps (Singh et al. 2024): an ideal first layer, and ablations that preserve one path."""

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from icl_lab.interventions.base import CLAMPS, Clamp, ClampContext, head_position_mask, parse_heads
from icl_lab.models.base import Model
from icl_lab.models.hooks import HookFn, HookPoint


@CLAMPS.register("layer1")
class LayerOne(Clamp):
    """Ideal first layer: earlier layers silenced, keys computed from the previous token's embedding.

    Singh's "Layer 1" clamp: the layers before `layer` add nothing (the residual stream entering
    `layer` is the raw embedding), and the chosen heads of `layer` compute their keys from the
    embeddings shifted by one position (key j sees token j - 1), as a perfect previous-token head
    composing with them would provide. Queries and values come from the raw embeddings."""

    kind: Literal["layer1"] = "layer1"
    layer: int = Field(1, ge=1)
    heads: list[str] | None = Field(None, description="heads of `layer` (default all)")

    takes_suffix: ClassVar[bool] = True  # it replaces keys, which every position computes

    def check(self, model: Model) -> None:
        if self.layer >= model.n_layers:
            raise ValueError(f"layer {self.layer} does not exist in a model with {model.n_layers} layers")
        if any(not spec.startswith(f"{self.layer}.") for spec in self.heads or []):
            raise ValueError(f"layer1 heads must be in layer {self.layer}")
        parse_heads(self._heads(), model)
        if not hasattr(model.blocks[self.layer], "keys"):
            raise ValueError("layer1 needs a model whose blocks compute attention keys (a transformer)")

    def _heads(self) -> list[str]:
        return self.heads or [f"{self.layer}.*"]

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        model = ctx.model
        (heads,) = parse_heads(self._heads(), model).values()
        embedded: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: HookPoint) -> None:
            embedded["x"] = x

        def silence(x: Tensor, hook: HookPoint) -> Tensor:
            return torch.where(ctx.on, torch.zeros_like(x), x)

        def shifted_keys(k: Tensor, hook: HookPoint) -> Tensor:
            x = F.pad(embedded["x"][:, :-1], (0, 0, 1, 0))  # (B, T, d): token j - 1 at position j
            keys = model.blocks[self.layer].keys(x)  # (B, T, H, e)
            return torch.where(head_position_mask(k, "k", heads, None, ctx.n_ctx) & ctx.on, keys, k)

        outputs = [f"blocks.{i}.hook_{part}_out" for i in range(self.layer) for part in ("attn", "mlp")]
        silenced = [(name, silence) for name in outputs if name in model.hook_dict]
        return [
            ("blocks.0.hook_resid_pre", keep),
            *silenced,
            (f"blocks.{self.layer}.attn.hook_k", shifted_keys),
        ]


@CLAMPS.register("ablate_preserving")
class AblatePreserving(Clamp):
    """Zero heads while later layers keep their pattern, v, q or k from a pass without the ablation.

    The later layers' activation comes from a reference pass without this clamp: preserve pattern to
    remove only the value path of the ablated heads (V-composition), preserve v to remove only their
    effect on attention patterns (K- and Q-composition), q or k to remove one of those."""

    kind: Literal["ablate_preserving"] = "ablate_preserving"
    heads: list[str] = Field(min_length=1, description="'layer.head' or 'layer.*'")
    preserve: Literal["pattern", "v", "q", "k"]
    layers: list[int] | None = Field(None, description="later layers that preserve (default all)")

    needs_reference: ClassVar[bool] = True
    takes_suffix: ClassVar[bool] = True  # both halves of the batch hold the same positions

    def check(self, model: Model) -> None:
        last = max(parse_heads(self.heads, model))
        if not self._layers(model):
            raise ValueError(
                f"no layer after the ablated heads' layer {last} preserves their {self.preserve}: "
                "this would be a plain ablation (kind: ablate)"
            )
        for layer in self._layers(model):
            if not last < layer < model.n_layers:
                raise ValueError(f"preserving layer {layer} must come after the ablated heads' layer {last}")

    def _layers(self, model: Model) -> list[int]:
        last = max(parse_heads(self.heads, model))
        return self.layers if self.layers is not None else list(range(last + 1, model.n_layers))

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        def zero(heads: list[int]) -> HookFn:
            def fn(z: Tensor, hook: HookPoint) -> Tensor:
                mask = head_position_mask(z, "z", heads, None, ctx.n_ctx) & ctx.clamped_rows(z)
                return torch.where(mask & ctx.on, 0.0, z)

            return fn

        def restore(x: Tensor, hook: HookPoint) -> Tensor:
            return torch.where(ctx.on, ctx.reference(x), x)

        ablations = [
            (f"blocks.{layer}.attn.hook_z", zero(h))
            for layer, h in parse_heads(self.heads, ctx.model).items()
        ]
        preserved = [f"blocks.{layer}.attn.hook_{self.preserve}" for layer in self._layers(ctx.model)]
        return [*ablations, *[(name, restore) for name in preserved]]
