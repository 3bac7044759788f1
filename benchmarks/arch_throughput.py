"""Training throughput on CPU of every RegBench architecture, in the quick ICLL setting
(configs/icll.yaml: 2 layers, width 64, batch 32 of 128-token prompts, Adam), one thread, through
icl-lab's trainer (data generation included), interleaved and median of repeats.

    python benchmarks/arch_throughput.py [--steps 5] [--repeats 3]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers = {}
    for name, model in architectures(64, 2).items():
        overrides = [f"model={json.dumps(model)}", "checkpointing.every=null"]
        cfg = load_config("icll", overrides)
        trainers[name] = Trainer(Run.create(cfg, Path(tempfile.mkdtemp())), progress=False)
    median = interleaved(
        {name: trainer.train_step for name, trainer in trainers.items()}, args.steps, args.repeats, warmup=2
    )
    tokens = cfg.training.batch_size * cfg.task.seq_len
    rows = table(median, "transformer (learned)", tokens)
    print(f"tokens per step: {tokens} (batch {cfg.training.batch_size} x {cfg.task.seq_len})")
    print(f"wrote {write_results('arch_throughput', {'tokens_per_step': tokens, 'rows': rows})}")


if __name__ == "__main__":
    main()
