"""The hard-wired n-gram layer (Akyürek et al. 2024), and the attention targets it is built from.

Position i attends uniformly to the positions j + 1 (j < i, j >= n - 1) whose preceding n tokens
x_{j-n+1..j} equal the n tokens ending at i, reading the hidden state there; the layer's output is
Linear(h_ngram) + Linear(h). The same targets define the n-gram head score of a trained head.
"""

import torch
from pydantic import Field
from torch import Tensor, nn

from icl_lab.config import StrictModel
from icl_lab.models.hooks import HookPoint


class NgramLayerConfig(StrictModel):
    """Where to insert an n-gram layer (after block `after`; -1: before the first block) and its n."""

    after: int = Field(ge=-1)
    n: int = Field(ge=1)


def ngram_targets(tokens: Tensor, n: int) -> Tensor:
    """(B, T) token ids -> (B, T, T) bool: [i, j + 1] true when the n tokens ending at j equal the
    n tokens ending at i, j < i."""
    B, T = tokens.shape
    targets = tokens.new_zeros(B, T, T, dtype=torch.bool)
    if n >= T:
        return targets
    windows = tokens.unfold(1, n, 1)  # (B, T - n + 1, n): window w is the n-gram ending at w + n - 1
    earlier = (windows[:, :, None] == windows[:, None, :]).all(-1).tril(-1)  # same n-gram, ends before
    # row: the end of the current n-gram (w + n - 1); column: one past the earlier one's end (w' + n)
    targets[:, n - 1 :, n:] = earlier[:, :, : T - n]
    return targets


class NgramLayer(nn.Module):
    """Uniform attention over the successors of earlier occurrences of the current n-gram."""

    def __init__(self, n: int, d_model: int) -> None:
        super().__init__()
        self.n = n
        self.read = nn.Linear(d_model, d_model)  # Linear(h_ngram)
        self.keep = nn.Linear(d_model, d_model)  # Linear(h)
        self.hook_pattern = HookPoint()  # (B, 1, T, T), TransformerLens layout with one head

    def forward(self, h: Tensor, tokens: Tensor) -> Tensor:
        targets = ngram_targets(tokens, self.n).to(h.dtype)
        pattern = targets / targets.sum(-1, keepdim=True).clamp(min=1)  # rows without a match read 0
        pattern = self.hook_pattern(pattern[:, None])[:, 0]
        return self.read(pattern @ h) + self.keep(h)


def ngram_modules(configs: list[NgramLayerConfig], d_model: int) -> nn.ModuleList:
    """The n-gram layers a model config asks for (hook names ngram.{i}.hook_pattern)."""
    return nn.ModuleList([NgramLayer(c.n, d_model) for c in configs])


def insert_ngram_layers(
    layers: nn.ModuleList, configs: list[NgramLayerConfig], after: int, h: Tensor, tokens: Tensor
) -> Tensor:
    """Apply, in order, the n-gram layers placed after block `after` (-1: after the embedding)."""
    for layer, config in zip(layers, configs, strict=True):
        if config.after == after:
            h = layer(h, tokens)
    return h
