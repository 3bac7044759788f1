"""Fit the nested-logits phenomenological loss (models/reddy_reduced.py) to a training curve.

Mean-field version of NestedLogitsModel: with q the expected share of context labels equal to the
target (B/N for bursty contexts of distinct labels),

    loss(z) = -log[(1 - c) / L + c ((1 - m) q + m)],  c = sigmoid(z1), m = sigmoid(z2) sigmoid(z3).

Gradient flow dz/dtau = -grad loss is integrated (Euler, step dtau) from z1(0) = a, z2(0) = z3(0) = b
for a grid of (a, b) at once; a training step t maps to flow time tau = eta * t. The fit picks
(a, b, eta) minimising the squared error to the network's loss curve.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NestedLogitsFit:
    """Fitted initial logits, time scale (flow time per step) and the fitted curve."""

    z1: float
    z23: float
    eta: float
    steps: np.ndarray
    fitted: np.ndarray
    rmse: float


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))


def _terms(z: np.ndarray, n_labels: int, q: float) -> tuple[np.ndarray, ...]:
    """(c, s2, s3, m, f) at logits z (..., 3): the three sigmoids, m = s2 s3 and f = exp(-loss)."""
    c, s2, s3 = _sigmoid(z[..., 0]), _sigmoid(z[..., 1]), _sigmoid(z[..., 2])
    m = s2 * s3
    return c, s2, s3, m, (1 - c) / n_labels + c * ((1 - m) * q + m)


def expected_loss(z: np.ndarray, n_labels: int, q: float) -> np.ndarray:
    """The mean-field loss at logits z (..., 3)."""
    return -np.log(_terms(z, n_labels, q)[-1])


def gradient_flow(
    z0: np.ndarray, n_labels: int, q: float, tau_max: float, dtau: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(tau grid (S,), loss (G, S)) of the flow from each initial point z0 (G, 3)."""
    z = z0.astype(float).copy()
    n = int(np.ceil(tau_max / dtau)) + 1
    losses = np.empty((z.shape[0], n))
    for i in range(n):
        c, s2, s3, m, f = _terms(z, n_labels, q)
        losses[:, i] = -np.log(f)
        df = np.stack(
            [
                c * (1 - c) * ((1 - m) * q + m - 1 / n_labels),
                c * (1 - q) * s3 * s2 * (1 - s2),
                c * (1 - q) * s2 * s3 * (1 - s3),
            ],
            1,
        )
        z += dtau * df / f[:, None]
    return np.arange(n) * dtau, losses


def fit_nested_logits(
    steps: np.ndarray,
    losses: np.ndarray,
    n_labels: int,
    q: float,
    starts: np.ndarray | None = None,
    tau_max: float = 300.0,
) -> NestedLogitsFit:
    """Grid search over initial logits (z1, z2 = z3; default -8 to 1) and the time scale eta."""
    steps, losses = np.asarray(steps, float), np.asarray(losses, float)
    if steps.ndim != 1 or steps.size < 2 or steps.shape != losses.shape or steps[-1] <= 0:
        raise ValueError(
            "fit_nested_logits needs steps and losses of one length, two or more points, the last "
            f"step positive (given {steps.size} steps, {losses.size} losses)"
        )
    problems = {
        "steps must increase": not (np.diff(steps) > 0).all(),
        "losses must be finite": not np.isfinite(losses).all(),
        "n_labels must be at least 2": n_labels < 2,
        "q must be a probability, 0 to 1": not 0 <= q <= 1,
    }
    if wrong := [what for what, bad in problems.items() if bad]:
        raise ValueError(f"fit_nested_logits: {'; '.join(wrong)}")
    starts = np.linspace(-8.0, 1.0, 19) if starts is None else starts
    a, b = np.meshgrid(starts, starts, indexing="ij")
    z0 = np.stack([a.ravel(), b.ravel(), b.ravel()], 1)
    tau, curves = gradient_flow(z0, n_labels, q, tau_max)
    etas = np.geomspace(tau_max / steps[-1] / 1000, tau_max / steps[-1], 60)
    best = (np.inf, 0, 0.0)
    for eta in etas:
        predicted = np.stack([np.interp(eta * steps, tau, curve) for curve in curves])  # (G, T)
        errors = ((predicted - losses) ** 2).mean(1)
        i = int(np.argmin(errors))
        if errors[i] < best[0]:
            best = (float(errors[i]), i, float(eta))
    error, i, eta = best
    fitted = np.interp(eta * steps, tau, curves[i])
    return NestedLogitsFit(float(z0[i, 0]), float(z0[i, 1]), eta, steps, fitted, float(np.sqrt(error)))
