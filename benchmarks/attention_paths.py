"""Eager training steps, fused attention kernel against the explicit-pattern path, per config.

The fused path is scaled_dot_product_attention; the explicit one computes the pattern (what a
hook on the pattern forces). Which is faster depends on the attention's shape (context T, heads H,
head width e): measured in whole training steps, in one process on one thread, interleaved, median
of repeats. The table says whether choosing the path by shape would pay.

    python benchmarks/attention_paths.py [--configs reddy_fast singh ...] [--seconds 1] [--repeats 9]
"""

import argparse

import torch

from common import interleaved, started_trainer, time_steps, write_results
from icl_lab.models.hooks import takes_suffix
from icl_lab.training.trainer import Trainer

CONFIGS = ["reddy_fast", "singh", "induction", "function_classes", "icll", "text_lm"]


def trainer(config: str, fused: bool) -> Trainer:
    """An eager trainer of a bundled config whose attention takes the fused kernel or not."""
    t, _ = started_trainer(config, ["checkpointing.every=null", "training.compile=off"])
    if not fused:  # a hook on the pattern forces it; one that reads a suffix keeps a readout model's
        # shortcut (Transformer.last_block_first), as a clamp's does
        t.model.add_hook(lambda name: name.endswith("hook_pattern"), takes_suffix(lambda x, hook: None))
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per contender per repeat")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(
        f"{'config':18}{'T':>5}{'H':>4}{'e':>5}{'batch':>7}"
        f"{'fused ms':>10}{'explicit ms':>13}{'explicit speed':>16}"
    )
    for config in args.configs:
        fused, explicit = trainer(config, True), trainer(config, False)
        steps = max(2, round(args.seconds / time_steps(fused.train_step, 5)))
        median = interleaved(
            {"fused": fused.train_step, "explicit": explicit.train_step}, steps, args.repeats
        )
        cfg = fused.model.cfg
        row = {
            "config": config,
            "T": fused.model.io.n_ctx,
            "heads": cfg.n_heads,
            "head_dim": cfg.head_dim,
            "batch": fused.batch_size,
            "steps_per_repeat": steps,
            "fused_ms": median["fused"] * 1e3,
            "explicit_ms": median["explicit"] * 1e3,
            "explicit_speed_vs_fused": median["fused"] / median["explicit"],
        }
        print(
            f"{config:18}{row['T']:5}{row['heads']:4}{row['head_dim']:5}{row['batch']:7}"
            f"{row['fused_ms']:10.2f}{row['explicit_ms']:13.2f}{row['explicit_speed_vs_fused']:16.3f}",
            flush=True,
        )
        rows.append(row)
    out = write_results(
        "attention_paths", {"device": "cpu (1 thread)", "repeats": args.repeats, "rows": rows}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
