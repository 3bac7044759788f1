"""Phase-change detection on curves with known answers."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icl_lab.analysis.transitions import (
    detect_transitions,
    main_transition,
    noise_level,
)

STEPS = np.arange(0, 2001, 20.0)


def step(mid: float, width: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(STEPS - mid) / width))


def noisy(curve: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return curve + np.random.default_rng(seed).normal(0, sigma, curve.size)


@settings(max_examples=20, deadline=None)
@given(
    mid=st.floats(500, 1500),
    width=st.floats(15, 50),
    amplitude=st.floats(0.3, 3.0) | st.floats(-3.0, -0.3),
    sigma_share=st.floats(0.0, 0.05),
    seed=st.integers(0, 1000),
)
def test_single_transition_recovered(
    mid: float, width: float, amplitude: float, sigma_share: float, seed: int
) -> None:
    curve = noisy(1.0 + amplitude * step(mid, width), sigma_share * abs(amplitude), seed)
    found = detect_transitions(STEPS, curve)
    assert len(found) == 1
    tr = found[0]
    true_half = width * math.log(9)
    assert abs(tr.midpoint - mid) < max(20.0, 0.3 * true_half)
    assert abs((tr.end - tr.onset) - 2 * true_half) < max(40.0, 0.5 * true_half)
    assert tr.amplitude == pytest.approx(amplitude, rel=0.15)


@pytest.mark.parametrize("seed", range(5))
def test_no_transition_in_noise_ramps_or_smooth_decay(seed: int) -> None:
    rng = np.random.default_rng(seed)
    assert detect_transitions(STEPS, rng.normal(0.5, 0.05, STEPS.size)) == []
    assert detect_transitions(STEPS, np.linspace(0, 1, STEPS.size) + rng.normal(0, 0.02, STEPS.size)) == []
    assert detect_transitions(STEPS, np.exp(-STEPS / 400) + rng.normal(0, 0.01, STEPS.size)) == []


def test_two_transitions_and_their_order() -> None:
    curve = noisy(0.1 + 0.3 * step(500, 10) + 0.5 * step(1400, 20), 0.02)
    found = detect_transitions(STEPS, curve)
    assert [round(tr.midpoint, -1) for tr in found] == [500, 1400]
    assert main_transition(found).midpoint == pytest.approx(1400, abs=10)


def test_outliers_do_not_create_transitions() -> None:
    curve = noisy(0.2 + 0.6 * step(1000, 15), 0.02)
    curve[[15, 16, 80]] += 0.5
    found = detect_transitions(STEPS, curve)
    assert [round(tr.midpoint, -1) for tr in found] == [1000]


def test_too_short_or_nan_curves() -> None:
    assert detect_transitions(STEPS[:5], np.ones(5)) == []
    curve = 0.2 + 0.6 * step(1000, 15)
    curve[::7] = np.nan
    assert len(detect_transitions(STEPS, curve)) == 1


def test_noise_level_estimates_white_noise_on_a_trend() -> None:
    rng = np.random.default_rng(1)
    y = np.linspace(0, 5, 4000) + rng.normal(0, 0.1, 4000)
    assert noise_level(y) == pytest.approx(0.1, rel=0.1)
