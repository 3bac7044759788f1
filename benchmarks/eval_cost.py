"""What an evaluation's progress measures cost: one evaluation pass (every split's fixed batch) with
the config's metrics, against the same pass computing the loss alone, per config.

The loss alone runs the fused attention kernel with no hooks; metrics that read attention patterns
make the model compute and cache them (the explicit path), and each adds its own work. Every
contender is one pass over the config's splits: the loss alone, the loss with each metric in turn,
and all of them (what the trainer runs). One process, one thread, interleaved, median of repeats.

    python benchmarks/eval_cost.py [--configs text_lm induction ...] [--repeats 5]
"""

import argparse
from collections.abc import Callable

import torch

from common import interleaved, started_trainer, time_steps, write_results
from icl_lab.evaluation import evaluate

CONFIGS = ["text_lm", "induction", "icll", "singh"]


def measure(config: str, repeats: int) -> dict:
    """Time the evaluation contenders of one bundled config; print and return its row."""
    trainer, _ = started_trainer(config, ["checkpointing.every=null", "training.compile=off"])
    model, task, batches = trainer.model, trainer.tasks[0], trainer.evaluator.batches[0]
    metrics = trainer.evaluator.metrics

    def evaluation(names: list[str]) -> Callable[[], object]:
        return lambda: [evaluate(model, task, batch, names) for batch in batches.values()]

    contenders = {
        "loss": evaluation(["loss"]),
        **{f"loss + {m}": evaluation(["loss", m]) for m in metrics if m != "loss"},
        "all": evaluation(metrics),
    }
    passes = max(1, round(0.5 / time_steps(contenders["all"], 1)))  # about 0.5 s per turn
    median = interleaved(contenders, passes, repeats, warmup=1)
    sequences = sum(len(batch.inputs) for batch in batches.values())
    print(f"\n{config}: {len(batches)} splits, {sequences} sequences per evaluation")
    print(f"{'':34}{'ms per evaluation':>18}{'vs loss alone':>15}")
    for name, seconds in median.items():
        print(f"{name:34}{seconds * 1e3:18.1f}{seconds / median['loss']:15.2f}")
    return {
        "config": config,
        "splits": list(batches),
        "sequences": sequences,
        "passes_per_repeat": passes,
        "ms_per_evaluation": {name: s * 1e3 for name, s in median.items()},
        "all_vs_loss_alone": median["all"] / median["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(config, args.repeats) for config in args.configs]
    out = write_results("eval_cost", {"device": "cpu (1 thread)", "repeats": args.repeats, "configs": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
