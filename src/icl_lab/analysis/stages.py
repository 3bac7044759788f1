"""Developmental stages from an LLC curve, as Hoogland et al. (2024) find them.

Their procedure (timaeus-research/icl, notebooks/language.ipynb): smooth the LLC over checkpoints
with a Gaussian process in x = ln(step + 1), take its slope d LLC / dx, and put a stage boundary
at each critical point or plateau: a local minimum of |slope| that is below a threshold. They set
the threshold per model in LLC units (8 for linear regression, 0.25 for the language model); here
it is `flat` times the curve's mean slope (its smoothed range over the span of x), so one default
serves curves of any scale, and a stretch below it counts once (at its flattest point), so that a
plateau's noise cannot split it. A run that starts or ends flat (an LLC curve from a short run
often does) gets those stretches as plateau stages of their own: a boundary inside them would cut
off only noise. Stages are the stretches between boundaries; each one is rising or
falling by the sign of the smoothed LLC's change across it (both kinds occur in their runs).

The GP: an RBF kernel whose amplitude and length scale (at least 0.5 in ln(step + 1), the bound
Hoogland et al. gave sklearn's optimiser), and a noise floor above each point's own standard error,
maximise the marginal likelihood on a grid.
"""

import math
from dataclasses import dataclass
from itertools import pairwise, product

import numpy as np

GRID = 400  # points of the smoothed curve
MIN_PLATEAU = 20  # grid points (5% of the log-step span) an opening or closing plateau must cover
MIN_LENGTH = 0.5  # the RBF length scale's lower bound in ln(step + 1), Hoogland et al.'s


@dataclass(frozen=True)
class SmoothCurve:
    """The GP's posterior mean of a curve on a dense grid, and its slope in x = ln(step + 1)."""

    steps: np.ndarray
    values: np.ndarray
    slope: np.ndarray
    noise: float  # the fit's typical standard deviation of a point about the curve


@dataclass(frozen=True)
class Stage:
    """One developmental stage: from `start` to `end` (steps), the smoothed LLC at either end."""

    start: float
    end: float
    llc_start: float
    llc_end: float
    plateau: bool = False  # a flat stretch at the start or end of the curve

    @property
    def kind(self) -> str:
        if self.plateau:
            return "plateau"
        return "rising" if self.llc_end >= self.llc_start else "falling"


def _rbf(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    return np.exp(-0.5 * ((a[:, None] - b[None, :]) / length) ** 2)


def smooth(steps: np.ndarray, values: np.ndarray, errors: np.ndarray | None = None) -> SmoothCurve:
    """GP regression of values over ln(step + 1), hyperparameters by marginal likelihood."""
    x = np.log(np.asarray(steps, float) + 1)
    mean, scale = float(np.mean(values)), float(np.std(values)) or 1.0
    y = (np.asarray(values, float) - mean) / scale
    own = np.zeros_like(y) if errors is None else (np.asarray(errors, float) / scale) ** 2
    span = float(x[-1] - x[0]) or 1.0
    best = (-math.inf, 0.0, 0.0, 0.0, np.zeros(0))
    for length, amplitude, floor in product(
        np.geomspace(MIN_LENGTH, max(span, MIN_LENGTH), 24), (0.3, 1.0, 3.0), (1e-4, 1e-3, 1e-2, 3e-2, 0.1)
    ):
        K = amplitude * _rbf(x, x, length) + np.diag(own + floor)
        try:
            L = np.linalg.cholesky(K)
        except np.linalg.LinAlgError:
            continue
        alpha = np.linalg.solve(L.T, np.linalg.solve(L, y))
        evidence = -0.5 * y @ alpha - np.log(np.diag(L)).sum()
        if evidence > best[0]:
            best = (evidence, length, amplitude, floor, alpha)
    _, length, amplitude, floor, alpha = best
    grid = np.linspace(x[0], x[-1], GRID)
    k = amplitude * _rbf(grid, x, length)  # (GRID, points)
    values_s = mean + scale * (k @ alpha)
    slope = scale * ((-(grid[:, None] - x[None, :]) / length**2 * k) @ alpha)
    return SmoothCurve(np.exp(grid) - 1, values_s, slope, scale * float(np.median(np.sqrt(own + floor))))


def _flat_stretches(curve: SmoothCurve, flat: float) -> list[tuple[int, int]]:
    """Index ranges [a, b) of the grid where |slope| stays below `flat` times the mean slope."""
    x_span = math.log(curve.steps[-1] + 1) - math.log(curve.steps[0] + 1)
    threshold = flat * (curve.values.max() - curve.values.min()) / (x_span or 1.0)
    below = np.concatenate([[0], (np.abs(curve.slope) < threshold).astype(int), [0]])
    return list(zip(np.flatnonzero(np.diff(below) == 1), np.flatnonzero(np.diff(below) == -1), strict=True))


def boundaries(curve: SmoothCurve, flat: float = 0.5) -> list[float]:
    """Steps of the critical points and plateaus between stages: each interior stretch where |slope|
    stays below `flat` times the mean slope is one boundary, at its flattest point."""
    magnitude = np.abs(curve.slope)
    return [
        float(curve.steps[a + np.argmin(magnitude[a:b])])
        for a, b in _flat_stretches(curve, flat)
        if a > 0 and b < magnitude.size
    ]


def stages(curve: SmoothCurve, flat: float = 0.5, min_change: float = 0.1) -> list[Stage]:
    """Plateau stages where the curve starts or ends flat (a stretch of at least MIN_PLATEAU grid
    points), and between them the stretches between consecutive boundaries. A stretch whose
    smoothed LLC changes by less than `min_change` of the curve's range, or than twice its noise, is
    no stage of its own: the less flat of its two boundaries is dropped until none is left."""
    at = lambda step: float(np.interp(step, curve.steps, curve.values))  # noqa: E731
    flatness = lambda step: float(np.interp(step, curve.steps, np.abs(curve.slope)))  # noqa: E731
    n, first, last = curve.steps.size, float(curve.steps[0]), float(curve.steps[-1])
    stretches = [(a, b) for a, b in _flat_stretches(curve, flat) if b - a >= MIN_PLATEAU]
    head = [b for a, b in stretches if a <= MIN_PLATEAU]  # a GP bends at the ends: allow a margin
    tail = [a for a, b in stretches if b >= n - MIN_PLATEAU]
    start = float(curve.steps[head[0] - 1]) if head else first
    end = float(curve.steps[tail[0]]) if tail else last
    least = max(min_change * float(curve.values.max() - curve.values.min()), 2 * curve.noise)
    cuts = [c for c in boundaries(curve, flat) if start < c < end]
    while cuts:
        edges = [start, *cuts, end]
        changes = [abs(at(b) - at(a)) for a, b in pairwise(edges)]
        i = int(np.argmin(changes))
        if changes[i] >= least:
            break
        ends = [e for e in (i - 1, i) if 0 <= e < len(cuts)]  # the stretch's boundaries among the cuts
        cuts.pop(max(ends, key=lambda e: flatness(cuts[e])))
    if start >= end or (not cuts and abs(at(end) - at(start)) < least):
        return [Stage(first, last, at(first), at(last), True)]  # flat throughout, up to noise
    found = [Stage(a, b, at(a), at(b)) for a, b in pairwise([start, *cuts, end])]
    if head:
        found.insert(0, Stage(first, start, at(first), at(start), True))
    if tail:
        found.append(Stage(end, last, at(end), at(last), True))
    return found
