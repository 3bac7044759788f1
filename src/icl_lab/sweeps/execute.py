"""Executors: train work units (one run directory each) in processes or on a Ray cluster.

A unit whose run is complete is skipped, one whose run was interrupted resumes from its last
checkpoint, and one that fails is recorded as failed (its run's manifest holds the error) while
the others carry on. Workers use one torch thread each.
"""

import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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

from icl_lab.experiment import ExperimentConfig

Executor = Literal["local", "ray"]


@dataclass(frozen=True)
class Job:
    """A run directory to bring to completion, with its member configs."""

    path: Path
    configs: tuple[ExperimentConfig, ...]


def run_job(path: str, configs_yaml: list[str]) -> tuple[str, str]:
    """Train, resume or skip one run directory; returns (status, error). Runs in a worker."""
    import torch

    from icl_lab.experiment import validate_config
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import resume, train
    from icl_lab.yaml_text import load_yaml

    torch.set_num_threads(1)
    run_dir = Path(path)
    try:
        if (run_dir / "manifest.json").is_file():
            run = Run.open(run_dir)
            if run.status == "running":  # another live process trains it: leave it alone
                owner = f"pid {run.manifest.get('pid')} on {run.manifest.get('host')}"
                return "running", f"being trained by {owner}"
            if run.status != "complete":
                resume(run, progress=False)
        else:
            configs = [validate_config(load_yaml(text)) for text in configs_yaml]
            train(configs, str(run_dir.parent), progress=False, run_id=run_dir.name)
    except Exception as e:  # one failing job must not stop a sweep: its error is recorded
        return "failed", f"{type(e).__name__}: {e}"
    return "complete", ""


def _local(jobs: list[Job], workers: int) -> Iterator[tuple[int, tuple[str, str]]]:
    """Jobs in a pool of processes, handed out one per free worker (so none waits queued inside
    the pool). If the caller stops (Ctrl-C, SIGTERM, an error), the workers get SIGTERM, which
    stops each run resumably (marked interrupted), and no further job starts."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    queued = iter(enumerate(jobs))
    running: dict[Future, int] = {}

    def submit_next() -> None:
        for i, job in itertools.islice(queued, 1):
            running[pool.submit(run_job, str(job.path), [c.to_yaml() for c in job.configs])] = i

    try:
        for _ in range(workers):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                submit_next()
                yield index, future.result()
    except BaseException:
        for worker in multiprocessing.active_children():
            worker.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _ray(jobs: list[Job], workers: int, address: str | None) -> Iterator[tuple[int, tuple[str, str]]]:
    try:
        import ray
    except ImportError:
        from icl_lab.errors import ConfigError

        raise ConfigError("the ray executor needs Ray: pip install 'icl-lab[ray]'") from None
    if not ray.is_initialized():
        options = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(ignore_reinit_error=True, log_to_driver=False, **options)
    task = ray.remote(num_cpus=1)(run_job)
    pending = {task.remote(str(j.path), [c.to_yaml() for c in j.configs]): i for i, j in enumerate(jobs)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            yield pending.pop(ref), ray.get(ref)


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
    configs: list[ExperimentConfig], runs_dir: str | Path, workers: int = 2, progress: bool = True
) -> list:
    """Train named configs, one run each (in parallel processes); the runs in the order given.
    Rerunning with the same runs_dir skips finished runs and resumes interrupted ones."""
    from icl_lab.errors import IclLabError
    from icl_lab.store.run import Run

    jobs = [Job(Path(runs_dir) / f"{i:03d}-{c.name}", (c,)) for i, c in enumerate(configs)]
    results = execute(jobs, "local", workers, progress)
    failed = [
        f"{job.path.name}: {error}"
        for job, (status, error) in zip(jobs, results, strict=True)
        if status == "failed"
    ]
    if failed:
        raise IclLabError("runs failed: " + "; ".join(failed))
    return [Run.open(job.path) for job in jobs]
