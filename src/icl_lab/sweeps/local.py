"""The local executor: train configs in a pool of processes, one torch thread each."""

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from icl_lab.experiment import ExperimentConfig
from icl_lab.store.run import Run


def _train_one(config_yaml: str, runs_dir: str) -> str:
    import torch
    import yaml

    from icl_lab.experiment import validate_config
    from icl_lab.training.trainer import train

    torch.set_num_threads(1)
    return str(train(validate_config(yaml.safe_load(config_yaml)), runs_dir, progress=False).path)


def run_configs(
    configs: Sequence[ExperimentConfig], runs_dir: str | Path, workers: int = 2, progress: bool = True
) -> list[Run]:
    """Train every config (in parallel processes when workers > 1); runs in the order given."""
    paths: list[str | None] = [None] * len(configs)
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool,
        Progress(
            TextColumn("[bold]runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not progress,
        ) as bar,
    ):
        task = bar.add_task("runs", total=len(configs))
        futures = {pool.submit(_train_one, c.to_yaml(), str(runs_dir)): i for i, c in enumerate(configs)}
        for future in as_completed(futures):
            paths[futures[future]] = future.result()
            bar.advance(task)
    return [Run.open(p) for p in paths]
