"""LLC estimates per minute: icl-lab's SGLD chains against a plain loop of the same SGLD (each
chain in turn on an ordinary module, as devinterp runs them), in the same process pinned to core 1
on one thread, interleaved, medians of repeats; then `dissect` on both cores (two worker
processes), timed whole.

The model is the bundled induction config (2 layers, 4 heads, width 64, batch 32 of 64 tokens)
after 200 training steps. Each timed estimate takes `--steps` SGLD steps; estimates per minute
are scaled to the default estimator (4 chains, 100 burn-in steps + 200 draws = 300 steps).

    python benchmarks/llc_throughput.py [--steps 30] [--repeats 5] [--vmap]
"""

import argparse
import copy
import os
import tempfile
import time

import torch

from common import interleaved, write_results
from icl_lab.analysis.dissect import dissect, dissect_config
from icl_lab.analysis.llc import LLCConfig, run_llc
from icl_lab.experiment import load_config
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.training.trainer import train

DEFAULT_STEPS = LLCConfig().steps


def plain_loop(run: Run, step: int, config: LLCConfig) -> None:
    """The same SGLD, one chain after another on a module of its own."""
    task, _ = run.eval_data()
    base = run.model(step)
    nbeta, eps, gamma = config.inverse_temperature(32), config.step_size, config.localization
    noise = generator(0, "plain-noise")
    for chain in range(config.chains):
        model = copy.deepcopy(base).train()
        anchor = [p.detach().clone() for p in model.parameters()]
        data = generator(0, "plain", chain)
        for _ in range(config.steps):
            batch = task.training_sample(32, data, step)
            loss = task.loss(model(batch.inputs), batch.targets, batch.loss_mask)
            model.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for p, a in zip(model.parameters(), anchor, strict=True):
                    p.sub_(0.5 * eps * (nbeta * p.grad + gamma * (p - a)))
                    p.add_(torch.randn(p.shape, generator=noise), alpha=eps**0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="SGLD steps per timed estimate")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoints", type=int, default=6, help="checkpoints of the 2-core dissect run")
    parser.add_argument("--vmap", action="store_true", help="vmap the chains (the default on a GPU only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    config = load_config("induction", ["training.length={steps: 200}", "checkpointing.every={steps: 20}"])
    run = train(config, tempfile.mkdtemp(), progress=False)
    step = run.checkpoint_steps[-1]
    llc = LLCConfig(draws=args.steps, burn_in=0, vmap_chains=args.vmap)
    median = interleaved(
        {
            "icl-lab": lambda: run_llc(run, step, llc),
            "plain loop of chains": lambda: plain_loop(run, step, llc),
        },
        steps=1,
        repeats=args.repeats,
        warmup=1,
    )
    per_minute = {name: 60 / (seconds * DEFAULT_STEPS / args.steps) for name, seconds in median.items()}
    for name, value in per_minute.items():
        print(f"{name:22} {median[name]:.2f} s / {args.steps} steps = {value:.2f} estimates/min, 1 core")
    ratio = median["plain loop of chains"] / median["icl-lab"]
    print(f"icl-lab / plain loop: {ratio:.2f}x")
    os.sched_setaffinity(0, cores)  # the workers get every core this process had
    settings = dissect_config([f"max_checkpoints={args.checkpoints}"])
    started = time.perf_counter()
    dissect(run, settings, workers=2)
    wall = time.perf_counter() - started
    two_cores = args.checkpoints / wall * 60
    print(f"dissect, 2 workers, {args.checkpoints} checkpoints, defaults: {wall:.0f} s = {two_cores:.2f}/min")
    out = write_results(
        "llc_throughput_cpu",
        {
            "config": "induction, 200 steps",
            "chains_vmapped": args.vmap,
            "device": "cpu (1 thread per process)",
            "sgld_steps_per_timed_estimate": args.steps,
            "repeats": args.repeats,
            "seconds_per_timed_estimate": median,
            "default_estimates_per_minute_one_core": per_minute,
            "speedup_over_plain_loop": ratio,
            "dissect_two_workers": {
                "checkpoints": args.checkpoints,
                "seconds": wall,
                "per_minute": two_cores,
            },
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
