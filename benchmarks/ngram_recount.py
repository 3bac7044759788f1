"""A straightforward in-context n-gram with back-off that recounts the prompt at every position
(the reference code's algorithm): the baseline benchmarks/ngram_baseline.py times
icl_lab.baselines.ngram against, and the independent reference tests/test_ngram_baseline.py checks
it with."""

from collections import Counter

SEP, PAD, LETTERS = 18, 19, 18


def _probs(counts: dict, vocab: list[int], ctx: tuple, chars: list[int], k: int) -> list[float]:
    """P_k(char | ctx) for each char, backing off to shorter contexts for unseen continuations."""
    result = []
    for char in chars:
        if (*ctx, char) in counts[k]:
            if k == 1:
                result.append(counts[1][(char,)] / sum(counts[1].values()))
            else:
                result.append(counts[k][(*ctx, char)] / counts[k - 1][ctx])
            continue
        seen = [c for c in vocab if (*ctx, c) in counts[k]]
        beta = 1 - sum(_probs(counts, vocab, ctx, seen, k)) if seen else 1.0
        unseen = [c for c in vocab if (*ctx, c) not in counts[k]]
        lower = _probs(counts, vocab, ctx[1:], unseen, k - 1)
        result.append(beta * lower[unseen.index(char)] / sum(lower))
    return result


def recount_distributions(tokens: list[int], n: int) -> list[dict[int, float]]:
    """For each position, {letter: probability} of the next token, counting the prefix afresh."""
    out = []
    for t in range(len(tokens)):
        prefix = [x for x in tokens[: t + 1] if x != PAD]
        strings, current = [], []
        for x in prefix:
            if x == SEP:
                strings.append(current)
                current = []
            else:
                current.append(x)
        strings.append(current)
        counts = {k: Counter() for k in range(1, n + 1)}
        for s in strings:
            padded = ["_"] * (n - 1) + s
            for k in range(1, n + 1):
                for i in range(len(padded) - k + 1):
                    counts[k][tuple(padded[i : i + k])] += 1
        vocab = sorted({x for x in prefix if x < LETTERS})
        context = tuple((["_"] * (n - 1) + strings[-1])[len(strings[-1]) :]) if n > 1 else ()
        p = dict(zip(vocab, _probs(counts, vocab, context, vocab, n), strict=True)) if vocab else {}
        total = sum(p.values())
        out.append({c: v / total for c, v in p.items()} if total else {})
    return out
