"""Metrics of next-token prediction against a regular language's own next-symbol distribution.

They read meta["valid"] (B, T, V): the symbols the DFA allows next at each position. The DFA's
distribution is uniform over them. Positions are those that carry loss (targets that are letters).
"""

from torch import Tensor

from icl_lab.metrics.base import EvalContext, metric
from icl_lab.tasks.base import masked_mean


@metric("validity_accuracy", meta=("valid",), classes=True, units={"validity_accuracy": "fraction"})
def validity_accuracy(ctx: EvalContext) -> dict[str, Tensor]:
    """Share of positions where the arg-max prediction is a symbol the DFA allows next."""
    valid = ctx.batch.meta["valid"]
    choice = ctx.output_logits.argmax(-1, keepdim=True)  # (B, T, 1)
    return {"validity_accuracy": masked_mean(valid.gather(-1, choice)[..., 0].float(), ctx.batch.loss_mask)}


@metric("tvd", meta=("valid",), classes=True, units={"tvd": "probability"})
def tvd(ctx: EvalContext) -> dict[str, Tensor]:
    """Total variation distance, 0.5 * L1, between the predicted next-token distribution and the
    DFA's (uniform over the allowed symbols). Range [0, 1]."""
    valid = ctx.batch.meta["valid"].float()
    target = valid / valid.sum(-1, keepdim=True).clamp(min=1)
    distance = 0.5 * (ctx.output_logits.softmax(-1) - target).abs().sum(-1)
    return {"tvd": masked_mean(distance, ctx.batch.loss_mask)}
