"""Ideal induction attention on any token sequence: attend to the token after the current one's
previous occurrence (Olsson et al. 2022's induction pattern, the ground truth prefix matching scores)."""

from typing import Literal

import torch
from torch import Tensor

from icl_lab.interventions.base import CLAMPS, ClampContext
from icl_lab.interventions.ideal import PatternClamp
from icl_lab.models.base import Model


def induction_pattern(tokens: Tensor) -> Tensor:
    """(B, T) token ids -> (B, 1, T, T) one-hot patterns: query i attends to key j + 1 for the
    latest j < i with token j = token i, or to itself when its token has not occurred before."""
    T = tokens.shape[-1]
    positions = torch.arange(T, device=tokens.device)
    earlier = positions[None, :] < positions[:, None]  # (Tq, Tk): key j before query i
    match = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # (B, Tq, Tk)
    after = torch.nn.functional.pad(match[:, :, :-1], (1, 0))  # key j + 1 marked where j matches
    latest = torch.where(after, positions, -1).amax(-1)  # (B, Tq); -1: no earlier occurrence
    keys = torch.where(latest >= 0, latest, positions)
    return torch.nn.functional.one_hot(keys, T).float()[:, None]


@CLAMPS.register("induction_pattern")
class InductionPattern(PatternClamp):
    """Perfect induction attention on every query row, from the batch's token ids (any token task)."""

    kind: Literal["induction_pattern"] = "induction_pattern"

    def check(self, model: Model) -> None:
        super().check(model)
        if model.io.d_vocab is None:
            raise ValueError("induction_pattern reads token ids; this model reads vectors")

    def ideal(self, act: Tensor, ctx: ClampContext) -> tuple[Tensor, list[int] | None]:
        return induction_pattern(ctx.inputs).to(act.dtype), None
