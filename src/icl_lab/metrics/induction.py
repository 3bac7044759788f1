"""Progress measures of induction on repeated random tokens (Olsson et al. 2022).

They read the task's meta: `period` (length ell of the repeated segment, 0 when none) and
`repeat_end` (first position after the repeated part). Position t predicts the token at t + 1.
"""

import torch
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.metrics.base import LOSS_UNIT, EvalContext, attention_mass, metric
from icl_lab.models.base import Model
from icl_lab.tasks.base import Task, masked_mean

# Olsson et al. compare the loss at token 500 with token 50 of a 512-token context.
EARLY, LATE = 50 / 512, 500 / 512
REPEAT_META = ("period", "repeat_end")


def _every_position(model: Model, task: type[Task], config: TaskConfig) -> None:
    io = task.io(config)
    if io.target_positions is not None or io.n_ctx < 4:
        raise ValueError(f"needs a target at every position of a context, which task {config.name} lacks")


def _positions(ctx: EvalContext) -> tuple[Tensor, Tensor, Tensor]:
    T = ctx.batch.inputs.shape[1]
    pos = torch.arange(T, device=ctx.batch.inputs.device)[None]  # (1, T)
    return pos, ctx.batch.meta["period"][:, None], ctx.batch.meta["repeat_end"][:, None]


@metric(
    "icl_score",
    requires=_every_position,
    units=dict.fromkeys(["icl_score", "loss_early_token", "loss_late_token"], LOSS_UNIT),
)
def icl_score(ctx: EvalContext) -> dict[str, Tensor]:
    """Loss at the late token minus loss at the early token (500 and 50 of 512, scaled to the context).

    Each is the mean over a band of positions within T/64 of the token (one position either side
    at T = 64, eight at T = 512): on text the loss of a single position varies by tenths of a nat
    from its neighbours, which would swamp the score. Negative when later tokens are predicted
    better than early ones: in-context learning.
    """
    T = ctx.token_loss.shape[1]
    early, late = round(EARLY * T), min(round(LATE * T), T - 2)
    half = T // 64
    mean_loss = ctx.token_loss.mean(0)  # (T,)
    loss_early = mean_loss[max(early - half, 0) : early + half + 1].mean()
    loss_late = mean_loss[late - half : min(late + half, T - 2) + 1].mean()
    return {"icl_score": loss_late - loss_early, "loss_early_token": loss_early, "loss_late_token": loss_late}


@metric(
    "copying",
    meta=REPEAT_META,
    units=dict.fromkeys(["copy_loss_first", "copy_loss_repeat", "copy_loss_drop"], LOSS_UNIT),
)
def copying(ctx: EvalContext) -> dict[str, Tensor]:
    """Loss on predicting the repeated copies (from the second token of the second copy on) vs the
    first copy; the drop (first - repeat, nats) measures copying."""
    pos, period, end = _positions(ctx)
    target = pos + 1
    first = (target >= 1) & (target < period)
    repeat = (target > period) & (target < end)
    loss_first = masked_mean(ctx.token_loss, first)
    loss_repeat = masked_mean(ctx.token_loss, repeat)
    return {
        "copy_loss_first": loss_first,
        "copy_loss_repeat": loss_repeat,
        "copy_loss_drop": loss_first - loss_repeat,
    }


@metric(
    "prefix_matching",
    hooks=("attn.hook_pattern",),
    meta=REPEAT_META,
    units={"prefix_matching": "attention share"},
)
def prefix_matching(ctx: EvalContext) -> dict[str, Tensor]:
    """Per head: attention from each token of a later copy to the tokens that followed its earlier
    occurrences (Olsson's prefix matching), averaged over those tokens. Range [0, 1]; a perfect
    induction head scores 1 however it spreads its attention over the earlier copies."""
    pos, period, end = _positions(ctx)
    query, key = pos[:, :, None], pos[:, None, :]  # (1, T, 1), (1, 1, T)
    ell = period[:, :, None].clamp(min=1)  # (B, 1, 1)
    rows = (period > 0) & (pos >= period) & (pos < end)  # (B, T): queries inside a later copy
    # key j follows an earlier occurrence of query i's token: j = i + 1 - k * ell for some k >= 1
    follows = ((query + 1 - key) % ell == 0) & (query + 1 - key >= ell) & (key >= 1)
    patterns = ctx.layers("attn.hook_pattern")  # per layer (B, H, T, T)
    targets = (follows & rows[:, :, None]).to(patterns[0].dtype)  # (B, T, T)
    mass = attention_mass(patterns, targets[:, None])  # (L, B, H, 1)
    return {"prefix_matching": mass.sum(1)[..., 0] / rows.sum()}
