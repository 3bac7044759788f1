"""Stage boundaries from an LLC curve: planted plateaus are found, and nothing else."""

import itertools

import numpy as np
import pytest

from icl_lab.analysis.stages import smooth, stages

STEPS = np.unique(np.round(np.geomspace(1, 100_000, 50)))
X = np.log(STEPS + 1)


def rise(centre: float) -> np.ndarray:
    """A sharp logistic step in ln(step + 1): 10% to 90% within 1.3."""
    return 1 / (1 + np.exp(-(X - centre) / 0.3))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("curve", "kinds"),
    [
        (10 * rise(3.5) + 10 * rise(8.0), ["rising", "rising"]),
        (10 * rise(3.5) - 5 * rise(8.0), ["rising", "falling"]),
    ],
)
def test_planted_plateaus_separate_the_stages(seed, curve, kinds):
    """Two changes with a plateau between (ln step 4.5 to 7): one boundary, on the plateau; the
    flat stretch after the second change (ln step 9 on) is a closing plateau stage."""
    noise = 0.3
    values = curve + np.random.default_rng(seed).normal(0, noise, X.size)
    found = stages(smooth(STEPS, values, np.full(X.size, noise)))
    changes = [s for s in found if s.kind != "plateau"]
    assert [s.kind for s in changes] == kinds
    assert 4.5 < np.log(changes[0].end + 1) < 7.0
    assert found[-1].kind == "plateau" and 8.5 < np.log(found[-1].start + 1) < 10
    assert found[0].start == pytest.approx(STEPS[0]) and found[-1].end == pytest.approx(STEPS[-1])
    assert all(a.end == b.start for a, b in itertools.pairwise(found))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_flat_noisy_curve_is_one_plateau(seed):
    values = 5 + np.random.default_rng(seed).normal(0, 0.3, X.size)
    assert [s.kind for s in stages(smooth(STEPS, values, np.full(X.size, 0.3)))] == ["plateau"]


def test_the_smoothed_slope_is_the_derivative_in_log_steps():
    curve = smooth(STEPS, 3 * X, np.full(X.size, 0.01))
    inner = slice(50, -50)  # away from the ends, where a GP bends back to its mean
    assert np.allclose(curve.slope[inner], 3, atol=0.1)
    assert np.allclose(curve.values[inner], 3 * np.log(curve.steps[inner] + 1), atol=0.1)
