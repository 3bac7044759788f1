"""Sweeps: expansion and validation, ensemble packing, executors, resume, failures, results."""

import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from conftest import TINY_BURSTY, TINY_READOUT_MODEL, tiny_config
from icl_lab.errors import ConfigError, IclLabError
from icl_lab.store.run import Run
from icl_lab.sweeps import packing
from icl_lab.sweeps.config import SweepConfig, expand, load_sweep, plan
from icl_lab.sweeps.execute import run_configs
from icl_lab.sweeps.packing import forward_mflop
from icl_lab.sweeps.run import prepare_sweep, read_results, run_sweep, sweep_status
from icl_lab.tasks.base import TASKS
from icl_lab.training.trainer import train


def same_table(a: pa.Table, b: pa.Table, ignore: tuple[str, ...] = ("run",)) -> bool:
    """Equal columns and values, NaN equal to NaN."""
    names = [c for c in a.column_names if c not in ignore]
    if names != [c for c in b.column_names if c not in ignore]:
        return False
    nan = lambda x: isinstance(x, float) and math.isnan(x)  # noqa: E731
    return all(
        x == y or (nan(x) and nan(y))
        for c in names
        for x, y in zip(a[c].to_pylist(), b[c].to_pylist(), strict=True)
    )


def base_file(tmp_path: Path, steps: int = 16) -> str:
    """A tiny bursty config, eager: long runs here are for stopping, and must start at once."""
    config = tiny_config(
        task=TINY_BURSTY,
        model={**TINY_READOUT_MODEL, "positional": "learned"},
        training={"length": {"steps": steps}, "compile": "off"},
        eval={"every": {"steps": 8}, "batch_size": 32},
        checkpointing={"every": {"steps": 8}},
    )
    path = tmp_path / f"base{steps}.yaml"
    path.write_text(config.to_yaml())
    return str(path)


def sweep(tmp_path: Path, **fields: object) -> SweepConfig:
    data = {
        "name": "s",
        "base": base_file(tmp_path),
        "axes": [{"grid": {"task.burstiness": [0, 2]}}],
        "seeds": [0, 1],
        **fields,
    }
    return SweepConfig.model_validate(data)


def test_axes_cross_and_seeds_repeat(tmp_path: Path) -> None:
    config = sweep(
        tmp_path,
        axes=[
            {"grid": {"task.burstiness": [0, 2], "task.n_classes": [32, 64]}},
            {"zip": {"task.noise": [0.1, 1.0], "training.optimizer.lr": [0.01, 0.001]}},
            {"points": [{"task.zipf_alpha": 0.0}, {"task.zipf_alpha": 1.0, "task.p_bursty": 0.5}]},
        ],
        seeds=[3, 4, 5],
    )
    points = expand(config)
    assert len(points) == 4 * 2 * 2 * 3
    last = points[-1]
    assert last.params == {
        "task.burstiness": 2,
        "task.n_classes": 64,
        "task.noise": 1.0,
        "training.optimizer.lr": 0.001,
        "task.zipf_alpha": 1.0,
        "task.p_bursty": 0.5,
    }
    assert (last.seed, last.config.seed, last.config.task.noise, last.config.training.optimizer.lr) == (
        5,
        5,
        1.0,
        0.001,
    )
    assert last.config.task.p_bursty == 0.5 and points[0].config.task.p_bursty == 1.0
    assert len({p.config.name for p in points}) == len(points)


def test_every_point_is_validated_before_work(tmp_path: Path) -> None:
    bad = sweep(tmp_path, axes=[{"grid": {"task.burstiness": [2, 3]}}])
    with pytest.raises(
        ConfigError,
        match=r"sweep point 2 \(task.burstiness=3, seed 0\): config error: task: burstiness B \(3\)",
    ):
        expand(bad)
    with pytest.raises(ValueError, match="same length"):
        sweep(tmp_path, axes=[{"zip": {"task.noise": [0.1], "task.alpha": [1, 2]}}])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": "reddy_fast", "axis": []}))
    with pytest.raises(ConfigError, match="axis: unknown field"):
        load_sweep(path)
    for outside in ("..", ".", ".hidden", "-s"):  # a sweep's name is its directory under --runs-dir
        path.write_text(yaml.safe_dump({"name": outside, "base": "reddy_fast"}))
        refused = rf"name: String should match pattern .* \(got '{re.escape(outside)}'\)"
        with pytest.raises(ConfigError, match=refused):
            load_sweep(path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"seeds": [0, 1, 0]}, r"seeds: a seed is given twice \(\[0, 1, 0\]\)"),
        (
            {"axes": [{"grid": {"task.burstiness": [2, 2]}}]},
            r'axes.0: the point \{"task.burstiness": 2\} is given twice',
        ),
        (
            {"axes": [{"points": [{"task.noise": 0.1}, {"task.noise": 0.1}]}]},
            r'axes.0: the point \{"task.noise": 0.1\} is given twice',
        ),
        (
            {"axes": [{"grid": {"task.burstiness": [0, 2]}}, {"zip": {"task.burstiness": [2, 0]}}]},
            "axes.1: task.burstiness is already swept by axes.0",
        ),
    ],
)
def test_a_point_or_seed_given_twice_is_refused(tmp_path: Path, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sweep(tmp_path, **fields)


def test_packing_into_ensembles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = sweep(
        tmp_path, axes=[{"grid": {"task.burstiness": [0, 2], "model.d_model": [16, 32]}}], seeds=[0, 1, 2]
    )
    points = expand(config)
    sizes = lambda setting, workers, **fields: [  # noqa: E731
        [p.index for p in u.points]
        for u in plan(config.model_copy(update={"ensemble": setting, **fields}), points, workers)
    ]
    assert sizes("none", 2) == [[i] for i in range(12)]
    small, wide = [0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]  # d_model 16 and 32, either burstiness
    assert sizes("always", 2, max_ensemble=4) == [small[:3], wide[:3], small[3:], wide[3:]], (
        "a group over max_ensemble splits into ensembles of equal size"
    )
    assert sizes("always", 1) == [small, wide]
    assert sizes("auto", 2) == [small, wide], "tiny models pack on a CPU: 12 points, one ensemble per worker"
    assert sizes("auto", 4) == [small[:3], wide[:3], small[3:], wide[3:]]
    assert sizes("auto", 8) == sorted([small[:2], wide[:2], small[2:4], wide[2:4], small[4:], wide[4:]])
    for unit in plan(config, points, 2):
        assert len({p.config.model.d_model for p in unit.points}) == 1, "one shape per ensemble"
    flops = {16: forward_mflop(points[0].config), 32: forward_mflop(points[3].config)}
    monkeypatch.setattr(packing, "PACK_CPU_MFLOP", (flops[16] + flops[32]) / 2)
    assert sizes("auto", 2) == sorted([small[:3], small[3:], *[[i] for i in wide]]), (
        "a model over the size trains alone on a CPU; the packed points spread over the workers"
    )
    monkeypatch.setattr(
        packing, "forward_mflop", lambda c: pytest.fail("on a GPU auto packs without measuring the model")
    )
    cuda = lambda c: c.model_copy(update={"training": c.training.model_copy(update={"device": "cuda"})})  # noqa: E731
    on_gpu = [dataclasses.replace(p, config=cuda(p.config)) for p in points]
    assert [[p.index for p in u.points] for u in plan(config, on_gpu, 2)] == [small, wide]


def test_lstm_and_gru_models_train_alone_whatever_the_ensemble_setting(tmp_path: Path) -> None:
    """torch's LSTM and GRU have no vmap rule (on a CPU: "Batching rule not implemented for
    aten::lstm.input"; on a GPU cuDNN's kernel fails): their configs pack into no ensemble, and an
    ensemble of them is refused before anything is written; Mamba's still pack."""
    from icl_lab.experiment import check_ensemble
    from icl_lab.sweeps.packing import ensembles

    def configs(mixer: str, device: str = "cpu") -> list:
        model = {"name": "mixer_lm", "mixer": mixer, "n_layers": 1, "d_model": 16}
        on = lambda c: c.model_copy(update={"training": c.training.model_copy(update={"device": device})})  # noqa: E731
        return [
            on(tiny_config(model=model, seed=seed, training={"length": {"steps": 2}})) for seed in range(3)
        ]

    for mixer in ("lstm", "gru"):
        for setting, device in itertools.product(("always", "auto"), ("cpu", "cuda")):
            assert ensembles(configs(mixer, device), setting, 1, 16) == [[0], [1], [2]]
        with pytest.raises(ConfigError, match=f"^{mixer} models do not train as one vmapped ensemble"):
            train(configs(mixer), str(tmp_path / mixer), progress=False)
        assert not (tmp_path / mixer).exists(), "refused before anything was written"
        check_ensemble(configs(mixer)[:1])  # one member: a single run
    assert ensembles(configs("mamba", "cuda"), "auto", 1, 16) == [[0, 1, 2]]
    check_ensemble(configs("mamba"))
    lstms, saved = configs("lstm"), tmp_path / "older" / "ensembles.json"
    saved.parent.mkdir()  # a plan an older icl-lab saved with ensemble: always, kept for reruns
    names = [c.name for c in lstms]
    saved.write_text(json.dumps({"names": names, "setting": "always", "runs": [[0, 1], [2]]}))
    with pytest.raises(IclLabError, match=f"^{saved} packs runs that cannot train together \\(lstm models"):
        run_configs(lstms, saved.parent, workers=1, progress=False, ensemble="always")
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ensembles.json"], "refused before training"


def test_forward_flops_are_counted_at_the_training_batch_size() -> None:
    """Against a closed form: a one-layer attention-only model without layer norms, whose forward
    is embeddings (no FLOPs), the heads' query, key, value and output projections, their scores and
    weighted sums, and the unembedding (biases are not counted)."""
    model = {"n_layers": 1, "norm": "none"}
    for batch in (8, 16):
        config = tiny_config(model=model, training={"batch_size": batch})
        io = TASKS.get(config.task.name).io(config.task)
        T, d, heads = io.n_ctx, 16, 16  # heads: n_heads * d_head
        multiply_adds = 4 * T * d * heads + 2 * T * T * heads + T * d * io.d_out  # per sequence
        assert forward_mflop(config) == pytest.approx(2 * batch * multiply_adds / 1e6)


def test_the_largest_jobs_are_handed_out_first(tmp_path: Path) -> None:
    """Estimated work is three forward passes per member-step: a wider model, a longer run and a
    larger ensemble each count; equal jobs keep their order, and a job waits for the one it needs."""
    from icl_lab.sweeps.execute import Job, Schedule, largest_first

    short = tiny_config(training={"length": {"steps": 10}})
    longer = tiny_config(training={"length": {"steps": 30}})
    wide = tiny_config(model={"d_model": 32}, training={"length": {"steps": 20}})
    jobs = [Job(tmp_path / str(i), c) for i, c in enumerate([(short,), (longer,), (short, short), (wide,)])]
    forward: dict[str, float] = {}
    work = [packing.training_mflop(job.configs, forward) for job in jobs]
    assert len(forward) == 3, "one forward count per shape"
    one = forward_mflop(short)
    assert work[:3] == [pytest.approx(3 * one * n) for n in (10, 30, 20)]
    assert work[3] == pytest.approx(3 * forward_mflop(wide) * 20) and forward_mflop(wide) > 2 * one
    assert largest_first(jobs, workers=2) == [3, 1, 2, 0]
    assert largest_first(jobs, workers=1) == [0, 1, 2, 3], "one worker: nothing to balance"
    assert largest_first(jobs[:2], workers=2) == [0, 1], "no more jobs than workers"
    assert largest_first([*jobs[:2], *jobs[:2]], workers=2) == [1, 3, 0, 2], "equal jobs keep their order"
    after = [Job(tmp_path / "a", (short,)), Job(tmp_path / "b", (longer,), after=(0,))]
    schedule = Schedule(after, [1, 0])
    assert schedule.take() == (0, None) and schedule.take() is None, "the larger job waits for its input"
    schedule.done(0, "complete")
    assert schedule.take() == (1, None)


def test_a_rerun_keeps_the_plan_whatever_the_worker_count(tmp_path: Path) -> None:
    config = sweep(tmp_path, seeds=[0, 1, 2])
    units, _ = prepare_sweep(config, tmp_path / "s", 1)
    grouped = [[p.index for p in u.points] for u in units]
    assert grouped == [[0, 1, 2, 3, 4, 5]] and len(plan(config, expand(config), 3)) == 3
    again, jobs = prepare_sweep(config, tmp_path / "s", 3)
    assert [[p.index for p in u.points] for u in again] == grouped and len(jobs) == 1
    (tmp_path / "s" / "plan.json").write_text('{"units": [{"unit": "u000"}]}')
    with pytest.raises(IclLabError, match=r"plan.json is corrupt \(not a sweep plan\); delete it"):
        prepare_sweep(config, tmp_path / "s", 2)
    (tmp_path / "s" / "plan.json").write_text('{"units": [{"unit": "u000", "points": [0, 1]}]}')
    with pytest.raises(ConfigError, match=r"plan\.json does not group this sweep's points"):
        prepare_sweep(config, tmp_path / "s", 2)


def test_local_sweep_results_and_rerun(tmp_path: Path) -> None:
    config = sweep(tmp_path, ensemble="always", max_ensemble=3)
    out = tmp_path / "out"
    table = run_sweep(config, out, workers=2, progress=False)
    assert table.num_rows == 4 and set(table.column("status").to_pylist()) == {"complete"}
    assert {
        "point",
        "seed",
        "task.burstiness",
        "run",
        "ic/accuracy",
        "iw/loss",
        "transition_midpoint",
    } <= set(table.column_names)
    assert table.column("unit").to_pylist() == ["u000", "u000", "u001", "u001"], "4 points: 2 ensembles of 2"
    for row in table.to_pylist():  # each row holds its own member's final values
        run = Run.open(Path(row["run"]))
        assert row["steps"] == run.curve("accuracy", "ic", member=row["member"])[0][-1]
        for column in ("ic/accuracy", "iw/loss"):
            split, metric = column.split("/")
            assert row[column] == pytest.approx(run.curve(metric, split, member=row["member"])[1][-1])
    losses = table.column("iw/loss").to_pylist()
    assert losses[0] != losses[1] and losses[2] != losses[3], "an ensemble's members differ"
    stamp = (out / "runs" / "u000" / "manifest.json").stat().st_mtime_ns
    again = run_sweep(config, out, workers=2, progress=False)
    assert (out / "runs" / "u000" / "manifest.json").stat().st_mtime_ns == stamp, "finished runs are skipped"
    assert same_table(again, table, ignore=())
    counts, units = sweep_status(out)
    assert counts["complete"] == 4 and [u[0] for u in units] == ["u000", "u001"]
    with pytest.raises(ConfigError, match="holds a different sweep"):
        run_sweep(sweep(tmp_path, seeds=[7]), out, progress=False)
    (out / "runs" / "u000" / "metrics.parquet").unlink()  # a damaged copy
    (out / "runs" / "u001" / "manifest.json").write_text("{")
    counts, units = sweep_status(out)
    assert counts == {"damaged": 4}
    assert units[0][2].startswith("damaged: ") and "metrics" in units[0][2]
    assert (
        units[1][2] == f"damaged: run manifest is not valid JSON: {out / 'runs' / 'u001' / 'manifest.json'}"
    )
    table = run_sweep(config, out, workers=1, progress=False)
    assert table.column("status").to_pylist() == ["failed"] * 4
    errors = table.column("error").to_pylist()
    assert "u000 is marked complete, but member 0's metrics are gone" in errors[0]
    assert "manifest is not valid JSON" in errors[2]


def test_a_point_grafting_from_a_donor_of_another_shape_is_refused_before_any_training(
    tmp_path: Path,
) -> None:
    """(A point that fails while training is recorded and the others finish: see test_faults.)"""
    donor = train(
        tiny_config(
            task=TINY_BURSTY, model={**TINY_READOUT_MODEL, "d_model": 32}, training={"length": {"steps": 2}}
        ),
        str(tmp_path / "donor"),
        progress=False,
    )
    graft = {"kind": "graft", "hook": "blocks.0.hook_attn_out", "source": str(donor.path)}
    config = sweep(
        tmp_path,
        axes=[{"points": [{"task.burstiness": 2}, {"clamps": [graft]}, {"task.burstiness": 1}]}],
        seeds=[0],
    )
    with pytest.raises(ConfigError, match=r"sweep point 1 .*graft source's blocks.0.hook_attn_out has shape"):
        run_sweep(config, tmp_path / "out", workers=2, progress=False)
    assert not (tmp_path / "out").exists()


def sweep_file(tmp_path: Path, name: str, seeds: list[int]) -> Path:
    base = base_file(tmp_path, steps=120)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": name, "base": base, "axes": [{"grid": {"task.burstiness": [1, 2]}}], "seeds": seeds}
        )
    )
    return path


def test_killed_sweep_resumes_to_the_uninterrupted_table(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "k", [0, 1])
    script = Path(sys.executable).parent / "icl-lab"
    args = [str(script), "sweep", str(path), "--runs-dir", str(tmp_path / "killed"), "--quiet"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((tmp_path / "killed" / "k" / "runs").glob("*/checkpoints/step_000000008.json")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    counts, _ = sweep_status(tmp_path / "killed" / "k")
    assert counts["complete"] < 4
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = read_results(tmp_path / "killed" / "k")
    reference = run_sweep(load_sweep(path), tmp_path / "reference" / "k", workers=2, progress=False)
    assert same_table(resumed, reference)


def test_ray_executor_runs_a_sweep(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    try:
        table = run_sweep(sweep(tmp_path), tmp_path / "out", executor="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    assert table.num_rows == 4 and set(table.column("status").to_pylist()) == {"complete"}
    local = run_sweep(sweep(tmp_path), tmp_path / "local", workers=2, progress=False)
    assert same_table(table, local)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1", "--address 127.0.0.1:1: no Ray cluster answers there ("),
        ("ray://127.0.0.1:1", "--address ray://127.0.0.1:1: no Ray cluster answers there ("),
        ("garbage", "--address garbage: no Ray cluster to join (Invalid address format: garbage)"),
        ("127.0.0.1:1 local", "--address names a Ray cluster: give --executor ray with it"),
    ],
)
def test_a_ray_address_without_a_cluster_is_one_line_at_once(
    cli, tmp_path: Path, address: str, message: str
) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    path = sweep_file(tmp_path, "r", [0])
    address, _, executor = address.partition(" ")
    args = ("--runs-dir", tmp_path, "-q", "--executor", executor or "ray", "--address", address)
    started = time.perf_counter()
    code, _, err = cli("sweep", path, *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert time.perf_counter() - started < 60


def test_sweep_cli_status_and_report(cli, tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "c", [0])
    text = yaml.safe_load(path.read_text())
    text["report"] = {
        "heatmaps": [{"x": "task.burstiness", "y": "seed", "metric": "ic/accuracy"}],
        "curves": [{"x": "task.burstiness", "metric": "iw/accuracy"}],
    }
    path.write_text(yaml.safe_dump(text))
    code, out, err = cli("sweep", path, "--runs-dir", tmp_path, "--quiet", "--set", "seeds=[0]")
    assert code == 0, err
    assert "2 of 2 points complete" in out and "report.html" in out
    page = (tmp_path / "c" / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    code, out, _ = cli("sweep", "status", tmp_path / "c")
    assert code == 0 and "2 complete points" in out
    code, _, err = cli("sweep", "status", tmp_path / "nowhere")
    assert code == 2 and "not a sweep directory" in err
    code, _, err = cli("sweep", tmp_path / "missing.yaml")
    assert code == 2 and "sweep file not found" in err
    code, _, err = cli("sweep", path, tmp_path / "elsewhere")
    assert code == 2 and f"takes no second argument ({tmp_path / 'elsewhere'})" in err
    results = tmp_path / "c" / "results.parquet"
    intact = results.read_bytes()
    results.write_bytes(intact[:50])
    code, _, err = cli("report", tmp_path / "c")
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {results} is damaged (" in err and "run the sweep again to rebuild it" in err
    code, _, err = cli("sweep", path, "--runs-dir", tmp_path, "--quiet", "--set", "seeds=[0]")
    assert code == 0, err
    table = read_results(tmp_path / "c")
    assert table.filter(pc.equal(table["task.burstiness"], 2)).num_rows == 1
    (tmp_path / "c" / "sweep.yaml").rename(tmp_path / "sweep.yaml.kept")
    code, _, err = cli("report", tmp_path / "c")
    assert (code, err.strip()) == (
        2,
        f"error: {tmp_path / 'c'} is a sweep directory without its sweep.yaml, which its report reads",
    )
    (tmp_path / "sweep.yaml.kept").rename(tmp_path / "c" / "sweep.yaml")
    unit = tmp_path / "c" / "runs" / "u001"
    (unit / "manifest.json").unlink()  # a run lost since the results were written
    code, _, err = cli("report", tmp_path / "c")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'c'}: its results hold u001 as complete, but that run is now pending" in err
    assert f"move {unit} away (or delete it) and run the sweep again to train it afresh" in err
    code, out, err = cli("sweep", path, "--runs-dir", tmp_path, "--quiet", "--set", "seeds=[0]")
    assert code == 2 and "1 of 2 sweep points did not complete: point 1" in err
    said = " ".join(out.split())
    assert f"run directory already exists without a manifest (delete it to train it again): {unit}" in said
    shutil.rmtree(unit)
    code, _, err = cli("sweep", path, "--runs-dir", tmp_path, "--quiet", "--set", "seeds=[0]")
    assert code == 0, err
    (unit / "metrics.parquet").write_bytes(b"not parquet")  # damaged since
    code, _, err = cli("report", tmp_path / "c")
    assert code == 2 and "but that run is now damaged: metrics table" in err
    assert f"move {unit} away (or delete it) and run the sweep again to train it afresh" in err
    code, out, err = cli("sweep", path, "--runs-dir", tmp_path, "--quiet", "--set", "seeds=[0]")
    assert code == 2 and "1 of 2 sweep points did not complete: point 1" in err
    assert f"move {unit} away (or delete it) and run the sweep again to train it afresh" in " ".join(
        out.split()
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_a_sweep_stops_its_workers_and_leaves_runs_resumable(tmp_path: Path, sig: int) -> None:
    """A signal reaches only the parent (a job scheduler's stop). SIGTERM: it exits 143 with one
    line, its workers marking their runs interrupted; SIGKILL: the kernel kills its workers too
    (their runs' locks die with them, so the runs read as interrupted). Either way the workers stop
    at once and no queued run starts."""
    base = base_file(tmp_path, steps=100_000)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": base, "seeds": [0, 1, 2, 3]}))
    script = Path(sys.executable).parent / "icl-lab"
    args = [str(script), "sweep", str(path), "--runs-dir", str(tmp_path / "out"), "--quiet"]
    # its own process group, so that a failing test can stop the workers too (they train for long)
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    runs = tmp_path / "out" / "t" / "runs"
    deadline = time.time() + 120
    try:
        while len({p.parent.parent for p in runs.glob("*/checkpoints/step_*.json")}) < 2:  # both busy
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)  # the parent only
        _, err = proc.communicate(timeout=60)
        while time.time() < deadline:  # the workers are gone once the process group is empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == signal.SIGTERM:
        again = f"icl-lab sweep {path} --runs-dir {tmp_path / 'out'} --executor local --workers 2"
        assert proc.returncode == 143 and err.strip() == f"interrupted (SIGTERM); continue with: {again}", err
    assert time.time() < deadline, "a worker outlived the sweep"
    statuses = [Run.open(run).status for run in sorted(runs.iterdir())]  # a killed run's lock is free
    assert statuses == ["interrupted", "interrupted"], "the two running runs stopped, no queued one began"
    files = sorted(runs.rglob("*"))
    time.sleep(2)
    assert sorted(runs.rglob("*")) == files, "no worker goes on writing"


@pytest.mark.filterwarnings("error")
def test_a_worker_killed_from_outside_is_a_one_line_error_not_an_internal_one() -> None:
    """What the kernel's OOM killer does to a sweep's or dissect's worker (it gets SIGKILL)."""
    import signal

    from icl_lab.errors import WorkerLostError
    from icl_lab.sweeps.execute import process_pool

    killed = r"^a worker process was killed from outside \(by the system"
    with pytest.raises(WorkerLostError, match=killed), process_pool(1) as pool:
        pool.submit(signal.raise_signal, signal.SIGKILL).result()


def test_a_figure_of_a_metric_no_point_has_says_so_without_warnings() -> None:
    from icl_lab.report.sweep import curve, heatmap
    from icl_lab.sweeps.config import CurveSpec, HeatmapSpec

    nan = float("nan")  # e.g. no run made the transition
    table = pa.table(
        {
            "seed": [0, 0],
            "status": ["complete"] * 2,
            "steps": [10, 10],
            "a": [1, 2],
            "b": [3, 4],
            "t": [nan, nan],
        }
    )
    for figure in (
        curve(table, CurveSpec(x="a", by="b", metric="t"), 32),
        heatmap(table, HeatmapSpec(x="a", y="b", metric="t"), 32),
    ):
        assert [t.get_text() for t in figure.axes[0].texts] == [
            "no complete point has a value of t (seeds 0)"
        ]


@pytest.mark.filterwarnings("error")
def test_a_sweep_curve_names_the_seeds_each_point_rests_on_and_the_value_s_unit() -> None:
    """A point of one seed has no error bar (not a zero-width one) and says n=1; the title lists the
    seeds drawn, not a failed run's; the axis names the unit the value's metric declares."""
    from icl_lab.report.sweep import curve, heatmap
    from icl_lab.sweeps.config import CurveSpec, HeatmapSpec

    table = pa.table(
        {
            "seed": [0, 1, 0, 1, 2],
            "status": ["complete", "complete", "complete", "failed", "failed"],
            "steps": [10] * 5,
            "a": [1, 1, 2, 2, 2],
            "ic/accuracy": [0.5, 0.7, 0.9, None, None],
        }
    )
    figure = curve(table, CurveSpec(x="a", metric="ic/accuracy"), 32)
    ax = figure.axes[0]
    title = "ic/accuracy at step 10 (320 sequences)\nmean ± std over seeds 0, 1 (n=: a point's seeds)"
    assert ax.get_title() == title
    assert ax.get_ylabel() == "ic/accuracy (fraction)"
    assert [t.get_text() for t in ax.texts] == ["n=1"]
    segments = [seg for c in ax.collections for seg in c.get_segments() if len(seg)]
    assert len(segments) == 1, "an error bar for the two-seed point only"
    heat = heatmap(table, HeatmapSpec(x="a", y="seed", metric="ic/accuracy"), 32)
    assert heat.axes[1].get_ylabel() == "ic/accuracy (fraction)" and "seeds 0, 1" in heat.axes[0].get_title()


def test_a_sweep_figure_says_at_which_step_its_values_were_read() -> None:
    """The step (and sequences) of the runs a figure draws, not of a longer run it leaves out; 'at
    the end of training' where the drawn runs' lengths differ; none for a transition's step."""
    from icl_lab.report.sweep import curve, heatmap
    from icl_lab.sweeps.config import CurveSpec, HeatmapSpec

    table = pa.table(
        {
            "seed": [0, 0, 0],
            "status": ["complete"] * 3,
            "steps": [10, 10, 40],
            "a": [1, 2, None],  # the 40-step point has no value of a: no figure over a draws it
            "b": [3, 3, 3],
            "ic/accuracy": [0.5, 0.9, 0.7],
            "transition_midpoint": [4.0, 6.0, 20.0],
        }
    )
    at_10 = "ic/accuracy at step 10 (320 sequences)\nmean ± std over seeds 0"
    assert curve(table, CurveSpec(x="a", metric="ic/accuracy"), 32).axes[0].get_title() == at_10
    assert heatmap(table, HeatmapSpec(x="a", y="b", metric="ic/accuracy"), 32).axes[0].get_title() == at_10
    every = curve(table, CurveSpec(x="b", metric="ic/accuracy"), 32).axes[0].get_title()
    assert every == "ic/accuracy at the end of training\nmean ± std over seeds 0"
    transition = curve(table, CurveSpec(x="a", metric="transition_midpoint"), 32).axes[0].get_title()
    assert transition == "transition_midpoint\nmean ± std over seeds 0"


def test_a_heatmap_cell_without_a_value_says_why_and_one_seed_shows_no_spread() -> None:
    from icl_lab.report.sweep import heatmap
    from icl_lab.sweeps.config import HeatmapSpec

    table = pa.table(
        {
            "seed": [0, 0, 1, 0],
            "status": ["complete", "diverged", "complete", "complete"],
            "steps": [10, 10, 10, 10],
            "a": [1, 2, 1, 2],
            "b": [3, 3, 3, 4],
            "t": [0.5, float("nan"), 0.7, 0.25],
        }
    )
    figure = heatmap(table, HeatmapSpec(x="a", y="b", metric="t"), 32)
    texts = {(t.get_position(), t.get_text()) for t in figure.axes[0].texts}
    loss = heatmap(
        table.rename_columns([*table.column_names[:-1], "iw/loss"]),
        HeatmapSpec(x="a", y="b", metric="iw/loss"),
        32,
        "squared error",
    )
    assert loss.axes[1].get_ylabel() == "iw/loss (squared error)", "the colour bar names the loss's unit"
    # a=1,b=3: two seeds (mean and spread); a=2,b=3: diverged; a=2,b=4: one seed; a=1,b=4: not swept
    assert texts == {((0, 0), "0.60\n±0.14"), ((1, 0), "diverged"), ((1, 1), "0.25")}


def test_a_sweep_file_given_to_train_says_to_run_it_as_a_sweep(cli, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": "induction", "seeds": [0, 1]}))
    code, _, err = cli("train", path)
    assert code == 2 and err.strip() == (
        f"error: {path} is a sweep (it names a base config): run it with `icl-lab sweep {path}`"
    )
    code, _, err = cli("sweep", tmp_path)  # a sweep's directory where its file goes
    assert code == 2 and err.strip() == (
        f"error: sweep path is a directory, not a sweep file: {tmp_path} (its state: icl-lab sweep "
        f"status {tmp_path})"
    )
