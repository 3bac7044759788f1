"""The local executor and the reproduction machinery (claims, verdicts, files)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import tiny_config
from icl_lab.analysis.summary import summarise
from icl_lab.config import Duration, ScheduleConfig
from icl_lab.errors import IclLabError
from icl_lab.experiment import ExperimentConfig, load_config, validate_config
from icl_lab.reproduce import REPRODUCTIONS, Claim, reproduce, reproduce_all
from icl_lab.reproduce.base import Reproduction, SweepReproduction, judged_by_seed, mean_spread
from icl_lab.reproduce.function_classes import FunctionClasses
from icl_lab.reproduce.gd import GradientDescent
from icl_lab.reproduce.hernandez import Hernandez
from icl_lab.reproduce.icll import ICLL
from icl_lab.reproduce.kissane import FRONTIER, Kissane
from icl_lab.reproduce.reddy import Reddy, _trend
from icl_lab.reproduce.singh import SUBCIRCUITS, Singh
from icl_lab.sae.config import SAERunConfig, validate_sae_config
from icl_lab.store.run import Run
from icl_lab.sweeps.config import ListAxis, SweepConfig, axis_values
from icl_lab.sweeps.execute import run_configs
from icl_lab.training.trainer import train


def test_local_executor_runs_in_parallel_and_matches_in_process_training(tmp_path: Path) -> None:
    configs = [tiny_config(seed=s, name=f"s{s}") for s in (1, 2, 3)]
    runs = run_configs(configs, tmp_path / "pool", workers=2, progress=False)
    assert [r.config.seed for r in runs] == [1, 2, 3], "runs come back in the order given"
    alone = train(configs[1], str(tmp_path / "alone"), progress=False)
    a, b = alone.parameters(), runs[1].parameters()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_of_other_configs_is_refused_not_reused(tmp_path: Path) -> None:
    run_configs([tiny_config(name="a")], tmp_path, workers=1, progress=False)
    again = run_configs([tiny_config(name="a")], tmp_path, workers=1, progress=False)
    assert again[0].status == "complete", "the same config finds its run"
    changed = tiny_config(name="a", seed=5)
    with pytest.raises(IclLabError, match=r"000-a: .*000-a holds a run of other configs \(hash "):
        run_configs([changed], tmp_path, workers=1, progress=False)
    assert Run.open(tmp_path / "000-a").config.seed != 5, "the old run is left as it was"


def test_packed_configs_train_as_one_ensemble_and_each_handle_reads_its_member(tmp_path: Path) -> None:
    wider = {"name": "transformer", "d_model": 32}
    configs = [
        tiny_config(name="a", seed=1),
        tiny_config(name="b", seed=2, task={"min_prefix": 3}),  # same inputs and outputs: packs
        tiny_config(name="c", seed=1, model=wider),  # another shape: alone
        tiny_config(name="d", seed=4),
    ]
    runs = run_configs(configs, tmp_path, workers=2, progress=False, ensemble="always")
    assert sorted(p.name for p in tmp_path.glob("0*")) == ["000-a-x3", "002-c"]
    assert [(r.path.name, r.member, r.config.name) for r in runs] == [
        ("000-a-x3", 0, "a"),
        ("000-a-x3", 1, "b"),
        ("002-c", 0, "c"),
        ("000-a-x3", 2, "d"),
    ]
    ensemble = Run.open(tmp_path / "000-a-x3")
    for handle in (runs[0], runs[1], runs[3]):
        m = handle.member
        assert (
            handle.config == ensemble.configs[m]
            and handle.whose() == f"seed {handle.config.seed}, member {m} of 3"
        )
        assert np.array_equal(handle.curve("loss", "train")[1], ensemble.curve("loss", "train", member=m)[1])
        assert summarise(handle).final == summarise(ensemble, m).final
        params = ensemble.parameters()
        assert all(torch.equal(p, params[k][m]) for k, p in handle.model().state_dict().items())
        assert handle.eval_data()[0].config == configs[[0, 1, 3][m]].task
    assert not np.array_equal(runs[0].curve("loss", "train")[1], runs[1].curve("loss", "train")[1])
    alone = train(configs[1], str(tmp_path / "alone"), progress=False)
    assert np.allclose(alone.curve("loss", "train")[1], runs[1].curve("loss", "train")[1], rtol=1e-4), (
        "a member learns what it learns alone"
    )
    manifests = {p: p.stat().st_mtime_ns for p in tmp_path.glob("00*/manifest.json")}
    again = run_configs(configs, tmp_path, workers=1, progress=False, ensemble="always")
    assert [r.member for r in again] == [0, 1, 0, 2]
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests, "nothing retrained"


def test_auto_packing_on_a_cpu_spreads_over_the_workers_and_is_kept_on_a_rerun(tmp_path: Path) -> None:
    configs = [tiny_config(name=name, seed=seed) for seed, name in enumerate("abcd")]
    runs = run_configs(configs, tmp_path, workers=2, progress=False, ensemble="auto")
    assert [(r.path.name, r.member) for r in runs] == [
        ("000-a-x2", 0),
        ("000-a-x2", 1),
        ("002-c-x2", 0),
        ("002-c-x2", 1),
    ]
    manifests = {p: p.stat().st_mtime_ns for p in tmp_path.glob("00*/manifest.json")}
    again = run_configs(configs, tmp_path, workers=1, progress=False, ensemble="auto")
    assert [r.path for r in again] == [r.path for r in runs], (
        "one worker would pack all four; the plan is kept"
    )
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests, "nothing retrained"
    (tmp_path / "ensembles.json").write_text("{")
    with pytest.raises(
        IclLabError, match=r"ensembles.json is corrupt; delete it and rerun with the same --workers"
    ):
        run_configs(configs, tmp_path, workers=1, progress=False, ensemble="auto")
    names = [c.name for c in configs]
    (tmp_path / "ensembles.json").write_text(
        json.dumps({"names": names, "setting": "auto", "runs": [[0, 1]]})
    )
    with pytest.raises(IclLabError, match=r"ensembles.json is corrupt"):
        run_configs(configs, tmp_path, workers=1, progress=False, ensemble="auto")


@REPRODUCTIONS.register("tiny-test")
class Tiny(Reproduction):
    title = "a two-run reproduction for the tests"
    quick_budget = "seconds"
    full_scale = "seconds too"

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        return {"a": tiny_config(name="a"), "b": tiny_config(name="b", seed=9)}

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        losses = {k: r.curve("loss", "train")[1][-1] for k, r in runs.items()}
        return [
            Claim("both runs finish", "-", ", ".join(r.status for r in runs.values()), True),
            Claim("the seeds give identical losses", "-", f"{losses['a']:.3f} vs {losses['b']:.3f}", False),
        ]

    def figures(self, runs: dict[str, Run], out: Path) -> list[Path]:
        (out / "figs").mkdir(exist_ok=True)
        (out / "figs" / "losses.png").write_bytes(b"\x89PNG not really")
        return [out / "figs" / "losses.png"]


def test_reproduce_writes_claims(tmp_path: Path) -> None:
    claims, out = reproduce("tiny-test", quick=True, runs_dir=tmp_path, workers=1, progress=False)
    assert [c.reproduced for c in claims] == [True, False]
    record = json.loads((out / "claims.json").read_text())
    assert record["quick"] and len(record["claims"]) == 2
    table = (out / "claims.md").read_text()
    assert "| both runs finish | - | complete, complete | 3, 9 | reproduced |" in table
    assert "not reproduced" in table
    manifests = {p: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}
    again, same = reproduce("tiny-test", quick=True, runs_dir=tmp_path, workers=1, progress=False, resume=out)
    assert same == out and again == claims
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")} == manifests, "nothing retrained"
    assert json.loads((out / "claims.json").read_text())["resumed"]
    with pytest.raises(IclLabError, match="is not a directory of reproduction tiny-test"):
        reproduce("tiny-test", quick=False, runs_dir=tmp_path, workers=1, progress=False, resume=out)


@REPRODUCTIONS.register("tiny-slow-test")
class TinySlow(Reproduction):
    title = "a reproduction long enough to be killed midway, for the tests"
    quick_budget = "seconds"
    full_scale = "seconds too"

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        slow = {"batch_size": 8, "length": {"steps": 3000}, "compile": "off"}
        every = {"every": {"steps": 50}}
        return {"slow": tiny_config(name="slow", training=slow, checkpointing=every, eval=every)}

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        seeds = (3, 4, 5)
        return [Claim("a three-seed figure", "-", mean_spread([1.0, 2.0, 3.0]), True, seeds)]


def test_mean_spread_reports_mean_and_sd_over_seeds() -> None:
    assert mean_spread([1.0, 2.0, 3.0]) == "2.00 ± 1.00 (3 seeds)"
    assert mean_spread([300_000.0, 500_000.0], ",.0f") == "400,000 ± 141,421 (2 seeds)"
    assert mean_spread([0.25]) == "0.25"


def test_reproduce_all_resumes_after_a_kill_without_retraining_finished_runs(cli, tmp_path: Path) -> None:
    names = ["tiny-test", "tiny-slow-test"]
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_reproduce; "
        "from icl_lab.reproduce import reproduce_all; "
        f"reproduce_all(True, sys.argv[2], 1, progress=False, names={names!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path)],
        stderr=subprocess.PIPE,
        start_new_session=True,  # its process group: the command and its training workers
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("reproduce-all-quick-*/tiny-slow-test/*/checkpoints/step_000000050.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    (out,) = tmp_path.glob("reproduce-all-quick-*")
    assert not (out / "claims.md").exists() and not (out / "tiny-slow-test" / "claims.json").exists()
    first = {p: p.stat().st_mtime_ns for p in (out / "tiny-test").rglob("*") if p.is_file()}
    assert (out / "tiny-test" / "claims.json") in first, "the first reproduction finished before the kill"
    (slow,) = (out / "tiny-slow-test").glob("*-slow")
    deadline = time.time() + 30
    while Run.open(slow).status == "running" and time.time() < deadline:
        time.sleep(0.1)  # the killed worker's pid lives until init reaps it
    assert Run.open(slow).status == "interrupted"
    kept = {p: p.stat().st_mtime_ns for p in (slow / "checkpoints").glob("step_000000050.*")}

    by_name, again = reproduce_all(True, tmp_path, 1, progress=False, resume=out, names=names)
    assert again == out
    assert {p: p.stat().st_mtime_ns for p in (out / "tiny-test").rglob("*") if p.is_file()} == first, (
        "the reproduction judged before the kill is neither retrained nor judged again"
    )
    run = Run.open(slow)
    assert run.status == "complete" and run.checkpoint_steps[-1] == 3000
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "the killed run continued from its checkpoint"
    assert [c.reproduced for c in by_name["tiny-test"]] == [True, False]
    assert by_name["tiny-test"][0].seeds == (3, 9), "a claim naming no seeds gets those trained"
    assert by_name["tiny-slow-test"][0].seeds == (3, 4, 5)
    page = (out / "claims.md").read_text()
    assert "2 of 3 claims reproduced over 2 reproductions" in page
    assert "| a three-seed figure | - | 2.00 ± 1.00 (3 seeds) | 3, 4, 5 | reproduced |" in page
    assert "[slow](tiny-slow-test/000-slow/report/report.html)" in page
    assert (out / "tiny-slow-test" / "000-slow" / "report" / "report.html").is_file()
    html = (out / "claims.html").read_text()
    assert html.count("<tr>") == 3 + 2, "a and b differ only in seed: on a CPU they train as one ensemble"
    assert 'href="tiny-test/000-a-x2/report/member-1/report.html"' in html, "b's own page"
    assert (out / "tiny-test" / "000-a-x2" / "report" / "member-0" / "report.html").is_file()
    with pytest.raises(IclLabError, match="is not a directory of reproduce all"):
        reproduce_all(False, tmp_path, 1, progress=False, resume=out, names=names)
    (out / "tiny-test" / "claims.json").write_text('{"reproduction": ')  # killed while it was written
    trained = {p: p.stat().st_mtime_ns for p in (out / "tiny-test").rglob("checkpoints/*")}
    by_name, _ = reproduce_all(True, tmp_path, 1, progress=False, resume=out, names=names)
    assert [c.reproduced for c in by_name["tiny-test"]] == [True, False], "judged again"
    assert {p: p.stat().st_mtime_ns for p in trained} == trained, "from its runs, not retrained"

    docs = tmp_path / "docs"
    (docs / "notes").mkdir(parents=True)
    (docs / "notes" / "tiny-test.md").write_text("why our settings are what they are")
    (docs / "images" / "claims" / "tiny-test").mkdir(parents=True)
    (docs / "images" / "claims" / "tiny-test" / "stale.png").write_bytes(b"from an earlier page")
    reproduce_all(True, tmp_path, 1, progress=False, resume=out, names=names, docs=docs)
    published = (docs / "claims.md").read_text()
    assert "Generated by `icl-lab reproduce all --quick --docs docs`" in published
    assert "| a three-seed figure | - | 2.00 ± 1.00 (3 seeds) | 3, 4, 5 | reproduced |" in published
    assert published.count("[notes on its settings](notes/tiny-test.md)") == 1, "tiny-slow-test has none"
    assert f"runs in `{out.name}/tiny-slow-test`" in published
    assert "![tiny-test: figs-losses](images/claims/tiny-test/figs-losses.png)" in published
    assert (docs / "images/claims/tiny-test/figs-losses.png").read_bytes() == b"\x89PNG not really"
    assert not (docs / "images/claims/tiny-test/stale.png").exists(), "its figures are replaced"
    assert "report.html" not in published, "the run reports stay in the (unpublished) directory"

    # one reproduction rerun alone replaces its own section; the other keeps what it had
    def section(page: str, name: str) -> str:
        return page.split(f'<a id="{name}">')[1].split("<a id=")[0]

    code, _, err = cli(
        "reproduce",
        "tiny-test",
        "--quick",
        "--workers",
        "1",
        "--runs-dir",
        tmp_path / "one",
        "--docs",
        docs,
        "-q",
    )
    assert code == 0, err
    (single,) = (tmp_path / "one").glob("reproduce-tiny-test-quick-*")
    again = (docs / "claims.md").read_text()
    assert section(again, "tiny-slow-test") == section(published, "tiny-slow-test")
    assert f"runs in `{single.name}`;" in section(again, "tiny-test")
    assert f"runs in `{out.name}/tiny-test`" not in again
    assert "2 of 3 claims reproduced over 2 reproductions" in again
    kept = json.loads((docs / "claims.json").read_text())
    assert [r["reproduction"] for r in kept["records"]] == sorted(names) and kept["mode"] == "quick"
    args = ("--quick", "--runs-dir", tmp_path / "two", "--docs", docs / "claims.md", "-q")
    code, _, err = cli("reproduce", "tiny-test", *args)
    assert code == 2 and f"--docs: {docs / 'claims.md'} is not a directory" in err, err
    assert not (tmp_path / "two").exists(), "refused before anything trained"
    blocked = docs / "claims.md" / "new"
    args = ("--quick", "--runs-dir", tmp_path / "three", "--docs", blocked, "-q")
    code, _, err = cli("reproduce", "tiny-test", *args)
    assert code == 2 and f"--docs: cannot make {blocked}: Not a directory" in err, err
    assert not (tmp_path / "three").exists(), "refused before anything trained"
    from icl_lab.report import claims_page

    def read_only(*args: object, **kwargs: object) -> None:  # root, who runs CI, ignores chmod
        raise OSError(errno.EROFS, "Read-only file system")

    with mock.patch.object(claims_page.tempfile, "TemporaryFile", read_only):
        args = ("--quick", "--runs-dir", tmp_path / "four", "--docs", docs, "-q")
        code, _, err = cli("reproduce", "tiny-test", *args)
    assert code == 2 and f"--docs: cannot write in {docs}: Read-only file system" in err, err
    assert not (tmp_path / "four").exists(), "refused before anything trained"


def test_publishing_keeps_modes_apart_and_refuses_a_corrupt_record(tmp_path: Path) -> None:
    from icl_lab.report.claims_page import publish, published_records

    assert published_records(tmp_path / "new" / "docs", "full") == [] and (tmp_path / "new" / "docs").is_dir()
    claim = {"finding": "f", "paper": "p", "ours": "o", "reproduced": True, "seeds": [0]}
    record = {"reproduction": "a", "title": "A", "quick": False, "wall_s": 60.0, "resumed": False}
    publish([({**record, "claims": [claim], "figures": []}, tmp_path, "dir-a")], "full", tmp_path, True)
    assert "1 of 1 claims reproduced over 1 reproductions" in (tmp_path / "claims-full.md").read_text()
    assert not (tmp_path / "claims.md").exists(), "the quick page is another file"
    (tmp_path / "claims-full.json").write_text("{not json")
    with pytest.raises(IclLabError, match=r"claims-full.json is not a published claims record \("):
        publish([({**record, "claims": [], "figures": []}, tmp_path, "dir-a")], "full", tmp_path, True)


def test_reproduce_command_prints_verdicts(cli, tmp_path: Path) -> None:
    code, out, _ = cli(
        "reproduce", "tiny-test", "--quick", "--workers", "1", "--runs-dir", tmp_path, "--quiet"
    )
    assert code == 0
    assert "not reproduced" in out and "1 of 2 claims reproduced" in out
    code, _, err = cli("reproduce", "nobody")
    assert code == 2 and "unknown reproduction 'nobody'" in err
    code, _, err = cli("reproduce", "tiny-test", "--device", "tpu", "--runs-dir", tmp_path / "tpu")
    assert code == 2 and "--device: unknown device 'tpu'" in err and not (tmp_path / "tpu").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_reproduce_on_cuda_packs_seeds_into_one_ensemble(tmp_path: Path) -> None:
    claims, out = reproduce("tiny-test", True, tmp_path, workers=1, progress=False, device="cuda")
    assert [p.name for p in out.glob("0*")] == ["000-a-x2"], "a and b differ only in seed"
    assert claims[0].ours == "complete, complete" and claims[0].seeds == (3, 9)
    run = Run.open(out / "000-a-x2")
    assert run.config.training.device == "cuda" and len(run.configs) == 2


def test_trend_judgement() -> None:
    assert _trend([0.02, 0.09, 0.22, 0.49], rising=True)
    assert _trend([1.0, 0.69, 0.41, 0.21], rising=False)
    assert not _trend([0.07, 0.81, 0.77, 0.71], rising=True), "a drop beyond the tolerance breaks the trend"
    assert not _trend([0.2, 0.22, 0.25, 0.3], rising=True), "too small a change is no trend"


@REPRODUCTIONS.register("tiny-sweep-test")
class TinySweep(SweepReproduction):
    title = "a one-sweep reproduction for the tests"
    quick_budget = "seconds"
    full_scale = "seconds too"

    def sweeps(self, quick: bool) -> dict:
        from test_sweeps import sweep

        return {"tiny": sweep(self.tmp)}

    def judge(self, results: dict, quick: bool) -> list[Claim]:
        table = results["tiny"]
        return [
            Claim(
                "every point completes",
                "-",
                f"{table.num_rows} points",
                set(table.column("status").to_pylist()) == {"complete"},
            )
        ]


def test_sweep_reproduction_runs_its_sweeps_and_writes_their_reports(tmp_path: Path) -> None:
    TinySweep.tmp = tmp_path
    claims, out = reproduce("tiny-sweep-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert [c.reproduced for c in claims] == [True] and claims[0].ours == "4 points"
    assert (out / "tiny" / "results.parquet").is_file() and (
        out / "tiny" / "report" / "report.html"
    ).is_file()


def test_phase_diagram_helpers() -> None:
    import pyarrow as pa

    from icl_lab.reproduce.reddy_phase import mean_grid, share_monotone

    rows = [
        {"status": "complete", "B": b, "K": k, "seed": s, "ic": 0.1 * b + 0.01 * k + 0.02 * s}
        for b in (0, 2)
        for k in (1, 4)
        for s in (0, 1)
    ]
    rows.append({"status": "failed", "B": 2, "K": 4, "seed": 2, "ic": None})
    ys, xs, grid = mean_grid(pa.Table.from_pylist(rows), "B", "K", "ic")
    assert (ys, xs) == ([0, 2], [1, 4])
    np.testing.assert_allclose(grid, [[0.02, 0.05], [0.22, 0.25]])
    assert share_monotone(grid, rising=True) == 1.0
    assert share_monotone(grid, rising=False) == 0.5, "the two 0.03 steps are ties within the tolerance"
    assert share_monotone(np.array([[0.5, 0.47], [0.6, 0.2]]), rising=True) == 0.5


def shortened(config: ExperimentConfig, steps: int, **task: object) -> ExperimentConfig:
    """A reproduction's config cut to a few steps (evaluated every other step), task fields replaced."""
    return config.model_copy(
        update={
            "task": config.task.model_copy(update=task),
            "training": config.training.model_copy(update={"length": Duration(steps=steps)}),
            "eval": config.eval.model_copy(update={"every": Duration(steps=2), "batch_size": 8}),
            "checkpointing": config.checkpointing.model_copy(update={"every": Duration(steps=steps)}),
        }
    )


def shortened_reproduction(name: str, base: type[Reproduction], steps: int, **task: object) -> None:
    """Register `base` under `name` with every experiment cut to `steps` steps, task fields replaced
    (shortened)."""

    class Short(base):
        def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
            return {key: shortened(c, steps, **task) for key, c in super().experiments(quick).items()}

    REPRODUCTIONS.register(name)(Short)


@REPRODUCTIONS.register("icll-tiny-test")
class TinyICLL(ICLL):
    """The ICLL reproduction with every run cut to a few steps on a small RegBench world, two seeds."""

    seeds = (0, 1)

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        small = {"n_train_dfas": 30, "n_val_dfas": 8, "n_test_dfas": 8, "seq_len": 32}
        return {name: shortened(c, 4, **small) for name, c in super().experiments(quick).items()}


shortened_reproduction("gd-tiny-test", GradientDescent, 20)
REPRODUCTIONS.get("gd-tiny-test").eval_prompts = 500  # the GD line searches' prompts


shortened_reproduction("function-classes-tiny-test", FunctionClasses, 6)


shortened_reproduction("singh-tiny-test", Singh, 4, n_train_classes=10)  # 2,880 sequences to score


def test_singh_reproduction_runs_its_grids_and_judges(tmp_path: Path) -> None:
    claims, out = reproduce("singh-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert len(claims) == 9
    progress, classes, labels = claims[4], claims[7], claims[8]
    assert "composite (previous-token clamp on head 0." in progress.ours and progress.seeds == (0, 1, 2)
    for claim in claims[:7]:  # every claim but the grids' is judged on each seed
        assert claim.seeds == (0, 1, 2) and claim.ours.startswith("seed 0: ") and "; seed 2: " in claim.ours
        assert claim.ours.endswith(" of 3 seeds (judged: most)")
    assert classes.ours.startswith("50 classes: never (3 of 3 seeds never by 2,000,000); 100 classes")
    assert "15 labels" in labels.ours and labels.seeds == (0, 1, 2)
    assert not classes.reproduced and not labels.reproduced, "no run gets there in 4 steps: no direction"
    assert (out / "singh.png").stat().st_size > 10_000


def test_singh_subcircuit_runs_are_set_as_the_authors_runs() -> None:
    """icl-dynamics ih_paper_runs.sh: perfect_l1 and perfect_match train one induction head (REST_HEADS
    ablated), perfect_l1_and_copy all eight; the match run is the match claim's too."""
    experiments = Singh().experiments(quick=True)
    assert not any("single + match" in name for name in experiments)
    clamps = {
        name: [(c.kind, getattr(c, "heads", None)) for c in experiments[f"{name} s1"].clamps]
        for name in SUBCIRCUITS
    }
    others = ("ablate", [f"1.{h}" for h in range(1, 8)])
    assert clamps == {
        "Layer 1 + copy (B learned)": [("layer1", None), ("copy", None)],
        "match (C learned)": [others, ("induction_match", ["1.0"])],
        "Layer 1 (B, C learned)": [others, ("layer1", None)],
    }
    assert experiments["Layer 1 + copy (B learned) s1"].clamps[1].head == "1.0"


shortened_reproduction("reddy-tiny-test", Reddy, 6)


def test_a_claim_judged_by_seed_holds_when_most_seeds_show_it() -> None:
    judged = [(0, True, "seed 0: a"), (1, False, "seed 1: b"), (2, True, "seed 2: c")]
    claim = judged_by_seed("f", "p", judged)
    assert claim.reproduced and claim.seeds == (0, 1, 2)
    assert claim.ours == "seed 0: a; seed 1: b; seed 2: c; it shows in 2 of 3 seeds (judged: most)"
    assert not judged_by_seed("f", "p", judged[:2]).reproduced, "one of two is not most"
    assert judged_by_seed("f", "p", judged[:1]).ours == "seed 0: a"


def test_reddy_reproduction_judges_means_over_seeds(tmp_path: Path) -> None:
    claims, _ = reproduce("reddy-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert len(claims) == 8
    burst = claims[0]
    assert burst.seeds == (0, 1, 2) and burst.ours.startswith("IC B=0: ") and "±" in burst.ours
    assert claims[3].seeds == (0, 1, 2), "L = N on three seeds"
    for claim in claims[4:7]:  # p_C, the progress measures and the fit: judged on each seed
        assert claim.seeds == (0, 1, 2) and claim.ours.startswith("seed 0: ") and "; seed 2: " in claim.ours
        shown = int(claim.ours.split("; it shows in ")[1].split(" of 3 seeds (judged: most)")[0])
        assert claim.reproduced == (shown >= 2)
    assert "deep in-weights classifier" in claims[7].finding and claims[7].seeds == (0, 1, 2)
    for quick in (True, False):  # each class's in-weights rate set by its frequency: SGD, not Adam
        optimizer = Reddy().experiments(quick)["reduced B2 s1"].training.optimizer
        assert optimizer == load_config("reddy_paper").training.optimizer  # the author's decay 1e-6 a step


def test_gd_and_function_class_reproductions_run_and_judge(tmp_path: Path) -> None:
    claims, _ = reproduce("gd-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert len(claims) == 7 and "GD++" in claims[5].ours
    multi_step = claims[5].ours.split("; ")  # GD tuned on each seed's own prompts
    assert claims[5].seeds == (0, 1, 2) and [part[:8] for part in multi_step[:3]] == [
        "seed 0: ",
        "seed 1: ",
        "seed 2: ",
    ]
    assert len({part[8:] for part in multi_step[:3]}) == 3, "each seed draws its own prompts"
    assert not claims[0].reproduced, "20 steps do not reach the GD loss"
    claims, out = reproduce(
        "function-classes-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False
    )
    assert len(claims) == 5 and not claims[0].reproduced
    assert "orthogonal" in claims[2].ours and "scaled" in claims[3].ours
    for figure in ("linear", "ood", "window"):
        assert (out / f"function_classes_{figure}.png").stat().st_size > 10_000


def test_icll_reproduction_runs_every_architecture_and_judges(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))
    claims, out = reproduce("icll-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert len(claims) == 5
    table = claims[0].ours
    for name in ("transformer (learned)", "transformer (RoPE)", "lstm", "gru", "mamba", "s4d", "gla"):
        assert f"{name} " in table
    assert "4-gram (in context)" in table and "±" in table and "; seed 1: transformer" in table
    for claim in claims[:4]:  # judged on each seed
        assert claim.seeds == (0, 1) and claim.ours.endswith(" of 2 seeds (judged: most)")
    assert claims[1].ours.startswith("seed 0: lstm ") and "seed 1: transformer" in claims[3].ours
    assert "n=2: head" in claims[3].ours
    assert claims[4].reproduced, "the default generator's n-gram baselines match the paper"
    assert claims[4].seeds == (0, 1) and claims[4].ours.startswith("seed 0: 2-gram 0.")
    assert "; seed 1: 2-gram 0." in claims[4].ours, "each seed's languages on the default generator"
    assert (out / "icll_architectures.png").stat().st_size > 10_000


def test_icll_full_mode_builds_each_architecture_at_the_authors_size() -> None:
    from icl_lab.experiment import build_model

    configs = {
        key.removesuffix(" s0"): c
        for key, c in ICLL().experiments(quick=False).items()
        if key.endswith(" s0")
    }
    models = {name: build_model(config) for name, config in configs.items()}
    widths = {
        name: (
            len(m.blocks),
            m.embed.weight.shape[-1] if hasattr(m.embed, "weight") else m.embed.W_E.shape[-1],
        )
        for name, m in models.items()
    }
    bare = {"mamba", "lstm", "lstm+ngram", "gru"}  # lm_simple_noffn: one mixer, no dropout in effect
    assert all(m.cfg.embed_dropout == (0 if name in bare else 0.1) for name, m in models.items())
    assert all(
        m.cfg.tie_unembed and not hasattr(getattr(m, "unembed", None), "weight") for m in models.values()
    )
    assert all(m.cfg.init == "gpt2" for name, m in models.items() if name not in bare)
    assert widths["transformer (learned)"] == (8, 128) and configs["transformer (learned)"].model.n_heads == 2
    assert widths["transformer (RoPE)"] == (2, 128) and configs["transformer (RoPE)"].model.attn_dropout == 0
    assert widths["lstm"] == widths["lstm+ngram"] == (1, 32) and not hasattr(models["lstm"].blocks[0], "mlp")
    assert widths["mamba"] == (1, 128) and not hasattr(models["mamba"].blocks[0], "ln1")
    assert widths["gla"] == (4, 128) and widths["retention"] == (2, 32)
    assert widths["linear_attention+ngram"] == widths["linear_attention"] == (8, 128)
    assert all(m.cfg.act_fn == "gelu_new" for name, m in models.items() if name not in bare)
    assert configs["gla"].model.gla_yang and configs["retention"].model.retnet
    assert configs["linear_attention"].model.attn_dropout == 0.1
    timm = ScheduleConfig(  # a tenth of 20,000 steps
        name="cosine", warmup_steps=2000, min_lr_ratio=0.1, warmup_start=1e-6, decay_over="whole_run"
    )
    assert all(c.training.schedule == timm for c in configs.values())
    assert models["s4d"].no_weight_decay() == {
        f"blocks.{i}.mixer.{p}" for i in (0, 1) for p in ("log_dt", "A_log", "A_imag")
    }


def test_function_classes_full_mode_takes_garg_et_al_s_model_optimiser_and_curriculum() -> None:
    config = FunctionClasses().experiments(quick=False)["linear s0"]
    model, training, task = config.model, config.training, config.task
    assert (model.n_layers, model.n_heads, model.d_model) == (12, 8, 256)
    assert (model.norm, model.positional) == ("pre", "learned")
    assert training.optimizer.name == "adam" and training.optimizer.lr == 1e-4
    assert training.schedule == ScheduleConfig(name="constant") and training.batch_size == 64
    assert (task.dim, task.n_points, training.length.steps) == (20, 41, 50_000)
    assert (task.dims_curriculum.start, task.dims_curriculum.end, task.dims_curriculum.every) == (5, 20, 2000)
    assert (task.points_curriculum.start, task.points_curriculum.increment) == (11, 2)


@REPRODUCTIONS.register("hernandez-tiny-test")
class TinyHernandez(Hernandez):
    """Hernandez's sweeps cut to a few steps of 32-byte windows of a small local corpus."""

    def sweeps(self, quick: bool) -> dict:
        short = [
            f"task.corpus={self.corpus}",
            "training.length={steps: 8}",
            "eval.every={steps: 2}",
            "eval.batch_size=8",
            "task.seq_len=32",
            "checkpointing.every={steps: 8}",
        ]
        sweeps = {name: _shortened(sweep, short) for name, sweep in super().sweeps(quick).items()}
        # 8 steps draw 24 bank sequences (3 a batch): E up to 24 fits, and E = 1 stays the ladder's
        fits = {1: 1, 10: 2, 100: 4, 1000: 8, 3000: 24}
        for sweep in sweeps.values():
            for point in sweep.axes[0].points:
                if "task.repeat.epochs" in point:
                    point["task.repeat.epochs"] = fits[point["task.repeat.epochs"]]
        return {name: sweep.model_copy(update={"seeds": [0, 1]}) for name, sweep in sweeps.items()}


def _shortened(sweep: SweepConfig, short: list[str]) -> SweepConfig:
    """A sweep with overrides added, and every point's own length cut to 8 steps."""
    points = [
        {**p, **({"training.length": {"steps": 8}} if "training.length" in p else {})}
        for axis in sweep.axes
        for p in axis_values(axis)
    ]
    update = {"overrides": [*sweep.overrides, *short], "axes": [ListAxis(points=points)]}
    return sweep.model_copy(update=update)


def test_hernandez_reproduction_runs_its_sweeps_and_judges(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "value", "import", "class", "(", ")", ":", "\n"]
    for i in range(10):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"file{i}.py").write_text(" ".join(rng.choice(words, 2000)))
    TinyHernandez.corpus = tmp_path / "corpus"
    claims, out = reproduce("hernandez-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert len(claims) == 6
    assert [c.finding.split(":")[0] for c in claims[:4]] == ["d 32"] * 4
    assert "E=1: " in claims[0].ours and "E=24: " in claims[0].ours
    assert "ladder (params: loss) d 16 (" in claims[3].ours and "d 64 (" in claims[3].ours
    assert "with MLPs" in claims[4].ours and "d 128" in claims[5].ours
    assert "seeds 0, 1" in claims[0].ours, "the repetition claims rest on both seeds' means"
    olsson = claims[5]
    assert olsson.seeds == (0, 1) and "seed 0)" in olsson.ours and "seed 1)" in olsson.ours
    assert olsson.ours.count("d 128 (") == 2, "Olsson's claim is judged on each seed"
    figures = ("heldout_over_training", "loss_against_repeats", "induction_against_loss", "olsson_timeline")
    for figure in figures:
        assert (out / f"{figure}.png").stat().st_size > 10_000
    assert (out / "hernandez" / "report" / "report.html").is_file()
    assert "olsson_timeline.png" in (out / "claims.md").read_text()


@REPRODUCTIONS.register("kissane-tiny-test")
class TinyKissane(Kissane):
    """Kissane's models and SAEs cut to a few steps of 32-byte windows of a small local corpus, two
    seeds."""

    scored_tokens = 128
    seeds = (0, 1)

    def experiments(self, quick: bool) -> dict:
        out = {}
        for name, config in super().experiments(quick).items():
            data = config.model_dump(mode="json", by_alias=True)
            if isinstance(config, SAERunConfig):
                data["buffer"] |= {"tokens": 2048, "chunk": 8}
                data["sae"]["expansion"] = 2
                if data["sae"]["architecture"] == "relu_l1":
                    data["sae"]["resample_every"] = 5
                data["training"] |= {"steps": 10, "batch_size": 64, "warmup_steps": 2}
                data["eval"] = {"every": 5, "sequences": 4}
                out[name] = validate_sae_config(data)
                continue
            if data["task"]["name"] == "text_lm":
                data["task"] |= {"corpus": str(self.corpus), "seq_len": 32}
            data["model"]["d_model"] = 32
            data["training"]["length"] = {"steps": 8}
            data["eval"] |= {"every": {"steps": 4}, "batch_size": 8}
            data["checkpointing"]["every"] = {"steps": 8}
            out[name] = validate_config(data)
        return out


def test_kissane_reproduction_trains_models_then_their_saes_and_judges(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "value", "import", "class", "(", ")", ":", "\n"]
    (tmp_path / "corpus").mkdir()
    for i in range(10):
        (tmp_path / "corpus" / f"file{i}.py").write_text(" ".join(rng.choice(words, 2000)))
    TinyKissane.corpus = tmp_path / "corpus"
    claims, out = reproduce("kissane-tiny-test", quick=True, runs_dir=tmp_path, workers=2, progress=False)
    assert len(claims) == 6
    for claim in claims:  # each judged on each seed
        assert claim.seeds == (0, 1) and claim.ours.startswith("seed 0: ") and "; seed 1: " in claim.ours
        assert claim.ours.endswith(" of 2 seeds (judged: most)")
    assert "text-2l layer 1: L0" in claims[0].ours and "text-3l layer 2: L0" in claims[0].ours
    assert "induction-2l layer 1" in claims[0].ours
    assert "live features" in claims[1].ours and "heads span 2+ of the families" in claims[2].ours
    assert "topk L0" in claims[5].ours and "batchtopk L0" in claims[5].ours and "relu_l1 L0" in claims[5].ours
    for figure in ("frontier", "heads", "prefix"):
        assert (out / f"{figure}.png").stat().st_size > 10_000
    text = (out / "claims.md").read_text()
    assert "frontier.png" in text and "dashboard/index.html)" in text
    for seed in (0, 1):  # every layer's SAE and the frontier's, on each seed's models
        assert len(list(out.glob(f"*-sae-*-s{seed}-*"))) == 2 + 2 + 3 + len(FRONTIER)


def test_kissane_head_claims_count_only_decoder_rows_that_left_their_initialisation() -> None:
    from icl_lab.reproduce.kissane import Decomposition

    # 20 moved rows, all dominated by head 0, their features from two families; 80 unmoved rows,
    # 20 of them dominated by head 1 (one family), the rest spread over the 4 heads
    shares = torch.full((100, 4), 0.25)
    shares[:20] = torch.tensor([0.85, 0.05, 0.05, 0.05])
    shares[20:40] = torch.tensor([0.1, 0.7, 0.1, 0.1])
    families = torch.tensor([0, 2] * 10 + [1] * 80)
    moved = torch.arange(100) < 20
    main = {"m layer 0": Decomposition("m layer 0", 0, 5.0, 0.9, families, shares, moved)}
    holds, text = Kissane._heads(main)
    assert holds and text.startswith("100% of the 20 live features (of 100) whose decoder rows left"), (
        "all rows: 40%"
    )
    assert text.endswith(
        "(cosine to it < 0.9) have one head with >= 50% of the decoder norm; 100% have two heads with >= 80%"
    )
    holds, text = Kissane._polysemantic(main)
    assert holds and text.startswith("100% of 1 heads"), "with unmoved rows: head 1 monosemantic, 50%"
    unmoved = {
        "m layer 0": Decomposition("m layer 0", 0, 5.0, 0.9, families, shares, torch.zeros_like(moved))
    }
    for judge in (Kissane._heads, Kissane._polysemantic):
        holds, text = judge(unmoved)
        assert not holds and text.startswith("inconclusive: none of the 100 live features' decoder rows")


def test_noise_effect_by_budget_reads_each_runs_curve(tmp_path: Path) -> None:
    import pyarrow as pa

    from icl_lab.reproduce.reddy_phase import _noise_by_budget

    rows = []
    for noise in (0.1, 1.5):
        config = shortened(load_config("reddy_fast", [f"name=n{noise}"]), 6, noise=noise, n_classes=64)
        run = train(config, str(tmp_path), progress=False)
        rows.append({"task.noise": noise, "seed": 0, "run": str(run.path), "member": 0, "status": "complete"})
    finals = {
        (r["task.noise"], s): Run.open(Path(r["run"])).curve("accuracy", s)[1][-1]
        for r in rows
        for s in ("ic", "iw")
    }
    adam = np.array([[0.9, 0.3]])
    claim = _noise_by_budget(pa.Table.from_pylist(rows), [0.0], [0.1, 1.5], adam, adam)
    ic, iw = [finals[0.1, "ic"], finals[1.5, "ic"]], [finals[0.1, "iw"], finals[1.5, "iw"]]
    assert f"6,000 steps IC {ic[0]:.2f} {ic[1]:.2f}, IW {iw[0]:.2f} {iw[1]:.2f}" in claim.ours, (
        "past the end: final"
    )
    assert "Adam 1e-3, 1,500 steps (alpha = 0.0): IC 0.90 0.30" in claim.ours and claim.seeds == (0,)
    assert claim.reproduced == (ic[1] >= ic[0] + 0.05 and iw[1] <= iw[0] - 0.05)


@pytest.mark.parametrize("which", ["tiny-test", "all"])
def test_an_interrupted_reproduction_says_how_to_continue_it(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    from icl_lab.errors import Interrupted
    from icl_lab.reproduce import base

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(base, "_reproduce_in", stopped)
    code, _, err = cli("reproduce", which, "--quick", "--runs-dir", tmp_path, "-q")
    (out,) = tmp_path.glob(f"reproduce-{which}-quick-*")
    assert code == 143 and err.strip() == (
        f"interrupted (SIGTERM); continue with: icl-lab reproduce {which} --quick --resume {out}"
    )
    docs = tmp_path / "my docs"  # --docs is carried (quoted), or the continued run would not publish
    code, _, err = cli("reproduce", which, "--quick", "--runs-dir", tmp_path / "two", "--docs", docs, "-q")
    (out,) = (tmp_path / "two").glob(f"reproduce-{which}-quick-*")
    assert code == 143 and err.strip() == (
        f"interrupted (SIGTERM); continue with: icl-lab reproduce {which} --quick --docs '{docs}' "
        f"--resume {out}"
    )
