"""Latency percentiles and the paired bootstrap interval on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.bench.stats import bootstrap_diff_ci, percentiles_ms


def test_percentiles_of_uniform_grid() -> None:
    samples = np.arange(1, 101) / 1000.0  # 1..100 ms
    p50, p95, p99, mean = percentiles_ms(samples)
    assert p50 == pytest.approx(50.5)
    assert p95 == pytest.approx(95.05)
    assert p99 == pytest.approx(99.01)
    assert mean == pytest.approx(50.5)


def test_percentiles_single_sample_and_list_input() -> None:
    assert percentiles_ms([0.002]) == pytest.approx((2.0, 2.0, 2.0, 2.0))


def test_percentiles_need_a_sample() -> None:
    with pytest.raises(ValueError):
        percentiles_ms([])


def test_identical_vectors_give_zero_interval() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random(500) < 0.8
    assert bootstrap_diff_ci(correct, correct.copy()) == (0.0, 0.0)


def _paired(n: int, flips_down: int, flips_up: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.random(n) < 0.8
    var = ref.copy()
    right = np.flatnonzero(ref)
    wrong = np.flatnonzero(~ref)
    var[rng.choice(right, flips_down, replace=False)] = False
    var[rng.choice(wrong, flips_up, replace=False)] = True
    return ref, var


def test_interval_contains_true_diff_and_is_narrow_for_large_n() -> None:
    ref, var = _paired(n=20_000, flips_down=600, flips_up=200, seed=2)
    true_diff = ref.mean() - var.mean()
    assert true_diff == pytest.approx(0.02)
    low, high = bootstrap_diff_ci(ref, var, n_boot=1000, seed=0)
    assert low < true_diff < high
    assert low > 0.0  # the loss is real: the interval excludes zero
    assert high - low < 0.01


def test_interval_is_paired_not_independent() -> None:
    # Few disagreements between two ~80%-accurate vectors: an unpaired interval would be about
    # +/-0.035 wide at n=1000; the paired one only reflects the 20 flipped examples.
    ref, var = _paired(n=1000, flips_down=15, flips_up=5, seed=3)
    low, high = bootstrap_diff_ci(ref, var, seed=0)
    assert low <= 0.01 <= high
    assert high - low < 0.025


def test_interval_is_reproducible_and_sign_follows_direction() -> None:
    ref, var = _paired(n=2000, flips_down=10, flips_up=100, seed=4)
    first = bootstrap_diff_ci(ref, var, seed=7)
    assert first == bootstrap_diff_ci(ref, var, seed=7)
    assert first[1] < 0.0  # the variant is better: ref - var is negative
    wider = bootstrap_diff_ci(ref, var, seed=7, alpha=0.01)
    assert wider[0] <= first[0] and wider[1] >= first[1]


def test_interval_rejects_unpaired_vectors() -> None:
    with pytest.raises(ValueError, match="length"):
        bootstrap_diff_ci(np.ones(5, dtype=bool), np.ones(6, dtype=bool))
    with pytest.raises(ValueError):
        bootstrap_diff_ci(np.ones(0, dtype=bool), np.ones(0, dtype=bool))
