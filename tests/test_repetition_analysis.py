"""Double descent and effective model size against hand-made curves and ladders."""

import numpy as np
import pytest

from icl_lab.analysis.repetition import double_descent, effective_size


def test_double_descent_finds_the_minimum_the_peak_and_the_fall() -> None:
    steps = np.arange(0, 1100, 100)
    loss = np.array([5.0, 4.0, 3.0, 2.5, 2.7, 3.1, 3.0, 2.8, 2.6, 2.4, 2.2])
    found = double_descent(steps, loss, min_rise=0.3)
    assert (found.minimum_step, found.peak_step, found.fall_step) == (300, 500, 900)
    assert found.rise == pytest.approx(0.6) and found.minimum == 2.5 and found.peak == 3.1


def test_no_double_descent_in_a_monotone_or_noisy_curve_or_without_the_fall() -> None:
    steps = np.arange(50)
    falling = 3 * np.exp(-steps / 10) + 1
    assert double_descent(steps, falling, 0.05) is None
    noisy = falling + np.random.default_rng(0).normal(0, 0.01, 50)
    assert double_descent(steps, noisy, 0.1) is None, "rises below the stated size are noise"
    rising_at_the_end = np.concatenate([falling[:30], falling[29] + np.linspace(0, 1, 20)])
    assert double_descent(steps, rising_at_the_end, 0.3) is None, "a rise needs a fall after it"


def test_effective_size_interpolates_in_log_parameters() -> None:
    ladder = {1e5: 4.0, 1e6: 3.0, 1e7: 2.0}
    exact = effective_size(ladder, size=1e7, loss=3.0)
    assert (
        exact.parameters == pytest.approx(1e6)
        and exact.times_smaller == pytest.approx(10)
        and exact.within_ladder
    )
    half = effective_size(ladder, size=1e7, loss=2.5)
    assert half.parameters == pytest.approx(10**6.5) and half.times_smaller == pytest.approx(10**0.5)
    beyond = effective_size(ladder, size=1e7, loss=4.5)
    assert not beyond.within_ladder and beyond.parameters == pytest.approx(10**4.5)
    with pytest.raises(ValueError, match="must fall with size"):
        effective_size({1e5: 3.0, 1e6: 3.5}, 1e6, 3.2)
