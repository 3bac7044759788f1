"""Clamps: interventions as data. A clamp is a validated record that compiles to hook functions.

Each clamp kind is a pydantic model registered by its `kind`; `hooks(ctx)` returns (hook name,
function) pairs that the model runs at those hook points. Every function is a tensor operation of
the form where(mask & on, value, activation), so the same clamp works in training and evaluation,
lets gradients flow through the clamped graph, and runs under torch.func.vmap with a per-member
`on` flag (a 0-d bool tensor): an ensemble member whose config lacks the clamp has on = False.

A value may come from the same forward pass (an ideal pattern built from the batch's meta, the
scores of a head), from a reference pass of the same model without the clamps that asked for it
(path-preserving ablations: `needs_reference`), or from another model (grafting).
`clamped_forward` adds the reference pass only when a clamp needs one, as the first half of a
doubled batch.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from icl_lab.config import StepWindow, StrictModel
from icl_lab.models.base import Model
from icl_lab.models.hooks import HookFn, HookPoint, takes_suffix
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

    requires_layout: ClassVar[str | None] = None
    """a task layout (Task.layout) whose meta the clamp reads, if any"""
    needs_reference: ClassVar[bool] = False
    """whether the clamp reads activations of a reference pass (ClampContext.reference)"""
    takes_suffix: ClassVar[bool] = False
    """whether the clamp's hooks are correct on activations holding only the sequence's last
    positions (hooks.takes_suffix), which lets a readout model skip its last block's other rows"""
    traceable: ClassVar[bool] = True
    """whether the clamp's hooks trace into a compiled training step (one graph, gradients by
    torch.func.grad, which a graph break inside would turn eager for every run in the process)"""

    @property
    def reads_batch(self) -> bool:
        """Whether the clamp's value depends on the other sequences of the pass (a batch mean)."""
        return False

    def check(self, model: Model) -> None:
        """Raise ValueError if the clamp names a hook, head or position the model lacks."""

    def hooks(self, ctx: "ClampContext") -> list[tuple[str, HookFn]]:
        """(hook name, function) pairs applying the clamp; ctx.on gates it per ensemble member."""
        raise NotImplementedError  # pragma: no cover - interface


@dataclass
class ClampContext:
    """What a clamp compiles against: the model (its parameters as in the current pass), the
    member's on-flag and the batch's meta and inputs. With a reference pass, the batch's first
    `reference_rows` sequences are the reference pass's and the rest the same sequences clamped."""

    model: Model
    on: Tensor
    meta: dict[str, Tensor]
    inputs: Tensor
    reference_rows: int = 0

    @property
    def n_ctx(self) -> int:
        """The sequences' length (an activation may hold only its last positions)."""
        return self.inputs.shape[1]

    def reference(self, x: Tensor) -> Tensor:
        """The activation x (sequences first) with every sequence's reference activation."""
        return x[: self.reference_rows].repeat(2, *[1] * (x.dim() - 1))

    def clamped_rows(self, x: Tensor) -> Tensor:
        """Bool mask broadcastable to x (sequences first): true at the clamped sequences."""
        rows = torch.arange(x.shape[0], device=x.device) >= self.reference_rows
        return rows.view(-1, *[1] * (x.dim() - 1))


def parse_heads(specs: list[str], model: Model) -> dict[int, list[int]]:
    """'L.H' (or 'L.*' for every head of layer L) -> {layer: [heads]}; ValueError if absent."""
    return dict(_parse_heads(tuple(specs), model.n_layers, model.n_heads))


@functools.lru_cache(maxsize=1024)
def _parse_heads(specs: tuple[str, ...], n_layers: int, n_heads: int) -> tuple[tuple[int, list[int]], ...]:
    heads: dict[int, list[int]] = {}
    for spec in specs:
        layer_text, _, head_text = spec.partition(".")
        try:
            layer = int(layer_text)
            chosen = list(range(n_heads)) if head_text == "*" else [int(head_text)]
        except ValueError:
            raise ValueError(f"head {spec!r} is not of the form 'layer.head' or 'layer.*'") from None
        if not 0 <= layer < n_layers or not all(0 <= h < n_heads for h in chosen):
            raise ValueError(
                f"head {spec!r} does not exist in a model with {n_layers} layers x {n_heads} heads"
            )
        heads.setdefault(layer, [])
        heads[layer] += [h for h in chosen if h not in heads[layer]]
    return tuple(heads.items())


def check_positions(positions: list[int] | None, n_ctx: int) -> None:
    for p in positions or []:
        if not -n_ctx <= p < n_ctx:
            raise ValueError(f"position {p} is outside a context of {n_ctx}")


def head_position_mask(
    act: Tensor, activation: str, heads: list[int], positions: list[int] | None, n_ctx: int
) -> Tensor:
    """Bool mask broadcastable to act, true at the chosen heads and positions; positions index a
    sequence of n_ctx, of which act's position axis holds the last (hooks.takes_suffix)."""
    head_axis, pos_axis = HEAD_LAYOUTS[activation]
    key = (act.dim(), head_axis, pos_axis, act.shape[head_axis], act.shape[pos_axis], n_ctx, tuple(heads))
    return _mask(*key, tuple(positions) if positions is not None else None, act.device)


@functools.lru_cache(maxsize=256)
def _mask(
    ndim: int,
    head_axis: int,
    pos_axis: int,
    H: int,
    P: int,
    T: int,
    heads: tuple[int, ...],
    positions: tuple[int, ...] | None,
    device: torch.device,
) -> Tensor:
    # masks are rebuilt on every forward otherwise: a measurable share of a tiny model's step
    head_on = torch.zeros(H, dtype=torch.bool, device=device)
    head_on[list(heads)] = True
    pos_on = torch.ones(T, dtype=torch.bool, device=device)
    if positions is not None:
        pos_on = torch.zeros(T, dtype=torch.bool, device=device)
        pos_on[[p % T for p in positions]] = True
    pos_on = pos_on[T - P :]  # the positions the activation holds
    shape = [1] * ndim
    shape[head_axis], shape[pos_axis] = H, P
    mask = head_on[:, None] & pos_on[None] if head_axis < pos_axis else pos_on[:, None] & head_on[None]
    return mask.view(shape)


def active_at(clamps: list[Clamp], step: int) -> list[Clamp]:
    """The clamps whose step window contains `step`."""
    return [c for c in clamps if c.steps.contains(step)]


Forward = Callable[[Tensor, list[tuple[str, HookFn]]], Tensor]


def clamped_forward(
    forward: Forward,
    model: Model,
    clamps: list[Clamp],
    on: Tensor,
    meta: dict[str, Tensor],
    inputs: Tensor,
    extra_hooks: list[tuple[str, HookFn]] = (),
) -> Tensor:
    """forward(inputs, hooks) with the clamps applied (each gated by its flag in `on`, shape
    (n_clamps,)). extra_hooks (e.g. a cache) run after the clamps.

    If a clamp needs a reference pass, the batch is doubled: its first half is the reference pass
    (the other clamps only), its second half the clamped pass, and at each hook the second half can
    read the first's activation. On small models one pass over twice the sequences costs much less
    than two passes. Gradients flow through both halves, as through two passes. Only the second
    half's outputs are returned, and only its activations reach extra_hooks.
    """
    n = inputs.shape[0] if any(c.needs_reference for c in clamps) else 0  # reference rows
    if n:
        meta, inputs = {k: torch.cat([v, v]) for k, v in meta.items()}, torch.cat([inputs, inputs])
        extra_hooks = [(name, _after(n, fn)) for name, fn in extra_hooks]
    hooks = [
        (name, takes_suffix(fn) if c.takes_suffix else fn)
        for i, c in enumerate(clamps)
        for name, fn in c.hooks(ClampContext(model, on[i], meta, inputs, n))
    ]
    return forward(inputs, [*hooks, *extra_hooks])[n:]


def _after(n: int, fn: HookFn) -> HookFn:
    """fn applied to the sequences after the first n only."""

    def hook(x: Tensor, hook: HookPoint) -> Tensor | None:
        out = fn(x[n:], hook)
        return None if out is None else torch.cat([x[:n], out])

    return hook


CLAMPS: Registry[type[Clamp]] = Registry("clamp kind")
