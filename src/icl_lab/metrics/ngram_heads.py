"""n-gram heads (Akyürek et al. 2024): heads that attend to the token after earlier occurrences of
the current n-gram. The paper showed them qualitatively; this scores every head."""

from torch import Tensor

from icl_lab.metrics.base import EvalContext, metric
from icl_lab.models.ngram_layer import ngram_targets


@metric("ngram_heads", hooks=("attn.hook_pattern",), tokens=True)
def ngram_heads(ctx: EvalContext) -> dict[str, Tensor]:
    """Per head, for n = 1, 2, 3: attention mass on the positions that follow earlier occurrences
    of the current n-gram, averaged over positions where there is one. Range [0, 1]."""
    pattern = ctx.per_layer("attn.hook_pattern")  # (L, B, H, T, T)
    scores = {}
    for n in (1, 2, 3):
        targets = ngram_targets(ctx.batch.inputs, n)  # (B, T, T)
        rows = targets.any(-1)  # (B, T): positions with an earlier occurrence
        mass = (pattern * targets[None, :, None].to(pattern.dtype)).sum(-1)  # (L, B, H, T)
        scores[f"ngram_head_score_{n}"] = (mass * rows[None, :, None]).sum((1, 3)) / rows.sum().clamp(min=1)
    return scores
