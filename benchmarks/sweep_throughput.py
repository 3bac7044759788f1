"""Sweep throughput, all parts measured in one run on one machine:

(a) a 16-seed sweep as one vmapped ensemble vs 16 sequential single runs (runs per hour), for
    Reddy's fast setting and for Singh's tiny model;
(b) the local executor with 2 workers vs 1 (8 single runs);
(c) the Ray executor vs the local one, both with 2 workers (8 single runs): per-run overhead, and
    Ray's start-up time.

    python benchmarks/sweep_throughput.py [--parts abc] [--device cpu|cuda] [--steps 200]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import write_results
from icl_lab.experiment import load_config
from icl_lab.sweeps.execute import Job, execute
from icl_lab.training.trainer import train


def configs(name: str, n: int, steps: int, device: str) -> list:
    overrides = [
        f"training.length={{steps: {steps}}}",
        f"eval.every={{steps: {steps}}}",
        "eval.batch_size=256",
    ]
    overrides += ["checkpointing.every=null", f"training.device={device}"]
    return [load_config(name, [*overrides, f"seed={seed}", f"name={name}{seed}"]) for seed in range(n)]


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ensemble_vs_sequential(name: str, steps: int, device: str) -> dict:
    runs = Path(tempfile.mkdtemp())
    members = configs(name, 16, steps, device)
    together = timed(lambda: train(members, str(runs), progress=False))
    alone = timed(lambda: [train(c, str(runs), progress=False) for c in members])
    row = {
        "config": name,
        "steps": steps,
        "ensemble_s": together,
        "sequential_s": alone,
        "runs_per_hour_ensemble": 16 * 3600 / together,
        "runs_per_hour_sequential": 16 * 3600 / alone,
        "ratio": alone / together,
    }
    print(f"(a) {name}: 16 seeds as one ensemble {together:.1f} s", end="")
    print(f" vs 16 runs one after another {alone:.1f} s: {row['ratio']:.2f}x runs/hour")
    return row


def executor_time(executor: str, workers: int, steps: int) -> float:
    runs = Path(tempfile.mkdtemp())
    jobs = [Job(runs / f"r{i}", (c,)) for i, c in enumerate(configs("reddy_fast", 8, steps, "cpu"))]
    return timed(lambda: execute(jobs, executor, workers, progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "steps": args.steps,
    }
    if "a" in args.parts:
        record["ensemble"] = [
            ensemble_vs_sequential(name, args.steps, args.device) for name in ("reddy_fast", "singh")
        ]
    if "b" in args.parts or "c" in args.parts:
        one = executor_time("local", 1, args.steps) if "b" in args.parts else None
        two = executor_time("local", 2, args.steps)
        if one is not None:
            record["local"] = {"workers_1_s": one, "workers_2_s": two, "speedup": one / two}
            print(
                f"(b) local executor, 8 runs: 1 worker {one:.1f} s, 2 workers {two:.1f} s: {one / two:.2f}x"
            )
    if "c" in args.parts:
        import ray

        start = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
        with_ray = executor_time("ray", 2, args.steps)
        ray.shutdown()
        overhead = (with_ray - two) / 8
        record["ray"] = {
            "ray_s": with_ray,
            "local_s": two,
            "per_run_overhead_s": overhead,
            "startup_s": start,
        }
        print(f"(c) 8 runs on 2 workers: Ray {with_ray:.1f} s vs local {two:.1f} s", end="")
        print(f": {overhead:+.2f} s per run; Ray start-up {start:.1f} s")
    device_type = args.device.split(":")[0]
    print(f"wrote {write_results(f'sweep_throughput_{device_type}', record)}")


if __name__ == "__main__":
    main()
