"""The canonical experiments: induction heads form abruptly (repeated tokens; bursty classification)."""

from pathlib import Path

import pytest

from icl_lab.analysis.summary import summarise
from icl_lab.experiment import load_config
from icl_lab.training.trainer import train


@pytest.mark.slow
def test_induction_head_phase_change_on_repeated_tokens(tmp_path: Path) -> None:
    run = train(load_config("induction"), str(tmp_path), progress=False)
    summary = summarise(run)
    assert summary.main is not None, "prefix matching of the best head jumps"
    steps, prefix = run.summary_curve("prefix_matching", "train", "max")
    assert prefix[0] < 0.1 and prefix[-1] > 0.5
    _, icl = run.curve("icl_score", "train")
    before, after = steps <= summary.main.onset, steps >= summary.main.end
    assert icl[after][0] < icl[before][-1] - 1.0, "the ICL score falls across the phase change"
    _, previous = run.head_curves("previous_token_score", "train")
    assert max(v[-1] for h, v in previous.items() if h.startswith("0.")) > 0.4, "a previous-token head forms"


@pytest.mark.slow
def test_flagship_bursty_run_learns_in_context_through_a_transition(tmp_path: Path) -> None:
    run = train(load_config("reddy_fast"), str(tmp_path), progress=False)
    summary = summarise(run)
    assert summary.main is not None and summary.main.after > 0.8
    assert summary.final["ic"]["accuracy"] > 0.9
    assert summary.final["iw"]["accuracy"] < 0.2, "K = 2048 classes are not learned in weights"
    steps, ila = run.curve("item_label_association", "ic", head="0.0")
    assert ila[steps >= summary.main.end][0] > ila[steps <= summary.main.onset][-1] + 0.2
