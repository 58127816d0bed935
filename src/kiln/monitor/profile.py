"""The reference profile a bundle carries: what its held-out data looked like, in one compact JSON file.

Inputs: a histogram per language-agnostic text feature (:mod:`kiln.monitor.features`) on the reference's own
quantile bins, and the vocabulary that ``oov_rate`` is measured against. Outputs: a sample of at most
``embedding_rows`` embeddings (float16, base64 in the JSON) with the seeds of the random Fourier features the
MMD test uses; for classifiers the predicted-label and confidence histograms and a confidence calibrator for
label-free accuracy; the true label distribution when the held-out data is labelled.

Histograms keep counts, not raw values: drift tests (:mod:`kiln.monitor.drift`) compare a window's counts on
the same bins, and their null distributions are drawn from these counts (:mod:`kiln.monitor.calibrate`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from kiln.errors import DataError
from kiln.monitor.cbpe import ConfidenceCalibrator, fit_calibrator, top_class
from kiln.monitor.features import CATEGORICAL_FEATURES, SCRIPTS, build_vocabulary, text_features

PROFILE_NAME = "profile.json"
SCHEMA_VERSION = 1
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


class HistogramProfile(BaseModel):
    """Reference counts of one variable on fixed bins (numeric) or categories (categorical)."""

    kind: Literal["numeric", "categorical"]
    n: int
    counts: list[int]
    cuts: list[float] = Field(
        default_factory=list, description="numeric: bin k holds cuts[k-1] < x <= cuts[k]"
    )
    centers: list[float] = Field(default_factory=list, description="numeric: mean reference value per bin")
    categories: list[str] = Field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float] = Field(default_factory=dict)

    def bin(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` on this histogram's bins (unknown categories are dropped)."""
        v = np.asarray(values)
        if self.kind == "numeric":
            idx = np.searchsorted(np.asarray(self.cuts), v.astype(np.float64), side="left")
        else:
            lookup = {c: i for i, c in enumerate(self.categories)}
            idx = np.asarray([lookup.get(str(x), -1) for x in v.tolist()], dtype=np.int64)
            idx = idx[idx >= 0]
        return np.bincount(idx, minlength=len(self.counts)).astype(np.int64)

    def probabilities(self, smoothing: float = 0.5) -> np.ndarray:
        """Bin probabilities with ``smoothing`` pseudo-counts, so a category unseen in the reference is rare,
        not impossible."""
        c = np.asarray(self.counts, dtype=np.float64) + smoothing
        return c / c.sum()


def numeric_histogram(values: np.ndarray, max_bins: int = 50) -> HistogramProfile:
    """Quantile bins of ``values``: at most ``max_bins``, fewer where values repeat (counts, lengths)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise DataError("cannot profile a numeric feature with no finite values")
    levels = np.arange(1, max_bins) / max_bins
    cuts = np.unique(np.quantile(x, levels, method="lower"))
    counts = np.bincount(np.searchsorted(cuts, x, side="left"), minlength=cuts.size + 1)
    if cuts.size and counts[-1] == 0:  # the top cut is the maximum: no empty last bin
        cuts = cuts[:-1]
        counts = np.bincount(np.searchsorted(cuts, x, side="left"), minlength=cuts.size + 1)
    idx = np.searchsorted(cuts, x, side="left")
    centers = np.bincount(idx, weights=x, minlength=counts.size) / np.maximum(counts, 1)
    return HistogramProfile(
        kind="numeric",
        n=int(x.size),
        counts=counts.astype(int).tolist(),
        cuts=cuts.tolist(),
        centers=centers.tolist(),
        mean=float(x.mean()),
        std=float(x.std()),
        quantiles={f"p{round(q * 100):02d}": float(np.quantile(x, q)) for q in _QUANTILES},
    )


def categorical_histogram(values: np.ndarray, categories: list[str] | None = None) -> HistogramProfile:
    v = [str(x) for x in np.asarray(values).tolist()]
    cats = list(categories) if categories is not None else sorted(set(v))
    lookup = {c: i for i, c in enumerate(cats)}
    unknown = sorted({x for x in v if x not in lookup})
    if unknown:
        raise DataError(f"values {unknown[:5]} are not among the categories {cats}")
    counts = np.bincount([lookup[x] for x in v], minlength=len(cats))
    return HistogramProfile(kind="categorical", n=len(v), counts=counts.astype(int).tolist(), categories=cats)


class Float16Matrix(BaseModel):
    """A float16 matrix stored in JSON as base64 (little-endian, row-major)."""

    shape: tuple[int, int]
    data: str

    @classmethod
    def from_array(cls, array: np.ndarray) -> Float16Matrix:
        a = np.ascontiguousarray(array, dtype="<f2")
        return cls(
            shape=(int(a.shape[0]), int(a.shape[1])), data=base64.b64encode(a.tobytes()).decode("ascii")
        )

    def to_array(self) -> np.ndarray:
        raw = np.frombuffer(base64.b64decode(self.data), dtype="<f2")
        return raw.reshape(self.shape).astype(np.float32)


class EmbeddingProfile(BaseModel):
    dim: int
    n: int = Field(description="reference embeddings the sample was drawn from")
    sample: Float16Matrix
    rff_dim: int = Field(default=1024, description="random Fourier features of the MMD test")
    rff_seed: int
    bandwidth: float = Field(description="Gaussian kernel width: median distance between sample rows")

    def sample_array(self) -> np.ndarray:
        return self.sample.to_array()


class OutputProfile(BaseModel):
    """A classifier's outputs on the reference."""

    n_classes: int
    predicted: HistogramProfile
    confidence: HistogramProfile
    calibrator: ConfidenceCalibrator | None = Field(
        default=None, description="P(correct | confidence), when the reference is labelled"
    )


class ReferenceProfile(BaseModel):
    schema_version: int = SCHEMA_VERSION
    seed: int
    n: int = Field(description="reference texts")
    features: dict[str, HistogramProfile]
    vocabulary: list[str] = Field(default_factory=list, description="words oov_rate is measured against")
    embeddings: EmbeddingProfile | None = None
    labels: HistogramProfile | None = Field(default=None, description="true label distribution")
    outputs: OutputProfile | None = None


def _median_distance(x: np.ndarray, rng: np.random.Generator, rows: int = 1000) -> float:
    s = x[rng.choice(len(x), size=min(rows, len(x)), replace=False)].astype(np.float64)
    sq = (s * s).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * s @ s.T, 0.0)
    off = d2[np.triu_indices(len(s), k=1)]
    med = float(np.sqrt(np.median(off))) if off.size else 1.0
    return med if med > 0 else 1.0


def make_reference_profile(
    texts: list[str],
    token_counts: np.ndarray | list[int] | None,
    embeddings: np.ndarray | None,
    labels: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    seed: int = 0,
    embedding_rows: int = 2000,
    max_bins: int = 50,
    vocabulary_words: int = 20_000,
) -> ReferenceProfile:
    """Profile held-out data: ``texts`` with the tokenizer's ``token_counts``, the model's ``embeddings``
    (``(n, d)``), the true ``labels`` (``0..k-1``, optional) and a classifier's ``scores`` (class
    probabilities ``(n, k)`` or ``P(class 1)``, optional). With both labels and scores a confidence
    calibrator for label-free accuracy is fitted.
    """
    n = len(texts)
    if n < 20:
        raise DataError(f"a reference profile needs at least 20 texts, got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    vocab_half, scored_half = order[: n // 2], order[n // 2 :]
    vocabulary = build_vocabulary((texts[i] for i in vocab_half), max_words=vocabulary_words)
    feats = text_features(texts, token_counts)
    # oov_rate on texts the vocabulary did not see, as live texts will be
    feats["oov_rate"] = text_features([texts[i] for i in scored_half], vocabulary=vocabulary)["oov_rate"]
    hists: dict[str, HistogramProfile] = {}
    for name, values in feats.items():
        if name in CATEGORICAL_FEATURES:
            hists[name] = categorical_histogram(values, list(SCRIPTS))
        else:
            hists[name] = numeric_histogram(values, max_bins)
    profile = ReferenceProfile(seed=seed, n=n, features=hists, vocabulary=vocabulary)
    if embeddings is not None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise DataError(f"embeddings have shape {emb.shape}; expected ({n}, dim), one row per text")
        rows = np.sort(rng.choice(n, size=min(embedding_rows, n), replace=False))
        sample = emb[rows]
        profile.embeddings = EmbeddingProfile(
            dim=int(emb.shape[1]),
            n=n,
            sample=Float16Matrix.from_array(sample),
            rff_seed=seed + 1,
            bandwidth=_median_distance(sample, rng),
        )
    y = None if labels is None else np.asarray(labels, dtype=np.int64)
    if y is not None and y.shape != (n,):
        raise DataError(f"labels have shape {y.shape}; expected ({n},)")
    if scores is not None:
        predicted, confidence = top_class(np.asarray(scores))
        if predicted.shape != (n,):
            raise DataError(f"scores have {predicted.shape[0]} rows; expected {n}")
        s = np.asarray(scores)
        k = int(s.shape[1]) if s.ndim == 2 else 2
        classes = [str(i) for i in range(k)]
        profile.outputs = OutputProfile(
            n_classes=k,
            predicted=categorical_histogram(predicted, classes),
            confidence=numeric_histogram(confidence, max_bins),
            calibrator=fit_calibrator(confidence, predicted == y, seed=seed) if y is not None else None,
        )
    if y is not None:
        k = profile.outputs.n_classes if profile.outputs else int(y.max()) + 1
        profile.labels = categorical_histogram(y, [str(i) for i in range(k)])
    return profile


def save_profile(profile: ReferenceProfile, path: Path) -> Path:
    """Write ``profile`` as JSON to ``path`` (a folder gets ``profile.json`` inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROFILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.model_dump_json(), encoding="utf-8")
    return path


def load_profile(path: Path) -> ReferenceProfile:
    path = Path(path)
    if path.is_dir():
        path = path / PROFILE_NAME
    if not path.is_file():
        raise DataError(f"no reference profile at {path}: rebuild the bundle with `kiln build`")
    try:
        profile = ReferenceProfile.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a valid kiln reference profile: {exc}") from exc
    if profile.schema_version > SCHEMA_VERSION:
        raise DataError(
            f"{path} has profile schema {profile.schema_version}; this kiln reads up to {SCHEMA_VERSION}: "
            "upgrade kiln"
        )
    return profile
