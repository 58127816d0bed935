"""Embedding agreement and linear-probe quality on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.bench.quality import embed_quality, embedding_agreement, l2_normalize, probe_accuracy
from kiln.bench.scores import Quality
from kiln.errors import BuildError, DataError


def _separable(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clusters far apart along a random direction (plus an offset, not normalised)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    x = rng.standard_normal((n, dim)) * 0.5 + np.where(y[:, None] == 1, 2.0, -2.0) * direction + 3.0
    return x.astype(np.float32), y


def test_agreement_of_identical_and_rescaled_embeddings() -> None:
    x, _ = _separable(50)
    same = embedding_agreement(x, x.copy())
    assert same["mean_cosine"] == pytest.approx(1.0)
    assert same["min_cosine"] == pytest.approx(1.0)
    assert same["mean_abs_diff"] == 0.0
    scaled = embedding_agreement(x, 3.0 * x)  # cosine is normalised, abs diff is not
    assert scaled["min_cosine"] == pytest.approx(1.0)
    assert scaled["mean_abs_diff"] > 0.0


def test_agreement_known_angles() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    var = np.array([[0.0, 1.0], [0.0, 5.0], [-1.0, 0.0]])
    result = embedding_agreement(ref, var)
    assert result["mean_cosine"] == pytest.approx(0.0)
    assert result["min_cosine"] == pytest.approx(-1.0)


def test_agreement_rejects_mismatched_shapes() -> None:
    with pytest.raises(BuildError, match="shape"):
        embedding_agreement(np.zeros((3, 4)), np.zeros((3, 5)))


def test_l2_normalize_keeps_zero_rows() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out[0].tolist() == pytest.approx([0.6, 0.8])
    assert out[1].tolist() == [0.0, 0.0]


def test_probe_accuracy_on_separable_data() -> None:
    x, y = _separable(400)
    acc, correct = probe_accuracy(x[:200], y[:200], x[200:], y[200:])
    assert acc > 0.95
    assert correct.dtype == bool and correct.shape == (200,)
    assert acc == pytest.approx(correct.mean())


def test_probe_accuracy_at_chance_on_random_labels() -> None:
    x, _ = _separable(600, seed=1)
    y = np.random.default_rng(5).integers(0, 2, size=600)
    acc, _ = probe_accuracy(x[:300], y[:300], x[300:], y[300:])
    assert acc < 0.65


def test_probe_needs_two_classes_and_matching_lengths() -> None:
    x, y = _separable(20)
    with pytest.raises(DataError, match="single class"):
        probe_accuracy(x, np.zeros(20, dtype=int), x, y)
    with pytest.raises(DataError, match="length"):
        probe_accuracy(x, y[:10], x, y)


def test_embed_quality_identical_variant_has_zero_drop() -> None:
    x, y = _separable(400, seed=2)
    tr, te = slice(0, 200), slice(200, 400)
    quality = embed_quality(x[tr], x[te], x[tr].copy(), x[te].copy(), y[tr], y[te])
    assert isinstance(quality, Quality)
    assert quality.metric == "probe_accuracy"
    assert quality.drop == 0.0
    assert quality.drop_ci95 == (0.0, 0.0)
    assert quality.value == quality.extra["reference_accuracy"] > 0.95
    assert quality.extra["mean_cosine"] == pytest.approx(1.0)
    assert quality.extra["min_cosine"] == pytest.approx(1.0)


def test_embed_quality_noised_variant_loses_accuracy() -> None:
    x, y = _separable(1200, dim=16, seed=3)
    rng = np.random.default_rng(9)
    noisy = x + rng.standard_normal(x.shape).astype(np.float32) * 4.0
    tr, te = slice(0, 600), slice(600, 1200)
    quality = embed_quality(x[tr], x[te], noisy[tr], noisy[te], y[tr], y[te])
    assert quality.drop > 0.1
    assert quality.drop == pytest.approx(quality.extra["reference_accuracy"] - quality.value)
    low, high = quality.drop_ci95
    assert 0.0 < low <= quality.drop <= high
    assert quality.extra["mean_cosine"] < 0.95
    assert quality.extra["min_cosine"] <= quality.extra["mean_cosine"]
    # serialises as part of a manifest
    assert Quality.model_validate_json(quality.model_dump_json()) == quality


def test_embed_quality_trains_each_probe_on_its_own_embeddings() -> None:
    # A variant whose space is rotated is as good for a user who re-indexes with it: zero drop,
    # even though its cosine to the reference is poor.
    x, y = _separable(400, seed=4)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))
    rotated = (x @ q).astype(np.float32)
    tr, te = slice(0, 200), slice(200, 400)
    quality = embed_quality(x[tr], x[te], rotated[tr], rotated[te], y[tr], y[te])
    assert abs(quality.drop) <= 0.02
    assert quality.extra["mean_cosine"] < 0.9
