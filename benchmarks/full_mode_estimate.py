"""How long each reproduction's full mode (the papers' scale) takes: every model run it trains,
timed for a short prefix on this machine and extrapolated to its whole length.

Runs that differ only in seed, name, learning rate or length share one timing. Per distinct
config, eager (training.compile off, so the figures are upper bounds for the long runs that
`auto` compiles): the first step is set apart, then `--steps` training steps and one evaluation
of all splits are timed, on one thread. The estimate of a run = first step + steps x seconds per
step + evaluations x seconds per evaluation;
checkpoint writes and SAE runs (Kissane's) are left out and said so. Totals are CPU hours on one
thread; with W worker processes the wall time is about total / W. These are extrapolations, not
measurements of whole runs.

    taskset -c 1 .venv/bin/python benchmarks/full_mode_estimate.py [NAME ...] [--steps 30]
"""

import argparse
import json
import math
import time

import torch

from common import write_results
from icl_lab.experiment import ExperimentConfig, total_steps
from icl_lab.reproduce import REPRODUCTIONS
from icl_lab.reproduce.base import SweepReproduction
from icl_lab.sweeps.config import expand
from icl_lab.tasks import TASKS


def full_mode_configs(name: str) -> tuple[list[ExperimentConfig], int]:
    """(the model configs a reproduction's full mode trains, how many SAE runs it adds)."""
    reproduction = REPRODUCTIONS.get(name)()
    if isinstance(reproduction, SweepReproduction):
        return [p.config for sweep in reproduction.sweeps(False).values() for p in expand(sweep)], 0
    configs = list(reproduction.experiments(False).values())
    models = [c for c in configs if isinstance(c, ExperimentConfig)]
    return models, len(configs) - len(models)


def shape_key(config: ExperimentConfig) -> str:
    """What sets a step's cost: the config without its seed, name, learning rate and schedule."""
    data = config.model_dump(mode="json", by_alias=True)
    del data["name"], data["seed"], data["training"]["length"], data["training"]["optimizer"]["lr"]
    del data["eval"]["every"], data["checkpointing"]
    return json.dumps(data, sort_keys=True)


def time_config(config: ExperimentConfig, steps: int) -> dict[str, float]:
    """Seconds of the first step, of each later step (mean of `steps`) and of one evaluation."""
    import tempfile
    from pathlib import Path

    from icl_lab.store.run import Run
    from icl_lab.training.trainer import Trainer

    eager = config.model_copy(update={"training": config.training.model_copy(update={"compile": "off"})})
    trainer = Trainer(Run.create([eager], Path(tempfile.mkdtemp())), progress=False)
    start = time.perf_counter()
    trainer.train_step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    trainer.evaluate_all()
    return {"first_s": first, "step_s": step, "eval_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="reproductions (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per distinct config")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record = {"steps_timed": args.steps, "reproductions": {}}
    for name in args.names or REPRODUCTIONS.names():
        configs, saes = full_mode_configs(name)
        timings: dict[str, dict[str, float]] = {}
        total = 0.0
        for config in configs:
            key = shape_key(config)
            if key not in timings:
                timings[key] = time_config(config, args.steps)
            t = timings[key]
            n = total_steps(config)
            n_ctx = TASKS.get(config.task.name).io(config.task).n_ctx
            every = config.eval.every.to_steps(config.training.batch_size, n_ctx) if config.eval.every else n
            total += t["first_s"] + n * t["step_s"] + (math.ceil(n / every) + 1) * t["eval_s"]
        record["reproductions"][name] = {
            "runs": len(configs),
            "distinct_configs": len(timings),
            "sae_runs_not_timed": saes,
            "cpu_hours_one_thread": total / 3600,
            "timings": list(timings.values()),
        }
        print(
            f"{name:18} {len(configs):3} runs ({len(timings)} distinct) "
            f"~{total / 3600:6.1f} CPU hours on one thread"
            + (f"; {saes} SAE runs not timed" if saes else ""),
            flush=True,
        )
        path = write_results("full_mode_estimate", record)  # after each: a long run keeps what it has
    print(f"results: {path}")


if __name__ == "__main__":
    main()
