"""Circuit analyses: speed, single-head accuracy, the wiring table and clamp-based progress."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from icl_lab.analysis.circuits import clamp, clamp_progress, only_head_kept, speed, wiring_table
from icl_lab.evaluation import evaluate
from icl_lab.experiment import build_task
from icl_lab.training.trainer import train
from test_clamp_kinds import FEWSHOT, MODEL


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    config = tiny_config(
        task=FEWSHOT, model=MODEL, training={"length": {"steps": 40}, "optimizer": {"lr": 0.01}}
    )
    return train(config, str(tmp_path_factory.mktemp("runs")), progress=False)


def setup(run):
    task = build_task(run.config)
    batch = task.sample(256, torch.Generator().manual_seed(0))
    return task, batch, run.model()


def test_speed_is_the_first_evaluation_below_the_threshold(run) -> None:
    steps, loss = run.curve("loss", "train")
    threshold = float(np.median(loss))
    expected = int(steps[np.argmax(loss < threshold)])
    assert speed(run, threshold=threshold) == expected
    assert speed(run, threshold=-1.0) is None
    assert speed(run) is None or loss[steps == speed(run)][0] < 0.4 * math.log(2)


def test_only_head_kept_when_other_heads_write_nothing(run) -> None:
    task, batch, model = setup(run)
    with torch.no_grad():
        model.blocks[1].attn.W_O[1:] = 0.0  # heads 1.1-1.3 write nothing
    clean = evaluate(model, task, batch, ["accuracy"])["accuracy"]
    kept = only_head_kept(model, task, batch, layer=1)
    assert kept[0] == clean, "keeping the only head that writes changes nothing"
    nothing = evaluate(model, task, batch, ["accuracy"], [clamp(kind="ablate", heads=["1.*"])])["accuracy"]
    assert torch.equal(kept[1:], nothing.expand(3)), "keeping a silent head is ablating them all"


def test_wiring_table_of_a_silent_head_shows_no_effect(run) -> None:
    task, batch, model = setup(run)
    with torch.no_grad():
        model.blocks[0].attn.W_O[2] = 0.0
    table = wiring_table(model, task, batch, layer=0)
    assert table["sets"] == ["0.0", "0.1", "0.2", "0.3", "0.*"]
    for column in ("ablated", "patterns_kept", "values_kept"):
        for metric in ("loss", "accuracy"):
            values = table[f"{column}_{metric}"]
            assert len(values) == 5
            assert values[2] == pytest.approx(table[f"clean_{metric}"][2], abs=1e-5), "a silent head"
    assert table["ablated_loss"][4] != pytest.approx(table["clean_loss"][4]), "the whole layer matters"


def test_clamp_progress_evaluates_every_checkpoint(run, tmp_path: Path) -> None:
    curves = clamp_progress(run, {"match": [clamp(kind="induction_match", heads=["1.*"])]})
    steps, plain = curves["none"]
    assert list(steps) == run.checkpoint_steps
    logged = dict(zip(*run.curve("loss", "train"), strict=True))
    assert plain[-1] == pytest.approx(logged[steps[-1]], rel=1e-5), "the unclamped curve is the logged loss"
    assert curves["match"][1].shape == plain.shape and not np.allclose(curves["match"][1], plain)
