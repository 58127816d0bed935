"""Is a window of live traffic still like the reference? Calibrated tests, one verdict, numpy only.

Tests, chosen by the type of what they look at:

- numeric input features (lengths, character mix, OOV rate) and classifier confidence: ``ks`` and
  ``wasserstein`` on the reference's quantile bins;
- categorical ones (script, predicted label, true label once labels arrive): ``chi2``;
- embeddings: ``mmd`` (Gaussian kernel, random Fourier features) and ``domain_auc``, the held-out AUC of a
  linear classifier (shrinkage LDA) trained to tell window rows from reference rows; its null is the
  Mann-Whitney distribution (on held-out rows, scores are exchangeable under no drift);
- ``psi`` and ``js`` are reported for every histogram as effect sizes with calibrated thresholds, but do not
  count towards the verdict (they would only repeat the tests above).

Thresholds come from :mod:`kiln.monitor.calibrate`, simulated for the window's own size, so identical data
alarms at the chosen rate whatever the window size. p-values are corrected across the tests that count
(Holm by default, or Benjamini-Hochberg); the window drifts when any corrected p-value is at most ``alpha``.
For classifiers the report also carries the label-free accuracy estimate (:mod:`kiln.monitor.cbpe`) and, for
rows whose labels arrived, the realised accuracy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from kiln.errors import DataError
from kiln.monitor.calibrate import (
    DEFAULT_ROUNDS,
    FourierFeatures,
    NullDistribution,
    histogram_statistic,
    null_histogram,
)
from kiln.monitor.cbpe import AccuracyEstimate, estimate_accuracy, realised_accuracy, top_class
from kiln.monitor.features import text_features
from kiln.monitor.profile import HistogramProfile, ReferenceProfile

Correction = Literal["holm", "bh"]
VERDICT_STATISTICS = {"numeric": ("ks", "wasserstein"), "categorical": ("chi2",)}
EFFECT_STATISTICS = ("psi", "js")
_NORMAL = NormalDist()
DEFAULT_CACHED_SIZES = 64  # above the 24 windows the dashboard shows plus the alert watcher's, with room


@dataclass
class WindowData:
    """One window of live traffic. Give ``texts`` (+ ``token_counts``) or precomputed ``features``
    (:func:`kiln.monitor.features.text_features` with the profile's vocabulary); ``embeddings`` ``(n, d)``;
    a classifier's ``scores`` (class probabilities); ``labels`` where known (``-1`` = not labelled yet)."""

    texts: Sequence[str] | None = None
    token_counts: Sequence[int] | np.ndarray | None = None
    features: dict[str, np.ndarray] | None = None
    embeddings: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        sizes = self._sizes()
        if not sizes:
            raise DataError("the window holds no data: give texts, features, embeddings or scores")
        if len(set(sizes.values())) > 1:
            raise DataError(f"the window's parts have different numbers of rows: {sizes}")
        return next(iter(sizes.values()))

    def _sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        if self.texts is not None:
            sizes["texts"] = len(self.texts)
        if self.features:
            sizes["features"] = len(next(iter(self.features.values())))
        for name in ("embeddings", "scores", "labels"):
            value = getattr(self, name)
            if value is not None:
                sizes[name] = int(np.asarray(value).shape[0])
        return sizes


class DriftTest(BaseModel):
    group: Literal["input", "embedding", "output", "labels"]
    name: str = Field(description="what was compared: a feature, 'embedding', 'predicted', 'confidence'...")
    method: str
    n: int = Field(description="window rows the test used")
    statistic: float
    threshold: float = Field(description="alarm when statistic > threshold (at the level the test is judged)")
    p_value: float
    p_adjusted: float | None = Field(default=None, description="after the multiple-testing correction")
    alarm: bool
    counts_toward_verdict: bool = True
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.group}:{self.name}:{self.method}"


class DriftReport(BaseModel):
    n: int
    alpha: float
    correction: Correction
    drift: bool = Field(description="the verdict: at least one test alarms after correction")
    alarms: list[str]
    tests: list[DriftTest]
    accuracy_estimate: AccuracyEstimate | None = None
    accuracy_realised: AccuracyEstimate | None = None

    def test(self, test_id: str) -> DriftTest:
        for t in self.tests:
            if t.id == test_id:
                return t
        raise KeyError(test_id)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control under any dependence)."""
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * p[order]))
    out = np.empty(k)
    out[order] = adjusted
    return out


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate control)."""
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * k / np.arange(1, k + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(k)
    out[order] = adjusted
    return out


def _levels(p: np.ndarray, alpha: float, correction: Correction) -> np.ndarray:
    """The per-test level each test is judged at (for reporting a threshold on its statistic)."""
    k = p.size
    ranks = np.empty(k, dtype=np.int64)
    ranks[np.argsort(p, kind="stable")] = np.arange(1, k + 1)
    if correction == "holm":
        return alpha / (k - ranks + 1)
    return alpha * ranks / k


def _halves(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split rows in two at random, keeping identical rows on the same side (repeated requests would
    otherwise be fitted on one side and scored on the other)."""
    rows = np.ascontiguousarray(x)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)
    _, group = np.unique(keys, return_inverse=True)
    group = group.reshape(-1)
    side = rng.random(int(group.max()) + 1 if group.size else 0) < 0.5
    fit = side[group]
    return fit, ~fit


def domain_classifier_auc(
    reference: np.ndarray, window: np.ndarray, seed: int = 0, shrinkage: float = 0.1
) -> tuple[float, float, float]:
    """(AUC, one-sided p-value, AUC threshold at level 0.01 for reference): shrinkage LDA trained on half of
    each set to tell window from reference, scored on the other halves (identical rows stay on one side)."""
    rng = np.random.default_rng(seed)
    r, w = np.asarray(reference, dtype=np.float32), np.asarray(window, dtype=np.float32)
    r_fit, r_test = (r[m] for m in _halves(r, rng))
    w_fit, w_test = (w[m] for m in _halves(w, rng))
    if min(len(r_fit), len(w_fit), len(r_test), len(w_test)) < 2:
        raise DataError("the domain classifier needs at least 4 reference and 4 window rows")
    mu_r, mu_w = r_fit.mean(0, dtype=np.float64), w_fit.mean(0, dtype=np.float64)
    centred = np.vstack([r_fit - mu_r.astype(np.float32), w_fit - mu_w.astype(np.float32)])
    cov = (centred.T @ centred).astype(np.float64) / max(len(centred) - 2, 1)
    cov += shrinkage * (np.trace(cov) / cov.shape[0] + 1e-12) * np.eye(cov.shape[0])
    direction = np.linalg.solve(cov, mu_w - mu_r).astype(np.float32)
    scores = np.concatenate([r_test @ direction, w_test @ direction])
    n_r, n_w = len(r_test), len(w_test)
    ranks = np.empty(scores.size)
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, scores.size + 1)
    u = ranks[n_r:].sum() - n_w * (n_w + 1) / 2
    auc = float(u / (n_r * n_w))
    sd = float(np.sqrt((n_r + n_w + 1) / (12.0 * n_r * n_w)))
    p = 1.0 - _NORMAL.cdf((auc - 0.5) / sd)
    return auc, max(p, 1e-300), sd


class Detector:
    """Drift tests against one profile; null distributions are cached per (test, window size).

    The cache keeps the ``cached_sizes`` window sizes used most recently: a long-running server sees a
    new size at almost every poll (the open window grows), and an unbounded cache grew by up to a
    megabyte per size. The default holds the dashboard's 24 windows and the alert watcher's with room
    for the open windows' churn. An evicted size is simulated again when it comes back, from the same
    seeds, so its thresholds are identical. One detector may be shared by threads.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        alpha: float = 0.01,
        correction: Correction = "holm",
        rounds: int = DEFAULT_ROUNDS,
        seed: int = 0,
        cached_sizes: int = DEFAULT_CACHED_SIZES,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        if cached_sizes < 1:
            raise ValueError(f"cached_sizes must be at least 1, got {cached_sizes}")
        self.profile, self.alpha, self.correction = profile, alpha, correction
        self.rounds, self.seed, self.cached_sizes = rounds, seed, cached_sizes
        # window size -> test key -> statistic -> null, least recently used size first
        self._nulls: OrderedDict[int, dict[str, dict[str, NullDistribution]]] = OrderedDict()
        self._lock = threading.Lock()
        self._fourier: FourierFeatures | None = None
        self._ref_sample: np.ndarray | None = None

    @property
    def cached_window_sizes(self) -> list[int]:
        """Window sizes whose null distributions are cached, least recently used first."""
        with self._lock:
            return list(self._nulls)

    def _cached(self, key: str, n: int) -> dict[str, NullDistribution] | None:
        with self._lock:
            by_key = self._nulls.get(n)
            if by_key is None:
                return None
            self._nulls.move_to_end(n)
            return by_key.get(key)

    def _store(self, key: str, n: int, nulls: dict[str, NullDistribution]) -> None:
        with self._lock:
            by_key = self._nulls.get(n)
            if by_key is None:
                by_key = self._nulls[n] = {}
                while len(self._nulls) > self.cached_sizes:
                    self._nulls.popitem(last=False)
            else:
                self._nulls.move_to_end(n)
            by_key[key] = nulls

    def _null(self, key: str, hist: HistogramProfile, n: int) -> dict[str, NullDistribution]:
        cached = self._cached(key, n)
        if cached is None:
            stats = VERDICT_STATISTICS[hist.kind] + EFFECT_STATISTICS
            # a different stream per test and size, reproducible from the detector's seed
            seed = [self.seed, n, *key.encode()]
            cached = null_histogram(
                hist, n, stats, self.rounds, np.random.SeedSequence(seed).generate_state(1)[0]
            )
            self._store(key, n, cached)
        return cached

    @property
    def fourier(self) -> FourierFeatures:
        if self._fourier is None:
            if self.profile.embeddings is None:
                raise DataError("the reference profile has no embeddings")
            self._fourier = FourierFeatures(self.profile.embeddings)
        return self._fourier

    def calibrate(self, window_size: int) -> dict[str, NullDistribution]:
        """Precompute (and cache) every null distribution for windows of ``window_size`` rows."""
        out: dict[str, NullDistribution] = {}
        for name, hist in self.profile.features.items():
            for stat, null in self._null(f"input:{name}", hist, window_size).items():
                out[f"input:{name}:{stat}"] = null
        if self.profile.outputs is not None:
            for name in ("predicted", "confidence"):
                hist = getattr(self.profile.outputs, name)
                for stat, null in self._null(f"output:{name}", hist, window_size).items():
                    out[f"output:{name}:{stat}"] = null
        if self.profile.embeddings is not None:
            out["embedding:embedding:mmd"] = self._mmd_null(window_size)
        return out

    def _mmd_null(self, n: int) -> NullDistribution:
        cached = self._cached("embedding:mmd", n)
        if cached is None:
            cached = {"mmd": self.fourier.null(n, self.rounds, seed=self.seed + n)}
            self._store("embedding:mmd", n, cached)
        return cached["mmd"]

    def _histogram_tests(
        self,
        group: Literal["input", "output", "labels"],
        name: str,
        hist: HistogramProfile,
        values: np.ndarray,
        used: dict[str, NullDistribution],
    ) -> list[DriftTest]:
        counts = hist.bin(values)
        n = int(counts.sum())
        if n == 0:
            return []
        nulls = self._null(f"{group}:{name}", hist, n)
        ref = np.asarray(hist.counts)
        tests = []
        for stat, null in nulls.items():
            value = float(histogram_statistic(stat, hist, ref, counts)[0])
            detail: dict[str, Any] = {}
            if hist.kind == "numeric" and stat == "ks":
                v = np.asarray(values, dtype=np.float64)
                detail = {
                    "window_mean": float(v.mean()),
                    "reference_mean": hist.mean,
                    "reference_std": hist.std,
                }
            tests.append(
                DriftTest(
                    group=group,
                    name=name,
                    method=stat,
                    n=n,
                    statistic=value,
                    threshold=null.threshold(self.alpha),
                    p_value=null.p_value(value),
                    alarm=False,
                    counts_toward_verdict=stat not in EFFECT_STATISTICS,
                    detail=detail,
                )
            )
            used[tests[-1].id] = null
        return tests

    def _embedding_tests(self, embeddings: np.ndarray, used: dict[str, NullDistribution]) -> list[DriftTest]:
        profile = self.profile.embeddings
        assert profile is not None
        emb = np.asarray(embeddings, dtype=np.float16).astype(np.float32)  # same precision as the sample
        if emb.ndim != 2 or emb.shape[1] != profile.dim:
            raise DataError(
                f"window embeddings have shape {emb.shape}; the profile's have {profile.dim} columns"
            )
        n = emb.shape[0]
        null = self._mmd_null(n)
        used["embedding:embedding:mmd"] = null
        mmd2 = self.fourier.mmd2(emb)
        if self._ref_sample is None:
            self._ref_sample = profile.sample_array()
        auc, p_auc, sd = domain_classifier_auc(self._ref_sample, emb, seed=self.seed + n)
        return [
            DriftTest(
                group="embedding",
                name="embedding",
                method="mmd",
                n=n,
                statistic=mmd2,
                threshold=null.threshold(self.alpha),
                p_value=null.p_value(mmd2),
                alarm=False,
                detail={"kernel_width": profile.bandwidth, "fourier_features": profile.rff_dim},
            ),
            DriftTest(
                group="embedding",
                name="embedding",
                method="domain_auc",
                n=n,
                statistic=auc,
                threshold=0.5 + _NORMAL.inv_cdf(1 - self.alpha) * sd,
                p_value=p_auc,
                alarm=False,
                detail={"null_sd": sd},
            ),
        ]

    def detect(self, window: WindowData, window_size: int | None = None) -> DriftReport:
        n = len(window)
        if window_size is not None and window_size != n:
            raise DataError(
                f"the window has {n} rows but was declared as {window_size}: thresholds are calibrated for "
                "the exact window size"
            )
        profile = self.profile
        tests: list[DriftTest] = []
        used: dict[str, NullDistribution] = {}  # test id -> its null (the cache may evict meanwhile)
        feats = window.features
        if feats is None and window.texts is not None:
            feats = text_features(list(window.texts), window.token_counts, profile.vocabulary or None)
        for name, hist in profile.features.items():
            if feats is not None and name in feats:
                tests += self._histogram_tests("input", name, hist, feats[name], used)
        if window.embeddings is not None and profile.embeddings is not None:
            tests += self._embedding_tests(window.embeddings, used)
        estimate = realised = None
        labels = None if window.labels is None else np.asarray(window.labels, dtype=np.int64)
        known = labels >= 0 if labels is not None else None
        if window.scores is not None and profile.outputs is not None:
            predicted, confidence = top_class(window.scores)
            outputs = profile.outputs
            tests += self._histogram_tests("output", "predicted", outputs.predicted, predicted, used)
            tests += self._histogram_tests("output", "confidence", outputs.confidence, confidence, used)
            if profile.outputs.calibrator is not None:
                estimate = estimate_accuracy(profile.outputs.calibrator, confidence)
            if labels is not None and known is not None and known.any():
                realised = realised_accuracy(predicted[known], labels[known])
        if labels is not None and known is not None and known.any() and profile.labels is not None:
            tests += self._histogram_tests("labels", "labels", profile.labels, labels[known], used)
        return self._judge(n, tests, used, estimate, realised)

    def _judge(
        self,
        n: int,
        tests: list[DriftTest],
        nulls: dict[str, NullDistribution],
        estimate: AccuracyEstimate | None,
        realised: AccuracyEstimate | None,
    ) -> DriftReport:
        family = [t for t in tests if t.counts_toward_verdict]
        if family:
            p = np.asarray([t.p_value for t in family])
            adjusted = holm(p) if self.correction == "holm" else benjamini_hochberg(p)
            levels = _levels(p, self.alpha, self.correction)
            for t, adj, level in zip(family, adjusted, levels, strict=True):
                t.p_adjusted = float(adj)
                t.alarm = bool(adj <= self.alpha)
                if t.method == "domain_auc":
                    t.threshold = 0.5 + _NORMAL.inv_cdf(1 - level) * float(t.detail["null_sd"])
                else:
                    t.threshold = nulls[t.id].threshold(float(level))
        for t in tests:
            if not t.counts_toward_verdict:
                t.alarm = t.p_value <= self.alpha
        alarms = [t.id for t in family if t.alarm]
        return DriftReport(
            n=n,
            alpha=self.alpha,
            correction=self.correction,
            drift=bool(alarms),
            alarms=alarms,
            tests=tests,
            accuracy_estimate=estimate,
            accuracy_realised=realised,
        )


def detect(
    window: WindowData,
    profile: ReferenceProfile,
    window_size: int | None = None,
    alpha: float = 0.01,
    correction: Correction = "holm",
) -> DriftReport:
    """One-off check of ``window`` against ``profile``; reuse a :class:`Detector` to keep its calibration."""
    return Detector(profile, alpha=alpha, correction=correction).detect(window, window_size)
