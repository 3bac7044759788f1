"""Circuit analyses: speed, single-head accuracy, the wiring table and clamp-based progress."""

import itertools
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import tiny_config
from icl_lab.analysis import circuits
from icl_lab.analysis.circuits import clamp, clamp_progress, mean_loss, only_head_kept, speed, wiring_table
from icl_lab.errors import ConfigError
from icl_lab.evaluation import evaluate
from icl_lab.experiment import build_task
from icl_lab.interventions.ablate import Ablate
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
    planted = SimpleNamespace(
        curve=lambda metric, split: (np.array([0, 10, 20, 30]), np.array([0.7, 0.5, 0.28, 0.27]))
    )
    assert speed(planted) == 30, "Singh's threshold 0.4 ln 2 = 0.2773: 0.28 is above it, 0.27 below"


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


def test_analyses_of_a_split_the_run_never_evaluated_name_what_it_did(run) -> None:
    with pytest.raises(
        ConfigError,
        match=r"logged no loss on split 'tets' \(it did on: heldout_classes, heldout_exemplars, "
        r"heldout_pairs, train, train_batches\)",
    ):
        speed(run, "tets")
    assert speed(run, "train", threshold=-1.0) is None, "evaluated, never below: None"
    only_other = run.eval_data()[0], {}
    with (
        mock.patch.object(type(run), "eval_data", lambda self: only_other),
        pytest.raises(ConfigError, match=r"evaluates no train split \(its splits: none\): pass a batch"),
    ):
        clamp_progress(run, {})


def test_mean_loss_in_chunks_equals_one_pass_and_a_batch_mean_stays_whole(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, task = run.model(), build_task(run.config)
    batch = task.enumerated_train()  # 2,880 sequences
    match = [clamp(kind="induction_match", heads=["1.0"])]
    mean = [clamp(kind="ablate", heads=["0.*"], mode="mean")]
    whole = {
        name: float(evaluate(model, task, batch, ["loss"], c)["loss"])
        for name, c in (("match", match), ("mean", mean))
    }
    monkeypatch.setattr(circuits, "EVAL_CHUNK", 700)  # four passes, the last of 780 sequences
    assert mean_loss(model, task, batch, match) == pytest.approx(whole["match"], rel=1e-6)
    assert mean_loss(model, task, batch, mean) == pytest.approx(whole["mean"], rel=1e-6)
    monkeypatch.setattr(Ablate, "reads_batch", property(lambda self: False))  # chunk it anyway
    chunked_mean = mean_loss(model, task, batch, mean)
    assert chunked_mean != pytest.approx(whole["mean"], rel=1e-6), "the batch mean depends on the batch"


def test_enumerated_training_set_holds_every_sequence_once() -> None:
    task = build_task(tiny_config(task=FEWSHOT, model=MODEL))
    batch = task.enumerated_train()
    classes, pairs = 10, len(task.train_pairs)
    assert len(batch.inputs) == classes * (classes - 1) * pairs * 2 * 2 == 2_880
    assert torch.unique(batch.inputs.flatten(1), dim=0).shape[0] == len(batch.inputs), "no repeats"
    meta = batch.meta
    assert (meta["item_classes"] < classes).all() and (
        meta["item_classes"][:, 0] != meta["item_classes"][:, 1]
    ).all()
    assert ((meta["item_classes"] == meta["query_class"][:, None]).sum(1) == 1).all()
    assert torch.equal(batch.inputs[:, 4, :12], task.features[meta["query_class"], 0]), (
        "exemplar 0 throughout"
    )


def test_clamp_progress_equals_the_authors_definition(tmp_path: Path) -> None:
    """Singh et al.'s measures (icl-dynamics: opto.py, ih_paper_appendix_plots.ipynb), computed
    independently: the single-head run (heads 1.1-1.3 value-ablated) scored by mean cross-entropy
    over all logits at the query, over every training sequence, with (i) head 0.2's pattern set to
    previous-token attention on every row and (ii) head 1.0's query row one-hot on the label token
    carrying the query's label."""
    ablate = {"kind": "ablate", "heads": ["1.1", "1.2", "1.3"], "activation": "v"}
    config = tiny_config(
        task=FEWSHOT,
        model=MODEL,
        clamps=[ablate],
        training={"length": {"steps": 30}, "optimizer": {"lr": 0.01}},
        checkpointing={"every": {"steps": 10}},
    )
    run = train(config, str(tmp_path), progress=False)
    task = build_task(run.config)
    composite = [clamp(kind="previous_token", heads=["0.2"])]
    copy = [clamp(kind="induction_match", heads=["1.0"])]
    curves = clamp_progress(
        run, {"composite": composite, "copy": copy}, task.enumerated_train(), last_step=20
    )

    rows = []  # (class at 0, class at 1, label at 1, label at 3, the query's class)
    for a, b in itertools.permutations(range(10), 2):
        for pair in task.train_pairs.tolist():
            for la, lb in (pair, pair[::-1]):
                rows += [(a, b, la, lb, a), (a, b, la, lb, b)]
    rows = torch.tensor(rows)
    features = task.features[:, 0]
    inputs = torch.zeros(len(rows), 5, 12 + 5)
    inputs[:, 0, :12], inputs[:, 2, :12], inputs[:, 4, :12] = (
        features[rows[:, 0]],
        features[rows[:, 1]],
        features[rows[:, 4]],
    )
    inputs[:, 1, 12:] = torch.nn.functional.one_hot(rows[:, 2], 5).float()
    inputs[:, 3, 12:] = torch.nn.functional.one_hot(rows[:, 3], 5).float()
    target = torch.where(rows[:, 4] == rows[:, 0], rows[:, 2], rows[:, 3])

    def zero_values(v, hook):  # (B, T, H, d_head)
        v = v.clone()
        v[:, :, 1:] = 0
        return v

    def previous_token(pattern, hook):  # (B, H, T, T)
        pattern = pattern.clone()
        pattern[:, 2] = torch.eye(5).roll(-1, 1).tril()  # row i on i - 1, row 0 on itself
        pattern[:, 2, 0, 0] = 1
        return pattern

    def match(pattern, hook):
        pattern = pattern.clone()
        pattern[:, 0, -1] = 0
        pattern[:, 0, -1, 1] = (rows[:, 2] == target).float()
        pattern[:, 0, -1, 3] = (rows[:, 3] == target).float()
        return pattern

    measures = {
        "none": [],
        "composite": [("blocks.0.attn.hook_pattern", previous_token)],
        "copy": [("blocks.1.attn.hook_pattern", match)],
    }
    for name, hooks in measures.items():
        steps, loss = curves[name]
        assert list(steps) == [0, 10, 20]
        expected = []
        for step in steps:
            with torch.no_grad():
                logits = run.model(int(step)).run_with_hooks(
                    inputs, fwd_hooks=[("blocks.1.attn.hook_v", zero_values), *hooks]
                )
            expected.append(torch.nn.functional.cross_entropy(logits[:, -1], target).item())
        np.testing.assert_allclose(loss, expected, rtol=1e-5, err_msg=name)
    assert not np.allclose(curves["composite"][1], curves["none"][1]) and not np.allclose(
        curves["copy"][1], curves["none"][1]
    )
