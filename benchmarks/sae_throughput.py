"""SAE training throughput (activations/s) of icl-lab's SAE trainer against a plain PyTorch loop of
the same SAE, fresh and trained, and the time to fill the activation buffer.

The SAE is Kissane's relu_l1 on hook_z of layer 1 of the text_lm model (2 layers, 4 heads x 32:
d_in 128), 16 x d_in features, batches of 1,024 activations drawn from the buffer. Ours is
SAETrainer.train_step (the run's step: warm-up lr, constrained gradients, unit-norm rows, firing
counts for resampling, loss terms kept for the metrics table); the plain loop does the same
arithmetic with bare tensors, dense products and torch.optim.Adam. Both are timed twice, each
time from a copy of our weights: fresh (about half the features fire at first, but the timed steps
train the SAE, and the printed L0 after them shows how far) and after --trained-steps of ours (a
few percent or fewer fire, and our decoder sums the firing features alone: sae/sparse_product.py).
Steps are timed interleaved on one thread, median of repeats (goal: ours >= 0.9 x plain). The
buffer fill is timed once, cold. Last, the decoder's product alone, forward and backward, sparse
against dense, at densities around sparse_product.MAX_DENSITY.

    taskset -c 1 python benchmarks/sae_throughput.py [--steps 30] [--repeats 7] [--trained-steps 1500]
"""

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from common import interleaved, table, write_results
from icl_lab.experiment import load_config
from icl_lab.sae import sparse_product as sparse_module
from icl_lab.sae.config import validate_sae_config
from icl_lab.sae.run import SAERun, SAETrainer, open_source
from icl_lab.sae.sparse_product import sparse_product
from icl_lab.training.trainer import train

D_SAE_PER_D_IN, BATCH, L1 = 16, 1024, 3.0


def plain_loop(x: torch.Tensor, sae: torch.nn.Module, seed: int) -> Callable[[], None]:
    """The same SAE step written out, from a copy of sae's weights."""
    g = torch.Generator().manual_seed(seed)
    W_enc, W_dec, b_enc, b_dec = (
        p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)
    )
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec], lr=1.2e-3, betas=(0.0, 0.9999))

    def step() -> None:
        batch = x[torch.randint(len(x), (BATCH,), generator=g)]
        f = torch.relu((batch - b_dec) @ W_enc + b_enc)
        loss = (f @ W_dec + b_dec - batch).pow(2).sum(-1).mean() + L1 * f.abs().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            opt.step()
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    return step


def product_sweep(steps: int, repeats: int) -> list[dict]:
    """ms of the decoder's product f W_dec, forward and backward, sparse and dense, by density."""
    g = torch.Generator().manual_seed(0)
    W, upstream = torch.randn(16 * 128, 128, requires_grad=True), torch.randn(BATCH, 128, generator=g)
    rows, sparse_module.MAX_DENSITY = [], 1.0  # the sparse sum at every density
    for density in (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08):
        f = torch.rand(BATCH, 16 * 128, generator=g) * (torch.rand(BATCH, 16 * 128, generator=g) < density)
        f.requires_grad_()
        median = interleaved(
            {
                "sparse": lambda f=f: sparse_product(f, W).backward(upstream),
                "dense": lambda f=f: (f @ W).backward(upstream),
            },
            steps,
            repeats,
            warmup=5,
        )
        ms = {name: seconds * 1e3 for name, seconds in median.items()}
        print(f"density {density:.2%}: sparse {ms['sparse']:.2f} ms, dense {ms['dense']:.2f} ms")
        rows.append({"density": density, "sparse_ms": ms["sparse"], "dense_ms": ms["dense"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--buffer-tokens", type=int, default=262_144)
    parser.add_argument("--trained-steps", type=int, default=1500, help="our steps before the second timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = tempfile.mkdtemp()
    model_config = load_config(
        "text_lm", ["training.length={steps: 1}", "checkpointing.every=null", "eval.batch_size=8"]
    )
    model_run = train(model_config, runs, progress=False)
    config = validate_sae_config(
        {
            "source": {"run": str(model_run.path), "layer": 1},
            "buffer": {"tokens": args.buffer_tokens, "chunk": 64},
            "sae": {"architecture": "relu_l1", "expansion": D_SAE_PER_D_IN, "l1_coefficient": L1},
            "training": {"steps": 10**6, "batch_size": BATCH},
            "checkpointing": {"every": None},
        }
    )
    source = open_source(config)
    run = SAERun.create(config, runs, source)
    start = time.perf_counter()
    trainer = SAETrainer(run, source, progress=False)
    fill_s = time.perf_counter() - start  # the buffer, plus the held-out evaluation sequences
    buffer = trainer.buffer
    print(
        f"buffer: {len(buffer.activations):,} activations x {source.d_in} = {buffer.bytes / 2**20:.0f} MiB "
        f"from {buffer.sequences:,} sequences of {source.task.tokens_per_sequence} tokens, filled in "
        f"{fill_s:.1f} s ({len(buffer.activations) / fill_s:,.0f} activations/s)"
    )

    @torch.no_grad()
    def l0() -> float:
        """Our SAE's features per input on the buffer's first batch."""
        return float((trainer.sae.encode(buffer.activations[:BATCH]) > 0).sum(1).float().mean())

    phases = {}
    for phase in ("fresh", "trained"):
        if phase == "trained":
            for _ in range(args.trained_steps):
                trainer.train_step()
        before, from_step = l0(), trainer.fitter.step
        contenders = {
            "icl-lab SAE trainer": trainer.train_step,
            "plain PyTorch loop": plain_loop(buffer.activations, trainer.sae, 0),
        }
        median = interleaved(contenders, args.steps, args.repeats, warmup=5)
        rows = table(median, "plain PyTorch loop", BATCH)
        ratio = rows[0]["speed_vs_baseline"]
        print(
            f"{phase} (L0 {before:.1f}): icl-lab / plain {ratio:.3f} x (goal >= 0.9); tokens/s: activations/s"
        )
        after = l0()
        print(f"  (ours at L0 {after:.1f} after the timed steps)")
        phases[phase] = {"from_step": from_step, "l0": [before, after], "rows": rows, "ours_vs_plain": ratio}
    out = write_results(
        "sae_throughput",
        {
            "sae": f"relu_l1, d_in {source.d_in}, d_sae {trainer.sae.d_sae}, batch {BATCH}",
            "phases": phases,
            "decoder_product": product_sweep(args.steps, args.repeats),
            "buffer": {
                "activations": len(buffer.activations),
                "bytes": buffer.bytes,
                "fill_s": fill_s,
                "activations_per_s": len(buffer.activations) / fill_s,
            },
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
