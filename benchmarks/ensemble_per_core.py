"""A seed sweep of Singh's model on a 2-core CPU, three ways: the seeds as single eager runs one after
another (one core), as one compiled ensemble using both cores' threads, and as one compiled ensemble
per core (two processes with half the seeds each, pinned to their cores once compiled: what a
sweep with `ensemble: auto` and 2 local workers runs on a CPU; also pinned from the start, as this
script ran them until 2026-12-05), the last again with the inductor cache it just filled (a sweep
run a second time). Runs per hour at the config's full length, the compile
included (a cold inductor cache per contender but the warm one, which follows the cold run of the
same workers).

Beside them, the arithmetic floor: the FLOPs of one member's training step (counted on an eager
step) at the in-process 1024^3 matmul rate of one core, and the most any per-core ensemble could
then gain over the sequential runs (both cores, compile excluded).

Each contender needs the whole machine, so they run one after another (not interleaved), in fresh
processes, `--repeats` times in turn; the medians are reported.

    python benchmarks/ensemble_per_core.py [--seeds 16] [--steps 100] [--repeats 3]
"""

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile

from common import write_results

CONFIG = "singh"


def worker(cores: set[int], members: int, compile: str, pin: str, steps: int, barrier, results) -> None:
    """Build a trainer of `members` seeds on `cores` (one thread per core), time its first step
    (the compile) and then `steps` steps, started together with the other workers; pinned to
    `cores` from the start, or (pin "after compile") only once compiled, as a sweep's workers,
    which pin nothing, compile: Inductor then builds its C++ kernels on a thread per core, and two
    workers compiling the same graph wait on each other's kernels (a file lock per kernel) rather
    than building them twice."""
    if pin == "first":
        os.sched_setaffinity(0, cores)
    import torch

    from common import started_trainer, time_steps

    torch.set_num_threads(len(cores))
    overrides = ["checkpointing.every=null", f"training.compile={compile}", f"training.threads={len(cores)}"]
    trainer, first_s = started_trainer(CONFIG, overrides, members)
    os.sched_setaffinity(0, cores)
    time_steps(trainer.train_step, 10)
    barrier.wait()
    results.put((first_s, time_steps(trainer.train_step, steps)))


def floor(results) -> None:
    """One member's training-step MFLOP (counted on an eager step) and the matmul GFLOP/s, on core 0."""
    os.sched_setaffinity(0, {0})
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from common import started_trainer
    from train_throughput import matmul_gflops

    torch.set_num_threads(1)
    trainer, _ = started_trainer(CONFIG, ["checkpointing.every=null", "training.compile=off"])
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    results.put((counter.get_total_flops() / 1e6, matmul_gflops()))


def contender(workers: list[tuple[set[int], int, str, str]], steps: int, warm: bool) -> tuple[float, float]:
    """(slowest first step, slowest seconds per step) of workers run at the same time, with the
    inductor cache the previous contender left (warm) or an empty one shared by these workers."""
    ctx = mp.get_context("spawn")
    if not warm:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
    barrier, results = ctx.Barrier(len(workers)), ctx.Queue()
    processes = [ctx.Process(target=worker, args=(*w, steps, barrier, results)) for w in workers]
    for p in processes:
        p.start()
    outcomes = [results.get() for _ in processes]
    for p in processes:
        p.join()
    return max(o[0] for o in outcomes), max(o[1] for o in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from icl_lab.experiment import load_config, total_steps

    half = args.seeds // 2
    per_core = [({0}, half, "on", "after compile"), ({1}, half, "on", "after compile")]
    pinned = [({0}, half, "on", "first"), ({1}, half, "on", "first")]  # each g++ on its worker's core
    # name: (workers, warm); the warm contender comes right after the cold one it reuses the cache of
    ways = {
        "single eager runs, one after another": ([({0}, 1, "off", "first")], False),
        f"one compiled ensemble of {args.seeds}, 2 threads": ([({0, 1}, args.seeds, "on", "first")], False),
        f"two compiled ensembles of {half}, one per core, pinned while compiling": (pinned, False),
        f"two compiled ensembles of {half}, one per core": (per_core, False),
        f"two compiled ensembles of {half}, one per core, inductor cache warm": (per_core, True),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, (workers, warm) in ways.items():
            times[name].append(contender(workers, args.steps, warm))
    length = total_steps(load_config(CONFIG))
    rows = {}
    for name, measured in times.items():
        first_s = statistics.median(m[0] for m in measured)
        step_s = statistics.median(m[1] for m in measured)
        at_once = sum(w[1] for w in ways[name][0])  # seeds one launch trains
        hours = (args.seeds / at_once) * (first_s + length * step_s) / 3600
        rows[name] = {
            "first_step_s": first_s,
            "step_ms": step_s * 1e3,
            "step_ms_per_repeat": [m[1] * 1e3 for m in measured],
            "runs_per_hour": args.seeds / hours,
        }
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    counting = ctx.Process(target=floor, args=(results,))
    counting.start()
    mflop, gflops = results.get()
    counting.join()
    sequential_ms = rows["single eager runs, one after another"]["step_ms"]
    floor_ms = mflop / gflops  # one member-step at the matmul rate
    ceiling = 2 * sequential_ms / floor_ms
    arithmetic = {
        "member_step_mflop": mflop,
        "matmul_gflops_one_core": gflops,
        "member_step_floor_ms": floor_ms,
        "ceiling_vs_sequential_two_cores": ceiling,
    }
    print(
        f"arithmetic floor: {mflop:.1f} MFLOP a member-step at {gflops:.0f} GFLOP/s = {floor_ms:.2f} ms; "
        f"two cores at that rate, compile excluded: at most x{ceiling:.2f}"
    )
    base = rows["single eager runs, one after another"]["runs_per_hour"]
    for name, row in rows.items():
        row["speed_vs_sequential"] = row["runs_per_hour"] / base
        print(
            f"{name:45} first step {row['first_step_s']:5.1f} s, {row['step_ms']:6.2f} ms/step: "
            f"{row['runs_per_hour']:6.1f} runs/hour, x{row['speed_vs_sequential']:.2f}"
        )
    record = {"config": CONFIG, "seeds": args.seeds, "length_steps": length, "steps_timed": args.steps}
    record["arithmetic"] = arithmetic
    print(f"wrote {write_results('ensemble_per_core', {**record, 'rows': rows})}")


if __name__ == "__main__":
    main()
