"""In-context regression baselines (Garg et al. 2022), vectorised over prompts and prefix lengths.

Each takes xs (B, K, d) and ys (B, K) and returns predictions (B, K): entry k predicts y_k from the
k pairs before it (k = 0 predicts 0). The linear ones solve all prefixes at once: prefix k's
design matrix is X with rows k.. zeroed, which leaves least-squares and ridge solutions unchanged.
Lasso, the decision tree and the small network fit each prompt and prefix with scikit-learn or
PyTorch (loops: use them on a few hundred prompts).
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def _prefix_designs(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """(B, K, K, d) designs and (B, K, K) targets: [b, k] holds the first k pairs, other rows zero."""
    K = xs.shape[1]
    before = torch.ones(K, K, dtype=torch.bool, device=xs.device).tril(-1)  # [k, j]: j < k
    return xs[:, None] * before[None, :, :, None], ys[:, None] * before[None]


def least_squares(xs: Tensor, ys: Tensor) -> Tensor:
    """Minimum-norm least squares on the prefix, in float64: with k < d pairs w = X^T (X X^T)^-1 y
    (k x k systems, padded to d x d), with k >= d pairs w = (X^T X)^-1 X^T y (running sums)."""
    n, d = xs.shape[1], xs.shape[2]
    x, y = xs.double(), ys.double()
    w = torch.zeros_like(x)
    few = min(n, d)  # prefixes with fewer pairs than dimensions
    X, Y = _prefix_designs(x[:, :few], y[:, :few])  # (B, few, few, d)
    steps = torch.arange(few, device=x.device)
    pad = torch.diag_embed((steps[:, None] <= steps).to(x.dtype))  # 1 on rows j >= k: an identity there
    alpha = torch.linalg.solve(X @ X.transpose(-1, -2) + pad, Y[..., None])  # zero where padded
    w[:, :few] = (X.transpose(-1, -2) @ alpha)[..., 0]
    if n > d:
        gram, moment = _running_moments(x[:, : n - 1], y[:, : n - 1])
        w[:, d:] = torch.linalg.solve(gram[:, d - 1 :], moment[:, d - 1 :, :, None])[..., 0]
    return (x * w).sum(-1).to(xs.dtype)


def _running_moments(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """sum_{j <= k} x_j x_j^T (B, K, d, d) and sum_{j <= k} y_j x_j (B, K, d): the moments of the
    first k + 1 pairs, the prefix that predicts pair k + 1."""
    return torch.cumsum(x[..., :, None] * x[..., None, :], 1), torch.cumsum(y[..., None] * x, 1)


def ridge(xs: Tensor, ys: Tensor, alpha: float = 1.0) -> Tensor:
    """Ridge regression, w = (X^T X + alpha I)^-1 X^T y, on the prefix."""
    gram, moment = _running_moments(xs[:, :-1], ys[:, :-1])
    eye = alpha * torch.eye(xs.shape[2], dtype=xs.dtype, device=xs.device)
    w = torch.linalg.solve(gram + eye, moment[..., None])[..., 0]  # w[:, k] predicts pair k + 1
    return torch.cat([torch.zeros_like(ys[:, :1]), (xs[:, 1:] * w).sum(-1)], 1)


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


def gd_network(xs: Tensor, ys: Tensor, hidden: int = 100, steps: int = 500, lr: float = 5e-3) -> Tensor:
    """A 2-layer ReLU network (no biases) trained by Adam on each prefix: one network per prompt and
    prefix, all trained at once as batched weights (B x K networks: use a few hundred prompts).
    Rows past the prefix are zero inputs with zero targets, so they add nothing to the loss."""
    B, K, d = xs.shape
    g = torch.Generator(device=xs.device).manual_seed(0)
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


BASELINES = {
    "least_squares": least_squares,
    "ridge": ridge,
    "averaging": averaging,
    "3-nn": nearest_neighbours,
    "lasso": lasso,
    "decision_tree": decision_tree,
    "gd_network": gd_network,
}


def normalised_error(predictions: Tensor, ys: Tensor, dim: int) -> Tensor:
    """Squared error divided by d, per prompt and prefix length: (B, K)."""
    return (predictions - ys) ** 2 / dim


def bootstrap_ci(
    errors: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of the mean over prompts, per prefix length: two (K,) tensors."""
    g = torch.Generator(device=errors.device).manual_seed(seed)
    index = torch.randint(errors.shape[0], (resamples, errors.shape[0]), generator=g, device=errors.device)
    means = errors[index].mean(1)  # (resamples, K)
    tail = (1 - level) / 2
    return means.quantile(tail, 0), means.quantile(1 - tail, 0)
