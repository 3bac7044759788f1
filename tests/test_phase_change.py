"""The canonical experiment: induction heads form abruptly on repeated random tokens."""

from pathlib import Path

import numpy as np
import pytest

from icl_lab.analysis.induction import best_head, first_crossing
from icl_lab.experiment import load_config
from icl_lab.training.trainer import train


@pytest.mark.slow
def test_induction_head_phase_change_in_the_bundled_config(tmp_path: Path) -> None:
    run = train(load_config("induction"), str(tmp_path), progress=False)
    _, steps, prefix = best_head(run, "prefix_matching", "train", layer=1)
    _, icl = run.curve("icl_score", "train")
    assert prefix[0] < 0.1 and prefix[-1] > 0.5
    change = first_crossing(steps, prefix, 0.5)
    assert change is not None and 0 < change < steps[-1]
    before, after = np.searchsorted(steps, change) - 4, np.searchsorted(steps, change)
    assert icl[after] < icl[max(before, 0)] - 1.0, "the ICL score falls across the phase change"
    prev_heads = [run.curve("previous_token_score", "train", head=f"0.{h}")[1][-1] for h in range(4)]
    assert max(prev_heads) > 0.4, "a previous-token head forms in layer 0"
