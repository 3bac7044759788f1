"""Comparing a trained model with gradient descent in context (von Oswald et al. 2023).

Both are functions of the token batch (B, N + 1, d + 1) returning the query prediction (B,). The
comparison uses their sensitivities to the query input, d y_hat / d x_q (by autograd), their
predictions, and, for two linear self-attention models, the model halfway between their weights.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from icl_lab.models.linear_self_attention import LinearSelfAttention, gd_plus_plus_predictions, gd_predictions

Predictor = Callable[[Tensor], Tensor]


def sensitivities(predict: Predictor, tokens: Tensor) -> Tensor:
    """d y_hat / d x_q for every prompt: (B, d)."""
    x_query = tokens[:, -1, :-1].detach().clone().requires_grad_(True)
    rest = tokens.detach()
    inputs = torch.cat([rest[:, :-1], torch.cat([x_query, rest[:, -1:, -1]], -1)[:, None]], 1)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(predict(inputs).sum(), x_query)
    return grad


@dataclass(frozen=True)
class GDComparison:
    """How close a model is to gradient descent on one batch."""

    cosine: float  # mean cosine similarity of the sensitivities
    sensitivity_l2: float  # mean L2 distance between the sensitivities
    prediction_diff: float  # mean |y_hat_model - y_hat_gd|
    model_loss: float
    gd_loss: float


def compare_with_gd(
    predict: Predictor, tokens: Tensor, targets: Tensor, lr: float, steps: int = 1
) -> GDComparison:
    """A predictor against `steps` GD steps of size lr from w = 0 (half squared-error losses)."""
    gd = lambda t: gd_predictions(t, lr, steps)  # noqa: E731 - a predictor like the model's
    ours, theirs = sensitivities(predict, tokens), sensitivities(gd, tokens)
    with torch.no_grad():
        y_model, y_gd = predict(tokens), gd(tokens)
    return GDComparison(
        cosine=torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).mean().item(),
        sensitivity_l2=(ours - theirs).norm(dim=-1).mean().item(),
        prediction_diff=(y_model - y_gd).abs().mean().item(),
        model_loss=(0.5 * (y_model - targets) ** 2).mean().item(),
        gd_loss=(0.5 * (y_gd - targets) ** 2).mean().item(),
    )


def query_predictor(model: LinearSelfAttention) -> Predictor:
    """The model's prediction at the query token, (B,)."""
    return lambda tokens: model(tokens)[:, -1, 0]


def interpolated_loss(
    a: LinearSelfAttention, b: LinearSelfAttention, tokens: Tensor, targets: Tensor
) -> float:
    """Loss of the model halfway between a and b, as the authors' notebook interpolates
    (transformers_learn_icl_by_gd, constructed_token_setup.ipynb, interpolate_weights): each head's
    merged matrices W_Q W_K^T and W_V W_O, what the model computes with, first normalised so that
    the x-block of W_Q W_K^T has mean diagonal 1 (W_V W_O times that mean in exchange), then
    averaged. Both steps remove the symmetries (W_Q c, W_K / c) and (W_Q W_K^T c, W_V W_O / c, c
    negative included) that make equal models' weights differ."""
    mixed = type(a)(a.cfg, a.io)
    eye = torch.eye(a.io.d_input).expand_as(mixed.blocks[0].W_K)
    d = a.io.d_input - 1

    def merged(block: torch.nn.Module) -> tuple[Tensor, Tensor]:
        score = block.W_Q @ block.W_K.transpose(1, 2)  # (heads, d + 1, d + 1)
        scale = score[:, :d, :d].diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]  # (heads, 1, 1)
        return score / scale, block.W_V @ block.W_O * scale

    with torch.no_grad():
        for m, x, y in zip(mixed.blocks, a.blocks, b.blocks, strict=True):
            (qk_x, vo_x), (qk_y, vo_y) = merged(x), merged(y)
            m.W_Q.copy_(0.5 * (qk_x + qk_y))
            m.W_V.copy_(0.5 * (vo_x + vo_y))
            m.W_K.copy_(eye)
            m.W_O.copy_(eye)
        return (0.5 * (mixed(tokens)[:, -1, 0] - targets) ** 2).mean().item()


def effective_lr(model: LinearSelfAttention, layer: int = 0) -> float:
    """The lr / N of the GD step a linear self-attention layer implements: minus the y -> y entry of
    W_V W_O times the mean diagonal of the x-block of W_Q W_K^T, summed over heads (GD: lr / N)."""
    block = model.blocks[layer]
    d = model.io.d_input - 1
    with torch.no_grad():
        value = (block.W_V @ block.W_O)[:, -1, -1]  # per head
        score = (block.W_Q[:, :d] @ block.W_K[:, :d].transpose(1, 2)).diagonal(dim1=1, dim2=2).mean(-1)
        return float(-(value * score).sum())


def _line_search(f: Callable[[float], float], low: float, high: float) -> float:
    """argmin of f on [low, high]: a grid of 21, then golden-section search around the best point."""
    grid = torch.linspace(low, high, 21).tolist()
    best = min(range(21), key=lambda i: f(grid[i]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, 20)]
    ratio = (5**0.5 - 1) / 2
    for _ in range(20):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if f(c) <= f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def tune_gd(
    tokens: Tensor, targets: Tensor, steps: int, plus_plus: bool = False
) -> tuple[float, float, float]:
    """(lr, gamma, loss): the step size (and, for GD++, the curvature correction gamma) of `steps`
    steps from w = 0 with the least half squared error on a batch: line searches over lr in [0, 4N]
    (and, alternating three times, gamma in [0, 1])."""
    n = tokens.shape[1] - 1

    def loss(lr: float, gamma: float) -> float:
        prediction = gd_plus_plus_predictions(tokens, lr, gamma, steps)
        return (0.5 * (prediction - targets) ** 2).mean().nan_to_num(float("inf")).item()

    lr, gamma = _line_search(lambda lr: loss(lr, 0.0), 0.0, 4.0 * n), 0.0
    for _ in range(3 if plus_plus else 0):
        gamma = _line_search(lambda g, lr=lr: loss(lr, g), 0.0, 1.0)
        lr = _line_search(lambda r, gamma=gamma: loss(r, gamma), 0.0, 4.0 * n)
    return lr, gamma, loss(lr, gamma)
