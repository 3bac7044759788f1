"""Phase-change detection: find abrupt transitions in any metric curve.

A transition is a logistic step y = a + (b - a) * sigmoid((t - t_mid) / w) whose 10%-90% width
(2 w ln 9) is at most `max_width` times the span of the curve. Every candidate (t_mid, w) on a grid
is fitted on its own window (t_mid +- 3 half-widths, at least `min_points` samples), with the
levels a and b in closed form, all candidates at once. A candidate is an abrupt transition when,
in its window,

- the step explains the data much better than a straight line (BIC gain > `min_bic_gain`),
- its amplitude |b - a| exceeds `min_snr` times the noise level (a robust estimate from second
  differences) and `min_amplitude`,
- the curve is observed and flat for as long as the transition lasts (at least min_points / 2
  samples) before its onset and after its end: a line through each side changes by less than
  `max_side_change` times the amplitude (so a smooth decay from the first step is not one).

Transitions are taken greedily, strongest evidence first, without overlapping; each one's midpoint
and width are then refined by least squares within its window. Onset, midpoint and end are the
steps at which 10%, 50% and 90% of the change is done.
"""

import math
from dataclasses import dataclass

import numpy as np

LOGIT_90 = math.log(9.0)
MAX_POINTS = 800


@dataclass(frozen=True)
class Transition:
    """One abrupt change of a curve; times in optimiser steps."""

    onset: float
    midpoint: float
    end: float
    before: float
    after: float

    @property
    def amplitude(self) -> float:
        return self.after - self.before


def noise_level(values: np.ndarray) -> float:
    """Robust standard deviation of white noise on a smooth curve: the MAD of second differences
    (which a smooth trend barely moves) / sqrt(6)."""
    diffs = np.diff(values, 2)
    if diffs.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / math.sqrt(6))


def _centred(weights: np.ndarray, u: np.ndarray, v: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sum over the window of (u - mean u)(v - mean v)."""
    return (weights * u * v).sum(-1) - (weights * u).sum(-1) * (weights * v).sum(-1) / n


def _candidates(t: np.ndarray, y: np.ndarray, widths: np.ndarray, min_points: int) -> dict[str, np.ndarray]:
    """Windowed least-squares fits of a step and of a line for every (midpoint, width)."""
    spacing = np.median(np.diff(t))
    mids = t[1:-1] if t.size <= 302 else np.linspace(t[1], t[-2], 300)
    m, w = np.meshgrid(mids, widths, indexing="ij")  # (mids, widths)
    half = np.maximum(3 * w * LOGIT_90, spacing * min_points / 2)
    window = (np.abs(t - m[..., None]) <= half[..., None]).astype(float)  # (mids, widths, points)
    s = 0.5 * (1 + np.tanh(0.5 * (t - m[..., None]) / w[..., None]))
    n = window.sum(-1)
    yy, ss, sy = _centred(window, y, y, n), _centred(window, s, s, n), _centred(window, s, y, n)
    tt, ty = _centred(window, t, t, n), _centred(window, t, y, n)
    slope = np.where(ss > 1e-12, sy / np.maximum(ss, 1e-12), 0.0)
    before = ((window * y).sum(-1) - slope * (window * s).sum(-1)) / n
    rss_step = np.maximum(yy - np.where(ss > 1e-12, sy**2 / np.maximum(ss, 1e-12), 0.0), 1e-300)
    rss_line = np.maximum(yy - np.where(tt > 1e-12, ty**2 / np.maximum(tt, 1e-12), 0.0), 1e-300)
    gain = n * np.log(rss_line / rss_step) - 2 * np.log(np.maximum(n, 2))
    return {
        "mid": m,
        "width": w,
        "half": half,
        "n": n,
        "before": before,
        "after": before + slope,
        "gain": gain,
    }


def _refine(t: np.ndarray, y: np.ndarray, widths: np.ndarray) -> tuple[float, float, float, float]:
    """(mid, width, before, after) of the least-squares step on these samples."""
    m, w = np.meshgrid(t[1:-1], widths, indexing="ij")
    s = 0.5 * (1 + np.tanh(0.5 * (t - m[..., None]) / w[..., None]))
    n = np.full(m.shape, float(t.size))
    ones = np.ones_like(s)
    ss, sy = _centred(ones, s, s, n), _centred(ones, s, y, n)
    slope = np.where(ss > 1e-12, sy / np.maximum(ss, 1e-12), 0.0)
    i, j = np.unravel_index(np.argmax(np.where(ss > 1e-12, sy**2 / np.maximum(ss, 1e-12), 0.0)), m.shape)
    before = (y.sum() - slope[i, j] * s[i, j].sum()) / t.size
    return float(m[i, j]), float(w[i, j]), float(before), float(before + slope[i, j])


def _side_change(t: np.ndarray, y: np.ndarray, lo: float, hi: float, min_samples: int) -> float | None:
    """How much a least-squares line through the samples in [lo, hi] changes across them (None
    when there are fewer than min_samples or they cover less than half of hi - lo)."""
    inside = (t >= lo) & (t <= hi)
    if inside.sum() < min_samples or t[inside][-1] - t[inside][0] < 0.5 * (hi - lo):
        return None
    ts, ys = t[inside], y[inside]
    if ts[-1] == ts[0]:
        return 0.0
    slope = np.polyfit(ts, ys, 1)[0]
    return abs(slope) * (ts[-1] - ts[0])


def detect_transitions(
    steps: np.ndarray,
    values: np.ndarray,
    *,
    max_width: float = 0.25,
    min_snr: float = 6.0,
    min_amplitude: float = 0.0,
    min_bic_gain: float = 10.0,
    max_side_change: float = 0.5,
    min_points: int = 8,
    max_transitions: int = 4,
) -> list[Transition]:
    """Abrupt transitions of a curve, ordered in time (empty when there is none)."""
    t = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if t.size < min_points:
        return []
    if t.size > MAX_POINTS:  # bin long curves: the search costs mids x widths x points
        bins = np.array_split(np.arange(t.size), MAX_POINTS)
        t, y = np.array([t[b].mean() for b in bins]), np.array([y[b].mean() for b in bins])
    span, spacing = t[-1] - t[0], float(np.median(np.diff(t)))
    widths = np.geomspace(spacing / 4, max(max_width * span / (2 * LOGIT_90), spacing / 2), 24)
    c = _candidates(t, y, widths, min_points)
    amplitude = np.abs(c["after"] - c["before"])
    viable = (c["gain"] > min_bic_gain) & (amplitude > max(min_snr * noise_level(y), min_amplitude))
    found: list[Transition] = []
    for index in np.argsort(-np.where(viable, c["gain"], -np.inf), axis=None):
        if not viable.flat[index] or len(found) == max_transitions:
            break
        lo, hi = c["mid"].flat[index] - c["half"].flat[index], c["mid"].flat[index] + c["half"].flat[index]
        window = (t >= lo) & (t <= hi)
        mid, w, before, after = _refine(t[window], y[window], widths)
        onset, end = mid - w * LOGIT_90, mid + w * LOGIT_90
        if any(onset < tr.end and tr.onset < end for tr in found):
            continue
        side = max(end - onset, min_points / 2 * spacing)  # flat stretches needed on either side
        sides = [
            _side_change(t, y, onset - side, onset, min_points // 2),
            _side_change(t, y, end, end + side, min_points // 2),
        ]
        if any(side is None or side > max_side_change * abs(after - before) for side in sides):
            continue
        found.append(Transition(onset, mid, end, before, after))
    return sorted(found, key=lambda tr: tr.midpoint)


def main_transition(transitions: list[Transition]) -> Transition | None:
    """The transition with the largest change, or None."""
    return max(transitions, key=lambda tr: abs(tr.amplitude), default=None)
