"""n-gram heads (Akyürek et al. 2024): heads that attend to the token after earlier occurrences of
the current n-gram. The paper showed them qualitatively; this scores every head."""

import torch
from torch import Tensor

from icl_lab.metrics.base import EvalContext, metric
from icl_lab.models.ngram_layer import ngram_targets


@metric(
    "ngram_heads",
    hooks=("attn.hook_pattern",),
    tokens=True,
    units=dict.fromkeys([f"ngram_head_score_{n}" for n in (1, 2, 3)], "attention share"),
)
def ngram_heads(ctx: EvalContext) -> dict[str, Tensor]:
    """Per head, for n = 1, 2, 3: attention mass on the positions that follow earlier occurrences
    of the current n-gram, averaged over positions where there is one. Range [0, 1].

    Layer by layer: at the papers' 1,024-token prompts one layer's patterns of a 500-prompt batch
    take 8 GB, so neither the layers are stacked nor is a pattern-sized product kept for all."""
    patterns = [ctx.cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(ctx.model.n_layers)]
    scores = {}
    for n in (1, 2, 3):
        targets = ngram_targets(ctx.batch.inputs, n)  # (B, T, T)
        rows = targets.any(-1)  # (B, T): positions with an earlier occurrence
        weights = targets.to(patterns[0].dtype)
        mass = [torch.einsum("bhqk,bqk->bhq", p, weights) for p in patterns]  # L x (B, H, T)
        totals = torch.stack([(m * rows[:, None]).sum((0, 2)) for m in mass])  # (L, H)
        scores[f"ngram_head_score_{n}"] = totals / rows.sum().clamp(min=1)
    return scores
