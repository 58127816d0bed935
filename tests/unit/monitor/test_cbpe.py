from typing import Literal

import numpy as np
import pytest

from kiln.monitor.cbpe import (
    estimate_accuracy,
    fit_calibrator,
    isotonic_fit,
    platt_fit,
    realised_accuracy,
    top_class,
)


def _calibrated(rng: np.random.Generator, n: int, low: float = 0.5, high: float = 1.0):
    confidence = rng.uniform(low, high, n)
    correct = rng.random(n) < confidence
    return confidence, correct


def test_isotonic_fit_is_monotone_and_pools_violators() -> None:
    kx, ky = isotonic_fit(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 0.0, 1.0]))
    assert np.all(np.diff(ky) >= 0)
    assert kx.tolist() == [1.0, 2.5, 4.0] and ky.tolist() == [0.0, 0.5, 1.0]


def test_platt_recovers_an_identity_on_calibrated_scores() -> None:
    c, y = _calibrated(np.random.default_rng(0), 20_000, 0.01, 0.99)
    a, b = platt_fit(c, y)
    assert a == pytest.approx(1.0, abs=0.08) and b == pytest.approx(0.0, abs=0.08)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_estimate_tracks_realised_accuracy_under_covariate_shift(
    method: Literal["isotonic", "platt"],
) -> None:
    rng = np.random.default_rng(1)
    c, y = _calibrated(rng, 5000)
    cal = fit_calibrator(c, y, method=method, n_bootstrap=20, seed=0)
    assert cal.reference_accuracy == pytest.approx(0.75, abs=0.02)
    misses = 0
    for _ in range(20):  # the live confidences are shifted upwards: the window is easier
        wc, wy = _calibrated(rng, 1000, 0.7, 1.0)
        est = estimate_accuracy(cal, wc)
        assert est.value == pytest.approx(0.85, abs=0.02)
        misses += not est.low <= wy.mean() <= est.high
    assert misses <= 4


def test_overconfident_scores_are_corrected() -> None:
    rng = np.random.default_rng(2)
    c = rng.uniform(0.5, 1.0, 5000)
    y = rng.random(5000) < 0.5 + (c - 0.5) / 2  # right less often than the confidence claims
    est = estimate_accuracy(fit_calibrator(c, y, n_bootstrap=5), c)
    assert est.value == pytest.approx(y.mean(), abs=0.01)
    assert est.value < c.mean() - 0.1


def test_realised_accuracy_wilson_interval() -> None:
    r = realised_accuracy(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert r.value == 0.75 and r.kind == "realised"
    assert 0.2 < r.low < 0.75 < r.high <= 1.0
    with pytest.raises(ValueError):
        realised_accuracy(np.array([1]), np.array([1, 0]))


def test_top_class_accepts_probabilities_or_p1() -> None:
    pred, conf = top_class(np.array([0.2, 0.9]))
    assert pred.tolist() == [0, 1] and conf.tolist() == pytest.approx([0.8, 0.9])
    pred, conf = top_class(np.array([[0.1, 0.7, 0.2]]))
    assert pred.tolist() == [1] and conf.tolist() == [0.7]
