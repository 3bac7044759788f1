"""Ideal-pattern clamps (Singh et al. 2024): hand-built attention patterns and readouts."""

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
from icl_lab.tasks.fewshot_layout import correct_labels, label_positions

NO_LOGIT = -1e4  # logit of a label the copy readout cannot see (finite, so gradients stay finite)


class PatternClamp(Clamp):
    """Replace chosen heads' attention pattern (selected query rows) with an ideal one."""

    heads: list[str] = Field(min_length=1, description="'layer.head' or 'layer.*'")

    takes_suffix: ClassVar[bool] = True

    def check(self, model: Model) -> None:
        parse_heads(self.heads, model)

    def ideal(self, act: Tensor, ctx: ClampContext) -> tuple[Tensor, list[int] | None]:
        """(pattern (B or 1, 1, T, T), query rows it replaces or None for all)."""
        raise NotImplementedError  # pragma: no cover - interface

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        def replace(heads: list[int]) -> HookFn:
            def fn(act: Tensor, hook: HookPoint) -> Tensor:
                pattern, rows = self.ideal(act, ctx)
                pattern = pattern[..., -act.shape[-2] :, :]  # the query rows act holds (B or 1, 1, P, T)
                mask = head_position_mask(act, "pattern", heads, rows, ctx.n_ctx)
                return torch.where(mask & ctx.on, pattern, act)

            return fn

        return [
            (f"blocks.{layer}.attn.hook_pattern", replace(h))
            for layer, h in parse_heads(self.heads, ctx.model).items()
        ]


@CLAMPS.register("previous_token")
class PreviousToken(PatternClamp):
    """Perfect previous-token attention: query i attends to key i - 1 (the first token to itself)."""

    kind: Literal["previous_token"] = "previous_token"
    positions: list[int] | None = Field(None, description="query rows (default all)")

    def check(self, model: Model) -> None:
        super().check(model)
        check_positions(self.positions, model.io.n_ctx)

    def ideal(self, act: Tensor, ctx: ClampContext) -> tuple[Tensor, list[int] | None]:
        T = act.shape[-1]
        keys = (torch.arange(T, device=act.device) - 1).clamp(min=0)
        return torch.nn.functional.one_hot(keys, T).to(act.dtype)[None, None], self.positions


@CLAMPS.register("induction_match")
class InductionMatch(PatternClamp):
    """Ideal induction match: the query attends to the label tokens carrying its label.

    The query row of the chosen heads puts `strength` of its attention on the label tokens
    carrying the query's label and the rest on the other label tokens (each share split evenly;
    all on the correct ones when there are no others). Needs a few-shot-layout task."""

    kind: Literal["induction_match"] = "induction_match"
    strength: float = Field(1.0, ge=0, le=1)
    requires_layout: ClassVar[str] = "fewshot"

    def ideal(self, act: Tensor, ctx: ClampContext) -> tuple[Tensor, list[int] | None]:
        B, T = act.shape[0], act.shape[-1]
        correct = correct_labels(ctx.meta)  # (B, N)
        n_correct = correct.sum(1, keepdim=True)
        n_wrong = correct.shape[1] - n_correct
        # strength on the correct label tokens, the rest on the others (all on correct if none other)
        share = torch.where(n_wrong > 0, self.strength, 1.0)
        weights = torch.where(correct, share / n_correct.clamp(min=1), (1 - share) / n_wrong.clamp(min=1))
        positions = label_positions(correct.shape[1], act.device)
        row = torch.zeros(B, T, dtype=act.dtype, device=act.device).index_copy(
            1, positions, weights.to(act.dtype)
        )
        # out of place throughout, so that it runs under vmap: the query's row, zeros above it
        return torch.nn.functional.pad(row[:, None, None, :], (0, 0, T - 1, 0)), [-1]


@CLAMPS.register("copy")
class Copy(Clamp):
    """Ideal copy: the query's logits are one head's attention scores on the label tokens.

    The scores are pre-softmax, from the query to each label token: the logit of label k is the
    highest score on a label token carrying k (labels absent from the context get -1e4). Needs a
    few-shot-layout task."""

    kind: Literal["copy"] = "copy"
    head: str = Field(description="'layer.head'")
    requires_layout: ClassVar[str] = "fewshot"
    takes_suffix: ClassVar[bool] = True  # it reads the query's row, the last

    def check(self, model: Model) -> None:
        if len(parse_heads([self.head], model)) != 1 or "*" in self.head:
            raise ValueError(f"copy reads one head, got {self.head!r}")

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        ((layer, (head,)),) = parse_heads([self.head], ctx.model).items()
        scores: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: HookPoint) -> None:
            n = ctx.meta["context_labels"].shape[1]
            scores["query"] = act[:, head, -1, label_positions(n, act.device)]  # (B, N)

        def readout(logits: Tensor, hook: HookPoint) -> Tensor:
            labels = ctx.meta["context_labels"]
            copied = torch.full_like(logits[:, -1], NO_LOGIT).scatter_reduce(
                1, labels, scores["query"], reduce="amax"
            )
            return torch.where(ctx.on, torch.cat([logits[:, :-1], copied[:, None]], 1), logits)

        return [(f"blocks.{layer}.attn.hook_attn_scores", keep), ("hook_logits", readout)]
