"""Null distributions of every drift statistic, drawn from the reference itself, for one window size.

A drift test compares the reference's counts (``n_ref`` values) with a window's (``n`` values). Under "no
drift" both are samples of the same distribution, so the statistic's null distribution is simulated by
drawing *both* from the reference (a parametric bootstrap: multinomial counts on the reference's bins, with
half a pseudo-count per bin). Both sample sizes enter, so thresholds shrink as windows grow and a 200-row
window and a 10,000-row window alarm at the same rate on identical data. Every statistic is a vectorised
function of count matrices, so 10,000 rounds take milliseconds per histogram.

The embedding MMD uses random Fourier features ``phi`` of a Gaussian kernel: ``MMD^2 = |mean phi(ref) -
mean phi(window)|^2``. Its null is the central-limit form of the same bootstrap, ``(1/m + 1/n) sum_j l_j
z_j^2`` with ``l_j`` the eigenvalues of the covariance of ``phi`` over the reference sample and ``z_j``
standard normal, simulated.

p-values are ``(1 + #{null >= observed}) / (rounds + 1)``, never 0, with an exponential tail beyond the
simulated range (:class:`NullDistribution`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from kiln.monitor.profile import EmbeddingProfile, HistogramProfile

HISTOGRAM_STATISTICS = ("ks", "wasserstein", "chi2", "psi", "js")
DEFAULT_ROUNDS = 5_000
TAIL_EXCEEDANCES = 10
TAIL_SHARE = 0.05
_COARSE_GROUPS = 10


@dataclass(frozen=True)
class NullDistribution:
    """Sorted statistics of ``rounds`` simulated no-drift windows.

    Where fewer than ``TAIL_EXCEEDANCES`` simulated values lie beyond a statistic, the p-value comes from an
    exponential fitted to the top ``TAIL_SHARE`` of the null (a generalised Pareto tail with shape 0): the
    statistics here (chi-square-like, or sub-Gaussian like KS) have tails no heavier than exponential, so
    the extrapolation errs on the large side, and a family of 25 tests can be judged at ``alpha / 25``
    without 100,000 rounds.
    """

    values: np.ndarray

    @property
    def rounds(self) -> int:
        return int(self.values.size)

    @property
    def _tail(self) -> tuple[float, float]:
        v = self.values
        u = float(v[int(np.floor((1 - TAIL_SHARE) * (v.size - 1)))])
        excess = v[v > u] - u
        scale = float(excess.mean()) if excess.size else 0.0
        return u, scale

    def p_value(self, statistic: float) -> float:
        b = self.values.size
        exceed = b - int(np.searchsorted(self.values, statistic, side="left"))
        if exceed >= TAIL_EXCEEDANCES:
            return (1 + exceed) / (b + 1)
        u, scale = self._tail
        if scale <= 0:
            return (1 + exceed) / (b + 1)
        return float(min(1.0, TAIL_SHARE * np.exp(-(statistic - u) / scale)))

    def threshold(self, level: float) -> float:
        """The value a statistic must exceed for ``p_value <= level``."""
        b = self.values.size
        m = int(np.floor(level * (b + 1) - 1 + 1e-9))
        if m >= TAIL_EXCEEDANCES:
            return float(self.values[b - m - 1]) if m < b else float("-inf")
        u, scale = self._tail
        if scale <= 0:
            return float(self.values[-1]) if m < 0 else float(self.values[b - m - 1])
        return float(u + scale * np.log(TAIL_SHARE / level))


def _coarse_matrix(hist: HistogramProfile) -> np.ndarray:
    """One-hot (bins x groups): numeric bins merged into about ten groups of equal reference mass."""
    k = len(hist.counts)
    if hist.kind == "categorical" or k <= _COARSE_GROUPS:
        return np.eye(k)
    c = np.asarray(hist.counts, dtype=np.float64)
    mid = (np.cumsum(c) - c / 2) / c.sum()
    group = np.minimum((mid * _COARSE_GROUPS).astype(int), _COARSE_GROUPS - 1)
    used = np.unique(group)
    return (group[:, None] == used[None, :]).astype(np.float64)


def histogram_statistic(
    name: str, hist: HistogramProfile, ref_counts: np.ndarray, win_counts: np.ndarray
) -> np.ndarray:
    """``name`` between rows of reference and window counts (``(rounds, bins)`` or ``(bins,)``).

    ``ks``: largest gap between the two CDFs; ``wasserstein``: area between them in units of the reference
    standard deviation (values at their bin's reference mean); ``chi2``: homogeneity chi-square; ``psi``
    and ``js``: population stability index and Jensen-Shannon divergence (bits) on about ten groups of
    equal reference mass, with half a pseudo-count per group.
    """
    cs = np.atleast_2d(np.asarray(ref_counts, dtype=np.float64))
    cw = np.atleast_2d(np.asarray(win_counts, dtype=np.float64))
    ns, nw = cs.sum(1, keepdims=True), cw.sum(1, keepdims=True)
    if name in ("ks", "wasserstein"):
        gap = np.abs(np.cumsum(cs / ns - cw / nw, axis=1))[:, :-1]
        if name == "ks":
            return gap.max(axis=1) if gap.shape[1] else np.zeros(cs.shape[0])
        widths = np.diff(np.asarray(hist.centers, dtype=np.float64))
        scale = hist.std if hist.std else 1.0
        return np.asarray(gap @ widths / scale)
    if name == "chi2":
        pooled = (cs + cw) / (ns + nw)
        es, ew = ns * pooled, nw * pooled
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(pooled > 0, (cs - es) ** 2 / es + (cw - ew) ** 2 / ew, 0.0)
        return np.asarray(terms.sum(axis=1))
    if name in ("psi", "js"):
        g = _coarse_matrix(hist)
        gs, gw = cs @ g + 0.5, cw @ g + 0.5
        ps, pw = gs / gs.sum(1, keepdims=True), gw / gw.sum(1, keepdims=True)
        if name == "psi":
            return np.asarray(((pw - ps) * np.log(pw / ps)).sum(axis=1))
        m = (ps + pw) / 2
        return np.asarray(0.5 * (ps * np.log2(ps / m)).sum(1) + 0.5 * (pw * np.log2(pw / m)).sum(1))
    raise ValueError(f"unknown statistic {name!r}; known: {', '.join(HISTOGRAM_STATISTICS)}")


def multinomial_rows(rng: np.random.Generator, n: int, p: np.ndarray, rounds: int) -> np.ndarray:
    """``rounds`` multinomial draws of ``n`` items on probabilities ``p``, as ``(rounds, len(p))`` counts.

    One vectorised binomial per bin (each conditional on the bins before it): far faster than
    ``Generator.multinomial`` with many rows.
    """
    q = np.asarray(p, dtype=np.float64) / np.sum(p)
    out = np.zeros((rounds, q.size), dtype=np.int64)
    left = np.full(rounds, n, dtype=np.int64)
    mass = 1.0
    for k in range(q.size - 1):
        share = min(1.0, q[k] / mass) if mass > 0 else 1.0
        out[:, k] = rng.binomial(left, share)
        left -= out[:, k]
        mass -= q[k]
    out[:, -1] = left
    return out


def null_histogram(
    hist: HistogramProfile,
    window_size: int,
    statistics: Iterable[str],
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
) -> dict[str, NullDistribution]:
    """Null distribution of each statistic for a window of ``window_size`` against this histogram."""
    if window_size < 1:
        raise ValueError(f"window size must be at least 1, got {window_size}")
    rng = np.random.default_rng(seed)
    p = hist.probabilities()
    ref = multinomial_rows(rng, hist.n, p, rounds)
    win = multinomial_rows(rng, window_size, p, rounds)
    return {name: NullDistribution(np.sort(histogram_statistic(name, hist, ref, win))) for name in statistics}


class FourierFeatures:
    """Random Fourier features of the Gaussian kernel the profile fixes (width, dimension, seed)."""

    def __init__(self, embeddings: EmbeddingProfile) -> None:
        rng = np.random.default_rng(embeddings.rff_seed)
        self.dim = embeddings.rff_dim
        weights = rng.normal(0.0, 1.0 / embeddings.bandwidth, size=(embeddings.dim, self.dim))
        self.weights = weights.astype(np.float32)
        self.offsets = rng.uniform(0.0, 2 * np.pi, size=self.dim).astype(np.float32)
        sample = embeddings.sample_array()
        phi = self.transform(sample)
        self.n_ref = sample.shape[0]
        self.ref_mean = phi.mean(axis=0, dtype=np.float64)
        cov = np.cov(phi.astype(np.float64), rowvar=False)
        self.eigenvalues = np.clip(np.linalg.eigvalsh(cov), 0.0, None)

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float32) @ self.weights + self.offsets
        return np.float32(np.sqrt(2.0 / self.dim)) * np.cos(z)

    def mmd2(self, window: np.ndarray) -> float:
        diff = self.ref_mean - self.transform(window).mean(axis=0, dtype=np.float64)
        return float(diff @ diff)

    def null(self, window_size: int, rounds: int = DEFAULT_ROUNDS, seed: int = 0) -> NullDistribution:
        rng = np.random.default_rng(seed)
        z2 = rng.standard_normal((rounds, self.eigenvalues.size)) ** 2
        scale = 1.0 / self.n_ref + 1.0 / window_size
        return NullDistribution(np.sort(scale * (z2 @ self.eigenvalues)))
