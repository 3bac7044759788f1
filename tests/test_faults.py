"""Fault injection: every fault a user can meet ends in one line naming the problem and exit code 2
(130 / 143 for Ctrl-C / SIGTERM), leaves nothing looking complete that is not, and loses nothing
that was on disk before. Full and read-only disks are real tmpfs mounts where the tests may mount
one (root on Linux), else a patched writer."""

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import tiny_config
from icl_lab.errors import DivergenceError, RunStoreError, StorageError
from icl_lab.store.checkpoints import load_checkpoint, save_checkpoint
from icl_lab.store.run import Run, list_runs
from icl_lab.training.trainer import train
from test_trainer import assert_identical_runs, killed_copy

ICL_LAB = [sys.executable, "-m", "icl_lab"]


def icl(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ICL_LAB, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def one_line(err: str, *needles: str) -> None:
    """stderr is one line, an error naming the problem, with no traceback."""
    text = err.strip()
    assert "\n" not in text and "Traceback" not in text, err
    for needle in needles:
        assert needle in text, (needle, text)


def config_file(directory: Path, **sections: object) -> Path:
    path = directory / "config.yaml"
    path.write_text(tiny_config(**sections).to_yaml())
    return path


def tree(path: Path) -> dict[str, bytes]:
    """Every file under a directory with its bytes (to show nothing on disk was lost or changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a small tmpfs at path; yields whether it is a real mount (False: the caller patches)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> bool:
    return subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True).returncode == 0


def interrupt(run: Run, **fields: object) -> None:
    """Mark a run's manifest as a killed process leaves it (or with the given fields)."""
    manifest = json.loads((run.path / "manifest.json").read_text())
    (run.path / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted", **fields}))


def trained(tmp_path: Path, **sections: object) -> Run:
    return train(tiny_config(**sections), str(tmp_path / "runs"), progress=False)


# disks --------------------------------------------------------------------------------------


def test_a_read_only_runs_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tmpfs(tmp_path / "ro", "4m") as mounted:
        if mounted:
            assert read_only(tmp_path / "ro")
            done = icl("train", config_file(tmp_path), "--runs-dir", tmp_path / "ro" / "runs", "-q")
            assert done.returncode == 2
            one_line(done.stderr, "cannot create a run directory in", "Read-only file system")
            return
    from icl_lab.store import run as run_module

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(run_module.Path, "mkdir", refuse)
    with pytest.raises(StorageError, match="Read-only file system"):
        Run.create(tiny_config(), tmp_path / "runs")


def test_a_runs_directory_that_is_a_file(tmp_path: Path, cli) -> None:
    (tmp_path / "afile").write_text("")
    code, _, err = cli("train", config_file(tmp_path), "--runs-dir", tmp_path / "afile", "-q")
    assert code == 2
    one_line(err, f"the runs directory is a file, not a directory: {tmp_path / 'afile'}")


def test_a_file_where_a_directory_goes_is_named_as_in_the_way(tmp_path: Path) -> None:
    from icl_lab.files import make_dir

    (tmp_path / "out").write_text("")
    with pytest.raises(StorageError) as error:
        make_dir(tmp_path / "out")  # what `export RUN OUT` and report outputs create
    assert (
        str(error.value)
        == f"cannot create the directory {tmp_path / 'out'}: a file of that name is in the way"
    )


def test_listing_an_unreadable_runs_directory_says_so(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Its permission bits do not stop root, who runs CI: the refusal is planted.) A glob of it
    found nothing, and the listing was an empty table."""
    runs, listed = tmp_path / "runs", Path.iterdir
    trained(tmp_path)

    def refuse(self: Path) -> object:
        if self == runs:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return listed(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    code, out, err = cli("list", "runs", "--runs-dir", runs)
    assert code == 2 and "tiny" not in out
    one_line(err, f"{runs}: Permission denied")


def test_a_disk_that_fills_up_mid_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first checkpoints fit, a later one does not: one line, the run is not complete, the
    checkpoints written before are intact and no temporary file is left."""
    config = config_file(
        tmp_path,
        model={"name": "transformer", "n_layers": 2, "n_heads": 2, "d_model": 64, "attn_only": True},
        training={"batch_size": 8, "length": {"steps": 12}},
    )
    with tmpfs(tmp_path / "small", "1200k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root)")
        done = icl("train", config, "--runs-dir", tmp_path / "small", "-q")
        assert done.returncode == 2, done.stderr
        one_line(done.stderr, "cannot write", "No space left on device")
        (run,) = list_runs(tmp_path / "small")
        assert run.status != "complete" and run.checkpoint_steps, "earlier checkpoints are kept"
        run.load_checkpoint()  # the latest complete checkpoint verifies
        assert not list((tmp_path / "small").rglob("*.tmp"))


@pytest.mark.parametrize("size", ["8k", "200k"], ids=["no room for a run", "no room for its checkpoints"])
def test_runs_stop_starting_once_one_could_not_write(tmp_path: Path, size: str) -> None:
    from icl_lab.errors import IclLabError
    from icl_lab.sweeps.execute import run_configs

    configs = [tiny_config(seed=seed) for seed in range(4)]
    with tmpfs(tmp_path / "small", size) as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root)")
        with pytest.raises(IclLabError) as caught:
            run_configs(configs, tmp_path / "small", workers=1, progress=False, ensemble="none")
        message = str(caught.value)
        assert message.startswith("4 of 4 runs failed; the first: 000-tiny: StorageError: cannot write")
        assert "No space left on device" in message and "\n" not in message
        made = [p.name for p in (tmp_path / "small").iterdir() if p.name != "ensembles.json"]
        assert made in ([], ["000-tiny"]), "the first run only, and nothing half-made (staging)"


def test_a_write_error_says_why_even_without_an_errno() -> None:
    from icl_lab.files import storage_error

    full = OSError(errno.ENOSPC, "No space left on device")
    assert str(storage_error("write", Path("/d/f"), full)) == "cannot write /d/f: No space left on device"
    short = OSError("60622 requested and 32768 written")  # numpy's tofile on a full disk
    assert str(storage_error("write", Path("/d/f"), short)).endswith("32768 written (is the disk full?)")


def test_report_and_resume_on_a_read_only_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "8m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root)")
        run = train(tiny_config(), str(tmp_path / "disk"), progress=False)
        interrupt(run)
        before = tree(run.path)
        assert read_only(tmp_path / "disk")
        done = icl("report", run.path)
        assert done.returncode == 2
        one_line(done.stderr, "Read-only file system")
        done = icl("resume", run.path, "-q")
        assert done.returncode == 2
        one_line(done.stderr, "Read-only file system")
        for out in (tmp_path / "disk", tmp_path / "disk" / "export"):  # safetensors' write; a new folder
            done = icl("export", run.path, out)
            assert done.returncode == 2
            one_line(done.stderr, "cannot ", "Read-only file system")
        assert tree(run.path) == before


# the metrics table -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated mid-row", "column dropped", "column retyped"])
def test_a_corrupt_metrics_table_is_refused_by_resume_and_report(tmp_path: Path, damage: str, cli) -> None:
    run = trained(tmp_path)
    interrupt(run)
    table = run.metrics_path
    data = table.read_bytes()
    expected = f"metrics table {table} is corrupt or unreadable"
    if damage in ("garbage", "truncated mid-row"):
        table.write_bytes(b"not parquet at all" if damage == "garbage" else data[: len(data) // 2])
    else:  # valid Parquet, read under the run's schema it would give nulls or cast strings silently
        rows = pq.read_table(table)
        if damage == "column dropped":
            rows = rows.drop(["metric"])
        else:
            at = rows.schema.get_field_index("value")
            rows = rows.set_column(at, "value", pc.cast(rows["value"], "string"))
        pq.write_table(rows, table)
        expected = f"metrics table {table} is damaged (column {'metric' if 'dropped' in damage else 'value'}"
    before = tree(run.path)
    for command in (["resume", run.path], ["report", run.path], ["eval", run.path]):
        code, _, err = cli(*command)
        if command[0] == "eval":  # eval reads checkpoints, not the table: it still works
            assert code == 0, err
            continue
        assert code == 2
        one_line(err, expected)
    assert tree(run.path) == before


def test_resume_refuses_when_the_metrics_table_is_gone(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    run.metrics_path.unlink()
    interrupt(run)
    before = tree(run.path)
    code, _, err = cli("resume", run.path)
    assert code == 2
    one_line(err, "lacks evaluations before every one of them", "resuming would lose history")
    assert tree(run.path) == before and Run.open(run.path).status == "interrupted"


def test_resume_from_a_corrupt_checkpoint_says_how_to_fall_back_to_the_one_before(
    tmp_path: Path, cli
) -> None:
    run = trained(tmp_path)
    interrupt(run)
    tensors = run.checkpoint_dir / "step_000000012.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    code, _, err = cli("resume", run.path, "-q")
    assert code == 2
    one_line(
        err,
        "corrupt or truncated",
        f"to resume from step 8 instead, delete step_000000012.safetensors and step_000000012.json in "
        f"{run.checkpoint_dir}",
    )
    for path in run.checkpoint_dir.glob("step_000000012.*"):
        path.unlink()
    code, _, err = cli("resume", run.path, "-q")
    assert code == 0, err
    assert Run.open(run.path).status == "complete"


def test_resume_goes_back_to_the_last_checkpoint_whose_history_is_whole(tmp_path: Path, cli) -> None:
    """Rows after step 4 lost (an older table restored): resume continues from checkpoint 4, says
    so, and ends bit-identical to the uninterrupted run."""
    full = trained(tmp_path)
    cut = killed_copy(full, tmp_path / "cut", last_kept=12)
    table = pq.read_table(cut / "metrics.parquet")
    pq.write_table(table.filter(pc.less_equal(table["step"], 4)), cut / "metrics.parquet")
    code, out, err = cli("resume", cut, "-q")
    assert code == 0, err
    assert "from its checkpoint at step 4 (checkpoints after it lie past a gap" in out
    assert_identical_runs(full, Run.open(cut))


# devices and checkpoints ------------------------------------------------------------------------


def test_an_unknown_device_is_refused_before_anything_is_written(tmp_path: Path, cli) -> None:
    code, _, err = cli("train", config_file(tmp_path), "--device", "tpu", "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(err, "training.device: unknown device 'tpu'")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["training"]["device"] = "tpu"
    (tmp_path / "tpu.yaml").write_text(yaml.safe_dump(data))
    code, _, err = cli("train", tmp_path / "tpu.yaml", "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(err, "unknown device 'tpu'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resume_on_cuda_without_a_gpu(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    interrupt(run)
    before = tree(run.path)
    code, _, err = cli("resume", run.path, "--device", "cuda")
    assert code == 2
    one_line(err, "--device: 'cuda' requested but CUDA is not available")
    assert tree(run.path) == before


def on_cuda(config_yaml: Path) -> None:
    """Rewrite a stored config as a run trained on a GPU writes it (the device is outside its hash)."""
    data = yaml.safe_load(config_yaml.read_text())
    data["training"]["device"] = "cuda"
    config_yaml.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_trained_on_a_gpu_opens_here_and_resumes_only_on_a_device_this_machine_has(
    tmp_path: Path, cli
) -> None:
    reference = trained(tmp_path)
    cut = killed_copy(reference, tmp_path, last_kept=4)
    on_cuda(cut / "config.yaml")
    assert Run.open(cut).config.training.device == "cuda"
    code, out, _ = cli("eval", cut)
    assert code == 0 and "step 4" in out
    before = tree(cut)
    code, _, err = cli("resume", cut, "-q")
    assert code == 2
    one_line(
        err,
        f"run {Run.open(cut).id} cannot train on this machine: training.device: 'cuda' requested but "
        "CUDA is not available on this machine (resume --device chooses another)",
    )
    assert tree(cut) == before
    code, _, err = cli("resume", cut, "--device", "cpu", "-q")
    assert code == 0, err
    assert_identical_runs(reference, Run.open(cut))


def test_a_sidecar_naming_a_file_outside_the_run_is_refused(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    sidecar = run.checkpoint_dir / f"step_{12:09d}.json"
    info = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**info, "file": "../../../elsewhere.safetensors"}))
    code, _, err = cli("eval", run.path)
    assert code == 2
    one_line(err, "names another tensors file", "elsewhere.safetensors")


def test_a_graft_from_a_donor_of_another_shape_is_refused_up_front(tmp_path: Path, cli) -> None:
    donor = train(
        tiny_config(
            model={"name": "transformer", "n_layers": 2, "n_heads": 2, "d_model": 32, "attn_only": True}
        ),
        str(tmp_path / "donor"),
        progress=False,
    )
    graft = f"clamps=[{{kind: graft, hook: blocks.0.hook_attn_out, source: {donor.path}}}]"
    code, _, err = cli("train", config_file(tmp_path), "--set", graft, "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(
        err, "clamps.0: graft source's blocks.0.hook_attn_out has shape (1, 16, 32), this model's (1, 16, 16)"
    )
    assert not (tmp_path / "runs").exists()
    late = f"clamps=[{{kind: graft, hook: blocks.0.hook_attn_out, source: {donor.path}, step: 7}}]"
    code, _, err = cli("train", config_file(tmp_path), "--set", late, "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(err, f"clamps.0: graft source {donor.path} has no checkpoint at step 7 (its checkpoints: 0, 4,")
    other = train(tiny_config(task={"vocab_size": 24}), str(tmp_path / "other"), progress=False)
    graft = f"clamps=[{{kind: graft, hook: blocks.0.hook_attn_out, source: {other.path}}}]"
    code, _, err = cli("train", config_file(tmp_path), "--set", graft, "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(
        err,
        f"clamps.0: graft source {other.path} reads other inputs or gives other outputs (token ids below 24 "
        "at 16 positions, 24 outputs at every position; this model: token ids below 16 at 16 positions",
    )


# configs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.optimizer.lr=.inf", "training.optimizer.lr: Input should be a finite number"),
        ("training.optimizer.lr=.nan", "training.optimizer.lr: Input should be a finite number"),
        ("model.n_heads=true", "model.n_heads: Input should be a valid integer"),
        ("training.batch_size='32'", "training.batch_size: Input should be a valid integer"),
        ("seed.foo=1", "'seed' is a value, not a section"),
    ],
)
def test_values_of_the_wrong_kind_are_refused(tmp_path: Path, cli, override: str, message: str) -> None:
    code, _, err = cli("train", config_file(tmp_path), "--set", override, "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(err, message)
    assert not (tmp_path / "runs").exists()


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path: Path, cli) -> None:
    path = config_file(tmp_path)
    path.write_text(path.read_text() + "seed: 4\n")
    code, _, err = cli("train", path, "--runs-dir", tmp_path / "runs")
    assert code == 2
    one_line(err, "duplicate key 'seed'")


# divergence ---------------------------------------------------------------------------------------


def test_divergence_stops_the_run_with_its_last_finite_state(tmp_path: Path, cli) -> None:
    config = config_file(
        tmp_path, training={"optimizer": {"name": "sgd", "lr": 1.0e12}, "length": {"steps": 40}}
    )
    code, _, err = cli("train", config, "--runs-dir", tmp_path / "runs", "-q")
    assert code == 2
    one_line(
        err, "diverged at step", "non-finite training loss (member 0)", "last parameters that are all finite"
    )
    (run,) = list_runs(tmp_path / "runs")
    step = run.manifest["diverged_at"]
    assert run.status == "diverged" and run.checkpoint_steps[-1] == step
    assert all(torch.isfinite(p).all() for p in run.parameters().values())
    code, _, err = cli("resume", run.path)
    assert code == 2
    one_line(err, f"diverged at step {step}; resuming would repeat it")
    code, out, err = cli("export", run.path, tmp_path / "exported")
    assert code == 0, err
    assert f"(step {step:,} of a run that is diverged)" in out, "an export says what it holds"
    with pytest.raises(DivergenceError):
        train(
            tiny_config(training={"optimizer": {"name": "sgd", "lr": 1.0e12}}),
            str(tmp_path / "py"),
            progress=False,
        )


# signals, liveness and two processes ------------------------------------------------------------------


def slow_config(directory: Path) -> Path:
    return config_file(
        directory,
        training={"batch_size": 16, "length": {"steps": 300}},
        eval={"every": {"steps": 30}, "batch_size": 64},
        checkpointing={"every": {"steps": 20}},
    )


def started(runs: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while not list(runs.glob("[!.]*/checkpoints/step_*.json")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_at_a_random_moment_marks_the_run_interrupted_and_resume_is_identical(
    tmp_path: Path, sig: int, code: int
) -> None:
    config = slow_config(tmp_path)
    from icl_lab.experiment import load_config

    reference = train(load_config(config), str(tmp_path / "ref"), progress=False)
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [*ICL_LAB, "train", str(config), "--runs-dir", str(runs), "-q"], stderr=subprocess.PIPE, text=True
    )
    started(runs, proc)
    time.sleep(random.uniform(0, 0.4))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    (run,) = list_runs(runs)
    if proc.returncode == 0:  # the signal came after the last step: nothing to test this time
        assert run.status == "complete"
        return
    assert proc.returncode == code, err
    one_line(err, "interrupted", f"icl-lab resume {run.path} (from step {max(run.checkpoint_steps):,}, its")
    assert run.status == "interrupted" and run.manifest["interrupted_at"] >= 0
    done = icl("resume", run.path, "-q")
    assert done.returncode == 0, done.stderr
    assert_identical_runs(reference, Run.open(run.path))


def test_a_signal_inside_a_library_catching_exception_still_stops() -> None:
    """The handler raises where the process happens to be; torch guards some lazy imports with
    `except Exception`, which swallowed a sweep parent's SIGTERM (it then never exited)."""
    from icl_lab.errors import Interrupted
    from icl_lab.training.trainer import on_sigterm

    with pytest.raises(Interrupted), on_sigterm():
        try:  # as a library's guard would
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception:
            pass


def test_two_resumes_of_one_run_at_once(tmp_path: Path) -> None:
    # eager (compile off): the run must be busy training, not compiling, when the second resume comes
    long = {"batch_size": 16, "length": {"steps": 100_000}, "compile": "off"}
    config = config_file(tmp_path, training=long)
    runs = tmp_path / "runs"
    first = subprocess.Popen(
        [*ICL_LAB, "train", str(config), "--runs-dir", str(runs), "-q"], stderr=subprocess.PIPE, text=True
    )
    started(runs, first)
    (run,) = list_runs(runs)
    assert run.status == "running"
    second = icl("resume", run.path, "-q")
    assert second.returncode == 2
    on_this_host = f"run {run.id} is being trained by pid {first.pid} on this host: wait for it, or stop it"
    one_line(second.stderr, on_this_host)  # its lock is held: --force cannot help, and is not offered
    forced = icl("resume", run.path, "-q", "--force")
    assert forced.returncode == 2
    one_line(forced.stderr, on_this_host)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143
    assert Run.open(run.path).status == "interrupted"


def test_a_stale_running_status_from_another_host_needs_force(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    manifest = json.loads((run.path / "manifest.json").read_text())
    (run.path / "checkpoints" / f"step_{12:09d}.json").unlink()
    (run.path / "manifest.json").write_text(
        json.dumps({**manifest, "status": "running", "host": "elsewhere", "pid": 1})
    )
    assert Run.open(run.path).status == "running", "another host's process cannot be checked from here"
    code, _, err = cli("resume", run.path, "-q")
    assert code == 2
    one_line(err, "marked running (pid 1 on host elsewhere)", "resume --force")
    code, _, err = cli("resume", run.path, "-q", "--force")
    assert code == 0, err
    assert Run.open(run.path).status == "complete"


def test_a_reused_pid_does_not_look_alive(tmp_path: Path) -> None:
    """A run marked running by a pid that now belongs to another live process (here: this test)
    is interrupted: liveness is the run's lock, which died with its process."""
    run = trained(tmp_path)
    manifest = json.loads((run.path / "manifest.json").read_text())
    (run.path / "manifest.json").write_text(json.dumps({**manifest, "status": "running", "pid": os.getpid()}))
    assert Run.open(run.path).status == "interrupted"


# sweeps --------------------------------------------------------------------------------------------


def sweep_file(directory: Path, base: Path | None = None, **fields: object) -> Path:
    data = {
        "name": "faulty",
        "base": str(base or config_file(directory)),
        "axes": [{"grid": {"training.optimizer.lr": [0.001, 0.01]}}],
        "seeds": [0],
        **fields,
    }
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"axes": [{"grid": {"training.optimizer.lr": []}}]},
            "training.optimizer.lr: give at least one value",
        ),
        ({"seeds": []}, "seeds: List should have at least 1 item"),
        ({"axes": [{"grid": {"seed.foo": [1, 2]}}]}, "the sweep sets seed and name itself"),
        (
            {"axes": [{"zip": {"training.optimizer.lr": [0.1], "task.min_prefix": [2, 3]}}]},
            "zip lists must all have the same length",
        ),
        (
            {"report": {"heatmaps": [{"x": "task.vocab_size", "y": "seed", "metric": "train/loss"}]}},
            "report.heatmaps.0.x: 'task.vocab_size' is not a swept field",
        ),
        (
            {"report": {"curves": [{"x": "training.optimizer.lr", "by": "task.seq_len"}]}},
            "report.curves.0.by: 'task.seq_len' is not a swept field",
        ),
        (
            {
                "report": {
                    "heatmaps": [{"x": "training.optimizer.lr", "y": "seed", "metric": "train/nonsense"}]
                }
            },
            "report.heatmaps.0.metric: 'train/nonsense' is not a result",
        ),
    ],
)
def test_a_bad_sweep_is_refused_before_anything_is_written(
    tmp_path: Path, cli, fields: dict, message: str
) -> None:
    code, _, err = cli("sweep", sweep_file(tmp_path, **fields), "--runs-dir", tmp_path / "runs", "-q")
    assert code == 2
    one_line(err, message)
    assert not (tmp_path / "runs").exists()


FAILING_TASK = '''
from typing import Literal
from icl_lab.tasks.induction import InductionConfig, InductionTask
from icl_lab.tasks import TASKS


class FailingConfig(InductionConfig):
    name: Literal["failing_induction"] = "failing_induction"
    fail: bool = False


@TASKS.register("failing_induction")
class FailingTask(InductionTask):
    """Induction that raises while sampling training data when fail is set."""

    Config = FailingConfig

    def training_sample(self, batch_size, generator, step):
        if self.config.fail and step == 3:
            raise RuntimeError("the data source broke")
        return super().training_sample(batch_size, generator, step)
'''


def test_a_sweep_with_a_failed_point_exits_non_zero_and_names_it(tmp_path: Path, cli) -> None:
    (tmp_path / "failing.py").write_text(FAILING_TASK)
    base = config_file(tmp_path)
    data = yaml.safe_load(base.read_text())
    data["imports"] = [str(tmp_path / "failing.py")]
    data["task"]["name"] = "failing_induction"
    base.write_text(yaml.safe_dump(data))
    path = sweep_file(tmp_path, base, axes=[{"grid": {"task.fail": [False, True]}}])
    code, out, err = cli("sweep", path, "--runs-dir", tmp_path / "runs", "-q", "--workers", "2")
    assert code == 2
    one_line(err, "1 of 2 sweep points did not complete: point 1 (see above)")
    assert "point 1 failed: RuntimeError: the data source broke" in out
    statuses = [r.status for r in list_runs(tmp_path / "runs" / "faulty" / "runs")]
    assert sorted(statuses) == ["complete", "failed"]


def test_a_sweep_leaves_a_unit_that_another_live_process_trains(tmp_path: Path, cli) -> None:
    path = sweep_file(tmp_path)
    code, _, err = cli("sweep", path, "--runs-dir", tmp_path / "runs", "-q")
    assert code == 0, err
    unit = Run.open(tmp_path / "runs" / "faulty" / "runs" / "u001")
    manifest = json.loads((unit.path / "manifest.json").read_text())
    (unit.path / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    before = tree(unit.path)
    holder = Run.open(unit.path)
    holder.acquire()  # this process now "trains" it
    try:
        code, out, err = cli("sweep", path, "--runs-dir", tmp_path / "runs", "-q")
    finally:
        holder.release()
    assert code == 2
    one_line(err, "1 of 2 sweep points did not complete: point 1 (see above)")
    assert "point 1 running: being trained by pid" in out
    assert tree(unit.path) == before


def test_a_sweep_directory_edited_between_runs(tmp_path: Path, cli) -> None:
    path = sweep_file(tmp_path)
    assert cli("sweep", path, "--runs-dir", tmp_path / "runs", "-q")[0] == 0
    sweep_dir = tmp_path / "runs" / "faulty"
    before = tree(sweep_dir)
    path.write_text(path.read_text().replace("0.01", "0.02"))
    code, _, err = cli("sweep", path, "--runs-dir", tmp_path / "runs", "-q")
    assert code == 2
    one_line(err, "holds a different sweep; choose another directory")
    assert tree(sweep_dir) == before
    (sweep_dir / "plan.json").write_text(json.dumps({"points": [], "units": []}))
    code, _, err = cli("sweep", "status", sweep_dir)
    assert code == 2
    one_line(err, "plan.json is corrupt (not a sweep plan)")
    (sweep_dir / "plan.json").unlink()
    code, _, err = cli("sweep", "status", sweep_dir)
    assert code == 2
    one_line(err, "not a sweep directory (no plan.json)")


# small things ------------------------------------------------------------------------------------


def test_checkpoints_get_the_usual_file_mode(tmp_path: Path) -> None:
    run = trained(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for path in [*run.checkpoint_dir.iterdir(), run.metrics_path, run.path / "manifest.json"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_help_shows_no_type_after_flags_and_a_log_shows_the_step_count(tmp_path: Path) -> None:
    done = icl("reproduce", "--help")
    assert done.returncode == 0 and "<bool>" not in done.stdout and "--quick" in done.stdout
    done = icl("train", config_file(tmp_path), "--runs-dir", tmp_path / "runs")  # stdout is a pipe
    assert done.returncode == 0, done.stderr
    assert "step 12/12 (100%)" in done.stdout and "\x1b[" not in done.stdout


def test_an_unexpected_error_is_one_line_unless_debug(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icl_lab.training import trainer

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    namespace: dict[str, object] = {}  # the same bug as if it were icl-lab's own code
    exec(
        compile("def broken(*a, **k):\n    raise ZeroDivisionError('a bug')", trainer.__file__, "exec"),
        namespace,
    )
    monkeypatch.setattr(trainer, "train", namespace["broken"])
    code, _, err = cli("train", config_file(tmp_path), "--runs-dir", tmp_path / "runs")
    assert code == 1
    one_line(err, "internal error: ZeroDivisionError: a bug (run again with --debug for the traceback)")
    with pytest.raises(ZeroDivisionError):
        cli("--debug", "train", config_file(tmp_path), "--runs-dir", tmp_path / "runs")
    monkeypatch.setattr(trainer, "train", broken)  # code of a user's (a test file counts as one)
    code, _, err = cli("train", config_file(tmp_path), "--runs-dir", tmp_path / "runs")
    line = broken.__code__.co_firstlineno + 1
    assert code == 2
    one_line(
        err, f"error in {broken.__qualname__} ({__file__}:{line}): ZeroDivisionError: a bug (--debug shows"
    )


def test_curves_of_a_member_head_or_summary_the_run_cannot_have_are_refused(tmp_path: Path) -> None:
    run = trained(tmp_path)
    for member in (1, -1):
        only = f"run {run.id} has no member {member} \\(it has only member 0\\)"
        with pytest.raises(RunStoreError, match=only):
            run.curve("loss", "train", member=member)
        with pytest.raises(RunStoreError, match=f"has no member {member}"):
            run.head_curves("prefix_matching", "train", member=member)
    with pytest.raises(ValueError, match=r"head is named 'layer.head' \(e.g. '1.0'\), not 1"):
        run.curve("prefix_matching", "train", head=1)
    with pytest.raises(ValueError, match="use mean, max or min, not 'median'"):
        run.summary_curve("prefix_matching", "train", "median")
    assert run.summary_curve("prefix_matching", "train", "max")[1].size == 4
    assert run.curve("no_such_metric", "train")[1].size == 0, "a metric the run did not log: no values"


def test_report_on_a_run_without_evaluations_says_so(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    run.metrics_path.unlink()
    interrupt(run)  # as if it had stopped before its first evaluation
    code, _, err = cli("report", run.path)
    assert code == 2
    one_line(err, f"run {run.path} has no evaluations of member 0 to summarise")


@pytest.mark.parametrize(
    "damage",
    [
        "metrics cut short",
        "an evaluation gone",
        "rows of an evaluation gone",
        "metrics gone",
        "final checkpoint gone",
        "final tensors",
    ],
)
def test_a_complete_run_missing_its_end_is_refused_by_report_and_resume(
    tmp_path: Path, damage: str, cli
) -> None:
    run = trained(tmp_path)  # 12 steps, evaluated every 4, checkpointed every 4
    if damage == "metrics cut short":
        table = pq.read_table(run.metrics_path)
        pq.write_table(table.filter(pc.less(table["step"], 8)), run.metrics_path)
        expected = "member 0's metrics lack its evaluations at steps 8, 12: its metrics.parquet is damaged"
    elif damage == "an evaluation gone":  # its curves would have a hole
        table = pq.read_table(run.metrics_path)
        pq.write_table(table.filter(pc.not_equal(table["step"], 4)), run.metrics_path)
        expected = "member 0's metrics lack its evaluations at steps 4: its metrics.parquet is damaged"
    elif damage == "rows of an evaluation gone":  # step 4 keeps its other rows
        table = pq.read_table(run.metrics_path)
        gone = pc.and_(pc.equal(table["step"], 4), pc.equal(table["metric"], "loss"))
        pq.write_table(table.filter(pc.invert(gone)), run.metrics_path)
        kept = table.num_rows - pc.sum(gone.cast("int64")).as_py()
        assert 0 < kept < table.num_rows and run.manifest["metrics_rows"] == table.num_rows
        expected = f"metrics.parquet has {kept:,} rows where training wrote {table.num_rows:,}: it is damaged"
    elif damage == "metrics gone":
        run.metrics_path.unlink()
        expected = "member 0's metrics are gone: its metrics.parquet is damaged"
    else:  # the tensors alone: the sidecar that lists the checkpoint stays
        for path in run.checkpoint_dir.glob("*12.safetensors" if damage == "final tensors" else "*12*"):
            path.unlink()
        expected = "its final checkpoint (step 12) is gone"
    for command in ("report", "resume", "eval", "dissect"):
        code, _, err = cli(command, run.path)
        assert code == 2
        one_line(err, f"run {run.id} is marked complete, but", expected)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ({"members": "two"}, "run manifest is damaged (members: 'two')"),
        ({"members": 0}, "run manifest is damaged (members: 0)"),
        ({"total_steps": None}, "run manifest is damaged (total_steps: None)"),
        ({"status": 5}, "run manifest is damaged (status: 5)"),
        ({"created": 5}, "run manifest is damaged (created: 5)"),
        ({"created": ...}, "run manifest is damaged (no created)"),
        (b"\xff\xfe", "run manifest is not valid JSON"),
    ],
)
def test_a_manifest_of_damaged_fields_or_bytes_is_refused_and_listed(
    tmp_path: Path, cli, damage: dict | bytes, expected: str
) -> None:
    run = trained(tmp_path)
    trained(tmp_path, seed=5)
    manifest = run.path / "manifest.json"
    if isinstance(damage, bytes):
        manifest.write_bytes(damage)
    else:
        fields = {**json.loads(manifest.read_text()), **damage}
        manifest.write_text(json.dumps({k: v for k, v in fields.items() if v is not ...}))  # ...: deleted
    for command in ("resume", "eval", "report"):
        code, _, err = cli(command, run.path)
        assert code == 2
        one_line(err, expected)
    code, out, err = cli("list", "runs", "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    assert "│ complete " in out and "unreadable (below)" in out, "one damaged run hides no other"
    assert f"{run.path}: {expected}" in " ".join(out.split())


def test_files_that_are_not_utf8_text_are_refused_naming_them(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    (run.path / "config.yaml").write_bytes(b"\xff\xfe garbage")
    code, _, err = cli("eval", run.path)
    assert code == 2
    one_line(err, f"config file {run.path / 'config.yaml'} is not UTF-8 text")
    from icl_lab.analysis.dissect import _settings_of
    from icl_lab.report.sweep import write_sweep_report

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(RunStoreError, match=r"sweep.yaml is damaged \(not UTF-8 text\)$"):
        write_sweep_report(tmp_path / "sweep")

    estimate = tmp_path / "step_000000004.json"
    for text in (b'{"llc": ', b"", b"\xff", b"[1]", b'{"settings": {}}'):
        estimate.write_bytes(text)
        assert _settings_of(estimate) is None, "a damaged LLC estimate is estimated again"


def test_a_sidecars_checksum_is_of_its_fields_as_read_back(tmp_path: Path) -> None:
    """JSON turns int keys into strings, which sort otherwise: the digest is of what is read."""
    info = {"by_member": {2: 1.0 / 3, 10: None}, "name": "ß", "flags": [True, -0.0]}
    save_checkpoint(tmp_path, 8, {"x": torch.zeros(2)}, info)
    loaded = load_checkpoint(tmp_path / "step_000000008.json")
    assert loaded.info["by_member"] == {"2": 1.0 / 3, "10": None} and loaded.step == 8


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ({"loss_count": 9}, "its fields do not match their checksum"),  # would restore silently
        ({"fields_sha256": ..., "param_groups": ...}, "it lacks 'param_groups'"),  # an older sidecar
        ({"fields_sha256": ..., "step": 12}, "its fields do not match its file name's step"),
        ({"fields_sha256": ..., "loss_count": "8"}, "its 'loss_count' is '8'"),  # older: no checksum
        ({"fields_sha256": ..., "wall_s": -1.5}, "its 'wall_s' is -1.5"),
        ({"fields_sha256": ..., "param_groups": [None]}, "its 'param_groups' is [None]"),
    ],
)
def test_a_damaged_sidecar_is_a_damaged_checkpoint(tmp_path: Path, cli, damage: dict, expected: str) -> None:
    run = trained(tmp_path)
    cut = killed_copy(run, tmp_path / "cut", 8)
    sidecar = cut / "checkpoints" / "step_000000008.json"
    info = json.loads(sidecar.read_text())
    assert info["loss_count"] != 9
    info = {k: damage.get(k, v) for k, v in info.items() if damage.get(k) is not ...}
    sidecar.write_text(json.dumps(info))
    code, _, err = cli("resume", cut)
    assert code == 2
    one_line(err, f"checkpoint sidecar {sidecar} is damaged: {expected}; to resume from step 4")


def test_resume_of_a_complete_run_checks_its_config_and_device(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    code, _, err = cli("resume", run.path, "--device", "tpu")
    assert code == 2
    one_line(err, "--device: unknown device 'tpu'")
    config = run.path / "config.yaml"
    config.write_text(config.read_text().replace("d_model: 16", "d_model: 8"))
    code, _, err = cli("resume", run.path)
    assert code == 2
    one_line(err, "its config.yaml was changed since the run started")


def test_an_export_into_the_run_itself_or_nowhere_is_refused(tmp_path: Path, cli) -> None:
    run = trained(tmp_path)
    code, _, err = cli("export", run.path, run.path)
    assert code == 2
    one_line(err, f"OUT is the run directory itself ({run.path})")
    code, _, err = cli("export", run.path, "")
    assert code == 2
    one_line(err, "Invalid value for 'out': is empty: give a directory")
    assert not list(run.path.glob("tl_*")) and not Path("tl_config.json").exists()


def test_disk_errors_of_safetensors_and_figures_name_their_cause_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt
    from safetensors import SafetensorError

    import icl_lab.files
    from icl_lab.report.html import save_png

    def refused(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")

    monkeypatch.setattr(icl_lab.files, "save_file", refused)
    with pytest.raises(StorageError, match=r": Permission denied$"):  # no "(is the disk full?)" guess
        icl_lab.files.save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(1)})

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # the image library names no file

    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", full)
    with pytest.raises(StorageError, match=f"^cannot write {tmp_path / 'f.png'}: No space left on device$"):
        save_png(fig, tmp_path / "f.png")
    assert not plt.fignum_exists(fig.number), "closed all the same"


def test_an_interrupted_dissect_says_to_run_it_again(tmp_path: Path, cli, monkeypatch) -> None:
    from icl_lab.errors import Interrupted

    run = trained(tmp_path)

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted("SIGTERM")

    monkeypatch.setattr("icl_lab.analysis.dissect.dissect", stopped)
    code, _, err = cli("dissect", run.path, "--no-causal", "-q")
    assert code == 143
    one_line(err, f"interrupted (SIGTERM); continue with: icl-lab dissect {run.path} --no-causal -q")
