"""In-context n-gram models with back-off (the RegBench baselines), with incremental counts.

At every position the model predicts the next letter from the prompt so far, counting n-grams
(n = 1..N) inside each string, every string padded on the left with N-1 "_" symbols (so counts
never cross a separator). With context c (the last N-1 symbols of the current string):

    P_N(x) = count(c x) / count(c)                                if c x has been seen
           = beta(c) * P_{N-1}(x) / sum of P_{N-1} over unseen x  otherwise,

beta(c) = 1 - the mass given to seen continuations (count(c) also counts the occurrence that has
no continuation yet, so some mass is always left), and P_1(x) = count(x) / all unigram counts
("_" included). Only letters seen so far get mass. This is the reference code's back-off without
its quadratic recount: counts are updated once per token, for a batch of prompts at a time, so a
prompt costs linear time. Two differences from the paper's code: the distribution is renormalised
to sum to 1 over the letters seen (theirs is not), and the predicted symbol (validity accuracy)
breaks ties, exact up to float rounding, towards the lowest symbol.
"""

import torch
from torch import Tensor

from icl_lab.metrics.base import EvalContext
from icl_lab.metrics.regbench import tvd, validity_accuracy
from icl_lab.tasks.base import Batch
from icl_lab.tasks.regbench import LETTERS, PAD, SEP, VOCAB, RegBenchTask

BLANK = PAD  # the "_" padding symbol of contexts (never a letter)


def ngram_distributions(tokens: Tensor, n: int) -> Tensor:
    """tokens (B, T) -> (B, T, VOCAB): the n-gram model's next-token distribution after each
    position (zeros where no letter has been seen yet)."""
    B, T = tokens.shape
    dev = tokens.device
    counts = [torch.zeros(B, VOCAB ** (k - 1), VOCAB, device=dev) for k in range(1, n + 1)]
    history = torch.full((B, n - 1), BLANK, dtype=torch.long, device=dev)  # the context, oldest first
    rows = torch.arange(B, device=dev)
    out = torch.zeros(B, T, VOCAB, device=dev)

    def ident(symbols: Tensor) -> Tensor:
        """Row ids of symbol sequences (B, L) in a counts table: digits in base VOCAB."""
        if symbols.shape[1] == 0:
            return torch.zeros(B, dtype=torch.long, device=dev)
        return (symbols * VOCAB ** torch.arange(symbols.shape[1] - 1, -1, -1, device=dev)).sum(1)

    def last(length: int) -> Tensor:
        """The last `length` symbols of the current context."""
        return history[:, n - 1 - length :]

    def start_string(which: Tensor) -> None:
        """Count the n-grams made only of the N-1 padding symbols, for prompts starting a string."""
        weight = which.float()
        history[which] = BLANK
        for k in range(1, n):
            counts[k - 1][rows, ident(last(k - 1)), BLANK] += (n - k) * weight

    start_string(torch.ones(B, dtype=torch.bool, device=dev))
    for t in range(T):
        x = tokens[:, t]
        letter = x < LETTERS
        for k in range(1, n + 1):
            counts[k - 1][rows, ident(last(k - 1)), x.clamp(max=VOCAB - 1)] += letter.float()
        history = torch.where(letter[:, None], torch.cat([history[:, 1:], x[:, None]], 1), history)
        start_string(x == SEP)
        unigram = counts[0][:, 0]  # (B, VOCAB)
        seen_letters = torch.zeros_like(unigram, dtype=torch.bool)
        seen_letters[:, :LETTERS] = unigram[:, :LETTERS] > 0
        p = unigram / unigram.sum(1, keepdim=True).clamp(min=1)
        for k in range(2, n + 1):
            context = last(k - 1)  # c, (B, k-1)
            continuation = counts[k - 1][rows, ident(context)]  # count(c x) for every x: (B, VOCAB)
            occurrences = counts[k - 2][rows, ident(context[:, :-1]), context[:, -1]]  # count(c)
            seen = (continuation > 0) & seen_letters
            mass = torch.where(seen, continuation / occurrences.clamp(min=1)[:, None], 0.0)
            left = (1 - mass.sum(1, keepdim=True)).clamp(min=0)
            unseen = seen_letters & ~seen
            lower = torch.where(unseen, p, 0.0)
            p = mass + left * lower / lower.sum(1, keepdim=True).clamp(min=1e-30)
        p = torch.where(seen_letters, p, 0.0)
        out[:, t] = p / p.sum(1, keepdim=True).clamp(min=1e-30)
    return out


TIE = 1e-5  # probabilities within this relative distance of the largest count as tied with it


def ngram_metrics(task: RegBenchTask, batch: Batch, n: int, chunk: int = 512) -> dict[str, float]:
    """Validity accuracy and TVD of the in-context n-gram model on a batch, by the models' metrics;
    the predicted symbol is the lowest of those tied for the largest probability."""
    p = torch.cat([ngram_distributions(part, n) for part in batch.inputs.split(chunk)])
    top = p.max(-1, keepdim=True).values
    tied = torch.where(p >= top * (1 - TIE), top, p)  # exact ties: argmax takes the first, lowest
    found = {}
    for metric, probabilities in ((validity_accuracy, tied), (tvd, p)):
        ctx = EvalContext(None, task, batch, probabilities.clamp(min=1e-30).log(), {})  # type: ignore[arg-type]
        found |= {name: value.item() for name, value in metric(ctx).items()}
    return found
