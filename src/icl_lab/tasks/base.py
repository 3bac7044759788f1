"""What a task is: a seeded, vectorised sampler of batches with named evaluation splits."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.models.base import ModelIO
from icl_lab.registry import Registry
from icl_lab.seeding import generator
from icl_lab.tasks.repetition import RepetitionPlan, plan_repetition

if TYPE_CHECKING:
    from icl_lab.store.run import Run


@dataclass
class Batch:
    """One batch of sequences; every tensor's first axis is the sequence (or, stacked, the member).

    targets and loss_mask have one entry per output position (every position, or the task's
    target positions); meta holds what metrics need (e.g. the period of a repeat). A task whose
    vector inputs are rows of a small table may say so: inputs == table[rows] (per member when
    stacked), and a linear read-in then projects the table's rows, not every token.
    """

    inputs: Tensor
    targets: Tensor
    loss_mask: Tensor
    meta: dict[str, Tensor] = field(default_factory=dict)
    table: Tensor | None = None
    """(rows, d_input), or (M, rows, d_input) stacked: the distinct input vectors, or None"""
    rows: Tensor | None = None
    """(B, T) ids into table, or (M, B, T) stacked"""

    def _with(self, fn: Callable[[Tensor], Tensor], table: Tensor | None) -> "Batch":
        """fn of every per-sequence tensor, with this table."""
        return Batch(
            fn(self.inputs),
            fn(self.targets),
            fn(self.loss_mask),
            {k: fn(v) for k, v in self.meta.items()},
            table,
            None if table is None or self.rows is None else fn(self.rows),  # no rows: _whole refuses it
        )

    def select(self, index: Tensor) -> "Batch":
        """The sequences at `index` (a 1-D tensor), in that order."""
        return self._with(lambda t: t[index], self.table)

    def member(self, m: int) -> "Batch":
        """Member m's batch of a stacked one (views)."""
        return self._with(lambda t: t[m], None if self.table is None else self.table[m])

    def to(self, device: torch.device | str) -> "Batch":
        return self._with(lambda t: t.to(device), None if self.table is None else self.table.to(device))

    def table_rows(self) -> dict[str, Tensor]:
        """The model's keyword arguments that say inputs == table[rows], or none."""
        return {} if self.table is None else {"table": self.table, "rows": self.rows}

    @staticmethod
    def cat(batches: list["Batch"]) -> "Batch":
        """Batches joined along the sequence axis (rows of a table kept if all share it)."""
        table = batches[0].table
        shared = table is not None and all(b.table is table and b.rows is not None for b in batches)
        return Batch(
            torch.cat([b.inputs for b in batches]),
            torch.cat([b.targets for b in batches]),
            torch.cat([b.loss_mask for b in batches]),
            {k: torch.cat([b.meta[k] for b in batches]) for k in batches[0].meta},
            table if shared else None,
            torch.cat([b.rows for b in batches]) if shared else None,
        )

    @staticmethod
    def stack(batches: list["Batch"]) -> "Batch":
        """Stack per-member batches along a new leading member axis (a view of a single contiguous
        batch: a compiled step specialises on strides, and a slice's would change from batch to
        batch); tables only if every member has one of one shape."""

        def stack(tensors: list[Tensor]) -> Tensor:
            return tensors[0].contiguous()[None] if len(tensors) == 1 else torch.stack(tensors)

        tables = [b.table for b in batches]
        tabled = (
            all(b.table is not None and b.rows is not None for b in batches)
            and len({t.shape for t in tables}) == 1
        )
        return Batch(
            stack([b.inputs for b in batches]),
            stack([b.targets for b in batches]),
            stack([b.loss_mask for b in batches]),
            {k: stack([b.meta[k] for b in batches]) for k in batches[0].meta},
            stack(tables) if tabled else None,
            stack([b.rows for b in batches]) if tabled else None,
        )


Sampler = Callable[[int, torch.Generator], Batch]
MembersSampler = Callable[[int, list[torch.Generator], int], Batch]
"""(batch_size, one generator per member, step) -> the members' training batches, stacked"""


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values where mask is true (NaN when nothing is selected)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum()


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per output position: logits (..., C), targets (...) -> (...)."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


class Task:
    """A seeded task; subclasses set Config and implement io, sample and eval_splits."""

    Config: ClassVar[type[TaskConfig]]
    default_metrics: ClassVar[tuple[str, ...]] = ("loss", "accuracy")
    layout: ClassVar[str | None] = None
    """a named sequence layout whose meta clamps and metrics may rely on (e.g. "fewshot")"""
    meta_keys: ClassVar[tuple[str, ...]] = ()
    """the keys of every batch's meta (what metrics may read)"""
    target_kind: ClassVar[Literal["classes", "values"]] = "classes"
    """classes: targets are class ids scored by cross-entropy; values: real numbers (regression)"""
    loss_unit: ClassVar[str] = "nats"
    """what the loss is measured in, for figure labels (cross-entropy: nats)"""
    key_metric: ClassVar[tuple[str, str, str]] = ("train", "loss", "mean")
    """(split, metric, summary of per-head values: max/min/mean): shown live in the progress bar,
    and the curve whose abrupt transition a report looks for"""
    progress_measures: ClassVar[tuple[tuple[str, str, int | None], ...]] = ()
    """(split, metric, layer) curves a report plots on a shared time axis; layer None for a
    head-less metric, else every head of that layer (negative counts from the last)"""

    def __init__(self, config: TaskConfig, seed: int, device: torch.device | str = "cpu") -> None:
        self.config, self.seed, self.device = config, seed, torch.device(device)
        self.repetition: RepetitionPlan | None = None

    @classmethod
    def io(cls, config: TaskConfig) -> ModelIO:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def tokens_per_sequence(self) -> int:
        return self.io(self.config).n_ctx

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def plan(self, steps: int, batch_size: int) -> None:
        """Told the run's length and batch size before it trains or evaluates: plans repetition
        (tasks/repetition.py) and draws the bank, if the config asks for one."""
        if self.config.repeat is not None:
            self.repetition = plan_repetition(
                self.config.repeat, steps, batch_size, self.tokens_per_sequence, self.seed
            )
            self.bank = self.make_bank(self.repetition.bank_size)

    def make_bank(self, size: int) -> Batch:
        """The repeated bank: `size` sequences drawn from the run's seed."""
        return self.sample(size, generator(self.seed, "repeat", "bank", device=self.device))

    def unique_sample(self, batch_size: int, generator: torch.Generator, step: int) -> Batch:
        """Unique training sequences at a step: sample(), unless the task has a curriculum or its
        own notion of unique data."""
        return self.sample(batch_size, generator)

    def training_sample(self, batch_size: int, generator: torch.Generator, step: int) -> Batch:
        """The training batch at a step: the bank's draws for the step, then unique sequences."""
        plan = self.repetition
        if plan is None or plan.per_batch == 0:
            return self.unique_sample(batch_size, generator, step)
        banked = self.bank.select(plan.bank_indices(step).to(self.bank.inputs.device))
        return Batch.cat([banked, self.unique_sample(batch_size - plan.per_batch, generator, step)])

    @classmethod
    def members_sampler(cls, tasks: list["Task"]) -> MembersSampler | None:
        """For an ensemble's tasks (one per member, all of this class): a sampler of all members'
        training batches at once, equal to each task's training_sample with its own generator but
        faster; None (the default) where the class offers none or these tasks cannot share one."""
        return None

    @classmethod
    def split_names(cls, config: TaskConfig) -> list[str]:
        """Names of the evaluation splits a task with this config offers (see all_split_names)."""
        return ["train"]

    @classmethod
    def all_split_names(cls, config: TaskConfig) -> list[str]:
        """The task's splits, and `bank` when the config repeats data."""
        return cls.split_names(config) + (["bank"] if config.repeat is not None else [])

    def eval_splits(self) -> dict[str, Sampler]:
        """Named samplers of evaluation batches (keys as split_names); by default the training
        distribution."""
        return {"train": self.sample}

    def all_eval_splits(self) -> dict[str, Sampler]:
        """eval_splits, and `bank` (the first sequences of the repeated bank) when there is one."""
        splits = self.eval_splits()
        if self.repetition is not None:
            size = self.repetition.bank_size
            splits["bank"] = lambda n, g: self.bank.select(
                torch.arange(min(n, size), device=self.bank.inputs.device)
            )
        return splits

    def output_logits(self, logits: Tensor) -> Tensor:
        """The model's logits at the positions that carry targets: (B, P, C)."""
        positions = self.io(self.config).target_positions
        if positions is None or logits.shape[-2] == len(positions):
            return logits
        return logits[..., list(positions), :]

    def model_constants(self) -> dict[str, Tensor]:
        """Fixed tensors of this task's world that reduced models may use (see Model.constants)."""
        return {}

    def data_digest(self) -> tuple[str, str] | None:
        """(the files, e.g. "task.corpus DIR", and a digest of what the task read from them) for a
        task that reads data from files, so that a run refuses to go on when they change; None
        for a task whose data follow from its config and seed alone."""
        return None

    def save_artifacts(self, directory: Path) -> None:
        """Write what a run of this task needs to be read later (e.g. a trained tokeniser) into
        the run directory, or members/M in it for an ensemble member that reads other data than
        member 0 (nothing by default)."""

    def report_figures(self, run: "Run", out: Path) -> dict[str, bytes]:
        """Figures of this task's own a run report shows, {title: PNG bytes}, written into out
        (none by default)."""
        return {}

    def report_texts(self, run: "Run") -> dict[str, str]:
        """Passages of text a run report shows, {title: preformatted text} (none by default)."""
        return {}

    def token_labels(self, batch: Batch, index: int) -> list[str]:
        """Short labels of the tokens of one sequence, for attention-pattern figures."""
        return [str(i) for i in range(batch.inputs.shape[1])]

    def token_loss(self, output_logits: Tensor, targets: Tensor) -> Tensor:
        """Loss per output position (cross-entropy in nats; regression tasks override it)."""
        return token_cross_entropy(output_logits, targets)

    def loss(self, logits: Tensor, targets: Tensor, loss_mask: Tensor) -> Tensor:
        """Scalar training loss of one member's batch."""
        return masked_mean(self.token_loss(self.output_logits(logits), targets), loss_mask)


TASKS: Registry[type[Task]] = Registry("task")
