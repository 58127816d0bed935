import json
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import DataError
from kiln.monitor.profile import (
    Float16Matrix,
    ReferenceProfile,
    categorical_histogram,
    load_profile,
    make_reference_profile,
    numeric_histogram,
    save_profile,
)

WORDS = [f"w{i}" for i in range(300)]
DIM = 8


def texts(rng: np.random.Generator, n: int, mean_words: float = 12.0) -> list[str]:
    lengths = np.maximum(1, rng.poisson(mean_words, n))
    zipf = 1.0 / np.arange(1, len(WORDS) + 1)
    p = zipf / zipf.sum()
    return [" ".join(rng.choice(WORDS, size=k, p=p)).capitalize() + "." for k in lengths]


def scores(rng: np.random.Generator, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(class 1) from the first embedding coordinate, and labels drawn from it (calibrated by design)."""
    p1 = 1.0 / (1.0 + np.exp(-2.0 * embeddings[:, 0]))
    labels = (rng.random(len(p1)) < p1).astype(np.int64)
    return np.stack([1 - p1, p1], axis=1), labels


def reference(n: int = 1500, seed: int = 0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    t = texts(rng, n)
    emb = rng.normal(size=(n, DIM)).astype(np.float32)
    s, y = scores(rng, emb)
    return make_reference_profile(t, [len(x.split()) for x in t], emb, labels=y, scores=s, seed=seed)


def test_round_trip_through_profile_json(tmp_path: Path) -> None:
    profile = reference(600)
    path = save_profile(profile, tmp_path)
    assert path == tmp_path / "profile.json"
    json.loads(path.read_text())  # plain JSON
    loaded = load_profile(tmp_path)
    assert loaded == profile
    assert loaded.embeddings is not None and profile.embeddings is not None
    np.testing.assert_array_equal(loaded.embeddings.sample_array(), profile.embeddings.sample_array())


def test_profile_contents() -> None:
    profile = reference(600)
    assert profile.n == 600
    assert {"n_chars", "n_tokens", "oov_rate", "script"} <= set(profile.features)
    assert profile.features["oov_rate"].n == 300  # scored on the half the vocabulary did not see
    assert profile.features["n_chars"].n == 600
    assert profile.outputs is not None and profile.outputs.calibrator is not None
    assert profile.outputs.n_classes == 2
    assert profile.labels is not None and sum(profile.labels.counts) == 600


def test_embedding_sample_is_capped_and_float16() -> None:
    rng = np.random.default_rng(1)
    t = texts(rng, 300)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    profile = make_reference_profile(t, None, emb, embedding_rows=100)
    assert profile.embeddings is not None
    sample = profile.embeddings.sample_array()
    assert sample.shape == (100, 16)
    assert len(profile.embeddings.sample.data) < 100 * 16 * 2 * 1.4  # base64 of float16
    assert "n_tokens" not in profile.features
    assert profile.outputs is None and profile.labels is None


def test_numeric_histogram_bins_and_discrete_values() -> None:
    x = np.concatenate([np.zeros(700), np.arange(1, 301)])
    h = numeric_histogram(x, max_bins=20)
    assert sum(h.counts) == 1000
    assert h.counts[0] == 700  # the repeated zero gets its own bin
    np.testing.assert_array_equal(h.bin(x), h.counts)
    assert h.bin(np.array([-5.0, 1e9])).tolist()[0] == 1 and h.bin(np.array([1e9]))[-1] == 1


def test_categorical_histogram() -> None:
    h = categorical_histogram(np.array(["a", "b", "a"]), ["a", "b", "c"])
    assert h.counts == [2, 1, 0]
    assert h.bin(np.array(["c", "z"])).tolist() == [0, 0, 1]
    assert h.probabilities()[2] > 0  # unseen in the reference, still possible under the null
    with pytest.raises(DataError):
        categorical_histogram(np.array(["z"]), ["a"])


def test_float16_matrix() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    np.testing.assert_allclose(Float16Matrix.from_array(a).to_array(), a, atol=1e-3)


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 20"):
        make_reference_profile(["a"] * 5, None, None)
    with pytest.raises(DataError, match="one row per text"):
        make_reference_profile(["a b"] * 30, None, np.zeros((29, 4)))
    with pytest.raises(DataError, match="no reference profile"):
        load_profile(tmp_path / "missing.json")
    (tmp_path / "profile.json").write_text("{}")
    with pytest.raises(DataError, match="not a valid"):
        load_profile(tmp_path)
