"""Metrics: functions of one evaluation pass, registered by name.

A metric returns {name: value} where a value is a 0-d tensor, or an (n_layers, n_heads) tensor for a
per-head score. It declares the per-layer hooks it reads (e.g. "attn.hook_pattern"), which the
evaluation pass caches for it, and what else it needs of the model and task, which config
validation checks before any work starts. Metrics never loop over sequences or positions in Python.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.models.base import Model
from icl_lab.registry import Registry, summary
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

    def layers(self, hook: str) -> list[Tensor]:
        """blocks.{l}.{hook} of every layer, in order."""
        return [self.cache[f"blocks.{layer}.{hook}"] for layer in range(self.model.n_layers)]

    def per_layer(self, hook: str) -> Tensor:
        """blocks.{l}.{hook} stacked over layers: (n_layers, *activation shape)."""
        return torch.stack(self.layers(hook))


def attention_mass(patterns: list[Tensor] | Tensor, weights: Tensor) -> Tensor:
    """sum over (query, key) of pattern * weight, per layer, sequence, head and weight map:
    patterns per layer (B, H, T, T) (a list, or stacked), weights (B, K, T, T) -> (L, B, H, K).

    One matrix product per layer reads each pattern once; the elementwise product of a text
    model's patterns with a weight map would be a fresh tensor of hundreds of MB per map."""
    B, K, T = weights.shape[:3]
    w = weights.reshape(B, K, T * T).to(patterns[0].dtype).transpose(1, 2)  # (B, T*T, K)
    return torch.stack([p.reshape(B, p.shape[1], T * T) @ w for p in patterns])


Requirement = Callable[[Model, type[Task], TaskConfig], None]

LOSS_UNIT = "loss"
"""a metric value's unit when it is its task's loss unit (nats for cross-entropy: Task.loss_unit)"""


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function, the per-layer hooks it reads, the batch meta it reads,
    whether it needs token-id inputs or class targets, any further requirement, and a description."""

    fn: Callable[[EvalContext], dict[str, Tensor]]
    hooks: tuple[str, ...]
    description: str
    meta: tuple[str, ...] = ()
    tokens: bool = False
    classes: bool = False
    requires: Requirement | None = None
    units: tuple[tuple[str, str], ...] = ()  # (value, unit) of the values it returns

    def check(self, model: Model, task: type[Task], config: TaskConfig) -> None:
        """Raise ValueError naming what the model or the task lacks for this metric."""
        for hook in self.hooks:
            if any(f"blocks.{layer}.{hook}" not in model.hook_dict for layer in range(model.n_layers)):
                raise ValueError(f"reads blocks.*.{hook}, which model {type(model).__name__} does not have")
        if self.tokens and task.io(config).d_vocab is None:
            raise ValueError(f"reads token ids, but task {config.name} gives vectors")
        if self.classes and task.target_kind != "classes":
            raise ValueError(f"needs class targets, but task {config.name} predicts values")
        absent = [key for key in self.meta if key not in task.meta_keys]
        if absent:
            raise ValueError(
                f"reads {', '.join(absent)} from the batch, which task {config.name} does not give"
            )
        if self.requires is not None:
            self.requires(model, task, config)

    def applies(self, model: Model, task: type[Task], config: TaskConfig) -> bool:
        try:
            self.check(model, task, config)
        except ValueError:
            return False
        return True


METRICS: Registry[Metric] = Registry("metric")


def metric(
    name: str,
    hooks: tuple[str, ...] = (),
    meta: tuple[str, ...] = (),
    tokens: bool = False,
    classes: bool = False,
    requires: Requirement | None = None,
    units: dict[str, str] | None = None,
) -> Callable[[Callable], Callable]:
    """Register a metric function under `name`; its docstring's first sentence describes it. Say what
    it reads (hooks, meta keys, token ids, class targets; `requires` raises ValueError for anything
    else), so that a config asking for it on a model or task without them is refused up front, and
    the unit of each value it returns (LOSS_UNIT: its task's loss unit), which figures name."""

    def add(fn: Callable[[EvalContext], dict[str, Tensor]]) -> Callable:
        description = summary(fn.__doc__)
        declared = tuple((units or {}).items())
        for value, unit in declared:  # a value's unit is one, whichever metric computes it
            for other, known in METRICS.items():
                clash = next((u for v, u in known.units if v == value and u != unit), None)
                if other != name and clash is not None:
                    raise ValueError(
                        f"metric {name}: {value} in {unit!r}, but metric {other} gives it in {clash!r}"
                    )
        METRICS.register(name)(Metric(fn, hooks, description, meta, tokens, classes, requires, declared))
        return fn

    return add


def value_unit(value: str) -> str | None:
    """The unit a registered metric declares for a value it returns (LOSS_UNIT: the task's loss
    unit), or None where none does."""
    return next((unit for _, m in METRICS.items() for name, unit in m.units if name == value), None)
