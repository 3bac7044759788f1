"""What a language model of text does: its loss at each token position, and greedy samples."""

import numpy as np
import torch

from icl_lab.store.run import Run


@torch.no_grad()
def loss_by_position(run: Run, step: int | None = None, split: str = "heldout") -> np.ndarray:
    """(T,) mean next-token loss (nats) at each position of the split's evaluation batch, for the
    checkpoint at `step` (default the latest): falling with position is in-context learning."""
    task, batches = run.eval_data()
    batch = batches[split]
    logits = run.model(step)(batch.inputs)
    loss = task.token_loss(task.output_logits(logits), batch.targets)  # (B, T)
    return loss.mean(0).numpy()


@torch.no_grad()
def greedy_samples(
    run: Run, n: int = 3, prompt: int = 32, new: int = 48, split: str = "heldout"
) -> list[tuple[str, str]]:
    """(prompt, continuation) texts: the first `prompt` tokens of n evaluation windows, continued
    greedily by the latest model for `new` tokens (the context slides at the model's length)."""
    task, batches = run.eval_data()
    model = run.model()
    tokens = batches[split].inputs[:n, :prompt]
    for _ in range(new):
        context = tokens[:, -model.io.n_ctx :]
        tokens = torch.cat([tokens, model(context)[:, -1].argmax(-1, keepdim=True)], 1)
    decode = task.streams.tokenizer.decode
    return [(decode(row[:prompt].tolist()), decode(row[prompt:].tolist())) for row in tokens]
