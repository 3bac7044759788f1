"""The trainer: units, metrics table, checkpoints, exact resume, clamp windows, clipping, schedules."""

import json
import math
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from conftest import TINY_BURSTY, TINY_FEWSHOT, TINY_READOUT_MODEL, tiny_config
from icl_lab.config import Duration, OptimizerConfig, ScheduleConfig
from icl_lab.errors import ComponentError, ConfigError, RunStoreError
from icl_lab.experiment import load_config
from icl_lab.store.checkpoints import checkpoint_paths
from icl_lab.store.run import Run, list_runs
from icl_lab.training.optim import (
    build_optimizer,
    clip_grad_norm_per_member,
    functional_update,
    lr_at,
    optimizer_state,
)
from icl_lab.training.trainer import Trainer, resume, train


def final_params(run: Run) -> dict[str, torch.Tensor]:
    return run.parameters()


def metrics_without_wall_time(run: Run) -> list[dict]:
    table = run.metrics.drop_columns(["wall_s"])
    return table.sort_by(
        [
            ("step", "ascending"),
            ("split", "ascending"),
            ("metric", "ascending"),
            ("head", "ascending"),
        ]
    ).to_pylist()


def assert_identical_runs(reference: Run, other: Run) -> None:
    assert other.status == "complete"
    a, b = final_params(reference), final_params(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_without_wall_time(reference) == metrics_without_wall_time(other)


def killed_copy(run: Run, where: Path, last_kept: int | None) -> Path:
    """A copy of a finished run as a process killed after writing its checkpoint at `last_kept`
    (None: before any checkpoint) leaves it: later checkpoints gone, marked interrupted."""
    cut = where / run.id
    shutil.copytree(run.path, cut)
    for step in run.checkpoint_steps:
        if last_kept is None or step > last_kept:
            for path in checkpoint_paths(cut / "checkpoints", step):
                path.unlink()
    manifest = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    return cut


def test_run_directory_metrics_and_units(tmp_path: Path) -> None:
    run = train(tiny_config(), str(tmp_path), progress=False)
    assert run.status == "complete"
    assert {p.name for p in run.path.iterdir()} >= {
        "config.yaml",
        "manifest.json",
        "metrics.parquet",
        "checkpoints",
    }
    assert run.checkpoint_steps == [0, 4, 8, 12]
    table = run.metrics
    assert sorted(set(table["step"].to_pylist())) == [0, 4, 8, 12]
    row = table.filter(pc.equal(table["step"], 8)).to_pylist()[0]
    assert row["sequences"] == 8 * 8 and row["tokens"] == 8 * 8 * 16
    heads = set(table.filter(pc.equal(table["metric"], "prefix_matching"))["head"].to_pylist())
    assert heads == {"0.0", "0.1", "1.0", "1.1"}
    steps, losses = run.curve("loss", "train_batches")
    assert list(steps) == [4, 8, 12] and all(0 < v < 10 for v in losses)
    sequences, same = run.curve("loss", "train_batches", x="sequences")
    assert list(sequences) == [32, 64, 96] and list(same) == list(losses)
    tokens, heads = run.head_curves("prefix_matching", "train", x="tokens")
    assert list(tokens) == [0, 512, 1024, 1536] and set(heads) == {"0.0", "0.1", "1.0", "1.1"}
    with pytest.raises(ValueError, match="unknown unit 'epochs'"):
        run.curve("loss", "train", x="epochs")
    assert Run.open(run.path).config == run.config


def test_the_logged_training_loss_is_the_mean_of_the_steps_since_the_last_evaluation(
    tmp_path: Path, monkeypatch
) -> None:
    step_losses = []
    original = Trainer.train_step

    def recording(self: Trainer) -> None:
        original(self)
        step_losses.append(float(self.latest_losses[0]))

    monkeypatch.setattr(Trainer, "train_step", recording)
    run = train(tiny_config(), str(tmp_path), progress=False)
    steps, logged = run.curve("loss", "train_batches")
    assert list(steps) == [4, 8, 12] and len(step_losses) == 12
    expected = [sum(step_losses[s - 4 : s]) / 4 for s in steps]
    assert len(set(step_losses)) == 12  # one batch's loss would not stand for its neighbours'
    assert list(logged) == pytest.approx(expected, rel=1e-6)


def test_run_creation_interrupted_leaves_no_run_behind(tmp_path: Path, monkeypatch) -> None:
    """A process killed while creating a run (here: just before the staging directory, manifest
    and all, is renamed into place) leaves nothing at the run's path, so a sweep rerun trains it
    afresh, and nothing that lists as a run; a name taken meanwhile is a clear error."""

    def killed(self: Path, target: Path) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", killed)
        with pytest.raises(KeyboardInterrupt):
            Run.create(tiny_config(), tmp_path, run_id="u001")
    (staging,) = tmp_path.glob(".u001.*.staging")
    assert (staging / "manifest.json").is_file() and not (tmp_path / "u001").exists()
    assert list_runs(tmp_path) == []
    run = Run.create(tiny_config(), tmp_path, run_id="u001")
    assert run.path == tmp_path / "u001" and Run.open(run.path).status == "running"
    assert [r.path for r in list_runs(tmp_path)] == [run.path]
    with pytest.raises(RunStoreError, match="already exists"):
        Run.create(tiny_config(), tmp_path, run_id="u001")
    (tmp_path / "u002").mkdir()
    (tmp_path / "u002" / "other").write_text("taken while u002 was being created")
    with monkeypatch.context() as patch:
        patch.setattr(Path, "exists", lambda self: False)
        with pytest.raises(RunStoreError, match="already exists"):
            Run.create(tiny_config(), tmp_path, run_id="u002")
    assert not list(tmp_path.glob(".u002.*")), "the staging directory is removed"


S4D_INV_ADAMW = {  # an optimiser of two param groups (S4D-Inv's undecayed step sizes and modes)
    "model": {
        "name": "mixer_lm",
        "mixer": "s4d",
        "s4d_init": "inv",
        "d_state": 8,
        "n_layers": 1,
        "d_model": 16,
    },
    "training": {"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.5}, "length": {"steps": 12}},
}


@pytest.mark.parametrize(
    ("last_kept", "sections"),
    [(4, {}), (0, {}), (None, {}), (4, S4D_INV_ADAMW)],
    ids=["4", "0", "none", "4-two-groups"],
)
def test_resume_from_a_checkpoint_is_bit_identical(
    tmp_path: Path, last_kept: int | None, sections: dict
) -> None:
    full = train(tiny_config(**sections), str(tmp_path / "a"), progress=False)
    cut = killed_copy(full, tmp_path / "b", last_kept)
    cut_short = cut / "checkpoints" / f".step_{8:09d}.safetensors.4242.0a1b2c3d.tmp"  # a write killed
    cut_short.write_bytes(b"\0" * 100)
    assert_identical_runs(full, resume(Run.open(cut), progress=False))
    if last_kept is not None:  # resumed from a checkpoint: what the killed write left is cleared
        assert not cut_short.exists()


def slow_enough_config(path: Path) -> Path:
    config = tiny_config(
        training={"batch_size": 16, "length": {"steps": 400}},
        eval={"every": {"steps": 40}, "batch_size": 64},
        checkpointing={"every": {"steps": 25}},
    )
    file = path / "config.yaml"
    file.write_text(config.to_yaml())
    return file


@pytest.mark.parametrize("kill_after_first_checkpoint", [True, False])
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, kill_after_first_checkpoint: bool) -> None:
    config = slow_enough_config(tmp_path)
    reference = train(load_config(config), str(tmp_path / "ref"), progress=False)
    runs = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "icl_lab",
        "train",
        str(config),
        "--runs-dir",
        str(runs),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    target = "checkpoints/step_*.json" if kill_after_first_checkpoint else "manifest.json"
    while not list(runs.glob(f"[!.]*/{target}")):  # a run in place, not its staging directory
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "training never started"
        time.sleep(0.01)
    time.sleep(random.uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (killed,) = list_runs(runs)
    assert killed.status == "interrupted", "a killed run must not look complete"
    done = subprocess.run(
        [sys.executable, "-m", "icl_lab", "resume", str(killed.path), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert_identical_runs(reference, Run.open(killed.path))


def test_clamp_window_switches_on_and_off_at_exactly_those_steps(tmp_path: Path) -> None:
    config = tiny_config(
        training={"optimizer": {"name": "sgd", "lr": 0.5}, "length": {"steps": 7}},
        checkpointing={"every": {"steps": 1}},
        clamps=[{"kind": "ablate", "heads": ["1.1"], "steps": {"from": 2, "until": 5}}],
    )
    run = train(config, str(tmp_path), progress=False)
    W_O = {s: run.parameters(s)["blocks.1.attn.W_O"][0, 1] for s in run.checkpoint_steps}
    # the update taken at step s produces checkpoint s + 1; a zero-ablated head gets zero gradient
    frozen = [s for s in range(1, 7) if torch.equal(W_O[s], W_O[s + 1])]
    assert frozen == [2, 3, 4]


def test_gradient_clipping_per_member_matches_torch_for_each_member() -> None:
    g = torch.Generator().manual_seed(0)
    params = [
        torch.randn(3, 4, 5, generator=g, requires_grad=True),
        torch.randn(3, 7, generator=g, requires_grad=True),
    ]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * torch.tensor([0.01, 1.0, 10.0]).view(
            -1, *[1] * (p.dim() - 1)
        )
    singles = [[p.grad[m].clone().requires_grad_() for p in params] for m in range(3)]
    norms = clip_grad_norm_per_member([p.grad for p in params], 1.0)
    for m in range(3):
        tensors = [torch.zeros_like(t, requires_grad=True) for t in singles[m]]
        for t, s in zip(tensors, singles[m], strict=True):
            t.grad = s.detach().clone()
        expected_norm = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        assert norms[m].item() == pytest.approx(expected_norm.item(), rel=1e-5)
        for p, t in zip(params, tensors, strict=True):
            assert torch.allclose(p.grad[m], t.grad, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
@pytest.mark.parametrize("how", ["step", "functional"])
def test_weight_decay_leaves_the_undecayed_parameters_alone(name: str, how: str) -> None:
    """With zero gradients an update is the weight decay alone: AdamW's p (1 - lr wd), SGD's p - lr
    wd p; a parameter flagged undecayed stays where it is, by step() (its own param group) and by
    functional_update (the compiled step's) alike, though it comes before the decayed one (the
    groups put it after)."""
    cfg = OptimizerConfig(name=name, lr=0.1, weight_decay=0.5)
    kept, decayed = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    params, undecayed = [kept, decayed], [True, False]
    optimizer = build_optimizer(params, cfg, undecayed=undecayed)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    assert optimizer.param_groups[1]["params"] == [kept]
    if how == "step":
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    else:
        state = optimizer_state(optimizer, params)
        grads = [torch.zeros_like(p) for p in params]
        functional_update(cfg, [p.detach() for p in params], grads, state, 0.1, undecayed)
    assert torch.equal(kept.detach(), torch.ones(2))
    assert torch.allclose(decayed.detach(), torch.full((3,), 0.95))


def test_a_model_s_undecayed_parameters_form_the_optimiser_s_second_group(tmp_path: Path) -> None:
    """S4D-Inv's step sizes and modes (Gu et al.'s code trains them without weight decay); a model
    naming a parameter it does not have is refused."""
    model, adamw = S4D_INV_ADAMW["model"], S4D_INV_ADAMW["training"]["optimizer"]
    config = tiny_config(model=model, training={"optimizer": adamw, "length": {"steps": 1}})
    trainer = Trainer(Run.create([config], tmp_path / "run"), progress=False)
    exempt = {"blocks.0.mixer.log_dt", "blocks.0.mixer.A_log", "blocks.0.mixer.A_imag"}
    assert trainer.model.no_weight_decay() == exempt
    second = trainer.state.optimizer.param_groups[1]
    assert second["weight_decay"] == 0.0
    assert {id(p) for p in second["params"]} == {id(trainer.state.params[n]) for n in exempt}
    real = tiny_config(model={**model, "s4d_init": "real"}, training={"optimizer": adamw})
    assert (
        len(Trainer(Run.create([real], tmp_path / "real"), progress=False).state.optimizer.param_groups) == 1
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(trainer.model), "no_weight_decay", lambda self: {"blocks.0.mixer.nothing"})
        with pytest.raises(
            ComponentError,
            match=r"names 'blocks\.0\.mixer\.nothing' in no_weight_decay\(\), a parameter it does not have",
        ):
            Trainer(Run.create([config], tmp_path / "other"), progress=False)


def test_schedules_follow_their_formulas() -> None:
    warm = ScheduleConfig(name="warmup", warmup_steps=4)
    assert [lr_at(s, 10, 1.0, warm) for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]
    cos = ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert lr_at(2, 12, 1.0, cos) == pytest.approx(1.0)
    assert lr_at(11, 12, 1.0, cos) == pytest.approx(0.1)
    assert lr_at(2 + 9 / 2, 12, 1.0, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(5, 10, 0.3, ScheduleConfig()) == 0.3
    assert lr_at(0, 10, 0.3, ScheduleConfig(warmup_steps=4)) == 0.3, "a constant schedule reads no warm-up"


def test_a_timm_schedule_follows_timms_formulas() -> None:
    """warmup_start and decay_over whole_run as timm's CosineLRScheduler (warmup_prefix false,
    stepped per update from t = 0) computes them: lr_init + t (lr - lr_init) / W in the warm-up,
    then lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2 over the whole run of T updates."""
    timm = ScheduleConfig(
        name="cosine", warmup_steps=4, min_lr_ratio=0.1, warmup_start=1e-6, decay_over="whole_run"
    )
    lr, total = 5e-4, 40
    assert lr_at(0, total, lr, timm) == 1e-6
    assert lr_at(3, total, lr, timm) == pytest.approx(1e-6 + 3 * (lr - 1e-6) / 4)
    for t in (4, 17, 39):
        cosine = (1 + math.cos(math.pi * t / total)) / 2
        assert lr_at(t, total, lr, timm) == pytest.approx(5e-5 + 4.5e-4 * cosine)
    assert lr_at(4, total, lr, timm) < lr, "the cosine began beneath the warm-up"
    warmup_only = ScheduleConfig(name="warmup", warmup_steps=5, warmup_start=0.0)
    assert [lr_at(t, 10, 1.0, warmup_only) for t in (0, 1, 4, 5)] == [0.0, 0.2, 0.8, 1.0]


def test_durations_convert_to_whole_steps() -> None:
    assert Duration(steps=7).to_steps(32, 64) == 7
    assert Duration(sequences=1_000_000).to_steps(32, 5) == 31_250
    assert Duration(sequences=33).to_steps(32, 5) == 2
    assert Duration(tokens=640).to_steps(2, 64) == 5
    assert Duration.model_validate(12).steps == 12


def test_training_reduces_loss_and_eval_is_reproducible(tmp_path: Path) -> None:
    config = tiny_config(
        training={"length": {"steps": 60}, "optimizer": {"lr": 0.01}}, eval={"every": {"steps": 60}}
    )
    a = train(config, str(tmp_path / "a"), progress=False)
    b = train(config, str(tmp_path / "b"), progress=False)
    _, loss = a.curve("loss", "train")
    assert loss[-1] < loss[0] - 0.1
    assert metrics_without_wall_time(a) == metrics_without_wall_time(b)
    other_seed = train(config.model_copy(update={"seed": 4}), str(tmp_path / "c"), progress=False)
    assert metrics_without_wall_time(a) != metrics_without_wall_time(other_seed)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@CUDA
def test_training_runs_on_cuda(tmp_path: Path) -> None:
    run = train(tiny_config(training={"device": "cuda"}), str(tmp_path), progress=False)
    assert run.status == "complete"
    assert [s["device"][:4] for s in run.manifest["segments"]] == ["cuda"], "trained on the GPU"


@CUDA
@pytest.mark.parametrize(
    ("task", "clamps"),
    [
        (TINY_BURSTY, []),
        (
            TINY_FEWSHOT,
            [
                {"kind": "induction_match", "heads": ["1.0"]},
                {"kind": "ablate_preserving", "heads": ["0.1"], "preserve": "pattern"},
                {"kind": "previous_token", "heads": ["0.0"]},
                {"kind": "copy", "head": "1.1"},
                {"kind": "layer1", "heads": ["1.2"]},
            ],
        ),
    ],
)
def test_tasks_and_clamps_train_on_cuda(tmp_path: Path, task: dict, clamps: list) -> None:
    training = {"device": "cuda", "length": {"steps": 20}}
    config = tiny_config(task=task, model=TINY_READOUT_MODEL, clamps=clamps, training=training)
    run = train(config, str(tmp_path), progress=False)
    assert run.status == "complete" and run.manifest["device"].startswith("cuda")
    assert np.isfinite(run.curve("loss", "train")[1]).all()


def test_train_without_a_config_is_refused(tmp_path: Path) -> None:
    for given, got in (
        ([], "nothing"),
        ((), "nothing"),
        (None, "NoneType"),
        ([tiny_config(), "x"], "ExperimentConfig, str"),
    ):
        with pytest.raises(
            ConfigError,
            match=rf"^train needs a config, or a list of one or more member configs \(got {got}\)$",
        ):
            train(given, str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir()), "nothing written"


def test_a_run_from_before_segments_keeps_its_first_stretch_when_resumed(tmp_path: Path) -> None:
    run = train(tiny_config(), str(tmp_path), progress=False)
    cut = killed_copy(run, tmp_path / "cut", last_kept=4)
    manifest = json.loads((cut / "manifest.json").read_text())
    del manifest["segments"], manifest["device"]  # as runs made before segments were recorded
    (cut / "manifest.json").write_text(json.dumps({**manifest, "interrupted_at": 5}))
    resumed = resume(Run.open(cut), progress=False)
    assert "interrupted_at" not in resumed.manifest, "complete now: the interruption is history"
    how = {"compiled": False, "compiled_kernels": False, "cuda_graphs": False}
    assert resumed.manifest["segments"] == [{"from_step": 0, **how}, {"from_step": 4, **how, "device": "cpu"}]


@pytest.mark.parametrize("field", ["metrics", "splits"])
def test_an_empty_list_of_metrics_or_splits_is_refused(field: str) -> None:
    """null means the task's defaults; an empty list must not silently mean them too."""
    with pytest.raises(ConfigError, match=rf"eval\.{field}: List should have at least 1 item"):
        tiny_config(eval={field: []})


def test_the_evaluation_steps_a_metrics_table_must_hold() -> None:
    """Step 0, every `every`-th, and the last step whether or not it is a multiple (one rule for
    model and SAE runs: what resume and completion check the table against)."""
    from icl_lab.store.directory import evaluation_steps

    assert evaluation_steps(4, 10, 10) == {0, 4, 8, 10}
    assert evaluation_steps(4, 9, 10) == {0, 4, 8}, "an interrupted run's step 9 is no evaluation"
    assert evaluation_steps(5, 10, 10) == {0, 5, 10}
    assert evaluation_steps(100, 30, 30) == {0, 30}
