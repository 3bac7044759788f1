"""Clamps: interventions as data. A clamp is a validated record that compiles to hook functions.

Each clamp kind is a pydantic model registered by its `kind`; `hooks(model, on, meta)` returns
(hook name, function) pairs that the model runs at those hook points. Every function is a tensor
operation of the form where(mask & on, value, activation), so the same clamp works in training and
evaluation, lets gradients flow through the clamped graph, and runs under torch.func.vmap with a
per-member `on` flag (a 0-d bool tensor) - an ensemble member whose config lacks the clamp has on=False.
"""

from typing import ClassVar

import torch
from torch import Tensor

from icl_lab.config import StepWindow, StrictModel
from icl_lab.models.base import Model
from icl_lab.models.hooks import HookFn
from icl_lab.registry import Registry

# (head axis, position axis) of each per-head attention activation, TransformerLens layouts
HEAD_LAYOUTS: dict[str, tuple[int, int]] = {
    "q": (2, 1),
    "k": (2, 1),
    "v": (2, 1),
    "rot_q": (2, 1),
    "rot_k": (2, 1),
    "z": (2, 1),
    "attn_scores": (1, 2),
    "pattern": (1, 2),
}


class Clamp(StrictModel):
    """Base of every clamp kind: what is common is the step window in which it is active."""

    kind: str
    steps: StepWindow = StepWindow()

    description: ClassVar[str] = ""

    def check(self, model: Model) -> None:
        """Raise ValueError if the clamp names a hook, head or position the model lacks."""

    def hooks(self, model: Model, on: Tensor, meta: dict[str, Tensor]) -> list[tuple[str, HookFn]]:
        """(hook name, function) pairs applying the clamp; `on` gates it per ensemble member."""
        raise NotImplementedError  # pragma: no cover - interface


def parse_heads(specs: list[str], model: Model) -> dict[int, list[int]]:
    """'L.H' (or 'L.*' for every head of layer L) -> {layer: [heads]}; ValueError if absent."""
    heads: dict[int, list[int]] = {}
    for spec in specs:
        layer_text, _, head_text = spec.partition(".")
        try:
            layer = int(layer_text)
            chosen = list(range(model.n_heads)) if head_text == "*" else [int(head_text)]
        except ValueError:
            raise ValueError(f"head {spec!r} is not of the form 'layer.head' or 'layer.*'") from None
        if not 0 <= layer < model.n_layers or not all(0 <= h < model.n_heads for h in chosen):
            raise ValueError(
                f"head {spec!r} does not exist in a model with {model.n_layers} layers "
                f"x {model.n_heads} heads"
            )
        heads.setdefault(layer, [])
        heads[layer] += [h for h in chosen if h not in heads[layer]]
    return heads


def check_positions(positions: list[int] | None, n_ctx: int) -> None:
    for p in positions or []:
        if not -n_ctx <= p < n_ctx:
            raise ValueError(f"position {p} is outside a context of {n_ctx}")


def head_position_mask(act: Tensor, activation: str, heads: list[int], positions: list[int] | None) -> Tensor:
    """Bool mask broadcastable to act, true at the chosen heads and positions."""
    head_axis, pos_axis = HEAD_LAYOUTS[activation]
    H, T = act.shape[head_axis], act.shape[pos_axis]
    head_on = torch.zeros(H, dtype=torch.bool, device=act.device)
    head_on[heads] = True
    if positions is None:
        pos_on = torch.ones(T, dtype=torch.bool, device=act.device)
    else:
        pos_on = torch.zeros(T, dtype=torch.bool, device=act.device)
        pos_on[[p % T for p in positions]] = True
    shape = [1] * act.dim()
    shape[head_axis], shape[pos_axis] = H, T
    mask = head_on[:, None] & pos_on[None] if head_axis < pos_axis else pos_on[:, None] & head_on[None]
    return mask.view(shape)


def active_at(clamps: list[Clamp], step: int) -> list[Clamp]:
    """The clamps whose step window contains `step`."""
    return [c for c in clamps if c.steps.contains(step)]


def compile_clamps(
    clamps: list[Clamp], model: Model, on: Tensor, meta: dict[str, Tensor]
) -> list[tuple[str, HookFn]]:
    """Hooks applying the clamps, each gated by its flag in `on` (n_clamps,) bool."""
    return [h for i, c in enumerate(clamps) for h in c.hooks(model, on[i], meta)]


CLAMPS: Registry[type[Clamp]] = Registry("clamp kind")
