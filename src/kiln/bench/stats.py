"""Small statistics used by the benchmarks: latency percentiles and a paired bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles_ms(samples_s: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
    """``(p50, p95, p99, mean)`` in milliseconds of timings given in seconds (linear interpolation)."""
    arr = np.asarray(samples_s, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentiles_ms needs at least one sample")
    p50, p95, p99 = np.percentile(arr, [50.0, 95.0, 99.0]) * 1000.0
    return float(p50), float(p95), float(p99), float(arr.mean() * 1000.0)


def bootstrap_diff_ci(
    ref_correct: np.ndarray,
    var_correct: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Paired bootstrap ``(1 - alpha)`` interval of ``mean(ref_correct) - mean(var_correct)``.

    Both vectors score the same examples, so each bootstrap draw resamples the same example indices for
    both: the interval reflects only the disagreements between the two, which is much tighter than two
    independent intervals. Percentile method; ``seed`` makes it reproducible.
    """
    ref = np.asarray(ref_correct, dtype=np.float64).ravel()
    var = np.asarray(var_correct, dtype=np.float64).ravel()
    if ref.shape != var.shape:
        raise ValueError(f"paired vectors differ in length: {ref.size} vs {var.size}")
    if ref.size == 0:
        raise ValueError("bootstrap_diff_ci needs at least one example")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    diff = ref - var
    if not np.any(diff):
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    n = diff.size
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)  # bound memory of the index matrix
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
