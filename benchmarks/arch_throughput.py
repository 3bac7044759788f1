"""Training throughput on CPU of every RegBench architecture, in the quick ICLL setting
(configs/icll.yaml: 2 layers, width 64, batch 32 of 128-token prompts, Adam), one thread, through
icl-lab's trainer (data generation included), interleaved and median of repeats.

--compile sets training.compile: off (the default) trains eager; auto as the quick ICLL runs do
(2,000 steps: no whole-step compile, but Mamba's native kernels); on compiles every trainer's
step first. --only picks architectures (the transformer baseline always runs). Where kernels are
allowed (auto, on), Mamba also runs with its torch code in place of its native kernels.

    python benchmarks/arch_throughput.py [--steps 5] [--repeats 3] [--compile auto] [--only mamba ...]
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from common import interleaved, table, write_results
from icl_lab.experiment import load_config
from icl_lab.reproduce.icll import architectures
from icl_lab.store.run import Run
from icl_lab.training.trainer import Trainer

BASELINE = "transformer (learned)"
TORCH_MAMBA = "mamba (torch scan and conv)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", choices=["on", "auto", "off"], default="off")
    parser.add_argument("--only", nargs="*", help="architectures to time beside the transformer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers = {}
    for name, model in architectures(quick=True).items():
        if args.only and name not in [*args.only, BASELINE]:
            continue
        overrides = [
            f"model={json.dumps(model)}",
            "checkpointing.every=null",
            f"training.compile={args.compile}",
        ]
        cfg = load_config("icll", overrides)
        trainers[name] = Trainer(Run.create(cfg, Path(tempfile.mkdtemp())), progress=False)
        if name == "mamba" and args.compile != "off":  # the same with its torch code instead
            trainers[TORCH_MAMBA] = Trainer(Run.create(cfg, Path(tempfile.mkdtemp())), progress=False)
            for block in trainers[TORCH_MAMBA].model.blocks:
                block.mixer.native = False
    median = interleaved(
        {name: trainer.train_step for name, trainer in trainers.items()}, args.steps, args.repeats, warmup=2
    )
    tokens = cfg.training.batch_size * cfg.task.seq_len
    rows = table(median, BASELINE, tokens)
    print(f"tokens per step: {tokens} (batch {cfg.training.batch_size} x {cfg.task.seq_len})")
    name = "arch_throughput" + {"on": "_compiled", "auto": "_auto", "off": ""}[args.compile]
    print(f"wrote {write_results(name, {'tokens_per_step': tokens, 'compile': args.compile, 'rows': rows})}")


if __name__ == "__main__":
    main()
