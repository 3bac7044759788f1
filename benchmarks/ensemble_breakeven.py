"""Which models an ensemble speeds up on a CPU: per config, on one core (one thread), the
steady-state step of an ensemble of --members seeds against --members single runs one after another,
eager and compiled, beside the config's forward MFLOP per training step (the figure `ensemble:
auto` reads). Timed in interleaved turns, medians of --repeats.

Sets sweeps/packing.py's PACK_CPU_MFLOP: a sweep on a CPU packs where the ensemble wins in both
modes. Pin it to one core:

    taskset -c 1 python benchmarks/ensemble_breakeven.py [--configs singh gd ...] [--members 8 ...]
        [--compile on off] [--results NAME]

A config may carry overrides after colons (induction:training.batch_size=8), to fill in sizes
between the bundled ones.
"""

import argparse
import os
import tempfile

import torch

from common import interleaved, started_trainer, write_results
from icl_lab.experiment import load_config
from icl_lab.sweeps.packing import forward_mflop

CONFIGS = ["singh", "gd", "induction", "function_classes", "reddy_fast", "icll", "text_lm"]


def per_config(spec: str, members: int, compile: str, steps: int, repeats: int) -> dict:
    """ms per step of a single run and of the ensemble, and the ensemble's speed-up per member."""
    config, *overrides = spec.split(":")
    overrides += ["checkpointing.every=null", f"training.compile={compile}", "training.threads=1"]
    single, _ = started_trainer(config, overrides)
    packed, _ = started_trainer(config, overrides, members)
    median = interleaved({"single": single.train_step, "ensemble": packed.train_step}, steps, repeats, 3)
    return {
        "single_ms": median["single"] * 1e3,
        "ensemble_ms": median["ensemble"] * 1e3,
        "speedup_per_member": members * median["single"] / median["ensemble"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--members", type=int, nargs="+", default=[8], help="ensemble sizes to time")
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", default="ensemble_breakeven", help="name of the results file")
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
    torch.set_num_threads(1)
    rows = []
    for config in args.configs:
        name, *overrides = config.split(":")
        flops = forward_mflop(load_config(name, overrides))
        for members in args.members:
            row = {"config": config, "members": members, "forward_mflop": flops}
            for mode in args.compile:
                row[f"compile_{mode}"] = per_config(config, members, mode, args.steps, args.repeats)
            rows.append(row)
            print(
                f"{config:18} {flops:8.1f} MFLOP forward, {members:2} members  "
                + "  ".join(
                    f"compile {mode}: single {r['single_ms']:7.2f} ms, ensemble {r['ensemble_ms']:8.2f} ms, "
                    f"x{r['speedup_per_member']:.2f}"
                    for mode, r in ((m, row[f"compile_{m}"]) for m in args.compile)
                ),
                flush=True,
            )
    out = write_results(args.results, {"device": "cpu, one thread", "configs": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
