"""Long- vs short-prefix induction heads (Kissane et al.): how a head's induction attention
depends on how much of the context before the source matches the context before the destination.

Sequences of distinct random tokens from a pool (the first one fixed, standing in for BOS; a text
model's pool is its common tokens, whose embeddings it has trained) end with a copy of an earlier
stretch of `length` tokens; the score is the attention from the last copied token to
the token after its first occurrence (the induction source). The causal test replaces the token
two before the source with a fresh one: a long-prefix head's attention collapses, a short-prefix
head's (which matches only the token before the source) does not.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from icl_lab.models.base import Model


@dataclass
class PrefixProbe:
    """Attention (mean over sequences) of every head from the destination to the induction
    source, per prefix length: clean and with the token two before the source replaced;
    each (lengths, n_layers, n_heads)."""

    lengths: list[int]
    seq_len: int
    clean: Tensor
    corrupted: Tensor


def prefix_sequences(
    n: int, seq_len: int, pool: Tensor, length: int, g: torch.Generator
) -> tuple[Tensor, int, int, Tensor]:
    """(tokens (n, seq_len), destination, source, corrupted copy): pool[0], then distinct random
    tokens of pool[1:], with the stretch that ends at source - 1 copied to end at the last position
    (the destination); in the corrupted copy the token at source - 2 is replaced by a token of the
    pool not in the sequence."""
    if len(pool) < seq_len + 1:
        raise ValueError(f"needs a pool of at least {seq_len + 1} tokens, seq_len + 1 (has {len(pool)})")
    start = seq_len // 4  # the first occurrence begins here, well before the copy
    drawn = torch.argsort(torch.rand(n, len(pool) - 1, generator=g), dim=1)[:, :seq_len] + 1  # distinct
    tokens = pool[drawn]  # (n, seq_len)
    spare = tokens[:, -1].clone()  # (n,) a token the sequence does not contain
    tokens[:, 0] = pool[0]
    tokens[:, seq_len - length :] = tokens[:, start : start + length]
    destination, source = seq_len - 1, start + length
    corrupted = tokens.clone()
    if source - 2 >= 1:  # the copy itself keeps its tokens: only the context of the source changes
        corrupted[:, source - 2] = spare
    return tokens, destination, source, corrupted


@torch.no_grad()
def prefix_probe(
    model: Model, pool: Tensor, seq_len: int, lengths: range = range(1, 10), n: int = 400, seed: int = 0
) -> PrefixProbe:
    """The clean and corrupted induction attention of every head for each prefix length, on
    sequences of tokens from `pool` (distinct ids)."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupted = [], []
    for length in lengths:
        tokens, dest, source, broken = prefix_sequences(n, seq_len, pool, length, g)
        for inputs, out in ((tokens, clean), (broken, corrupted)):
            _, cache = model.run_with_cache(inputs, names_filter=lambda name: name.endswith("hook_pattern"))
            patterns = torch.stack(
                [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.n_layers)]
            )
            out.append(patterns[:, :, :, dest, source].mean(1))  # (L, H)
    return PrefixProbe(list(lengths), seq_len, torch.stack(clean), torch.stack(corrupted))
