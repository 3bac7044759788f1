"""TorchInductor settings on a bundled config's compiled training step, one thread: TorchInductor's
defaults, icl-lab's (training/compiled.py's CPU_INDUCTOR_OPTIONS) and, with --set, icl-lab's plus
more. Each contender is a trainer of its own in this process; their steps are timed in turns
(median of repeats) and compared with the defaults. The inductor cache starts empty, but later
contenders reuse the kernels earlier ones built (in the process and on disk), so compile times do
not compare across contenders.

A setting is NAME=VALUE of torch._inductor.config (e.g. realize_reads_threshold=1), passed as the
compile's options as the trainer passes its own. The contenders' compiled steps are entries of one
dynamo cache (the step's code object); dynamo moves the entry a call finds to the front, so only a
turn's first step checks the others' guards. Pin the process with taskset: pinned from inside,
after torch had started, Singh's steps took 1.6x as long.

    taskset -c 1 python benchmarks/inductor_knobs.py [--config singh] [--members 1]
        [--set NAME=VALUE ...] [--steps 200] [--repeats 9]
"""

import argparse
import ast
import os
import tempfile
from unittest import mock

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # no kernels from earlier runs

import torch

from common import interleaved, started_trainer, write_results
from icl_lab.training import compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="singh")
    parser.add_argument(
        "--set", dest="knobs", action="append", default=[], metavar="NAME=VALUE", help="on top of icl-lab's"
    )
    parser.add_argument("--members", type=int, default=1, help="seeds packed as one ensemble")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ours = dict(compiled.CPU_INDUCTOR_OPTIONS)
    ways: dict[str, dict[str, object]] = {"defaults": {}, f"icl-lab {ours}": ours}
    if args.knobs:
        more = {name: ast.literal_eval(value) for name, value in (knob.split("=", 1) for knob in args.knobs)}
        ways[f"icl-lab + {more}"] = {**ours, **more}
    torch.compile(torch.neg)(torch.ones(1))  # the compiler's one-time start-up, charged to no contender
    overrides = ["checkpointing.every=null", "training.compile=on", "training.threads=1"]
    steps, compile_s = {}, {}
    for name, options in ways.items():
        with mock.patch.object(compiled, "CPU_INDUCTOR_OPTIONS", options):  # what compile_settings passes
            trainer, compile_s[name] = started_trainer(args.config, overrides, args.members)
        steps[name] = trainer.train_step
        print(f"{name}: compiled in {compile_s[name]:.1f} s", flush=True)
    median = interleaved(steps, args.steps, args.repeats)
    rows = {
        name: {
            "compile_s": compile_s[name],
            "ms_per_step": median[name] * 1e3,
            "speed_vs_defaults": median["defaults"] / median[name],
        }
        for name in ways
    }
    for name, row in rows.items():
        print(f"{name}: {row['ms_per_step']:.3f} ms/step, {row['speed_vs_defaults']:.3f}x the defaults")
    out = write_results(
        f"inductor_knobs_{args.config}" + (f"_x{args.members}" if args.members > 1 else ""),
        {
            "config": args.config,
            "members": args.members,
            "device": f"cpu cores {sorted(os.sched_getaffinity(0))}, one thread",
            "rows": rows,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
