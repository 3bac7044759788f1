"""How long each reproduction's full mode (the papers' scale) takes: every model run and SAE run it
trains, timed for a short prefix on this machine and extrapolated to its whole length.

Runs that differ only in seed, name, learning rate or length share one timing. Per distinct model
config, eager (training.compile off, so the figures are upper bounds for the long runs that `auto`
compiles): set-up and first step are set apart, then `--steps` training steps and one evaluation of all
splits are timed, on one thread. Evaluation is timed on at most `--eval-sequences` sequences per
split and scaled linearly to the config's eval.batch_size (its cost is one forward pass per batch;
icll's 500 prompts of 1,024 tokens would hold every attention pattern at once). The estimate of a
run = first step + steps x seconds per step + evaluations x seconds per evaluation. An SAE run
(Kissane's) is timed on a one-step model of its source's config (the weights do not change the
cost): filling its activation buffer, `--steps` SAE steps and one evaluation. Checkpoint writes are
left out. Totals are CPU hours on one thread; with W worker processes the wall time is about
total / W. These are extrapolations, not measurements of whole runs. This shared machine's speed
drifts (a 1024^3 matmul on one thread has measured 64-140 GFLOP/s on different days), so each
entry records that matmul's GFLOP/s, measured before and after it, beside its hours. Each
invocation updates the named reproductions' entries and keeps the others.

    taskset -c 1 .venv/bin/python benchmarks/full_mode_estimate.py [NAME ...] [--steps 30]
"""

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import RESULTS, write_results
from icl_lab.config import Duration
from icl_lab.experiment import ExperimentConfig, total_steps
from icl_lab.reproduce import REPRODUCTIONS
from icl_lab.reproduce.base import SweepReproduction
from icl_lab.sae.config import SAERunConfig
from icl_lab.sweeps.config import expand
from icl_lab.tasks import TASKS
from train_throughput import matmul_gflops


def full_mode_configs(name: str) -> list[ExperimentConfig | SAERunConfig]:
    """The model and SAE configs a reproduction's full mode trains."""
    reproduction = REPRODUCTIONS.get(name)()
    if isinstance(reproduction, SweepReproduction):
        return [p.config for sweep in reproduction.sweeps(False).values() for p in expand(sweep)]
    return list(reproduction.experiments(False).values())


def shape_key(config: ExperimentConfig | SAERunConfig) -> str:
    """What sets a step's cost: the config without its seed, name, learning rate and schedule."""
    data = config.model_dump(mode="json", by_alias=True)
    if isinstance(config, SAERunConfig):
        del data["name"], data["training"]["steps"], data["checkpointing"], data["eval"]["every"]
        return json.dumps(data, sort_keys=True)
    del data["name"], data["seed"], data["training"]["length"], data["training"]["optimizer"]["lr"]
    del data["eval"]["every"], data["checkpointing"]
    return json.dumps(data, sort_keys=True)


def _eager(config: ExperimentConfig, **training: object) -> ExperimentConfig:
    update = {"compile": "off", **training}
    return config.model_copy(update={"training": config.training.model_copy(update=update)})


def _steps_and_eval(
    start: float, step: Callable[[], object], evaluate: Callable[[], object], steps: int
) -> dict[str, float]:
    """Seconds since `start` (the set-up and first step), then per step over `steps` more, then of
    one evaluation."""
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    evaluate()
    return {"first_s": first, "step_s": per_step, "eval_s": time.perf_counter() - start}


def time_config(config: ExperimentConfig, steps: int, eval_sequences: int) -> dict[str, float]:
    """Seconds of the first step, of each later step (mean of `steps`) and of one evaluation
    (timed on at most eval_sequences sequences per split, scaled to eval.batch_size)."""
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import Trainer

    timed = min(config.eval.batch_size, eval_sequences)
    eager = _eager(config).model_copy(update={"eval": config.eval.model_copy(update={"batch_size": timed})})
    start = time.perf_counter()
    trainer = Trainer(Run.create([eager], Path(tempfile.mkdtemp())), progress=False)
    trainer.train_step()
    times = _steps_and_eval(start, trainer.train_step, trainer.evaluate_all, steps)
    times["eval_s"] *= config.eval.batch_size / timed
    return {**times, "eval_sequences_timed": timed}


def time_sae(config: SAERunConfig, model: ExperimentConfig, steps: int) -> dict[str, float]:
    """Seconds to fill the SAE run's buffer (its first step), of each SAE step (mean of `steps`)
    and of one evaluation, on a one-step model of its source's config."""
    from icl_lab.sae.run import SAERun, SAETrainer, open_source
    from icl_lab.training.trainer import train

    where = Path(tempfile.mkdtemp())
    source_run = train(_eager(model, length=Duration(steps=1)), str(where), progress=False)
    sae = config.model_copy(deep=True)
    sae.source.run = str(source_run.path)
    source = open_source(sae)
    start = time.perf_counter()
    trainer = SAETrainer(SAERun.create(sae, where, source), source, progress=False)
    return _steps_and_eval(start, trainer.train_step, trainer.evaluate, steps)


def estimate(name: str, steps: int, eval_sequences: int) -> dict:
    """One reproduction's full mode: runs, distinct configs, CPU hours on one thread, timings, and
    the machine's matmul GFLOP/s before and after."""
    speed = [matmul_gflops()]
    configs = full_mode_configs(name)
    models = {c.name: c for c in configs if isinstance(c, ExperimentConfig)}
    timings: dict[str, dict[str, float]] = {}
    total = 0.0
    for config in configs:
        key = shape_key(config)
        if isinstance(config, SAERunConfig):
            if key not in timings:
                timings[key] = time_sae(config, models[config.source.run], steps)
            n, every = config.training.steps, config.eval.every
        else:
            if key not in timings:
                timings[key] = time_config(config, steps, eval_sequences)
            n = total_steps(config)
            n_ctx = TASKS.get(config.task.name).io(config.task).n_ctx
            every = config.eval.every.to_steps(config.training.batch_size, n_ctx) if config.eval.every else n
        t = timings[key]
        total += t["first_s"] + n * t["step_s"] + (math.ceil(n / every) + 1) * t["eval_s"]
    saes = sum(isinstance(c, SAERunConfig) for c in configs)
    speed.append(matmul_gflops())
    return {
        "runs": len(configs),
        "sae_runs": saes,
        "distinct_configs": len(timings),
        "steps_timed": steps,
        "cpu_hours_one_thread": total / 3600,
        "matmul_gflops_before_after": speed,
        "timings": list(timings.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="reproductions (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per distinct config")
    parser.add_argument(
        "--eval-sequences", type=int, default=64, help="sequences per split an evaluation is timed on"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    previous = RESULTS / "full_mode_estimate.json"
    record = json.loads(previous.read_text()) if previous.is_file() else {}
    record = {"reproductions": record.get("reproductions", {})}
    for name in args.names or REPRODUCTIONS.names():
        entry = record["reproductions"][name] = estimate(name, args.steps, args.eval_sequences)
        print(
            f"{name:18} {entry['runs']:3} runs ({entry['distinct_configs']} distinct, "
            f"{entry['sae_runs']} SAE) ~{entry['cpu_hours_one_thread']:6.1f} CPU hours on one thread "
            f"(matmul {' then '.join(f'{g:.0f}' for g in entry['matmul_gflops_before_after'])} GFLOP/s)",
            flush=True,
        )
        path = write_results("full_mode_estimate", record)  # after each: a long run keeps what it has
    print(f"results: {path}")


if __name__ == "__main__":
    main()
