"""What compiling the training step buys, per config: compile time (cold inductor cache), eager and
compiled steady-state step times (interleaved, one thread, median of repeats), the break-even
length in steps, and the share of a large matmul's FLOP/s a compiled step reaches; then a 16-seed
ensemble of Singh's model, eager and compiled, against 16 sequential single runs (runs per hour for
the config's full length, compile time included).

Sets training/compiled.py's AUTO_MEMBER_STEPS. Pin it to the cores it may use:

    taskset -c 0,1 python benchmarks/compile_breakeven.py [--configs singh induction ...] [--members 16]
"""

import argparse
import os
import statistics
import tempfile

import torch

from common import interleaved, started_trainer, time_steps, write_results
from icl_lab.experiment import load_config, total_steps
from icl_lab.sweeps.packing import flop_counter
from icl_lab.training.trainer import Trainer
from train_throughput import matmul_gflops

FIXED = ["checkpointing.every=null"]


def trainer(config: str, compile: str, seeds: int = 1, threads: int = 1) -> tuple[Trainer, float]:
    """A trainer of `seeds` members and the seconds its first step took (the compile, when on)."""
    return started_trainer(
        config, [*FIXED, f"training.compile={compile}", f"training.threads={threads}"], seeds
    )


def step_flops(t: Trainer) -> int:
    """FLOPs of one training step (forward and backward, the CPU's fused attention included)."""
    with flop_counter() as counter:
        t.train_step()
    return counter.get_total_flops()


def per_config(config: str, steps: int, repeats: int, peak_gflops: float) -> dict:
    eager, _ = trainer(config, "off")
    compiled, compile_s = trainer(config, "on")
    torch.set_num_threads(1)
    median = interleaved({"eager": eager.train_step, "compiled": compiled.train_step}, steps, repeats)
    saved = median["eager"] - median["compiled"]
    flops = step_flops(eager)
    row = {
        "config": config,
        "step_mflop": flops / 1e6,
        "compiled_share_of_matmul_peak": flops / median["compiled"] / 1e9 / peak_gflops,
        "compile_s": compile_s,
        "eager_ms": median["eager"] * 1e3,
        "compiled_ms": median["compiled"] * 1e3,
        "speedup": median["eager"] / median["compiled"],
        "break_even_steps": compile_s / saved if saved > 0 else None,
        "full_length_steps": total_steps(load_config(config)),
    }
    print(
        f"{config:18} compile {compile_s:5.1f} s  eager {row['eager_ms']:6.2f} ms  compiled "
        f"{row['compiled_ms']:6.2f} ms  x{row['speedup']:.2f}  break-even "
        + (f"{row['break_even_steps']:,.0f} steps" if saved > 0 else "never")
        + f"  ({row['step_mflop']:.1f} MFLOP: {row['compiled_share_of_matmul_peak']:.0%} of matmul peak)"
    )
    return row


def ensemble(config: str, members: int, threads: int, steps: int, repeats: int) -> dict:
    """Steady-state ms per step of a single run (1 thread) and of the ensemble (threads), eager and
    compiled, and runs per hour for the full length with compile time included."""
    single, _ = trainer(config, "off")
    single_c, single_compile = trainer(config, "on")
    packed, _ = trainer(config, "off", members, threads)
    packed_c, packed_compile = trainer(config, "on", members, threads)
    contenders = {
        "single eager": (single, 1),
        "single compiled": (single_c, 1),
        "ensemble eager": (packed, threads),
        "ensemble compiled": (packed_c, threads),
    }

    times: dict[str, list[float]] = {name: [] for name in contenders}
    for t, n in contenders.values():  # warm-up
        torch.set_num_threads(n)
        time_steps(t.train_step, 3)
    for _ in range(repeats):  # interleaved turns; the thread count is set once per turn
        for name, (t, n) in contenders.items():
            torch.set_num_threads(n)
            times[name].append(time_steps(t.train_step, steps))
    median = {name: statistics.median(t) for name, t in times.items()}
    length = total_steps(load_config(config))
    compile_s = {"single eager": 0.0, "single compiled": single_compile, "ensemble eager": 0.0}
    compile_s["ensemble compiled"] = packed_compile
    hours = {
        "16 sequential eager": members * length * median["single eager"] / 3600,
        "16 sequential compiled": members * (single_compile + length * median["single compiled"]) / 3600,
        "ensemble eager": length * median["ensemble eager"] / 3600,
        "ensemble compiled": (packed_compile + length * median["ensemble compiled"]) / 3600,
    }
    base = hours["16 sequential eager"]
    for name, h in hours.items():
        print(f"  {name:24} {members / h:8.1f} runs/hour  x{base / h:.2f} vs 16 sequential eager runs")
    return {
        "config": config,
        "members": members,
        "threads": threads,
        "length_steps": length,
        "step_ms": {k: v * 1e3 for k, v in median.items()},
        "compile_s": compile_s,
        "runs_per_hour": {k: members / h for k, h in hours.items()},
        "speed_vs_sequential_eager": {k: base / h for k, h in hours.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["singh", "induction", "reddy_fast", "function_classes"]
    )
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # cold: what a first run pays
    torch.set_num_threads(1)
    peak = matmul_gflops()
    print(f"large matmul (1024^3), one thread: {peak:.1f} GFLOP/s")
    rows = [per_config(c, args.steps, args.repeats, peak) for c in args.configs]
    print(f"ensemble of {args.members} Singh models, {args.threads} threads:")
    packed = ensemble("singh", args.members, args.threads, max(5, args.steps // 5), args.repeats)
    out = write_results(
        "compile_breakeven",
        {
            "device": "cpu (1 thread per single run)",
            "matmul_gflops": peak,
            "configs": rows,
            "ensemble": packed,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
