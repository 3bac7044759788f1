"""`icl-lab dissect`: LLC over checkpoints, stages beside transitions, resumable, clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from icl_lab.analysis.causal import Variant, variant_config
from icl_lab.analysis.dissect import chosen_checkpoints, dissect, dissect_config
from icl_lab.store.run import Run
from icl_lab.training.trainer import train
from test_faults import on_cuda

QUICK = ["llc.chains=2", "llc.draws=8", "llc.burn_in=2"]
QUICK_ARGS = [arg for setting in QUICK for arg in ("--set", setting)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = tiny_config(
        training={"batch_size": 16, "length": {"steps": 60}}, checkpointing={"every": {"steps": 6}}
    )
    return train(config, str(tmp_path_factory.mktemp("runs")), progress=False)


def test_dissect_writes_its_report_and_resumes_without_estimating_again(cli, run):
    code, out, err = cli("dissect", run.path, "--workers", "1", "--quiet", *QUICK_ARGS)
    assert code == 0, err
    out_dir = run.path / "dissect"
    files = sorted((out_dir / "llc").glob("step_*.json"))
    assert [int(f.stem.split("_")[1]) for f in files] == run.checkpoint_steps  # 11 <= 40: every one
    assert {"report.html", "timeline.png", "traces.png", "stages.json", "config.json"} <= {
        p.name for p in out_dir.iterdir()
    }
    summary = json.loads((out_dir / "stages.json").read_text())
    stages = summary["stages"]  # from the first checkpoint after initialisation to the last
    assert stages[0]["start"] == pytest.approx(6) and stages[-1]["end"] == pytest.approx(60)
    assert {t["head"] for t in summary["transitions"]} <= {None, "1.0", "1.1", "0.0", "0.1"}
    assert all(t["stage"] is None or 0 <= t["stage"] < len(summary["stages"]) for t in summary["transitions"])
    assert "report:" in out
    written = {f: f.stat().st_mtime_ns for f in files}
    code, _, err = cli("dissect", run.path, "--workers", "1", "--quiet", *QUICK_ARGS)
    assert code == 0, err
    assert {f: f.stat().st_mtime_ns for f in files} == written  # kept, not estimated again
    code, _, _ = cli(
        "dissect", run.path, "--workers", "1", "--quiet", "--set", "llc.chains=3", "--set", "llc.draws=4"
    )
    assert code == 0
    assert all(len(json.loads(f.read_text())["per_chain"]) == 3 for f in files)  # new settings: new estimates


def test_worker_processes_give_the_same_estimates_as_one_process(run, tmp_path):
    config = dissect_config([*QUICK, "max_checkpoints=3"])
    one = dissect(run, config, workers=1)
    for f in (run.path / "dissect" / "llc").glob("*.json"):
        f.unlink()
    two = dissect(run, config, workers=2)
    assert [r["per_chain"] for r in one.records] == [r["per_chain"] for r in two.records]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "llc.chains=0"],
            "error: config error: llc.chains: Input should be greater than or equal to 1",
        ),
        (["--set", "llc.sgld=1"], "error: config error: llc.sgld: unknown field"),
        (["--set", "member=3"], "has no member 3"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(cli, run, args, message):
    code, _, err = cli("dissect", run.path, "--quiet", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_missing_run_is_one_line_and_exit_2(cli, tmp_path: Path):
    code, _, err = cli("dissect", tmp_path / "nothing", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_trained_on_a_gpu_dissects_here_with_its_variants_on_the_cpu(cli, run, tmp_path):
    cut = Path(shutil.copytree(run.path, tmp_path / run.id))
    shutil.rmtree(cut / "dissect", ignore_errors=True)
    on_cuda(cut / "config.yaml")
    code, _, err = cli("dissect", cut, "--quiet", *QUICK_ARGS)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert (
        "causal.device: the variants train on the run's device unless it is set, but 'cuda' requested "
        "but CUDA is not available on this machine; set causal.device=cpu (or --no-causal)"
    ) in err
    assert not (cut / "dissect").exists()  # refused before the LLC's work
    off = ("--set", "causal.enabled=false")  # as --no-causal does (test_diverged_estimates_...)
    code, _, err = cli("dissect", cut, "--quiet", *off, "--set", "max_checkpoints=3", *QUICK_ARGS)
    assert code == 0, err
    baseline = Variant("baseline", 0, "none", (), {}, "baseline")
    config = variant_config(Run.open(cut), 0, baseline, seed=1, steps=10, device="cpu")
    assert config.training.device == "cpu"
    assert config.hash() == variant_config(run, 0, baseline, 1, 10, "cpu").hash()


def test_checkpoints_are_spread_in_log_and_linear_steps():
    steps = list(range(0, 10_001, 100))
    chosen = chosen_checkpoints(steps, 20)
    assert len(chosen) == 20 and chosen[0] == 0 and chosen[-1] == 10_000
    assert sum(s <= 1000 for s in chosen) >= 5  # log spacing: early steps, where a run changes fastest
    assert chosen_checkpoints(steps[:5], 20) == steps[:5]


def test_judge_reads_removed_delayed_and_earlier_against_the_baseline():
    from icl_lab.analysis.causal import Variant, halfway_step, judge

    ablation = Variant("a", 0, "induction", ("1.0",), {"kind": "ablate"}, "ablation")
    ideal = Variant("i", 0, "induction", ("1.0",), {"kind": "induction_pattern"}, "ideal")
    base = [300.0, 320.0]
    assert judge(ablation, [None, None], base).verdict == "necessary"
    assert judge(ablation, [500.0, 520.0], base).effect == "delayed"
    assert judge(ablation, [310.0, 300.0], base).verdict == "no effect"
    assert judge(ideal, [50.0, 60.0], base).verdict == "sufficient to remove the plateau"
    assert judge(ideal, [200.0, 210.0], base).effect == "earlier"
    assert judge(ideal, [50.0], [None]).verdict.startswith("the baseline never reached it")
    steps, loss = np.array([0, 10, 20, 30]), np.array([3.0, 2.9, 2.0, 1.5])
    assert halfway_step(steps, loss, 3.0, 1.5) == 20 and halfway_step(steps, loss, 3.0, -1.0) is None


def test_dissect_finds_the_clamp_that_removes_the_plateau(cli, tmp_path):
    """Induction on repeated random tokens: with every layer-1 head's pattern clamped to the ideal
    induction pattern there is nothing left to discover (by construction), so the plateau goes; with
    their values ablated a 2-layer attention-only model cannot copy from context at all."""
    overrides = {
        "task": {"name": "induction", "vocab_size": 32, "seq_len": 32, "min_prefix": 4, "n_copies": None},
        "model": {"name": "transformer", "n_layers": 2, "n_heads": 2, "d_model": 32, "attn_only": True},
        "training": {"batch_size": 32, "length": {"steps": 600}},
        "eval": {"every": {"steps": 10}, "batch_size": 64},
        "checkpointing": {"every": {"steps": 200}},
        "seed": 0,
    }
    run = train(tiny_config(**overrides), str(tmp_path), progress=False)
    args = [
        "--set",
        "causal.seeds=[0]",
        "--set",
        "max_checkpoints=3",
        "--set",
        "llc.draws=4",
        "--budget",
        "450",
    ]
    code, _, err = cli("dissect", run.path, "--quiet", *QUICK_ARGS, *args)
    assert code == 0, err
    record = json.loads((run.path / "dissect" / "causal.json").read_text())
    assert all(Path(path).is_dir() for path in record["runs"].values())  # named by the configs' hash
    effects = {e["variant"]: e for e in record["effects"]}
    assert effects["t1-induction-induction_pattern"]["verdict"] == "sufficient to remove the plateau"
    assert effects["t1-induction-ablate"]["verdict"] == "necessary"
    assert effects["t1-induction-ablate"]["heads"] == ["1.0", "1.1"]
    assert "What needs to go right" in (run.path / "dissect" / "report.html").read_text()


def test_diverged_estimates_are_reported_not_smoothed(cli, run):
    args = ["--set", "llc.step_size=1000", "--set", "max_checkpoints=4", "--no-causal"]
    code, _, err = cli("dissect", run.path, "--workers", "1", "--quiet", *QUICK_ARGS, *args)
    assert code == 0, err
    page = (run.path / "dissect" / "report.html").read_text()
    assert (
        "reading stages needs 4 finite LLC estimates after initialisation (step 0), and this dissection has 0"
        in page
    )
    assert "a chain diverged" in page


def test_the_page_of_an_unfinished_run_says_it_covers_the_checkpoints_so_far(run, tmp_path) -> None:
    from icl_lab.report.dissect_page import _unfinished

    assert _unfinished(run) == ""
    copy = tmp_path / run.id
    shutil.copytree(run.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    for path in (copy / "checkpoints").glob("step_00000006[0-9].*"):
        path.unlink()
    text = _unfinished(Run.open(copy))
    assert (
        text == "<p><b>The run is interrupted</b> at step 54 of 60: this covers its checkpoints so far.</p>"
    )


def test_a_run_without_checkpoints_or_an_lstm_with_vmapped_chains_is_refused_up_front(
    cli, run, tmp_path
) -> None:
    copy = tmp_path / run.id
    shutil.copytree(run.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    shutil.rmtree(copy / "checkpoints")
    (copy / "checkpoints").mkdir()
    code, _, err = cli("dissect", copy, "--quiet", "--no-causal")
    assert (
        code == 2
        and err.strip() == f"error: run {run.id} has no checkpoints to dissect (it stopped before its first)"
    )
    code, _, err = cli("report", copy)
    assert (code, err.strip()) == (
        2,
        f"error: run {run.id} has no checkpoints to report (it stopped before its first)",
    )
    lstm = tiny_config(model={"name": "mixer_lm", "mixer": "lstm", "n_layers": 1, "d_model": 16})
    trained = train(lstm, str(tmp_path / "lstm"), progress=False)
    code, _, err = cli("dissect", trained.path, "--quiet", "--no-causal", "--set", "llc.vmap_chains=true")
    assert code == 2 and "llc.vmap_chains: lstm models do not train as one vmapped ensemble" in err, err
    assert not (trained.path / "dissect").exists(), "refused before anything was written"


def test_variants_of_a_model_that_cannot_pack_train_one_run_per_seed(tmp_path, monkeypatch) -> None:
    """A model with dropout (or an LSTM) does not train as an ensemble: each variant's seeds train
    as separate runs, each read as its seed's curve."""
    from icl_lab.analysis import causal
    from icl_lab.analysis.transitions import Transition

    run = train(tiny_config(model={"embed_dropout": 0.1}), str(tmp_path / "runs"), progress=False)
    ablate = Variant("t0-ablate", 0, "any", ("1.0",), {"kind": "ablate", "heads": ["1.0"]}, "ablation")
    baseline = Variant("baseline", -1, "", (), {}, "baseline")
    monkeypatch.setattr(
        causal, "plan", lambda *args: ([Transition(2, 4, 6, 2.8, 2.7)], [baseline, ablate], 8)
    )
    config = causal.CausalConfig(seeds=[0, 1])
    result = causal.run_causal(run, 0, config, tmp_path / "variants", workers=1, progress=False)
    assert sorted(result.runs) == ["baseline s0", "baseline s1", "t0-ablate s0", "t0-ablate s1"]
    for name, path in result.runs.items():
        trained = Run.open(path)
        assert trained.status == "complete" and [c.seed for c in trained.configs] == [int(name[-1])]
    assert [e.variant.name for e in result.effects] == ["t0-ablate"]


def test_an_interrupted_dissect_with_new_settings_leaves_no_results_of_the_old_ones(
    cli, run, tmp_path, monkeypatch
) -> None:
    import icl_lab.analysis.dissect as dissect_module
    from icl_lab.errors import Interrupted

    copy = Run.open(shutil.copytree(run.path, tmp_path / run.id))
    code, _, err = cli("dissect", copy.path, "--workers", "1", "--quiet", "--no-causal", *QUICK_ARGS)
    assert code == 0, err
    out = copy.path / "dissect"
    assert {"report.html", "stages.json", "timeline.png", "traces.png"} <= {p.name for p in out.iterdir()}

    def killed(*args: object) -> None:
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(dissect_module, "_in_pool", killed)
    with pytest.raises(Interrupted):
        dissect(copy, dissect_config([*QUICK, "llc.draws=9"]), workers=1)
    assert json.loads((out / "config.json").read_text())["llc"]["draws"] == 9
    assert not {"report.html", "stages.json", "causal.json"} & {p.name for p in out.iterdir()}
    assert not list(out.glob("*.png")), "no figure of the old settings beside the new ones"
