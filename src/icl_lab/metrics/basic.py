"""Loss and accuracy over the positions that carry a target."""

from torch import Tensor

from icl_lab.metrics.base import LOSS_UNIT, EvalContext, metric
from icl_lab.tasks.base import masked_mean


@metric("loss", units={"loss": LOSS_UNIT})
def loss(ctx: EvalContext) -> dict[str, Tensor]:
    """Mean loss over target positions (cross-entropy in nats; the task's own loss for regression)."""
    return {"loss": masked_mean(ctx.token_loss, ctx.batch.loss_mask)}


@metric("accuracy", classes=True, units={"accuracy": "fraction"})
def accuracy(ctx: EvalContext) -> dict[str, Tensor]:
    """Share of target positions where the arg-max prediction is the target."""
    hits = ctx.output_logits.argmax(-1) == ctx.batch.targets
    return {"accuracy": masked_mean(hits.float(), ctx.batch.loss_mask)}
