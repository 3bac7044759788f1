"""In-context regression baselines (Garg et al. 2022), vectorised over prompts and prefix lengths.

Each takes xs (B, K, d) and ys (B, K) and returns predictions (B, K): entry k predicts y_k from the
k pairs before it (k = 0 predicts 0). The linear ones cover all prefixes without a Python loop over
prompts (least squares and ridge loop over the pairs once, updating every prompt at each); Lasso
and the decision tree fit each prompt and prefix with scikit-learn, and the small network trains
one network per prompt and prefix as batched weights (use those on a few hundred prompts).
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from icl_lab.seeding import generator
from icl_lab.tasks.function_classes import sliding_windows


def _prefix_designs(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """(B, K, K, d) designs and (B, K, K) targets: [b, k] holds the first k pairs, other rows zero."""
    K = xs.shape[1]
    before = torch.ones(K, K, dtype=torch.bool, device=xs.device).tril(-1)  # [k, j]: j < k
    return xs[:, None] * before[None, :, :, None], ys[:, None] * before[None]


# Relative size below which a direction counts as unspanned: inputs given in float32 (or rounded
# to it) span directions they lie off only by rounding with weight ~eps32^2, the float64 products
# ~eps64 = 1.6 eps32^2; 1e3 eps32^2 clears both by a margin and drops a genuine direction of
# Gaussian prompts (singular value ratio < 4e-6) in about 2 of 10,000 square prompts at d = 20.
SPAN_RTOL = 1e3 * torch.finfo(torch.float32).eps ** 2


def least_squares(xs: Tensor, ys: Tensor) -> Tensor:
    """Minimum-norm least squares on the prefix, in float64. With k < d pairs the prediction is
    sum_j alpha_j x_j.x_k with (X X^T) alpha = y: masked k x k blocks of one Gram matrix (padded
    with a multiple of the identity), solved by Cholesky, whose pivots are each x_j's squared
    distance from the span of the x before it; prompts with a pivot below SPAN_RTOL go through a
    pseudo-inverse. From k = d on, recursive least squares: (X^T X)^+ (the same cut-off) once, then
    a Sherman-Morrison update per pair. That is exact while each new x lies in the span of the
    earlier ones, as it does from k = d for inputs in general position or confined to a subspace;
    a direction first spanned later (after the cut-off dropped it, or for inputs that leave their
    subspace) is not learned."""
    n, d = xs.shape[1], xs.shape[2]
    x, y = xs.double(), ys.double()
    prediction = torch.zeros_like(y)
    few = min(n, d)
    gram = x[:, :few] @ x[:, :few].transpose(1, 2)  # (B, few, few): x_i . x_j
    steps = torch.arange(few, device=x.device)
    before = steps[None, :] < steps[:, None]  # [k, j]: j < k
    inside = before[:, :, None] & before[:, None, :]  # [k, i, j]: both in prefix k
    scale = gram.diagonal(dim1=1, dim2=2).amax(-1).clamp(min=torch.finfo(x.dtype).tiny)[:, None, None, None]
    systems = torch.where(inside, gram[:, None], scale * torch.eye(few, dtype=x.dtype, device=x.device))
    rhs = (y[:, None, :few] * before)[..., None]  # (B, k, j, 1)
    factor, info = torch.linalg.cholesky_ex(systems)
    alpha = torch.cholesky_solve(rhs, factor)
    pivots = factor.diagonal(dim1=-2, dim2=-1) ** 2
    degenerate = (info != 0).any(1) | (pivots < SPAN_RTOL * scale[..., 0]).flatten(1).any(1)
    if degenerate.any():  # inputs (up to rounding) in a subspace: some prefix Grams are singular
        pseudo = torch.linalg.pinv(systems[degenerate], rtol=SPAN_RTOL, hermitian=True)
        alpha[degenerate] = pseudo @ rhs[degenerate]
    prediction[:, :few] = (gram * alpha[..., 0]).sum(-1)
    if n > d:
        inverse = torch.linalg.pinv(x[:, :d].transpose(1, 2) @ x[:, :d], rtol=SPAN_RTOL, hermitian=True)
        w = (inverse @ (x[:, :d].transpose(1, 2) @ y[:, :d, None]))[..., 0]
        prediction[:, d:] = _recursive_least_squares(x[:, d:], y[:, d:], inverse, w)
    return prediction.to(xs.dtype)


def _recursive_least_squares(x: Tensor, y: Tensor, inverse: Tensor, w: Tensor) -> Tensor:
    """Predict each pair from the ones before, then fold it in with a Sherman-Morrison update of
    inverse = (X^T X + reg)^-1 and of w; starts from the given inverse and w. Returns (B, K)."""
    predictions = []
    for k in range(x.shape[1]):
        xk = x[:, k]
        predictions.append((xk * w).sum(-1))
        u = (inverse @ xk[..., None])[..., 0]
        denominator = 1 + (xk * u).sum(-1, keepdim=True)
        w = w + u * (y[:, k : k + 1] - predictions[-1][:, None]) / denominator
        inverse = inverse - u[:, :, None] * u[:, None, :] / denominator[..., None]
    return torch.stack(predictions, 1)


def windowed_least_squares(window: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Least squares on each input concatenated with the window - 1 before it (zeros before the
    prompt): the sliding-window class's own solver."""

    def baseline(xs: Tensor, ys: Tensor) -> Tensor:
        return least_squares(sliding_windows(xs, window).flatten(2), ys)

    return baseline


def ridge(xs: Tensor, ys: Tensor, alpha: float = 1.0) -> Tensor:
    """Ridge regression, w = (X^T X + alpha I)^-1 X^T y, on the prefix (recursively, in float64)."""
    x, d = xs.double(), xs.shape[2]
    inverse = torch.eye(d, dtype=x.dtype, device=x.device).expand(len(x), d, d) / alpha
    return _recursive_least_squares(x, ys.double(), inverse, x.new_zeros(len(x), d)).to(xs.dtype)


def averaging(xs: Tensor, ys: Tensor) -> Tensor:
    """w = mean of y_j x_j over the prefix (the estimator one GD step from 0 is proportional to)."""
    sums = torch.cumsum(ys[..., None] * xs, 1) - ys[..., None] * xs  # sum over j < k
    counts = torch.arange(xs.shape[1], device=xs.device).clamp(min=1)[None, :, None]
    return (xs * sums / counts).sum(-1)


def nearest_neighbours(xs: Tensor, ys: Tensor, k: int = 3) -> Tensor:
    """Mean label of the k nearest earlier inputs (all of them while fewer than k)."""
    K = xs.shape[1]
    distance = torch.cdist(xs, xs)  # (B, K, K)
    earlier = torch.ones(K, K, dtype=torch.bool, device=xs.device).tril(-1)
    distance = distance.masked_fill(~earlier, float("inf"))
    nearest = distance.topk(min(k, K), -1, largest=False)
    found = torch.isfinite(nearest.values)
    labels = ys.gather(1, nearest.indices.flatten(1)).view_as(nearest.indices)
    return (labels * found).sum(-1) / found.sum(-1).clamp(min=1)


def _per_prefix(xs: Tensor, ys: Tensor, fit_predict: Callable[..., float]) -> Tensor:
    """Loop over prompts and prefixes k >= 1 of a fit-and-predict function on numpy arrays."""
    x, y = xs.cpu().double().numpy(), ys.cpu().double().numpy()
    out = np.zeros(y.shape)
    for b in range(x.shape[0]):
        for k in range(1, x.shape[1]):
            out[b, k] = fit_predict(x[b, :k], y[b, :k], x[b, k : k + 1])
    return torch.as_tensor(out, dtype=xs.dtype, device=xs.device)


def lasso(xs: Tensor, ys: Tensor, alpha: float = 0.1) -> Tensor:
    """scikit-learn's Lasso on each prefix (needs the `baselines` extra)."""
    from sklearn.linear_model import Lasso

    return _per_prefix(
        xs,
        ys,
        lambda x, y, q: Lasso(alpha=alpha, fit_intercept=False, max_iter=10_000).fit(x, y).predict(q)[0],
    )


def decision_tree(xs: Tensor, ys: Tensor, max_depth: int | None = None) -> Tensor:
    """scikit-learn's regression tree on each prefix (needs the `baselines` extra)."""
    from sklearn.tree import DecisionTreeRegressor

    return _per_prefix(
        xs,
        ys,
        lambda x, y, q: DecisionTreeRegressor(max_depth=max_depth, random_state=0).fit(x, y).predict(q)[0],
    )


def gd_network(
    xs: Tensor, ys: Tensor, hidden: int = 100, steps: int = 500, lr: float = 5e-3, seed: int = 0
) -> Tensor:
    """A 2-layer ReLU network (no biases) trained by Adam on each prefix: one network per prompt and
    prefix, all trained at once as batched weights (B x K networks: use a few hundred prompts).
    Rows past the prefix are zero inputs with zero targets, so they add nothing to the loss."""
    B, K, d = xs.shape
    g = generator(seed, "baselines", "gd_network", device=xs.device)
    W1 = (torch.randn(B, K, d, hidden, generator=g, device=xs.device) / d**0.5).requires_grad_()
    W2 = (torch.randn(B, K, hidden, 1, generator=g, device=xs.device) / hidden**0.5).requires_grad_()
    X, y = _prefix_designs(xs, ys)
    counts = torch.arange(K, device=xs.device).clamp(min=1)
    optimizer = torch.optim.Adam([W1, W2], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = (((torch.relu(X @ W1) @ W2)[..., 0] - y) ** 2).sum(-1) / counts
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
    with torch.no_grad():
        prediction = (torch.relu(xs[:, :, None] @ W1) @ W2)[..., 0, 0]
    return prediction * (torch.arange(K, device=xs.device) > 0)  # no pairs yet: predict 0


def normalised_error(predictions: Tensor, ys: Tensor, dim: int) -> Tensor:
    """Squared error divided by d, per prompt and prefix length: (B, K)."""
    return (predictions - ys) ** 2 / dim


def bootstrap_ci(
    errors: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of the mean over prompts, per prefix length: two (K,) tensors."""
    g = generator(seed, "baselines", "bootstrap", device=errors.device)
    index = torch.randint(errors.shape[0], (resamples, errors.shape[0]), generator=g, device=errors.device)
    means = errors[index].mean(1)  # (resamples, K)
    tail = (1 - level) / 2
    return means.quantile(tail, 0), means.quantile(1 - tail, 0)
