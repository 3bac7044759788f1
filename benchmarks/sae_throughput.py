"""SAE training throughput (activations/s) of icl-lab's SAE trainer against a plain PyTorch loop of
the same SAE, and the time to fill the activation buffer.

The SAE is Kissane's relu_l1 on hook_z of layer 1 of the text_lm model (2 layers, 4 heads x 32:
d_in 128), 16 x d_in features, batches of 1,024 activations drawn from the buffer. Ours is
SAETrainer.train_step (the run's step: warm-up lr, constrained gradients, unit-norm rows, firing
counts for resampling, loss terms kept for the metrics table); the plain loop does the same
arithmetic with bare tensors and torch.optim.Adam. Steps are timed interleaved on one thread,
median of repeats (goal: ours >= 0.9 x plain). The buffer fill is timed once, cold.

    taskset -c 1 python benchmarks/sae_throughput.py [--steps 30] [--repeats 7]
"""

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from common import interleaved, table, write_results
from icl_lab.experiment import load_config
from icl_lab.sae.config import validate_sae_config
from icl_lab.sae.run import SAERun, SAETrainer, open_source
from icl_lab.training.trainer import train

D_SAE_PER_D_IN, BATCH, L1 = 16, 1024, 3.0


def plain_loop(x: torch.Tensor, d_sae: int, seed: int) -> tuple[Callable[[], None], torch.Tensor]:
    """The same SAE and step, written out: returns (step, W_dec)."""
    g = torch.Generator().manual_seed(seed)
    d_in = x.shape[1]
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc, b_dec = torch.zeros(d_sae, requires_grad=True), torch.zeros(d_in, requires_grad=True)
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

    return step, W_dec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--buffer-tokens", type=int, default=262_144)
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
    plain, _ = plain_loop(buffer.activations, trainer.sae.d_sae, 0)
    contenders = {"icl-lab SAE trainer": trainer.train_step, "plain PyTorch loop": plain}
    median = interleaved(contenders, args.steps, args.repeats, warmup=5)
    rows = table(median, "plain PyTorch loop", BATCH)
    ratio = rows[0]["speed_vs_baseline"]
    print(f"icl-lab / plain: {ratio:.3f} x (goal >= 0.9); 'tokens/s' above = activations/s")
    out = write_results(
        "sae_throughput",
        {
            "sae": f"relu_l1, d_in {source.d_in}, d_sae {trainer.sae.d_sae}, batch {BATCH}",
            "rows": rows,
            "ours_vs_plain": ratio,
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
