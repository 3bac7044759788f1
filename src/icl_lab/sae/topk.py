"""TopK SAEs (Gao et al. 2024): keep the k largest pre-activations of each input, and an
auxiliary loss that makes dead latents reconstruct what the live ones miss."""

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import Tensor

from icl_lab.sae.base import SAE, SAES, SAEConfig


class TopKConfig(SAEConfig):
    architecture: Literal["topk"] = "topk"
    k: PositiveInt = Field(32, description="features kept per input")
    aux_k: PositiveInt = Field(512, description="dead latents that reconstruct the residual error")
    aux_coefficient: float = Field(1 / 32, ge=0, description="weight of the auxiliary loss")
    dead_steps: PositiveInt = Field(1000, description="a latent not fired for this many steps is dead")

    def width_problem(self, d_in: int) -> str | None:
        d_sae = self.expansion * d_in
        if self.k >= d_sae:
            return (
                f"sae.k: {self.k} keeps all {d_sae} features (expansion {self.expansion} x d_in {d_in}): "
                "no sparsity; choose k below the feature count"
            )
        return None


def keep_top(pre: Tensor, k: int) -> Tensor:
    """ReLU of the k largest entries of each row of pre, zeros elsewhere."""
    values, index = pre.topk(min(k, pre.shape[-1]), dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))


@SAES.register("topk")
class TopK(SAE):
    """f = TopK(pre): exactly k candidates per input (fewer are non-zero when pre-activations are
    negative); the AuxK loss trains latents dead for dead_steps to predict the residual error."""

    Config = TopKConfig
    config: TopKConfig

    def __init__(self, config: TopKConfig, d_in: int, generator: torch.Generator) -> None:
        super().__init__(config, d_in, generator)
        self.register_buffer("steps_since_fired", torch.zeros(self.d_sae, dtype=torch.long))

    def activation(self, pre: Tensor) -> Tensor:
        return keep_top(pre, self.config.k)

    def penalties(self, x: Tensor, pre: Tensor, f: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        if not self.training:
            return {}
        with torch.no_grad():
            fired = (f > 0).any(0)
            self.steps_since_fired.add_(1).masked_fill_(fired, 0)
        dead = self.steps_since_fired >= self.config.dead_steps
        if not dead.any():
            return {"aux": pre.new_zeros(())}
        residual = (x - x_hat).detach()  # (N, d_in): what the live latents miss
        index = dead.nonzero().squeeze(1)  # (n_dead,): only these compete, so only these are read
        n_dead = len(index)
        aux_features = keep_top(pre[:, index], min(self.config.aux_k, n_dead))  # (N, n_dead)
        aux = (aux_features @ self.W_dec[index] - residual).pow(2).sum(-1).mean()
        scale = min(n_dead / self.config.aux_k, 1.0)  # fewer dead latents than aux_k: a smaller share
        return {"aux": self.config.aux_coefficient * scale * aux}
