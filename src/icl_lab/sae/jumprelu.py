"""JumpReLU SAEs (Rajamanoharan et al. 2024): f = z H(z - theta) with a learned threshold per
feature and an L0 penalty, both trained through straight-through estimators with a rectangle
kernel of width epsilon."""

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from icl_lab.sae.base import SAE, SAES, SAEConfig


class JumpReLUConfig(SAEConfig):
    architecture: Literal["jumprelu"] = "jumprelu"
    l0_coefficient: float = Field(1.0, ge=0, description="weight of the L0 penalty")
    bandwidth: float = Field(0.001, gt=0, description="epsilon: width of the rectangle kernel")
    initial_threshold: float = Field(0.001, gt=0)


def _kernel(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Rectangle kernel K((z - theta) / epsilon) / epsilon: 1/epsilon within epsilon/2 of theta."""
    return ((z - threshold).abs() < bandwidth / 2).to(z.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    """z H(z - theta); d/dz = H(z - theta), d/dtheta = -theta K((z - theta) / eps) / eps."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, threshold = ctx.saved_tensors
        grad_threshold = -(threshold * _kernel(z, threshold, ctx.bandwidth) * grad).sum(0)
        return grad * (z > threshold), grad_threshold, None


class _Step(torch.autograd.Function):
    """H(z - theta); d/dz = 0, d/dtheta = -K((z - theta) / eps) / eps."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        z, threshold = ctx.saved_tensors
        return torch.zeros_like(z), -(_kernel(z, threshold, ctx.bandwidth) * grad).sum(0), None


@SAES.register("jumprelu")
class JumpReLU(SAE):
    """f = z H(z - theta), theta = exp(log_threshold) per feature; loss adds lambda L0(f)."""

    Config = JumpReLUConfig
    config: JumpReLUConfig
    sparse_gradient = False  # the threshold learns from features just below it, which are zero

    def __init__(self, config: JumpReLUConfig, d_in: int, generator: torch.Generator) -> None:
        super().__init__(config, d_in, generator)
        self.log_threshold = torch.nn.Parameter(torch.full((self.d_sae,), math.log(config.initial_threshold)))

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        return _JumpReLU.apply(torch.relu(pre), self.threshold, self.config.bandwidth)

    def penalties(self, x: Tensor, pre: Tensor, f: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        l0 = _Step.apply(torch.relu(pre), self.threshold, self.config.bandwidth).sum(-1).mean()
        return {"l0": self.config.l0_coefficient * l0}
