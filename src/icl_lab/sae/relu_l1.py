"""Kissane et al.'s recipe (after Anthropic's "Towards Monosemanticity"): ReLU features with an L1
penalty, unit-norm decoder rows, and resampling of dead features."""

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from icl_lab.sae.base import SAE, SAES, SAEConfig

RESAMPLED_ENCODER_SCALE = 0.2  # x the mean norm of the live features' encoder vectors


class ReluL1Config(SAEConfig):
    architecture: Literal["relu_l1"] = "relu_l1"
    l1_coefficient: float = Field(1.0, ge=0, description="lambda (Kissane's released runs: 0.8-3.0)")
    resample_every: int | None = Field(25_000, ge=1, description="steps between resamplings (None: never)")
    resample_times: int = Field(4, ge=0, description="at most this many resamplings")
    dead_frequency: float = Field(1e-6, ge=0, description="a feature firing this rarely or less is dead")


@SAES.register("relu_l1")
class ReluL1(SAE):
    """f = ReLU(pre); loss = ||x_hat - x||^2 + lambda ||f||_1."""

    Config = ReluL1Config
    config: ReluL1Config

    def initial_weights(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """As the authors' code: encoder and decoder drawn independently, Kaiming-uniform as PyTorch
        draws a 2-D tensor (bound sqrt(6 / size(1))), decoder rows then normalised."""
        W_enc = torch.rand(self.d_in, self.d_sae, generator=generator) * 2 - 1
        W_dec = torch.rand(self.d_sae, self.d_in, generator=generator) * 2 - 1
        W_enc *= math.sqrt(6 / self.d_sae)
        return W_enc, W_dec / W_dec.norm(dim=1, keepdim=True)

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def penalties(self, x: Tensor, pre: Tensor, f: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        return {"l1": self.config.l1_coefficient * f.sum(-1).mean()}  # f = ReLU(pre) >= 0: |f| = f

    @torch.no_grad()
    def resample(
        self, dead: Tensor, inputs: Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator
    ) -> int:
        """Give each dead feature (a (d_sae,) bool mask) a new direction: an input drawn with
        probability proportional to the square of its squared reconstruction error. Its decoder row is
        that input normalised, its encoder vector the same scaled to 0.2 x the mean norm of the live
        features' encoder vectors, its encoder bias 0, and its Adam state zero. Returns how many."""
        index = dead.nonzero().squeeze(1)
        if index.numel() == 0:
            return 0
        loss = (self.decode(self.encode(inputs)) - inputs).pow(2).sum(-1)  # (N,)
        weights = loss.pow(2)
        if weights.sum() <= 0:
            weights = torch.ones_like(weights)
        drawn = torch.multinomial(weights, index.numel(), replacement=True, generator=generator)
        directions = inputs[drawn] / inputs[drawn].norm(dim=1, keepdim=True).clamp(min=1e-12)  # (n, d_in)
        live = ~dead
        scale = self.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0)
        self.W_dec[index] = directions
        self.W_enc[:, index] = directions.T * RESAMPLED_ENCODER_SCALE * scale
        self.b_enc[index] = 0.0
        for parameter, axis in ((self.W_dec, 0), (self.b_enc, 0), (self.W_enc, 1)):  # the feature axis
            for moment in optimizer.state.get(parameter, {}).values():
                if torch.is_tensor(moment) and moment.shape == parameter.shape:  # not Adam's step count
                    moment.index_fill_(axis, index, 0.0)
        return int(index.numel())
