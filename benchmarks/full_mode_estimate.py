"""How long each reproduction's full mode (the papers' scale) takes: every model run and SAE run it
trains, timed for a short prefix on this machine and extrapolated to its whole length.

On the CPU (the default), every model run is timed as a single run on one thread; runs that differ
only in seed, name, learning rate or length share one timing. With `--device cuda` (or `--packed`),
the runs are packed into ensembles as `icl-lab reproduce` packs them on one worker (a sweep's by its
own `ensemble` settings, the others by `auto`; up to 16 members), and each distinct ensemble (its
members' shape and count) is timed as one trainer on the device. Eager (training.compile off, so the
figures are upper bounds for runs that `auto` compiles) unless `--compile`, which keeps each
config's own setting and counts its compile in the first step, or `--cuda-graphs` (on a GPU), which
compiles every config with training.cuda_graphs on. Per timing, set-up and first step are
set apart, then `--steps` training steps and one evaluation of all splits are timed. On the CPU
evaluation is timed on at most `--eval-sequences` (64) sequences per split and scaled linearly to
the config's eval.batch_size (its cost is one forward pass per batch; icll's 500 prompts of 1,024
tokens would hold every attention pattern at once); on a GPU, whose cost is far from linear in the
batch, on the whole batch unless `--eval-sequences` is given (the H200 estimates of 2026-12-04
scaled 64 sequences, overstating reddy-phase's evaluations, 1.5 of its 4.4 hours). The estimate of a
run = first step + steps x seconds per step + evaluations x seconds per evaluation. An SAE run
(Kissane's) is timed on a one-step model of its source's config (the weights do not change the
cost): filling its activation buffer, `--steps` SAE steps and one evaluation. Checkpoint writes are
left out. Totals are CPU hours on one thread (with W worker processes the wall time is about total /
W), or hours on one GPU running the ensembles one after another. These are extrapolations, not
measurements of whole runs. This shared machine's speed drifts (a 1024^3 matmul on one thread has
measured 64-140 GFLOP/s on different days), so each entry records that matmul's GFLOP/s, measured
before and after it, beside its hours. Each invocation updates the named reproductions' entries and
keeps the others.

    taskset -c 1 .venv/bin/python benchmarks/full_mode_estimate.py [NAME ...] [--steps 30]
    python benchmarks/full_mode_estimate.py --device cuda [--compile | --cuda-graphs] [NAME ...]   (on a GPU)
    taskset -c 1 .venv/bin/python benchmarks/full_mode_estimate.py --packed [NAME ...]
"""

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import RESULTS, time_steps, write_results
from icl_lab.config import Duration
from icl_lab.errors import ConfigError
from icl_lab.experiment import ExperimentConfig, total_steps
from icl_lab.reproduce import REPRODUCTIONS
from icl_lab.reproduce.base import SweepReproduction
from icl_lab.sae.config import SAERunConfig
from icl_lab.sweeps.config import MAX_ENSEMBLE, expand
from icl_lab.sweeps.packing import ensembles
from icl_lab.tasks import TASKS
from train_throughput import matmul_gflops


def full_mode_runs(name: str, device: str, packed: bool) -> list[list[ExperimentConfig | SAERunConfig]]:
    """The trainer runs a reproduction's full mode makes on `device`: its model and SAE configs, one
    per run, or packed into ensembles as `reproduce` packs them on one worker (each sweep by its own
    ensemble settings; a reproduction's own experiments by `auto`)."""
    reproduction = REPRODUCTIONS.get(name)()
    if isinstance(reproduction, SweepReproduction):
        batches = [
            ([p.config for p in expand(sweep)], sweep.ensemble, sweep.max_ensemble)
            for sweep in reproduction.sweeps(False).values()
        ]
    else:
        batches = [(list(reproduction.experiments(False).values()), "auto", MAX_ENSEMBLE)]
    runs = []
    for configs, setting, size in batches:
        configs = [_with(c, device=device) for c in configs]
        runs += [
            [configs[i] for i in group]
            for group in ensembles(configs, setting if packed else "none", 1, size)
        ]
    return runs


def shape_key(config: ExperimentConfig | SAERunConfig) -> str:
    """What sets a step's cost: the config without its seed, name, learning rate and schedule."""
    data = config.model_dump(mode="json", by_alias=True)
    if isinstance(config, SAERunConfig):
        del data["name"], data["training"]["steps"], data["checkpointing"], data["eval"]["every"]
        return json.dumps(data, sort_keys=True)
    del data["name"], data["seed"], data["training"]["length"], data["training"]["optimizer"]["lr"]
    del data["eval"]["every"], data["checkpointing"]
    return json.dumps(data, sort_keys=True)


def _with(config: ExperimentConfig | SAERunConfig, **training: object) -> ExperimentConfig | SAERunConfig:
    """The config with these training settings changed."""
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


def _steps_and_eval(
    start: float, step: Callable[[], object], evaluate: Callable[[], object], steps: int
) -> dict[str, float]:
    """Seconds since `start` (the set-up and first step), then per step over `steps` more, then of
    one evaluation (a GPU synchronised before each reading)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    first = time.perf_counter() - start
    return {"first_s": first, "step_s": time_steps(step, steps), "eval_s": time_steps(evaluate, 1)}


def time_config(
    members: list[ExperimentConfig], steps: int, eval_sequences: int, compiled: str = "off"
) -> dict[str, float]:
    """Seconds of the first step, of each later step (mean of `steps`) and of one evaluation
    (timed on at most eval_sequences sequences per split, scaled to eval.batch_size) of the members
    trained as one run (an ensemble if several); `compiled`: off (eager), own (the config's
    training.compile) or graphs (compiled with CUDA graphs)."""
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import Trainer

    config = members[0]
    timed = min(config.eval.batch_size, eval_sequences)
    eval_update = {"eval": config.eval.model_copy(update={"batch_size": timed})}
    settings = {"off": {"compile": "off"}, "own": {}, "graphs": {"compile": "on", "cuda_graphs": True}}
    timed_members = [_with(m, **settings[compiled]).model_copy(update=eval_update) for m in members]
    start = time.perf_counter()
    trainer = Trainer(Run.create(timed_members, Path(tempfile.mkdtemp())), progress=False)
    for _ in range(3 if compiled == "graphs" else 1):  # graphs: warm-up and recording, then replays
        trainer.train_step()
    times = _steps_and_eval(start, trainer.train_step, trainer.evaluate_all, steps)
    times["eval_s"] *= config.eval.batch_size / timed
    return {**times, "members": len(members), "eval_sequences_timed": timed}


def time_sae(config: SAERunConfig, model: ExperimentConfig, steps: int) -> dict[str, float]:
    """Seconds to fill the SAE run's buffer (its first step), of each SAE step (mean of `steps`)
    and of one evaluation, on a one-step model of its source's config."""
    from icl_lab.sae.run import SAERun, SAETrainer, open_source
    from icl_lab.training.trainer import train

    where = Path(tempfile.mkdtemp())
    source_run = train(_with(model, compile="off", length=Duration(steps=1)), str(where), progress=False)
    sae = config.model_copy(deep=True)
    sae.source.run = str(source_run.path)
    source = open_source(sae, sae.training.device)
    start = time.perf_counter()
    trainer = SAETrainer(SAERun.create(sae, where, source), source, progress=False)
    return _steps_and_eval(start, trainer.train_step, trainer.evaluate, steps)


def estimate(
    name: str,
    steps: int,
    eval_sequences: int,
    device: str = "cpu",
    compiled: str = "off",
    packed: bool = False,
) -> dict:
    """One reproduction's full mode on `device`, its runs packed into ensembles if `packed`: runs,
    trainer runs, distinct timings, hours (CPU hours on one thread, or hours on one GPU), timings, and
    the device's matmul GFLOP/s before and after."""
    speed = [matmul_gflops(device=torch.device(device))]
    runs = full_mode_runs(name, device, packed)
    configs = [c for members in runs for c in members]
    models = {c.name: c for c in configs if isinstance(c, ExperimentConfig)}
    timings: dict[str, dict[str, float]] = {}
    total = 0.0
    for members in runs:
        config = members[0]
        key = f"{shape_key(config)} x{len(members)}"
        if isinstance(config, SAERunConfig):
            if key not in timings:
                timings[key] = time_sae(config, models[config.source.run], steps)
            n, every = config.training.steps, config.eval.every
        else:
            if key not in timings:
                timings[key] = time_config(members, steps, eval_sequences, compiled)
            n = total_steps(config)
            n_ctx = TASKS.get(config.task.name).io(config.task).n_ctx
            every = config.eval.every.to_steps(config.training.batch_size, n_ctx) if config.eval.every else n
        t = timings[key]
        total += t["first_s"] + n * t["step_s"] + (math.ceil(n / every) + 1) * t["eval_s"]
    saes = sum(isinstance(c, SAERunConfig) for c in configs)
    speed.append(matmul_gflops(device=torch.device(device)))
    return {
        "runs": len(configs),
        "sae_runs": saes,
        "trainer_runs": len(runs),
        "distinct_configs": len(timings),
        "steps_timed": steps,
        _hours_key(device): total / 3600,
        "matmul_gflops_before_after": speed,
        "timings": list(timings.values()),
    }


def _hours_key(device: str) -> str:
    """The results' name for an estimate's total on `device`."""
    return "cpu_hours_one_thread" if device == "cpu" else "gpu_hours"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="reproductions (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per distinct config")
    parser.add_argument(
        "--eval-sequences",
        type=int,
        default=None,
        help="sequences per split an evaluation is timed on (default: 64 on the CPU, all on a GPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (single runs, one thread) or cuda (ensembles)")
    parser.add_argument("--compile", action="store_true", help="each config's training.compile, not eager")
    parser.add_argument("--cuda-graphs", action="store_true", help="compiled with CUDA graphs (a GPU only)")
    parser.add_argument(
        "--packed", action="store_true", help="runs packed as reproduce packs them (GPU: always)"
    )
    args = parser.parse_args()
    packed = args.packed or args.device != "cpu"
    if args.cuda_graphs and (args.compile or args.device == "cpu"):
        parser.error("--cuda-graphs needs a GPU (--device cuda) and stands instead of --compile")
    compiled = "graphs" if args.cuda_graphs else "own" if args.compile else "off"
    if args.eval_sequences is not None and args.eval_sequences < 1:
        parser.error("--eval-sequences must be at least 1")
    eval_sequences = args.eval_sequences or (64 if args.device == "cpu" else 1 << 62)
    if args.device == "cpu":
        torch.set_num_threads(1)
    name = "full_mode_estimate" + ("" if args.device == "cpu" else "_cuda")
    name += ("_packed" if packed and args.device == "cpu" else "") + {"off": "", "own": "_compiled"}.get(
        compiled, "_cuda_graphs"
    )
    previous = RESULTS / f"{name}.json"
    record = json.loads(previous.read_text()) if previous.is_file() else {}
    record = {"reproductions": record.get("reproductions", {})}
    unit = "CPU hours on one thread" if args.device == "cpu" else "hours on one GPU"
    path = None
    for reproduction in args.names or REPRODUCTIONS.names():
        try:
            entry = estimate(reproduction, args.steps, eval_sequences, args.device, compiled, packed)
        except (ConfigError, torch.OutOfMemoryError) as e:  # a corpus this machine holds less of, a
            print(f"{reproduction:18} cannot run here: {e}", flush=True)  # GPU's memory: the others run
            continue
        record["reproductions"][reproduction] = entry
        print(
            f"{reproduction:18} {entry['runs']:3} runs ({entry['trainer_runs']} trainer runs, "
            f"{entry['distinct_configs']} distinct, {entry['sae_runs']} SAE) "
            f"~{entry[_hours_key(args.device)]:6.1f} {unit} "
            f"(matmul {' then '.join(f'{g:.0f}' for g in entry['matmul_gflops_before_after'])} GFLOP/s)",
            flush=True,
        )
        path = write_results(name, record)  # after each: a long run keeps what it has
    print(f"results: {path}" if path else "no results")


if __name__ == "__main__":
    main()
