"""Repeated random tokens (Olsson et al. 2022): the task on which induction heads form.

Each sequence is uniform random tokens over the vocabulary. In a repeating sequence a segment of
random length ell ~ U{min_prefix..max_prefix} starting at position 0 is repeated right after itself,
n_copies times in all (or tiled to the end of the sequence when n_copies is None); the rest stays
random. A share `background_share` of sequences has no repeat. Tokens inside a later copy, except
the first of each copy, are predictable only by induction: find the previous occurrence of the
current token and copy the token that followed it.
"""

from typing import Literal

import torch
from pydantic import Field, model_validator

from icl_lab.config import TaskConfig
from icl_lab.models.base import ModelIO
from icl_lab.tasks.base import TASKS, Batch, Sampler, Task


class InductionConfig(TaskConfig):
    """Repeated-random-token sequences."""

    name: Literal["induction"] = "induction"
    vocab_size: int = Field(64, ge=2)
    seq_len: int = Field(64, ge=4)
    min_prefix: int = Field(2, ge=1, description="shortest repeated segment")
    max_prefix: int | None = Field(None, ge=1, description="longest; default: as long as fits")
    n_copies: int | None = Field(2, ge=2, description="copies of the segment; None: tile to the end")
    background_share: float = Field(0.0, ge=0, le=1, description="share of sequences with no repeat")

    @property
    def longest(self) -> int:
        return self.max_prefix or self.seq_len // (self.n_copies or 2)

    @model_validator(mode="after")
    def _segment_fits(self) -> "InductionConfig":
        copies = self.n_copies or 2
        if self.longest * copies > self.seq_len:
            raise ValueError(
                f"max_prefix ({self.longest}) x {copies} copies exceeds seq_len ({self.seq_len})"
            )
        if self.min_prefix > self.longest:
            raise ValueError(f"min_prefix ({self.min_prefix}) exceeds max_prefix ({self.longest})")
        return self


def repeated_tokens(
    n: int,
    seq_len: int,
    token_range: tuple[int, int],
    min_prefix: int,
    longest: int,
    n_copies: int | None,
    background_share: float,
    g: torch.Generator,
) -> Batch:
    """n sequences of uniform random tokens from [low, high), each (but a background share) with a
    random-length segment repeated as the module docstring says; meta period and repeat_end."""
    dev, T = g.device, seq_len
    tokens = torch.randint(*token_range, (n, T), generator=g, device=dev)
    period = torch.randint(min_prefix, longest + 1, (n,), generator=g, device=dev)
    background = torch.rand(n, generator=g, device=dev) < background_share
    pos = torch.arange(T, device=dev)
    end = torch.full_like(period, T) if n_copies is None else period * n_copies
    period = period.masked_fill(background, 0)
    end = end.masked_fill(background, 0)
    in_repeat = pos < end[:, None]  # (n, T)
    source = pos % period.clamp(min=1)[:, None]  # where each repeated token is copied from
    tokens = torch.where(in_repeat, tokens.gather(1, source), tokens)
    targets = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
    loss_mask = (pos < T - 1).expand(n, T)
    return Batch(tokens, targets, loss_mask, {"period": period, "repeat_end": end})


@TASKS.register("induction")
class InductionTask(Task):
    """Next-token prediction on repeated random tokens; meta holds each sequence's period and the
    end of its repeated part (both 0 for a background sequence)."""

    Config = InductionConfig
    config: InductionConfig
    default_metrics = (
        "loss",
        "accuracy",
        "icl_score",
        "copying",
        "prefix_matching",
        "head_detectors",
        "copying_eigenvalues",
    )
    meta_keys = ("period", "repeat_end")
    key_metric = ("train", "prefix_matching", "max")
    progress_measures = (
        ("train", "prefix_matching", -1),
        ("train", "previous_token_score", 0),
        ("train", "icl_score", None),
        ("train", "copy_loss_drop", None),
    )

    @classmethod
    def io(cls, config: InductionConfig) -> ModelIO:
        return ModelIO(n_ctx=config.seq_len, d_out=config.vocab_size, d_vocab=config.vocab_size)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, generator, self.config.background_share)

    def _sample(self, n: int, g: torch.Generator, background_share: float) -> Batch:
        c = self.config
        return repeated_tokens(
            n, c.seq_len, (0, c.vocab_size), c.min_prefix, c.longest, c.n_copies, background_share, g
        )

    def token_labels(self, batch: Batch, index: int) -> list[str]:
        return [str(t) for t in batch.inputs[index].tolist()]

    @classmethod
    def split_names(cls, config: InductionConfig) -> list[str]:
        return ["train", "repeated"] if config.background_share > 0 else ["train"]

    def eval_splits(self) -> dict[str, Sampler]:
        splits: dict[str, Sampler] = {"train": self.sample}
        if self.config.background_share > 0:
            splits["repeated"] = lambda n, g: self._sample(n, g, 0.0)
        return splits
