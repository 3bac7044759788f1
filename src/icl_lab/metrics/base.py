"""Metrics: functions of one evaluation pass, registered by name.

A metric returns {name: value} where a value is a 0-d tensor, or an (n_layers, n_heads) tensor for a
per-head score. It declares the per-layer hooks it reads (e.g. "attn.hook_pattern"), which the
evaluation pass caches for it. Metrics never loop over sequences or positions in Python.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from icl_lab.models.base import Model
from icl_lab.registry import Registry
from icl_lab.tasks.base import Batch, Task


@dataclass
class EvalContext:
    """What one evaluation pass of one member on one split produced."""

    model: Model
    task: Task
    batch: Batch
    logits: Tensor
    cache: dict[str, Tensor]

    @cached_property
    def output_logits(self) -> Tensor:
        """Logits at the positions that carry targets: (B, P, C)."""
        return self.task.output_logits(self.logits)

    @cached_property
    def token_loss(self) -> Tensor:
        """The task's loss per target position (cross-entropy, or squared error): (B, P)."""
        return self.task.token_loss(self.output_logits, self.batch.targets)

    def per_layer(self, hook: str) -> Tensor:
        """blocks.{l}.{hook} stacked over layers: (n_layers, *activation shape)."""
        return torch.stack([self.cache[f"blocks.{layer}.{hook}"] for layer in range(self.model.n_layers)])


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function, the per-layer hooks it reads and a one-line description."""

    fn: Callable[[EvalContext], dict[str, Tensor]]
    hooks: tuple[str, ...]
    description: str


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, hooks: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register a metric function under `name`; its docstring's first line describes it."""

    def add(fn: Callable[[EvalContext], dict[str, Tensor]]) -> Callable:
        METRICS.register(name)(Metric(fn, hooks, (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return add
