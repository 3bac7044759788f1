"""BatchTopK SAEs (Bussmann et al. 2024): the k x N largest pre-activations over a batch of N
inputs, so that inputs share a budget of k features on average; at inference a global threshold
estimated in training replaces the batch."""

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from icl_lab.sae.base import SAES
from icl_lab.sae.topk import TopK, TopKConfig


class BatchTopKConfig(TopKConfig):
    architecture: Literal["batchtopk"] = "batchtopk"  # type: ignore[assignment]
    threshold_rate: float = Field(0.01, gt=0, le=1, description="EMA rate of the inference threshold")


@SAES.register("batchtopk")
class BatchTopK(TopK):
    """Training: f keeps the k N largest positive pre-activations of the batch. Inference (eval
    mode): f = pre where pre > threshold, the threshold an EMA of the smallest kept activation."""

    Config = BatchTopKConfig
    config: BatchTopKConfig

    def __init__(self, config: BatchTopKConfig, d_in: int, generator: torch.Generator) -> None:
        super().__init__(config, d_in, generator)
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def activation(self, pre: Tensor) -> Tensor:
        if not self.training:
            return pre * (pre > self.threshold.clamp(min=0))
        flat = torch.relu(pre).flatten()  # (N * d_sae,)
        values, index = flat.topk(min(self.config.k * pre.shape[0], flat.numel()))
        features = torch.zeros_like(flat).scatter(0, index, values).view_as(pre)
        with torch.no_grad():
            kept = values[values > 0]
            if kept.numel():
                smallest = kept.min()
                rate = self.config.threshold_rate
                new = smallest if self.threshold < 0 else (1 - rate) * self.threshold + rate * smallest
                self.threshold.copy_(new)
        return features
