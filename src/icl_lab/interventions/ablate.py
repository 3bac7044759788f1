"""Ablation of chosen heads: replace an activation with zero, its batch mean or a constant."""

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from icl_lab.interventions.base import (
    CLAMPS,
    Clamp,
    ClampContext,
    check_positions,
    head_position_mask,
    parse_heads,
)
from icl_lab.models.base import Model
from icl_lab.models.hooks import HookFn, HookPoint


@CLAMPS.register("ablate")
class Ablate(Clamp):
    """Zero-, mean- or constant-ablate chosen heads' q, k, v, z (output) or pattern.

    The activation is blocks.{l}.attn.hook_{activation}. mode zero -> 0, constant -> `value`, mean
    -> the mean over the batch's sequences of the same forward pass (per position and head;
    gradients flow through the mean). `positions` selects sequence positions (query positions for
    pattern/attn_scores); None means all.
    """

    kind: Literal["ablate"] = "ablate"
    heads: list[str] = Field(min_length=1, description="'layer.head' or 'layer.*'")
    activation: Literal["q", "k", "v", "rot_q", "rot_k", "z", "attn_scores", "pattern"] = "z"
    mode: Literal["zero", "mean", "constant"] = "zero"
    value: float = 0.0
    positions: list[int] | None = None

    takes_suffix: ClassVar[bool] = True

    @property
    def reads_batch(self) -> bool:
        return self.mode == "mean"

    def check(self, model: Model) -> None:
        for layer in parse_heads(self.heads, model):
            hook = f"blocks.{layer}.attn.hook_{self.activation}"
            if hook not in model.hook_dict:
                raise ValueError(f"model has no hook point {hook!r}")
        check_positions(self.positions, model.io.n_ctx)

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        def replace(heads: list[int]) -> HookFn:
            def fn(act: Tensor, hook: HookPoint) -> Tensor:
                mask = head_position_mask(act, self.activation, heads, self.positions, ctx.n_ctx) & ctx.on
                if self.mode == "mean":
                    return torch.where(mask, act.mean(0, keepdim=True), act)
                return torch.where(mask, self.value if self.mode == "constant" else 0.0, act)

            return fn

        return [
            (f"blocks.{layer}.attn.hook_{self.activation}", replace(heads))
            for layer, heads in parse_heads(self.heads, ctx.model).items()
        ]
