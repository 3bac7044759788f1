"""Sweep throughput, all parts measured in one run on one machine:

(a) a sweep of --members seeds (16 by default; the GPU goal is 64) as one vmapped ensemble vs the
    same runs one after another (runs per hour), for Reddy's fast setting and for Singh's tiny
    model (--configs);
(b) the local executor with 2 workers vs 1 (8 single runs);
(c) the Ray executor vs the local one, both with 2 workers (8 single runs): per-run overhead, and
    Ray's start-up time.

    python benchmarks/sweep_throughput.py [--parts abc] [--device cpu|cuda] [--steps 200] [--members 16]
        [--configs reddy_fast singh]
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


def ensemble_vs_sequential(name: str, n: int, steps: int, device: str) -> dict:
    runs = Path(tempfile.mkdtemp())
    members = configs(name, n, steps, device)
    # the device's start-up (a GPU's context, its libraries' first calls) before either is timed: on
    # an H200 on 2026-12-04 the ensemble, timed first without this, paid it (5.83x for 64 Singh seeds)
    train(configs(name, 2, 2, device), str(runs), progress=False)
    together = timed(lambda: train(members, str(runs), progress=False))
    alone = timed(lambda: [train(c, str(runs), progress=False) for c in members])
    row = {
        "config": name,
        "members": n,
        "steps": steps,
        "ensemble_s": together,
        "sequential_s": alone,
        "runs_per_hour_ensemble": n * 3600 / together,
        "runs_per_hour_sequential": n * 3600 / alone,
        "ratio": alone / together,
    }
    print(f"(a) {name}: {n} seeds as one ensemble {together:.1f} s", end="")
    print(f" vs {n} runs one after another {alone:.1f} s: {row['ratio']:.2f}x runs/hour")
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
    parser.add_argument("--members", type=int, default=16, help="seeds in part (a)'s sweep")
    parser.add_argument("--configs", nargs="+", default=["reddy_fast", "singh"], help="part (a)'s configs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "steps": args.steps,
    }
    if "a" in args.parts:
        record["ensemble"] = [
            ensemble_vs_sequential(name, args.members, args.steps, args.device) for name in args.configs
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
