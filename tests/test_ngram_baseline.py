"""The incremental in-context n-gram baselines against a recount at every position."""

import sys
from pathlib import Path

import pytest
import torch

from icl_lab.baselines.ngram import ngram_distributions, ngram_metrics
from icl_lab.tasks.base import Batch
from icl_lab.tasks.regbench import PAD, SEP, RegBenchConfig, RegBenchTask

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from ngram_recount import recount_distributions


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))


def small_task() -> RegBenchTask:
    config = RegBenchConfig(n_train_dfas=20, n_val_dfas=5, n_test_dfas=5, seq_len=90, max_length=8)
    return RegBenchTask(config, seed=1)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_incremental_counts_equal_a_recount_at_every_position(n: int) -> None:
    tokens = small_task().fixed["train"][0][:6]
    ours = ngram_distributions(tokens, n)
    for b in range(len(tokens)):
        for t, expected in enumerate(recount_distributions(tokens[b].tolist(), n)):
            dense = torch.zeros(20)
            for letter, p in expected.items():
                dense[letter] = p
            assert torch.allclose(ours[b, t], dense, atol=1e-6), (n, b, t)


def test_hand_computed_bigram_with_back_off() -> None:
    a, b, c = 0, 1, 2
    tokens = torch.tensor([[a, b, SEP, a, c, SEP, a, PAD]])
    p = ngram_distributions(tokens, 2)[0, 6]  # after "a" in the third string
    # "a" occurred 3 times, followed once by b and once by c: 1/3 each; the remaining 1/3 backs
    # off to the unigram model over the letters not yet seen after "a", which is "a" alone
    assert p[b].item() == pytest.approx(1 / 3) and p[c].item() == pytest.approx(1 / 3)
    assert p[a].item() == pytest.approx(1 / 3)
    assert p[3:].sum().item() == 0


def test_baseline_metrics_improve_with_n_and_stay_in_range() -> None:
    task = small_task()
    batch = task.eval_splits()["test"](40, torch.Generator().manual_seed(0))
    results = [ngram_metrics(task, batch, n) for n in (1, 2, 3)]
    for r in results:
        assert 0 <= r["validity_accuracy"] <= 1 and 0 <= r["tvd"] <= 1
    assert results[0]["validity_accuracy"] < results[1]["validity_accuracy"] < results[2]["validity_accuracy"]


def test_tied_predictions_go_to_the_lowest_symbol() -> None:
    """In the hand-computed bigram case a, b and c each get 1/3 after "a", but a's third comes
    out of the back-off one rounding below the others: the prediction must still be a, the lowest
    symbol, so validity accuracy is 1 when only a is valid there and 0 when only b is."""
    a, b, c = 0, 1, 2
    tokens = torch.tensor([[a, b, SEP, a, c, SEP, a, PAD]])
    p = ngram_distributions(tokens, 2)[0, 6]
    assert p[a] < p[b] == p[c] and (p[b] - p[a]).item() < 1e-6, "the tie is broken by rounding"
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 6] = True
    for valid_letter, expected in ((a, 1.0), (b, 0.0)):
        valid = torch.zeros(1, 8, 20, dtype=torch.bool)
        valid[0, 6, valid_letter] = True
        batch = Batch(tokens, torch.full_like(tokens, PAD), mask, {"valid": valid})
        assert ngram_metrics(small_task(), batch, 2)["validity_accuracy"] == expected
