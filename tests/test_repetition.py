"""Repeated data (Hernandez et al.): a bank seen E times, unique data never repeated, exact
accounting, bit-identical resume, and impossible settings refused up front."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_config
from icl_lab.errors import ConfigError
from icl_lab.experiment import build_task
from icl_lab.store.run import Run
from icl_lab.tasks import text_lm
from icl_lab.training.trainer import resume, train
from test_trainer import assert_identical_runs, killed_copy

REPEAT = {"fraction": 0.25, "epochs": 6}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))


def induction(**repeat: object):
    return tiny_config(
        task={
            "name": "induction",
            "vocab_size": 16,
            "seq_len": 16,
            "min_prefix": 2,
            "n_copies": None,
            "repeat": repeat,
        },
        training={"batch_size": 8, "length": {"steps": 24}},
    )


def test_each_bank_sequence_is_drawn_e_times() -> None:
    task = build_task(induction(**REPEAT))
    plan = task.repetition
    assert (plan.per_batch, plan.bank_size, plan.epochs) == (2, 8, 6.0)  # 24 steps x 2 draws / 6
    counts = Counter(i for step in range(24) for i in plan.bank_indices(step).tolist())
    assert counts == dict.fromkeys(range(8), 6)
    batch = task.training_sample(8, torch.Generator().manual_seed(0), step=5)
    drawn = plan.bank_indices(5)
    assert torch.equal(batch.inputs[:2], task.bank.inputs[drawn]), "the bank's draws come first"
    assert not any(torch.equal(row, bank) for row in batch.inputs[2:] for bank in task.bank.inputs)
    uneven = build_task(induction(fraction=0.25, bank_size=5)).repetition
    counts = Counter(i for step in range(24) for i in uneven.bank_indices(step).tolist())
    assert sorted(counts.values()) == [9, 9, 10, 10, 10] and uneven.epochs == 48 / 5


def test_text_unique_windows_never_repeat_and_never_come_from_the_bank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text("".join(rng.choice(list("abcdefghij"), 2000)))

    def text(steps: int) -> object:
        task = {"name": "text_lm", "corpus": str(tmp_path), "seq_len": 15, "test_fraction": 0.25}
        return tiny_config(
            task={**task, "repeat": REPEAT}, training={"batch_size": 8, "length": {"steps": steps}}
        )

    task = build_task(text(steps=40))
    plan = task.repetition
    g = torch.Generator().manual_seed(0)
    seen = [tuple(row) for step in range(40) for row in task.unique_sample(6, g, step).inputs.tolist()]
    bank = {tuple(row) for row in task.bank.inputs.tolist()}
    assert len(seen) == 240 and len(set(seen)) == 240 and bank.isdisjoint(seen)
    assert plan.bank_size == 40 * 2 // 6 == len(bank)
    config = text(steps=80)
    with pytest.raises(
        ConfigError, match=r"needs 480 unique windows of 16 tokens and a bank of 27, but the training split"
    ):
        build_task(config)
    # python_stdlib's size depends on the Python installed: the refusal says where it was read
    monkeypatch.setattr(
        text_lm, "corpus_files", lambda source, most: (Path("/usr/lib/python3.12"), ["a.py", "b.py"])
    )
    task.config = task.config.model_copy(update={"corpus": "python_stdlib"})
    with pytest.raises(
        ConfigError, match=r"holds \d+ \(2 files under /usr/lib/python3.12; some Pythons come"
    ):
        task.plan(80, 8)


def test_resume_with_repetition_is_bit_identical_and_accounting_is_exact(tmp_path: Path) -> None:
    config = induction(**REPEAT)
    full = train(config, str(tmp_path / "a"), progress=False)
    steps, repeated = full.curve("repeated_tokens", "train_batches")
    _, epochs = full.curve("bank_epochs", "train_batches")
    _, unique = full.curve("unique_tokens", "train_batches")
    assert list(repeated) == [s * 2 * 16 for s in steps] and list(unique) == [s * 6 * 16 for s in steps]
    assert epochs[-1] == 6.0 and full.manifest["repetition"]["bank_size"] == 8
    _, memorised = full.curve("loss", "bank")
    assert len(memorised) == 7 and memorised[-1] < memorised[0], "evaluated at every evaluation step"
    cut = killed_copy(full, tmp_path / "b", last_kept=8)
    assert_identical_runs(full, resume(Run.open(cut), progress=False))


@pytest.mark.parametrize(
    ("repeat", "message"),
    [
        ({"fraction": 0.05, "epochs": 2}, "task.repeat.fraction: 0.05 of a batch of 8 is no whole sequence"),
        ({"fraction": 0.5, "epochs": 2, "bank_size": 3}, "give exactly one of epochs (E) and bank_size (K)"),
        ({"fraction": 0.5}, "give exactly one of epochs (E) and bank_size (K)"),
        ({"fraction": 1.5, "epochs": 2}, "task.repeat.fraction: Input should be less than or equal to 1"),
        ({"fraction": 0, "epochs": 2}, "task.repeat.fraction: 0.0 of a batch of 8 is no whole sequence"),
        (
            {"fraction": 0.5, "epochs": 1000},
            "task.repeat: epochs 1000 does not fit this run, which draws 48 bank sequences in all (12 "
            "steps x 4): a bank of 1 to 48 sequences, each seen 1 to 48 times",
        ),
        ({"fraction": 0.5, "epochs": 0.5}, "task.repeat: epochs 0.5 does not fit this run"),
        ({"fraction": 0.5, "bank_size": 49}, "task.repeat: bank_size 49 does not fit this run"),
    ],
)
def test_impossible_repetition_settings_are_refused_before_anything_is_written(
    cli, tmp_path: Path, repeat: dict, message: str
) -> None:
    data = tiny_config(training={"batch_size": 8}).model_dump(mode="json", by_alias=True)
    data["task"]["repeat"] = repeat
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = cli("train", path, "--runs-dir", tmp_path / "runs")
    assert code == 2 and err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "runs").exists()
