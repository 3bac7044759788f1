"""Training-step overhead of active clamps on Singh's setting, measured against no clamps in the
same process (one thread, interleaved, median of repeats).

The clamp set is the single-induction-head experiment's: values of seven layer-2 heads ablated and
the match clamp on the eighth. Also timed, separately: a path-preserving ablation (which needs a
reference pass: the batch is doubled, so twice the sequences in one pass) and, eager only, a graft
(a donor forward per step; a graft's run never compiles its step).

The path-preserving ablation's reference pass keeps autograd on purpose: in the authors' code
(icl-dynamics opto.py) the base pass runs inside the differentiated loss, so a preserved pattern's
queries and keys learn through it.

    python benchmarks/clamp_overhead.py [--steps 100] [--repeats 15] [--compile on]
"""

import argparse
import tempfile
from pathlib import Path

import torch

from common import interleaved, table, write_results
from icl_lab.experiment import load_config, validate_config
from icl_lab.store.run import Run
from icl_lab.training.trainer import Trainer, train

SETS = {
    "match + value ablations": [
        {"kind": "ablate", "heads": [f"1.{h}" for h in range(1, 8)], "activation": "v"},
        {"kind": "induction_match", "heads": ["1.0"]},
    ],
    "ablate_preserving (doubled batch)": [
        {"kind": "ablate_preserving", "heads": ["0.*"], "preserve": "pattern"}
    ],
}


def trainer(runs: Path, clamps: list[dict], compile: str) -> Trainer:
    base = load_config("singh", ["checkpointing.every=null", f"training.compile={compile}"])
    config = validate_config({**base.model_dump(by_alias=True), "clamps": clamps})
    return Trainer(Run.create(config, runs), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile", choices=["on", "off"], default="off", help="training.compile of all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = Path(tempfile.mkdtemp())
    donor = train(load_config("singh", ["training.length={steps: 1}", "seed=1"]), str(runs), progress=False)
    sets = dict(SETS)
    if args.compile == "off":  # a graft's run never compiles its step (Clamp.traceable)
        graft = {"kind": "graft", "hook": "blocks.0.hook_attn_out", "source": str(donor.path)}
        sets["graft layer 0 output"] = [graft]
    contenders = {"no clamps": trainer(runs, [], args.compile).train_step}
    contenders |= {name: trainer(runs, clamps, args.compile).train_step for name, clamps in sets.items()}
    median = interleaved(contenders, args.steps, args.repeats)
    rows = table(median, "no clamps", 32 * 5)
    overhead = {name: median[name] / median["no clamps"] - 1 for name in sets}
    for name, value in overhead.items():
        print(f"overhead of {name}: {value:+.1%}")
    out = write_results(
        "clamp_overhead_cpu" + ("_compiled" if args.compile == "on" else ""),
        {
            "config": "singh",
            "compile": args.compile,
            "device": "cpu (1 thread)",
            "steps_per_repeat": args.steps,
            "repeats": args.repeats,
            "rows": rows,
            "overhead": overhead,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
