"""Where an SAE's inputs come from: a layer's attention outputs before W_O (`hook_z`, heads
concatenated: d_in = n_heads x d_head) of a trained model, on sequences of its own task; and
how well a reconstruction spliced back into that hook preserves the model's loss."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from icl_lab.models.base import Model
from icl_lab.tasks.base import Task

Normalisation = Literal["none", "expected_norm"]


def hook_z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@dataclass
class ActivationBuffer:
    """Shuffled activations (N, d_in) of one hook, and how they were made: the input scale
    (x_sae = scale x hook_z; 1 unless normalised) and the memory they take."""

    activations: Tensor
    hook: str
    scale: float
    sequences: int

    @property
    def bytes(self) -> int:
        return self.activations.numel() * self.activations.element_size()


@torch.no_grad()
def fill_buffer(
    model: Model,
    task: Task,
    layer: int,
    tokens: int,
    generator: torch.Generator,
    chunk: int = 64,
    normalisation: Normalisation = "none",
) -> ActivationBuffer:
    """At least `tokens` activations of hook_z at `layer`, from sequences the task samples, `chunk`
    sequences per forward pass (memory: the buffer, tokens x d_in x 4 bytes, plus one chunk's
    activations); shuffled. "expected_norm" scales them so that their mean norm is sqrt(d_in)."""
    name = hook_z(layer)
    if name not in model.hook_dict:
        raise ValueError(f"the model has no hook {name} (an SAE reads the attention output of a layer)")
    parts, sequences, held = [], 0, 0
    while held < tokens:
        batch = task.sample(chunk, generator)
        _, cache = model.run_with_cache(batch.inputs, names_filter=name)
        parts.append(cache[name].flatten(2).flatten(0, 1))  # (chunk x T, H x d_head): every position
        sequences += chunk
        held += len(parts[-1])
    activations = torch.cat(parts)[:tokens]
    activations = activations[torch.randperm(len(activations), generator=generator, device=generator.device)]
    scale = 1.0
    if normalisation == "expected_norm":
        scale = float(activations.shape[1] ** 0.5 / activations.norm(dim=1).mean().clamp(min=1e-12))
        activations *= scale
    return ActivationBuffer(activations, name, scale, sequences)


@torch.no_grad()
def splice_scores(
    model: Model, inputs: Tensor, layer: int, reconstruct: Callable[[Tensor], Tensor], scale: float = 1.0
) -> dict[str, float]:
    """The model's next-token loss clean, with hook_z at `layer` replaced by reconstruct(hook_z)
    (applied to the heads concatenated, in the SAE's input scale), and with it zero-ablated;
    CE loss recovered = (CE_zero - CE_SAE) / (CE_zero - CE_clean), and KL(clean || spliced) per
    token (nats)."""
    name = hook_z(layer)

    def spliced(z: Tensor, hook: object) -> Tensor:
        flat = z.flatten(-2) * scale  # (B, T, H * d_head)
        return (reconstruct(flat) / scale).view_as(z)

    def zero(z: Tensor, hook: object) -> Tensor:
        return torch.zeros_like(z)

    clean_logits, clean = model(inputs, return_type="both")
    sae_logits, with_sae = model.run_with_hooks(inputs, fwd_hooks=[(name, spliced)], return_type="both")
    ablated = model.run_with_hooks(inputs, fwd_hooks=[(name, zero)], return_type="loss")
    log_p, log_q = F.log_softmax(clean_logits, -1), F.log_softmax(sae_logits, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    return {
        "ce_clean": clean.item(),
        "ce_sae": with_sae.item(),
        "ce_zero": ablated.item(),
        "ce_recovered": ((ablated - with_sae) / (ablated - clean)).item(),
        "kl": kl.item(),
    }
