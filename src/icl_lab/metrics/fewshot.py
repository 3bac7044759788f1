"""Metrics and progress measures of in-context classification (Reddy 2024; Singh et al. 2024).

They read tasks in the few-shot layout (tasks/fewshot_layout.py). Attention measures are per head
(every layer is scored; the papers read layer 1 for item-label association and layer 2 for the
others) and averaged over the sequences where they are defined (NaN if there are none).
"""

import torch
from torch import Tensor

from icl_lab.metrics.base import EvalContext, metric
from icl_lab.tasks.fewshot_layout import META, correct_labels, matching_items, n_pairs


@metric(
    "context_label_accuracy",
    meta=("context_labels",),
    classes=True,
    units={"context_label_accuracy": "fraction"},
)
def context_label_accuracy(ctx: EvalContext) -> dict[str, Tensor]:
    """Share of queries whose predicted label is one of the labels in the context (CLA)."""
    predicted = ctx.output_logits[:, -1].argmax(-1)  # (B,)
    hits = (predicted[:, None] == ctx.batch.meta["context_labels"]).any(1)
    return {"context_label_accuracy": hits.float().mean()}


def _mean_over(values: Tensor, rows: Tensor) -> Tensor:
    """values (L, B, H) averaged over the sequences selected by rows (B,) -> (L, H)."""
    rows = rows.to(values.dtype)[None, :, None]
    return (values * rows).sum(1) / rows.sum(1)


def _label_logits(ctx: EvalContext) -> tuple[Tensor, Tensor]:
    """(logits at the query (B, C), (B, C) mask of the labels present in the context)."""
    logits = ctx.output_logits[:, -1]
    present = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ctx.batch.meta["context_labels"], True)
    return logits, present


@metric(
    "in_context_accuracy", meta=("context_labels",), classes=True, units={"in_context_accuracy": "fraction"}
)
def in_context_accuracy(ctx: EvalContext) -> dict[str, Tensor]:
    """Accuracy of the arg-max over the labels present in the context only."""
    logits, present = _label_logits(ctx)
    choice = logits.masked_fill(~present, float("-inf")).argmax(-1)
    return {"in_context_accuracy": (choice == ctx.batch.targets[:, -1]).float().mean()}


@metric(
    "in_context_probability",
    meta=("context_labels",),
    classes=True,
    units={"in_context_probability": "probability"},
)
def in_context_probability(ctx: EvalContext) -> dict[str, Tensor]:
    """Total predicted probability of the labels present in the context."""
    logits, present = _label_logits(ctx)
    return {"in_context_probability": (logits.softmax(-1) * present).sum(-1).mean()}


@metric(
    "fewshot_attention",
    hooks=("attn.hook_pattern",),
    meta=META,
    units=dict.fromkeys(
        [
            "item_label_association",
            "target_label_attention",
            "target_item_label_attention",
            "induction_strength",
        ],
        "attention share",
    ),
)
def fewshot_attention(ctx: EvalContext) -> dict[str, Tensor]:
    """Per head: item-label association, target-label attention, target item-label attention and
    induction strength.

    - item_label_association (ILA): attention from each label token to its own item.
    - target_label_attention (TLA): attention from the query to the label tokens that follow an
      item of the query's class (sequences where that class is in the context).
    - target_item_label_attention (TILA): the same, counting those items and their labels.
    - induction_strength (Singh): attention from the query to label tokens carrying the target
      label minus attention to label tokens carrying other labels (sequences where the target
      label is in the context). Range [-1, 1].
    """
    pattern = ctx.per_layer("attn.hook_pattern")  # (L, B, H, T, T)
    meta, n = ctx.batch.meta, n_pairs(ctx.batch)
    query = pattern[..., -1, :]  # (L, B, H, T)
    to_items, to_labels = query[..., 0 : 2 * n : 2], query[..., 1 : 2 * n : 2]  # (L, B, H, N)
    match = matching_items(meta)[None, :, None]  # (1, B, 1, N)
    correct = correct_labels(meta)[None, :, None]
    own_item = pattern[..., 1 : 2 * n : 2, 0 : 2 * n : 2].diagonal(dim1=-2, dim2=-1)  # (L, B, H, N)
    everyone = torch.ones_like(meta["query_class"], dtype=torch.bool)
    return {
        "item_label_association": _mean_over(own_item.mean(-1), everyone),
        "target_label_attention": _mean_over((to_labels * match).sum(-1), match.any(-1)[0, :, 0]),
        "target_item_label_attention": _mean_over(
            ((to_items + to_labels) * match).sum(-1), match.any(-1)[0, :, 0]
        ),
        "induction_strength": _mean_over(
            (to_labels * (2 * correct.to(to_labels.dtype) - 1)).sum(-1), correct.any(-1)[0, :, 0]
        ),
    }
