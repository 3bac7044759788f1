"""Linear regression in context as von Oswald et al. (ICML 2023) pose it.

A teacher w ~ N(0, I_d) per sequence, inputs x ~ U(-r/2, r/2)^d, targets y = w^T x (plus optional
Gaussian noise). Tokens e_i = (x_i, y_i) for the N context points and e_q = (x_q, 0) for the query;
the target is y_q. The paper's text says x ~ U(-1, 1) (r = 2) but its code uses r = 1: `input_range`
makes the choice explicit (with r = 1 the zero predictor's loss is d/24 = 0.4167 for d = 10). The
loss is half the squared error, as in the paper.
"""

from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.models.base import ModelIO
from icl_lab.tasks.base import TASKS, Batch, Task


class LinearRegressionTokensConfig(TaskConfig):
    """In-context linear regression with (x, y) tokens and a (x_q, 0) query."""

    name: Literal["linear_regression_tokens"] = "linear_regression_tokens"
    dim: PositiveInt = 10
    n_points: PositiveInt = Field(10, description="context points N before the query")
    input_range: PositiveFloat = Field(1.0, description="r: x ~ U(-r/2, r/2)^d")
    noise_std: float = Field(0.0, ge=0.0, description="Gaussian noise on the context targets")


@TASKS.register("linear_regression_tokens")
class LinearRegressionTokensTask(Task):
    """Predict y_q = w^T x_q from N (x_i, w^T x_i) tokens."""

    Config = LinearRegressionTokensConfig
    config: LinearRegressionTokensConfig
    default_metrics = ("loss",)
    loss_unit = "half squared error"
    meta_keys = ("w",)
    target_kind = "values"

    @classmethod
    def io(cls, config: LinearRegressionTokensConfig) -> ModelIO:
        return ModelIO(n_ctx=config.n_points + 1, d_out=1, d_input=config.dim + 1, target_positions=(-1,))

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c, dev = self.config, generator.device
        x = (
            torch.rand(batch_size, c.n_points + 1, c.dim, generator=generator, device=dev) - 0.5
        ) * c.input_range
        w = torch.randn(batch_size, c.dim, generator=generator, device=dev)
        y = torch.einsum("bnd,bd->bn", x, w)
        noise = torch.randn(batch_size, c.n_points, generator=generator, device=dev) * c.noise_std
        shown = torch.cat([y[:, :-1] + noise, torch.zeros_like(y[:, -1:])], 1)
        tokens = torch.cat([x, shown[..., None]], -1)
        mask = torch.ones(batch_size, 1, dtype=torch.bool, device=dev)
        return Batch(tokens, y[:, -1:], mask, {"w": w})

    def token_loss(self, output_logits: Tensor, targets: Tensor) -> Tensor:
        return 0.5 * (output_logits[..., 0] - targets) ** 2
