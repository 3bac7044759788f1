"""Training throughput of the bursty fast setting: icl-lab's trainer vs a plain PyTorch transcription of
Reddy's network, in the same process on one thread (interleaved, median of repeats), eager and
compiled (training.compile=on; compile time reported), the share of a step spent generating data, and
the time each step spends in matrix-product and attention kernels (which bounds what compiling gains).

The plain network: two single-head attention layers x <- x + softmax_causal(x Wq (x Wk)^T) x Wv
(no scaling, no LayerNorm, no biases), then a ReLU MLP on the query token, Adam 1e-3, batch 128.
It computes its second layer at every position, as a transcription would; icl-lab's model computes
its last block at the query token only (`Transformer.last_block_first`), work the loss never reads.

    python benchmarks/reddy_throughput.py [--steps 200] [--repeats 5]
"""

import argparse
import itertools
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import interleaved, kernel_ceiling, started_trainer, table, write_results
from icl_lab.experiment import load_config
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.training.trainer import Trainer


class PlainReddy(nn.Module):
    def __init__(self, d: int, hidden: list[int], labels: int) -> None:
        super().__init__()
        self.attention = nn.ParameterList([nn.Parameter(torch.randn(d, d) / d**0.5) for _ in range(6)])
        widths = [d, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.readout = nn.Sequential(*layers, nn.Linear(widths[-1], labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        for Wq, Wk, Wv in (self.attention[0:3], self.attention[3:6]):
            scores = (x @ Wq) @ (x @ Wk).transpose(1, 2)
            x = x + scores.masked_fill(~causal, float("-inf")).softmax(-1) @ (x @ Wv)
        return self.readout(x[:, -1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("reddy_fast", ["checkpointing.every=null"])
    ours = Trainer(Run.create(cfg, Path(tempfile.mkdtemp())), progress=False)
    task = ours.tasks[0]
    batch_size = cfg.training.batch_size
    plain = PlainReddy(cfg.model.d_model, cfg.model.readout.hidden, cfg.task.n_labels)
    optimizer = torch.optim.Adam(plain.parameters(), lr=cfg.training.optimizer.lr)
    g = generator(0, "bench")

    def plain_step() -> None:
        batch = task.sample(batch_size, g)
        loss = F.cross_entropy(plain(batch.inputs), batch.targets[:, 0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    compiled, compile_s = started_trainer("reddy_fast", ["checkpointing.every=null", "training.compile=on"])
    print(f"compiling icl-lab's step took {compile_s:.1f} s")
    contenders = {
        "plain PyTorch": plain_step,
        "icl-lab": ours.train_step,
        "icl-lab compiled": compiled.train_step,
    }
    median = interleaved(contenders, args.steps, args.repeats)
    data_s = interleaved({"data": lambda: task.sample(batch_size, g)}, args.steps, args.repeats)["data"]
    tokens = batch_size * (2 * cfg.task.n_context + 1)
    rows = table(median, "plain PyTorch", tokens)
    data_share = data_s / median["icl-lab"]
    print(f"data generation: {data_s * 1e3:.2f} ms per batch = {data_share:.1%} of an icl-lab step")
    kernels = kernel_ceiling(plain_step, compiled.train_step, median["plain PyTorch"], args.steps)
    out = write_results(
        "reddy_throughput_cpu",
        {
            "config": "reddy_fast",
            "device": "cpu (1 thread)",
            "batch_size": batch_size,
            "steps_per_repeat": args.steps,
            "repeats": args.repeats,
            "rows": rows,
            "data_share_of_step": data_share,
            "compile_s": compile_s,
            **kernels,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
