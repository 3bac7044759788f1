"""TorchInductor settings on a bundled config's compiled training step, one core: each setting in a
fresh process with a cold cache, turns alternated, the medians and their ratio to the defaults.

A setting is NAME=VALUE of torch._inductor.config (e.g. realize_reads_threshold=1); "defaults" sets
nothing. These are leads for training.compile's options, not what icl-lab sets.

    python benchmarks/inductor_knobs.py [--config singh] [--set realize_reads_threshold=1 ...]
        [--alternations 4] [--steps 200] [--core 1]
"""

import argparse
import ast
import multiprocessing as mp
import os
import statistics
import tempfile

from common import write_results


def contender(knobs: list[str], config: str, steps: int, core: int, results) -> None:
    """Compile config's step under knobs in this fresh process and report (compile s, median s/step)."""
    os.sched_setaffinity(0, {core})
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # cold: the compile time counts
    import torch
    import torch._inductor.config as inductor

    from common import started_trainer, time_steps

    torch.set_num_threads(1)
    for knob in knobs:
        name, value = knob.split("=", 1)
        setattr(inductor, name, ast.literal_eval(value))
    overrides = ["checkpointing.every=null", "training.compile=on", "training.threads=1"]
    trainer, first_s = started_trainer(config, overrides)
    time_steps(trainer.train_step, 30)
    results.put((first_s, statistics.median(time_steps(trainer.train_step, steps) for _ in range(7))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="singh")
    parser.add_argument(
        "--set", dest="knobs", action="append", metavar="NAME=VALUE", help="default realize_reads_threshold=1"
    )
    parser.add_argument("--alternations", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--core", type=int, default=1)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    knobs = args.knobs or ["realize_reads_threshold=1"]
    ways = {"defaults": [], " ".join(knobs): knobs}
    turns: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.alternations):
        for name, patch in ways.items():
            results = ctx.Queue()
            process = ctx.Process(target=contender, args=(patch, args.config, args.steps, args.core, results))
            process.start()
            turns[name].append(results.get())
            process.join()
            print(f"{name}: compile {turns[name][-1][0]:.1f} s, {turns[name][-1][1] * 1e3:.3f} ms/step")
    rows = {
        name: {
            "compile_s": statistics.median(t[0] for t in measured),
            "ms_per_step": statistics.median(t[1] for t in measured) * 1e3,
            "ms_per_step_turns": [t[1] * 1e3 for t in measured],
        }
        for name, measured in turns.items()
    }
    for name, row in rows.items():
        row["speed_vs_defaults"] = speed = rows["defaults"]["ms_per_step"] / row["ms_per_step"]
        print(f"{name}: median {row['ms_per_step']:.3f} ms/step, {speed:.3f}x the defaults")
    out = write_results(
        f"inductor_knobs_{args.config}",
        {"config": args.config, "device": f"cpu core {args.core}, one thread", "rows": rows},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
