"""Analyses of repeated-data runs (Hernandez et al. 2022): double descent in a held-out loss curve,
and the effective model size of a damaged model on a ladder of unique-data models."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DoubleDescent:
    """A rise of a held-out loss above an earlier minimum, followed by a fall (loss units)."""

    minimum_step: float
    minimum: float
    peak_step: float
    peak: float
    fall_step: float  # the first step after the peak at least `rise` below it
    rise: float


def double_descent(steps: np.ndarray, loss: np.ndarray, min_rise: float) -> DoubleDescent | None:
    """The largest rise of at least `min_rise` above the lowest loss so far that is followed by a
    fall of at least as much, or None. Steps are returned as given (steps, sequences or tokens);
    choose min_rise above the curve's evaluation noise."""
    steps, loss = np.asarray(steps, dtype=float), np.asarray(loss, dtype=float)
    best: DoubleDescent | None = None
    low = 0
    for peak in range(1, len(loss)):
        if loss[peak - 1] < loss[low]:
            low = peak - 1
        rise = loss[peak] - loss[low]
        if rise < min_rise or (best is not None and rise <= best.rise):
            continue
        after = np.flatnonzero(loss[peak + 1 :] <= loss[peak] - rise) + peak + 1
        if after.size:
            best = DoubleDescent(steps[low], loss[low], steps[peak], loss[peak], steps[after[0]], rise)
    return best


@dataclass(frozen=True)
class EffectiveSize:
    """Where a model's loss sits on a ladder of unique-data models: the interpolated size, and how
    many times smaller than the model itself that is."""

    parameters: float
    times_smaller: float
    within_ladder: bool


def effective_size(ladder: dict[float, float], size: float, loss: float) -> EffectiveSize:
    """Interpolate log(parameters) linearly in loss between the ladder's neighbouring rungs
    ({parameters: held-out loss}, loss falling with size); beyond the ladder, extrapolate from the
    nearest two rungs and say so. Hernandez's framing: a repeated-data model of `size` parameters
    does as well as a unique-data model of `parameters`."""
    if len(ladder) < 2:
        raise ValueError("the ladder needs at least two unique-data models")
    sizes = np.array(sorted(ladder), dtype=float)
    losses = np.array([ladder[s] for s in sizes])
    if np.any(np.diff(losses) >= 0):
        raise ValueError(
            f"the ladder's loss must fall with size (got {dict(zip(sizes, losses, strict=True))})"
        )
    within = losses[-1] <= loss <= losses[0]
    i = int(np.clip(np.searchsorted(-losses, -loss) - 1, 0, len(sizes) - 2))  # rung i above, i + 1 below
    t = (loss - losses[i]) / (losses[i + 1] - losses[i])
    log_size = np.log(sizes[i]) + t * (np.log(sizes[i + 1]) - np.log(sizes[i]))
    parameters = float(np.exp(log_size))
    return EffectiveSize(parameters, size / parameters, bool(within))
