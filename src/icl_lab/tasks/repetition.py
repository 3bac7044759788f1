"""Repeated data (Hernandez et al. 2022) for any task: a share of every training batch drawn from a
fixed bank of sequences, the rest unique.

With `repeat: {fraction: r, epochs: E}` in the task section, each batch of B sequences takes
round(r B) of them from the bank and the others from the task's unique data; the bank holds
K = round(S round(r B) / E) sequences for a run of S steps (or `bank_size` K, and then E = S round(r B) / K),
drawn from the run's seed. The bank is read in epochs: draw i is bank sequence perm_e[i mod K] with
e = i div K and perm_e a seeded permutation, so every bank sequence is seen floor or ceil of E times
and the draws at a step depend on the step alone (a resumed run draws the same). What "unique"
means is the task's: fresh random sequences for synthetic tasks (unlimited), windows never drawn
twice in a run for text. The bank is evaluated as its own split, `bank` (memorisation loss).
"""

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from icl_lab.config import RepeatConfig
from icl_lab.errors import ConfigError
from icl_lab.seeding import generator


@dataclass(frozen=True)
class RepetitionPlan:
    """How a run's batches split between bank and unique sequences, in sequences and tokens."""

    per_batch: int  # bank sequences in each batch
    bank_size: int  # K
    steps: int  # S
    batch_size: int
    tokens_per_sequence: int
    seed: int

    @property
    def bank_draws(self) -> int:
        return self.steps * self.per_batch

    @property
    def epochs(self) -> float:
        return self.bank_draws / self.bank_size

    def counts(self, step: int) -> dict[str, float]:
        """Data seen by the end of `step` steps: unique and repeated tokens, bank epochs."""
        repeated = step * self.per_batch
        unique = step * (self.batch_size - self.per_batch)
        return {
            "unique_tokens": unique * self.tokens_per_sequence,
            "repeated_tokens": repeated * self.tokens_per_sequence,
            "bank_epochs": repeated / self.bank_size,
        }

    def bank_indices(self, step: int) -> Tensor:
        """(per_batch,) bank sequences drawn at `step`."""
        draws = torch.arange(step * self.per_batch, (step + 1) * self.per_batch)
        epochs, positions = draws // self.bank_size, draws % self.bank_size
        out = torch.empty_like(draws)
        for epoch in epochs.unique().tolist():
            chosen = epochs == epoch
            out[chosen] = self._order(epoch)[positions[chosen]]
        return out

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs of a frozen plan
    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(self.bank_size, generator=generator(self.seed, "repeat", "order", epoch))


def plan_repetition(
    repeat: RepeatConfig, steps: int, batch_size: int, tokens_per_sequence: int, seed: int
) -> RepetitionPlan:
    """The plan of a run; ConfigError for a setting no run can have."""
    per_batch = round(repeat.fraction * batch_size)
    if per_batch == 0:
        raise ConfigError(
            f"task.repeat.fraction: {repeat.fraction} of a batch of {batch_size} is no whole sequence"
        )
    draws = steps * per_batch  # bank sequences the run draws in all
    size = repeat.bank_size if repeat.bank_size is not None else round(draws / repeat.epochs)
    if not 1 <= size <= draws:
        asked = f"bank_size {size:,}" if repeat.bank_size is not None else f"epochs {repeat.epochs:g}"
        raise ConfigError(
            f"task.repeat: {asked} does not fit this run, which draws {draws:,} bank sequences in all "
            f"({steps:,} steps x {per_batch}): a bank of 1 to {draws:,} sequences, each seen "
            f"1 to {draws:,} times"
        )
    return RepetitionPlan(per_batch, size, steps, batch_size, tokens_per_sequence, seed)
