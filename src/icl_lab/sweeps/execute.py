"""Executors: train work units (one run directory each: a model run, or an SAE run on another
unit's model) in processes or on a Ray cluster.

A unit whose run is complete is skipped, one whose run was interrupted resumes from its last
checkpoint, and one that fails is recorded as failed (its run's manifest holds the error) while
the others carry on. Units go out largest first by estimated work, so that no long one starts last
while the other workers idle; a unit starts once the units it comes after have completed (one after
a failed unit fails without running). Workers use one torch thread each.
"""

import contextlib
import ctypes
import json
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from icl_lab.errors import ConfigError, IclLabError, Interrupted, StorageError, WorkerLostError
from icl_lab.experiment import ExperimentConfig, ensemble_problem
from icl_lab.files import atomic_write_text
from icl_lab.sae.config import SAERunConfig
from icl_lab.sweeps.config import MAX_ENSEMBLE
from icl_lab.sweeps.packing import Setting, ensembles, is_grouping, training_mflop

Executor = Literal["local", "ray"]
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


@dataclass(frozen=True)
class Job:
    """A run directory to bring to completion: a model run of its member configs, or an SAE run of
    one SAE config; `after` holds the indices of earlier jobs that must complete first."""

    path: Path
    configs: tuple[ExperimentConfig, ...] | tuple[SAERunConfig]
    after: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return "sae" if isinstance(self.configs[0], SAERunConfig) else "model"

    def arguments(self) -> tuple[str, list[str], str]:
        return str(self.path), [c.to_yaml() for c in self.configs], self.kind


def _wanted_hash(run, configs: list, kind: str) -> str:
    """The fingerprint `run` must carry to be the job's run: its member configs', or its SAE
    config's (a source named by another path to the same directory counts as the same)."""
    from icl_lab.experiment import ensemble_hash

    if kind == "model":
        return ensemble_hash(configs)
    config = configs[0].model_copy(deep=True)
    if Path(config.source.run).resolve() == Path(run.config.source.run).resolve():
        config.source.run = run.config.source.run
    return config.hash()


MOVE_AWAY = "move {} away (or delete it) and run the sweep again to train it afresh"
"""what to do about a damaged run directory: a sweep never deletes one itself"""


def run_job(path: str, configs_yaml: list[str], kind: str = "model") -> tuple[str, str]:
    """Train, resume or skip one run directory; returns (status, error). Runs in a worker."""
    import torch

    from icl_lab.experiment import validate_config
    from icl_lab.sae.config import validate_sae_config
    from icl_lab.sae.run import SAERun, resume_sae, train_sae
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import resume, train
    from icl_lab.yaml_text import load_yaml

    torch.set_num_threads(1)
    run_dir = Path(path)
    handle, resume_run = (SAERun, resume_sae) if kind == "sae" else (Run, resume)
    validate = validate_sae_config if kind == "sae" else validate_config
    try:
        configs = [validate(load_yaml(text)) for text in configs_yaml]
        if (run_dir / "manifest.json").is_file():
            try:  # a damaged run: unreadable, or marked complete with its end missing
                run = handle.open(run_dir)
                run.check_whole()
            except IclLabError as e:
                return "failed", f"{type(e).__name__}: {e}; {MOVE_AWAY.format(run_dir)}"
            if run.status == "running":  # another live process trains it: leave it alone
                owner = f"pid {run.manifest.get('pid')} on {run.manifest.get('host')}"
                return "running", f"being trained by {owner}"
            wanted = _wanted_hash(run, configs, kind)
            if run.config_hash != wanted:
                return "failed", (
                    f"{run_dir} holds a run of other configs (hash {run.config_hash}, asked for "
                    f"{wanted}); move it away or choose another directory"
                )
            if kind == "model":
                run.check_sources()
                run.check_recorded_data()
            if run.status != "complete":  # on the device asked for now, not the one it started on
                for stored, asked in zip(
                    run.configs if kind == "model" else [run.config], configs, strict=True
                ):
                    stored.training.device = asked.training.device
                resume_run(run, progress=False)
        elif kind == "sae":
            train_sae(configs[0], run_dir.parent, progress=False, run_id=run_dir.name)
        else:
            train(configs, str(run_dir.parent), progress=False, run_id=run_dir.name)
    except (Exception, Interrupted) as e:  # one failing or stopped job must not stop a sweep
        return "failed", f"{type(e).__name__}: {e}"
    return "complete", ""


def largest_first(jobs: list[Job], workers: int) -> list[int]:
    """The jobs' indices by estimated work (packing.training_mflop), largest first and in the given
    order among equals: a long job handed out last keeps one worker busy while the others idle. In
    the given order where that cannot happen (one worker, or no more jobs than workers)."""
    if workers < 2 or len(jobs) <= workers:
        return list(range(len(jobs)))
    forward: dict[str, float] = {}
    work = [training_mflop(job.configs, forward) if job.kind == "model" else 0.0 for job in jobs]
    return sorted(range(len(jobs)), key=lambda i: -work[i])


class Schedule:
    """Jobs in the order given (a list of indices), each handed out once the jobs it comes after
    have completed."""

    def __init__(self, jobs: list[Job], order: list[int]) -> None:
        self.jobs, self.waiting = jobs, list(order)
        self.status: dict[int, str] = {}
        self.halted = ""

    def done(self, index: int, status: str, error: str = "") -> None:
        self.status[index] = status
        if error.startswith(f"{StorageError.__name__}:"):  # a full or read-only disk fails every job
            self.halted = f"not started: {self.jobs[index].path.name} could not write its files"

    def take(self) -> tuple[int, tuple[str, str] | None] | None:
        """The next job to run (index, None); a job after a failed one, or any once a job could
        not write, already settled (index, ("failed", why)); or None when nothing is ready now."""
        if self.halted and self.waiting:
            return self.waiting.pop(0), ("failed", self.halted)
        for i in self.waiting:
            after = self.jobs[i].after
            blocked = [self.jobs[d].path.name for d in after if self.status.get(d, "complete") != "complete"]
            if blocked:
                self.waiting.remove(i)
                return i, ("failed", f"it needs {', '.join(blocked)}, which did not complete")
            if all(self.status.get(d) == "complete" for d in after):
                self.waiting.remove(i)
                return i, None
        return None


def _stop_with(parent: int) -> None:
    """A worker's start: on Linux, ask for SIGKILL when its parent dies (even by SIGKILL), so that
    no worker outlives a killed sweep. Not SIGTERM: a training run takes that as Ctrl-C and
    returns, and the worker would then wait for work forever. A killed run's lock dies with it, so
    it reads as interrupted and resumes from its last checkpoint."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of spawned worker processes. If the caller stops (Ctrl-C, SIGTERM, an error, or a
    generator using it is closed), the workers get SIGTERM and no further job starts; if it is
    killed outright (SIGKILL), the kernel kills them too (Linux)."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_stop_with,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
    except BaseException as e:
        for worker in multiprocessing.active_children():
            worker.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(e, BrokenProcessPool):
            raise WorkerLostError(
                "a worker process was killed from outside (by the system for lack of memory, most "
                "often: see dmesg); what the workers had finished is kept, and the same command "
                "resumes the rest"
            ) from None
        raise
    pool.shutdown(wait=True)


def _local(jobs: list[Job], workers: int) -> Iterator[tuple[int, tuple[str, str]]]:
    """Jobs in a pool of processes, handed out one per free worker (so none waits queued inside
    the pool); a run whose worker is stopped is marked interrupted and resumes later."""
    schedule = Schedule(jobs, largest_first(jobs, workers))
    running: dict[Future, int] = {}

    def fill() -> Iterator[tuple[int, tuple[str, str]]]:
        """Start ready jobs while workers are free; yields the jobs settled without running."""
        while len(running) < workers and (ready := schedule.take()) is not None:
            index, settled = ready
            if settled is not None:
                schedule.done(index, settled[0])
                yield index, settled
            else:
                running[pool.submit(run_job, *jobs[index].arguments())] = index

    with process_pool(workers) as pool:
        yield from fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                schedule.done(index, *future.result())
                yield index, future.result()
            yield from fill()


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """ConfigError unless a Ray address given as [ray://]host:port accepts a connection (ray.init
    would wait minutes on one that does not); other forms ("auto") are left to Ray."""
    import socket

    found = re.fullmatch(r"(?:ray://)?([^:/]+):(\d+)", address)
    if found is None:
        return
    try:
        socket.create_connection((found[1], int(found[2])), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({e})") from None


def _ray(jobs: list[Job], workers: int, address: str | None) -> Iterator[tuple[int, tuple[str, str]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'icl-lab[ray]'") from None
    if not ray.is_initialized():
        options = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        if address:
            _reachable(address)
        try:
            ray.init(ignore_reinit_error=True, log_to_driver=False, **options)
        except (ValueError, ConnectionError) as e:
            raise ConfigError(f"--address {address}: no Ray cluster to join ({e})") from None
    task = ray.remote(num_cpus=1)(run_job)
    schedule, pending = Schedule(jobs, largest_first(jobs, workers)), {}
    while True:
        while (ready := schedule.take()) is not None:  # Ray queues what the cluster cannot run yet
            index, settled = ready
            if settled is not None:
                schedule.done(index, settled[0])
                yield index, settled
            else:
                pending[task.remote(*jobs[index].arguments())] = index
        if not pending:
            return
        try:
            done, _ = ray.wait(list(pending), num_returns=1)
        except SystemError as e:  # a Ctrl-C inside Ray's compiled wait comes out wrapped
            if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            raise
        for ref in done:
            index, result = pending.pop(ref), ray.get(ref)
            schedule.done(index, *result)
            yield index, result


def execute(
    jobs: list[Job],
    executor: Executor = "local",
    workers: int = 2,
    progress: bool = True,
    address: str | None = None,
    on_done: Callable[[int, str, str], None] = lambda i, status, error: None,
) -> list[tuple[str, str]]:
    """Bring every job to completion; returns (status, error) per job, in the order given."""
    results: list[tuple[str, str]] = [("pending", "")] * len(jobs)
    counts = {"complete": 0, "failed": 0, "running": 0}
    stream = _local(jobs, workers) if executor == "local" else _ray(jobs, workers, address)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("runs", total=len(jobs), counts="")
        for index, (status, error) in stream:
            results[index] = (status, error)
            counts[status] += 1
            on_done(index, status, error)
            running = min(workers, len(jobs) - sum(counts.values()))
            text = f"done {counts['complete']} | running {running} | failed {counts['failed']}"
            if counts["running"]:
                text += f" | left to another process {counts['running']}"
            bar.update(task, advance=1, counts=text)
    return results


def run_configs(
    configs: list[ExperimentConfig | SAERunConfig],
    runs_dir: str | Path,
    workers: int = 2,
    progress: bool = True,
    ensemble: Setting = "none",
) -> list:
    """Train named configs (in parallel processes); a run handle for each, in the order given. Each
    config trains alone or with the configs it shares a vmapped ensemble with, as the `ensemble`
    setting says (sweeps/packing.py), each handle then on its own member. An SAE config whose
    source.run is the name of an earlier config reads that config's run (and member), and starts
    once it is complete. The grouping is kept in runs_dir/ensembles.json: rerunning the same
    configs into runs_dir skips finished runs and resumes interrupted ones."""
    from icl_lab.sae.run import SAERun
    from icl_lab.store.run import Run

    groups = _grouping(configs, Path(runs_dir), ensemble, workers)
    where: dict[int, tuple[int, int]] = {}  # config index -> (job, member)
    jobs: list[Job] = []
    for indices in groups:
        first = configs[indices[0]]
        after: tuple[int, ...] = ()
        if isinstance(first, SAERunConfig):
            earlier = enumerate(configs[: indices[0]])
            models = {c.name: j for j, c in earlier if isinstance(c, ExperimentConfig)}
            if first.source.run in models:
                job, member = where[models[first.source.run]]
                after = (job,)
                first = first.model_copy(deep=True)
                first.source.run, first.source.member = str(jobs[job].path), member
        suffix = f"-x{len(indices)}" if len(indices) > 1 else ""
        name = f"{indices[0]:03d}-{first.name}{suffix}"
        members = (first,) if isinstance(first, SAERunConfig) else tuple(configs[i] for i in indices)
        where |= {i: (len(jobs), m) for m, i in enumerate(indices)}
        jobs.append(Job(Path(runs_dir) / name, members, after))
    results = execute(jobs, "local", workers, progress)
    failed = [
        (error.startswith(("not started", "it needs")), f"{job.path.name}: {error}")
        for job, (status, error) in zip(jobs, results, strict=True)
        if status == "failed"
    ]
    if failed:
        first = min(failed, key=lambda f: f[0])[1]  # a run's own failure before those it caused
        raise IclLabError(f"{len(failed)} of {len(jobs)} runs failed; the first: {first}")
    runs = [(SAERun if job.kind == "sae" else Run).open(job.path) for job in jobs]
    return [
        runs[job].view(member) if isinstance(runs[job], Run) else runs[job]
        for job, member in (where[i] for i in range(len(configs)))
    ]


def _check_saved_groups(path: Path, groups: list[list]) -> None:
    """IclLabError naming the plan if a saved group cannot train as one ensemble (one an older
    icl-lab packed, such as LSTM runs, which fail at their first step)."""
    for group in (g for g in groups if len(g) > 1):
        if not all(isinstance(c, ExperimentConfig) for c in group):
            raise IclLabError(f"{path} packs runs that are not model runs; delete it and rerun")
        if problem := ensemble_problem(group):
            reason = problem[0]
            raise IclLabError(f"{path} packs runs that cannot train together ({reason}); delete it and rerun")


def _grouping(configs: list, runs_dir: Path, setting: Setting, workers: int) -> list[list[int]]:
    """The configs' indices grouped into runs: as runs_dir/ensembles.json recorded them for the same
    configs (by name), else packed now (and recorded)."""
    path, names = runs_dir / "ensembles.json", [c.name for c in configs]
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            same = saved["names"] == names and saved["setting"] == setting  # else: other configs
            valid = is_grouping(saved["runs"], len(configs))
        except (ValueError, KeyError, TypeError):
            same, valid = True, False
        if same and not valid:
            raise IclLabError(f"{path} is corrupt; delete it and rerun with the same --workers")
        if same:
            _check_saved_groups(path, [[configs[i] for i in group] for group in saved["runs"]])
            return saved["runs"]
    groups = ensembles(configs, setting, workers, MAX_ENSEMBLE)
    runs_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"names": names, "setting": setting, "runs": groups}))
    return groups
