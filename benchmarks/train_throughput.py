"""Training throughput of the induction config: icl-lab's trainer vs a plain PyTorch loop.

The plain model has the identical architecture (2 attention-only layers, pre-LN, learned positions,
final LN, unembed) written the usual way (fused qkv Linear, scaled_dot_product_attention), and is
fed by the same data sampler, so the ratio measures what the hooks, clamp and ensemble machinery
cost. Both run in this process on one thread, interleaved, median of repeats. Also reported:
achieved GFLOP/s against a large matmul measured in the same run, the data-generation share of a
step, the cost of an active clamp, and on a CPU the time each step spends in matrix-product and
attention kernels (which compiling calls as they are, so they bound a compiled step's speed-up over
the plain one); icl-lab also compiled (training.compile=on; compile time
reported) and, on a GPU, compiled and replayed as CUDA graphs (training.cuda_graphs).

    python benchmarks/train_throughput.py [--steps 150] [--repeats 5]
"""

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import interleaved, kernel_ceiling, started_trainer, table, time_steps, write_results
from icl_lab.experiment import load_config
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.training.trainer import Trainer


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln, self.heads = nn.LayerNorm(d), heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln(x)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, e)
        return x + self.out(z.transpose(1, 2).reshape(B, T, d))


class PlainModel(nn.Module):
    def __init__(self, vocab: int, n_ctx: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.randn(n_ctx, d) * 0.02)
        self.blocks = nn.ModuleList([PlainBlock(d, heads) for _ in range(layers)])
        self.ln, self.unembed = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln(x))


def matmul_gflops(n: int = 1024, repeats: int = 5, device: torch.device | None = None) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = min(time_steps(lambda: a @ b, 1) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def step_flops(cfg, tokens_per_step: int) -> float:
    """Forward + backward FLOPs of one step (3x the forward matmul FLOPs)."""
    m, t = cfg.model, cfg.task
    d, H, e, T = m.d_model, m.n_heads, m.head_dim, t.seq_len
    per_token_layer = 2 * d * 3 * H * e + 2 * 2 * H * T * e + 2 * H * e * d  # qkv, scores+mix, out
    forward = tokens_per_step * (m.n_layers * per_token_layer + 2 * d * t.vocab_size)
    return 3 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    on_device = [f"training.device={args.device}"]
    cfg = load_config("induction", ["checkpointing.every=null", *on_device])
    clamp = "clamps=[{kind: ablate, heads: ['1.0', '1.1'], mode: mean}]"
    clamped_cfg = load_config("induction", [clamp, *on_device])
    runs = Path(tempfile.mkdtemp())
    ours = Trainer(Run.create(cfg, runs), progress=False)
    clamped = Trainer(Run.create(clamped_cfg, runs), progress=False)
    task = ours.tasks[0]
    batch_size, T = cfg.training.batch_size, cfg.task.seq_len
    plain = PlainModel(cfg.task.vocab_size, T, cfg.model.d_model, cfg.model.n_heads, cfg.model.n_layers)
    plain = plain.to(device)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=cfg.training.optimizer.lr)
    g = generator(0, "bench", device=device)

    def plain_step() -> None:
        batch = task.sample(batch_size, g)
        logits = plain(batch.inputs)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch.targets[:, :-1].flatten())
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def data_only() -> None:
        task.sample(batch_size, g)

    losses = torch.ones(1, device=device)

    def divergence_check() -> None:  # what the trainer adds to every step to stop on a non-finite loss
        bool(torch.isfinite(losses).all())

    compiled, compile_s = started_trainer(
        "induction", ["checkpointing.every=null", "training.compile=on", *on_device]
    )
    print(f"compiling icl-lab's step took {compile_s:.1f} s")
    contenders = {
        "plain PyTorch": plain_step,
        "icl-lab": ours.train_step,
        "icl-lab + clamp": clamped.train_step,
        "icl-lab compiled": compiled.train_step,
    }
    compile_seconds = {"compile_s": compile_s}
    if device.type == "cuda":
        graphs, graphs_s = started_trainer(
            "induction",
            ["checkpointing.every=null", "training.compile=on", "training.cuda_graphs=true", *on_device],
        )
        print(f"compiling icl-lab's step for CUDA graphs took {graphs_s:.1f} s")
        contenders["icl-lab compiled + CUDA graphs"] = graphs.train_step
        compile_seconds["cuda_graphs_compile_s"] = graphs_s
    median = interleaved(contenders, args.steps, args.repeats)
    data_s = interleaved({"data": data_only}, args.steps, args.repeats)["data"]
    check_s = interleaved({"check": divergence_check}, args.steps * 10, args.repeats)["check"]
    peak = matmul_gflops(device=device)
    flops = step_flops(cfg, batch_size * T)
    rows = table(median, "plain PyTorch", batch_size * T, flops)
    share = flops / median["icl-lab"] / 1e9 / peak
    print(f"large matmul (1024^3): {peak:.1f} GFLOP/s; icl-lab steps reach {share:.1%} of it")
    data_share = data_s / median["icl-lab"]
    print(f"data generation: {data_s * 1e3:.2f} ms per batch = {data_share:.1%} of an icl-lab step")
    overhead = median["icl-lab + clamp"] / median["icl-lab"] - 1
    print(f"active clamp overhead: {overhead:+.1%}")
    check_share = check_s / median["icl-lab"]
    print(f"divergence check: {check_s * 1e6:.1f} us per step = {check_share:.2%} of an icl-lab step")
    kernels = {}
    if device.type == "cpu":  # the profiler's CPU self time is a kernel's time only on a CPU
        kernels = kernel_ceiling(plain_step, compiled.train_step, median["plain PyTorch"], args.steps)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (1 thread)"
    out = write_results(
        f"train_throughput_{device.type}",
        {
            "config": "induction",
            "device": device_name,
            "batch_size": batch_size,
            "seq_len": T,
            "steps_per_repeat": args.steps,
            "repeats": args.repeats,
            "rows": rows,
            "matmul_gflops": peak,
            "data_share_of_step": data_share,
            "clamp_overhead": overhead,
            **compile_seconds,
            "divergence_check_share_of_step": check_share,
            **kernels,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
