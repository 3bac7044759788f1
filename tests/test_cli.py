"""The command line: clear one-line errors with exit code 2, nothing written; eval, list, demo."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from icl_lab.store.run import Run
from icl_lab.training.trainer import train

BAD_CONFIGS = [
    (["--set", "model.n_heads=3"], "model: d_model (64) is not divisible by n_heads (3)"),
    (["--set", "model.colour=blue"], "model.colour: unknown field"),
    (["--set", "task.vocab_size=many"], "task.vocab_size: Input should be a valid integer"),
    (["--set", "task.name=omniglot"], "task: unknown choice 'omniglot'"),
    (
        ["--set", "training.optimizer.lr=-0.1"],
        "training.optimizer.lr: Input should be greater than 0",
    ),
    (["--set", "task.max_prefix=40"], "max_prefix (40) x 2 copies exceeds seq_len (64)"),
    (["--set", "clamps=[{kind: ablate, heads: ['3.0']}]"], "clamps.0: head '3.0' does not exist"),
    (
        ["--set", "clamps=[{kind: ablate, heads: ['1.0'], activation: rot_q}]"],
        "no hook point 'blocks.1.attn.hook_rot_q'",
    ),
    (["--set", "clamps=[{kind: melt, heads: ['1.0']}]"], "clamps.0: unknown choice 'melt'"),
    (
        ["--set", "clamps=[{kind: ablate, heads: ['1.0'], steps: {from: 9, until: 3}}]"],
        "until (3) must be greater than from (9)",
    ),
    (
        ["--set", "clamps=[{kind: ablate, heads: ['1.0'], steps: {from: 1000}}]"],
        "clamps.0: steps.from (1,000) is not before the run's end (step 1,000): the clamp would never act",
    ),
    (
        ["--set", "training.length={steps: 5, tokens: 9}"],
        "give exactly one of steps, sequences, tokens",
    ),
    (["--set", "eval.metrics=[wisdom]"], "eval.metrics: unknown metric 'wisdom'"),
    (["--set", "eval.metrics=[loss, accuracy, loss]"], "eval.metrics: 'loss' is listed twice"),
    (["--set", "eval.splits=[iw]"], "eval.splits: task has no split 'iw'"),
    (["--set", "training.device=cuda:7"], "training.device"),
    (["--set", "oops"], "bad override 'oops'"),
    (
        ["--set", "training.optimizer.betas=[2, 0.9]"],
        "training.optimizer.betas.0: Input should be less than 1",
    ),
    (
        ["--set", "training.optimizer.betas=[0.9, 1]"],
        "training.optimizer.betas.1: Input should be less than 1",
    ),
    (
        ["--set", "model.readout.hidden_bias=scalar"],
        "a readout (at positions [-1]) serves tasks with targets at fixed positions, and this task has one "
        "at every position: remove model.readout",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_CONFIGS)
def test_bad_config_is_one_clear_line_exit_2_and_nothing_written(
    cli, tmp_path: Path, args: list[str], message: str
) -> None:
    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = cli("train", "induction", "--runs-dir", tmp_path / "runs", *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out
    assert not (tmp_path / "runs").exists()


def test_missing_and_malformed_config_files(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", tmp_path / "absent.yaml")
    assert code == 2 and "config file not found" in err
    code, _, err = cli("train", "inductoin")  # a bare name: the bundled ones are listed
    assert code == 2 and "nor a bundled config: function_classes, gd, icll, induction," in err
    code, _, err = cli("train", tmp_path)
    assert code == 2 and err.strip() == f"error: config path is a directory, not a YAML file: {tmp_path}"
    code, _, err = cli("train", "/dev/null")
    assert code == 2 and err.strip() == "error: config path is not a regular file: /dev/null"
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\n")
    code, _, err = cli("train", broken)
    assert code == 2 and "not valid YAML at line" in err
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    code, _, err = cli("train", scalar)
    assert code == 2 and "must be a mapping" in err
    missing = tmp_path / "missing.yaml"
    missing.write_text("task: {name: induction}\n")
    code, _, err = cli("train", missing)
    assert code == 2 and "model: field required" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train(tiny_config(), str(tmp_path_factory.mktemp("runs")), progress=False)


def copy_run(run: Run, where: Path) -> Path:
    target = where / run.id
    shutil.copytree(run.path, target)
    return target


def test_truncated_checkpoint_is_refused(cli, finished_run: Run, tmp_path: Path) -> None:
    path = copy_run(finished_run, tmp_path)
    tensors = path / "checkpoints" / "step_000000012.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    code, _, err = cli("eval", path)
    assert code == 2 and "corrupt or truncated" in err and len(err.strip().splitlines()) == 1


def test_foreign_checkpoint_is_refused(cli, finished_run: Run, tmp_path: Path) -> None:
    other = train(tiny_config(seed=99), str(tmp_path / "other"), progress=False)
    path = copy_run(finished_run, tmp_path)
    for suffix in ("safetensors", "json"):
        name = f"step_000000012.{suffix}"
        shutil.copy(other.path / "checkpoints" / name, path / "checkpoints" / name)
    code, _, err = cli("eval", path, "--checkpoint", "12")
    assert code == 2 and "belongs to another config" in err


def test_resume_of_a_run_whose_config_was_edited_says_so_once(cli, finished_run: Run, tmp_path: Path) -> None:
    path = copy_run(finished_run, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(manifest | {"status": "interrupted"}))
    config = path / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.001", "lr: 0.002"))
    code, _, err = cli("resume", path, "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert f"run {finished_run.id}: its config.yaml was changed since the run started (hash " in err
    assert f"the run's {manifest['config_hash']}): restore it to resume" in err


def test_garbage_sidecar_and_missing_step_are_refused(cli, finished_run: Run, tmp_path: Path) -> None:
    path = copy_run(finished_run, tmp_path)
    (path / "checkpoints" / "step_000000008.json").write_text('{"format": "pickle"}')
    code, _, err = cli("eval", path, "--checkpoint", "8")
    assert code == 2 and "not an icl-lab checkpoint" in err
    code, _, err = cli("eval", path, "--checkpoint", "5")
    assert code == 2 and "no checkpoint at step 5" in err
    code, _, err = cli("eval", tmp_path / "nowhere")
    assert code == 2 and "not a run directory" in err


def test_eval_prints_metrics_per_split(cli, finished_run: Run) -> None:
    code, out, _ = cli("eval", finished_run.path, "--checkpoint", "8")
    assert code == 0
    assert "step 8" in out and "prefix_matching" in out and "icl_score" in out


def test_resume_of_a_complete_run_says_so_unless_its_final_checkpoint_is_damaged(
    cli, finished_run: Run, tmp_path: Path
) -> None:
    code, out, _ = cli("resume", finished_run.path)
    assert code == 0 and "already complete" in out
    copy = Run.open(shutil.copytree(finished_run.path, tmp_path / finished_run.id))
    last = copy.checkpoint_dir / f"step_{copy.checkpoint_steps[-1]:09d}.safetensors"
    last.write_bytes(last.read_bytes()[:1000])
    code, out, err = cli("resume", copy.path)
    assert code == 2 and "already complete" not in out
    assert (
        err.strip()
        == f"error: checkpoint {last} is corrupt or truncated (checksum does not match its sidecar)"
    )


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("tasks", "induction"),
        ("models", "transformer"),
        ("metrics", "prefix_matching"),
        ("clamps", "ablate"),
        ("experiments", "induction"),
    ],
)
def test_list(cli, what: str, expected: str) -> None:
    code, out, _ = cli("list", what)
    assert code == 0 and expected in out


def test_list_reproductions_gives_each_mode_s_scale(cli) -> None:
    from icl_lab.reproduce import REPRODUCTIONS

    code, out, _ = cli("list", "reproductions")
    # one "full:" a row ("full:" is one word: the table may wrap a row anywhere else)
    assert code == 0 and out.count("full:") == len(list(REPRODUCTIONS.items()))
    reddy = REPRODUCTIONS.get("reddy-phase")
    assert "60,000 of its 150,000 steps" in reddy.full_scale  # not called the paper's scale


def test_list_describes_each_component_by_its_docstrings_first_sentence() -> None:
    from icl_lab.registry import summary

    assert summary("Repeats; meta holds the period and\n    the end (0 if none).\n\n    More.") == (
        "Repeats; meta holds the period and the end (0 if none)."
    )
    assert summary("w = softmax(x_q . x_j) per label. With 'ideal' it has two.") == (
        "w = softmax(x_q . x_j) per label."
    )
    assert summary(None) == ""


def test_list_runs_shows_status_and_damage(cli, finished_run: Run, tmp_path: Path) -> None:
    code, out, _ = cli("list", "runs", "--runs-dir", finished_run.path.parent)
    assert code == 0 and "complete" in out
    damaged = copy_run(finished_run, tmp_path)
    for path in (damaged / "checkpoints").glob("step_000000012.*"):
        path.unlink()
    code, out, _ = cli("list", "runs", "--runs-dir", tmp_path)
    assert code == 0 and "damaged (below)" in out and "complete" not in out.split("damaged")[0]
    assert (
        f"{damaged}: run {finished_run.id} is marked complete, but its final checkpoint (step 12) is gone"
        in out
    )
    manifest = json.loads((damaged / "manifest.json").read_text())
    del manifest["total_steps"]  # every checkpoint there: the manifest is what is damaged
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli("report", damaged)
    assert code == 2
    assert (
        f"run {finished_run.id} is marked complete, but its manifest lacks total_steps: the file is damaged"
        in err
    )
    for where in (tmp_path / "nowhere", damaged / "config.yaml"):
        code, _, err = cli("list", "runs", "--runs-dir", where)
        assert code == 2 and f"--runs-dir: {where} is not a directory" in err


def test_bad_cli_argument_exits_2_with_one_line(cli) -> None:
    code, _, err = cli("list", "everything")
    assert code == 2 and err.strip().splitlines() == [
        "error: Invalid value for 'what': 'everything' is not one of 'reproductions', 'tasks', "
        "'models', 'metrics', 'clamps', 'runs', 'experiments' (see 'icl-lab list --help')"
    ]
    code, _, err = cli("sweep", "reddy_bk", "--workers", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--workers" in err
    code, _, err = cli("train", "induction", "--nosuch")
    assert code == 2 and err.strip() == "error: No such option: --nosuch (see 'icl-lab train --help')"
    code, _, _ = cli("train")
    assert code == 2


@pytest.mark.parametrize(
    "args",
    [
        ("reproduce", "gd", "--quick", "--docs", ""),
        ("reproduce", "gd", "--quick", "--resume", " "),
        ("train", "induction", "--runs-dir", ""),
        ("sae", "train", "sae.yaml", "--runs-dir", ""),
    ],
)
def test_an_empty_directory_option_is_refused_not_the_current_one(cli, args: tuple[str, ...]) -> None:
    code, _, err = cli(*args)
    assert code == 2 and err.startswith(f"error: Invalid value for '{args[-2]}': is empty: give a directory")


def test_an_empty_device_is_refused_not_taken_as_the_default(cli) -> None:
    from icl_lab.cli_options import resume_on
    from icl_lab.errors import ConfigError
    from icl_lab.experiment import load_config

    cfg = load_config("induction")
    with pytest.raises(ConfigError, match="--device: unknown device ''"):
        resume_on([cfg], "")
    assert cfg.training.device == "cpu"
    code, _, err = cli("train", "induction", "--device", "")
    assert code == 2 and err.startswith("error: --device: unknown device ''")


def test_demo_smoke_through_the_installed_entry_point(tmp_path: Path) -> None:
    """The console script end to end: a short demo writes a run, its report and a summary."""
    script = Path(sys.executable).parent / "icl-lab"
    args = ["demo", "--runs-dir", str(tmp_path), "--quiet"]
    args += [
        "--set",
        "training.length.steps=20",
        "--set",
        "eval.every.steps=10",
        "--set",
        "eval.batch_size=100",
    ]
    done = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "ic accuracy" in lines[0] and "(seed 0)" in lines[0]
    assert lines[1].startswith("final accuracy at step 20: train ")
    assert "item_label_association" in lines[2]
    run = Run.open(next(tmp_path.iterdir()))
    assert run.status == "complete"
    assert lines[3] == f"report: {run.path / 'report' / 'report.html'}"
    bad = subprocess.run(
        [str(script), "train", "induction", "--set", "model.n_layers=0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_runs_stored_before_new_config_fields_keep_their_hashes() -> None:
    """Hashes of the bundled configs as the code before `imports` and `task.repeat` existed
    computed them: a checkpoint's config hash must still match, or old runs could not resume."""
    from icl_lab.experiment import load_config

    before = {
        "induction": "70e0c9694960baa8",
        "reddy_fast": "ef55b190114a9b71",
        "singh": "a7d8dea218c8ec14",
        "gd": "9a69103f1108961b",
    }
    # gd's bundled config now takes the authors' init, optimiser and shared layers: its old settings, set back
    old_gd = [
        "model.init=normal",
        "model.share_weights=false",
        "training.grad_clip=null",
        "training.optimizer.betas=[0.9, 0.999]",
    ]
    assert {name: load_config(name, old_gd if name == "gd" else []).hash() for name in before} == before
    for later in (
        "task.repeat={fraction: 0.5, epochs: 2}",
        "model.embed_dropout=0.1",
        "model.attn_dropout=0.1",
        "training.schedule.warmup_start=0.0",
        "training.schedule.decay_over=whole_run",
    ):
        assert load_config("induction", [later]).hash() != before["induction"], "a set field still counts"
    # icll's Mamba, seed 0, as its run stored on 2026-12-04 hashed it (before the mixer_lm fields of
    # 2026-12-05: feature_map, positional, init, tie_unembed, layout, embed_std and the rest, and the
    # schedule's warmup_start and decay_over)
    from icl_lab.reproduce.icll import ICLL

    mamba = ICLL().experiments(quick=True)["mamba s0"]
    stored = {
        "name": "mixer_lm",
        "mixer": "mamba",
        "n_layers": 2,
        "d_model": 64,
        "n_heads": 4,
        "embed_dropout": 0.1,
    }
    as_then = mamba.training.schedule.model_copy(update={"warmup_start": None, "decay_over": "after_warmup"})
    mamba = mamba.model_copy(
        update={
            "model": type(mamba.model).model_validate(stored),
            "training": mamba.training.model_copy(update={"schedule": as_then}),
        }
    )
    assert mamba.hash() == "7e5eed6debef8f3d"
    linear = mamba.model_copy(update={"model": mamba.model.model_copy(update={"mixer": "linear_attention"})})
    for later in (
        {"positional": "learned"},
        {"feature_map": "none"},
        {"init": "gpt2"},
        {"tie_unembed": True},
        {"layout": "bare", "mlp": False},
        {"embed_std": 1.0},
        {"retnet": True},
        {"mixer_bias": True},
        {"recurrent_init": "keras"},
        {"gla_yang": True},
        {"attn_dropout": 0.1},
        {"s4d_init": "inv"},
        {"act_fn": "gelu_new"},
    ):
        changed = linear.model_copy(update={"model": linear.model.model_copy(update=later)})
        assert changed.hash() != linear.hash(), "a set field still counts"


def test_train_notes_what_a_valid_config_does_unexpectedly(cli, tmp_path: Path) -> None:
    from icl_lab.experiment import ExperimentConfig, config_notes, load_config

    notes = config_notes(
        load_config(
            "induction",  # batch 32 of 64 tokens
            [
                "training.length={sequences: 100}",
                "eval.every={tokens: 3000}",
                "training.schedule={name: cosine, warmup_steps: 50}",
                "training.optimizer.momentum=0.9",
            ],
        )
    )
    assert notes == [
        "training.length: 100 sequences is 4 whole steps of 32 sequences, 128 sequences",
        "eval.every: 3,000 tokens is 2 whole steps of 2,048 tokens, 4,096 tokens",
        "training.schedule: the warm-up (50 steps) is not shorter than the run (4 steps): the learning "
        "rate never reaches 0.001",
        "training.optimizer.momentum is set but unread by the optimizer chosen",
    ]
    sgd = ["training.optimizer={name: sgd, lr: 0.1, betas: [0.5, 0.9], eps: 1.0e-6}"]
    assert config_notes(load_config("induction", sgd)) == [
        "training.optimizer.betas is set but unread by the optimizer chosen",
        "training.optimizer.eps is set but unread by the optimizer chosen",
    ]
    descending = ["training.schedule={name: warmup, warmup_steps: 10, warmup_start: 0.5}"]
    assert config_notes(load_config("induction", descending)) == [
        "training.schedule.warmup_start (0.5) is above the learning rate (0.001): the warm-up descends to it"
    ]
    unread = ["training.schedule.warmup_start=1e-6", "training.schedule.decay_over=whole_run"]
    assert config_notes(load_config("induction", unread)) == [
        "training.schedule.warmup_start is set but unread by the schedule chosen",
        "training.schedule.decay_over is set but unread by the schedule chosen",
    ]
    assert config_notes(load_config("induction")) == []
    graphs = load_config("induction", ["training.cuda_graphs=true"])  # 1,000 steps
    assert config_notes(graphs) == [
        "training.cuda_graphs is set but unread on a CPU: the graphs replay on a GPU"
    ]

    def on_gpu(config: ExperimentConfig, compile: str = "auto") -> ExperimentConfig:
        training = config.training.model_copy(update={"device": "cuda", "compile": compile})
        return config.model_copy(update={"training": training})  # unvalidated: no GPU needed

    assert config_notes(on_gpu(graphs)) == [
        "training.cuda_graphs: under compile auto a run of 1,000 steps compiles, and replays graphs, "
        "only packed into an ensemble of 20,000 member-steps or more; alone it trains eager (set "
        "training.compile: on)"
    ]
    assert config_notes(on_gpu(graphs, "on")) == []
    donor = train(tiny_config(training={"length": {"steps": 1}}), str(tmp_path / "donor"), progress=False)
    graft = {"kind": "graft", "hook": "blocks.0.hook_attn_out", "source": str(donor.path)}
    grafted = tiny_config(clamps=[graft], training={"cuda_graphs": True})
    assert config_notes(on_gpu(grafted)) == [
        "training.cuda_graphs: a graft clamp's run trains eager, so it replays no graphs"
    ]
    code, out, err = cli(
        "train", "induction", "--runs-dir", tmp_path, "-q", "--set", "training.length={sequences: 100}"
    )
    assert code == 0, err
    assert out.startswith("note: training.length: 100 sequences is 4 whole steps of 32 sequences")
