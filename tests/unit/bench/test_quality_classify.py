from __future__ import annotations

import numpy as np
import pytest

from kiln.bench.quality_classify import (
    classify_quality,
    length_bucket,
    roc_auc,
    slice_accuracy,
    softmax,
    top1_agreement,
)
from kiln.errors import BuildError, DataError


def _logits(preds: list[int], n_classes: int = 2, margin: float = 2.0) -> np.ndarray:
    out = np.zeros((len(preds), n_classes), dtype=np.float32)
    out[np.arange(len(preds)), preds] = margin
    return out


def test_softmax_rows_sum_to_one_and_survive_large_logits() -> None:
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [0.5, 0.5])
    assert p[0, 0] == pytest.approx(1.0)


def test_quality_counts_accuracy_drop_and_agreement() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    ref = _logits([0, 0, 1, 1, 1, 0, 1, 1])  # 7/8 right
    var = _logits([0, 0, 1, 0, 1, 0, 1, 1])  # 6/8 right
    q = classify_quality(ref, var, y, seed=0)
    assert q.metric == "accuracy"
    assert q.value == pytest.approx(0.75)
    assert q.drop == pytest.approx(0.125)
    assert q.drop_ci95[0] <= q.drop <= q.drop_ci95[1]
    assert q.extra["reference_accuracy"] == pytest.approx(0.875)
    assert q.extra["top1_agreement"] == pytest.approx(7 / 8)
    assert 0.0 < q.extra["macro_f1"] <= 1.0 and "roc_auc" in q.extra and "reference_roc_auc" in q.extra


def test_identical_logits_drop_nothing() -> None:
    y = np.array([0, 1, 1, 0])
    ref = np.array([[0.2, 0.1], [0.0, 3.0], [1.0, 0.5], [2.0, -1.0]])
    q = classify_quality(ref, ref.copy(), y)
    assert q.drop == 0.0 and q.drop_ci95 == (0.0, 0.0) and q.extra["top1_agreement"] == 1.0
    assert q.extra["roc_auc"] == q.extra["reference_roc_auc"]


def test_roc_auc_is_left_out_when_a_class_is_missing() -> None:
    assert roc_auc(np.array([0, 0, 0]), softmax(np.zeros((3, 2)))) is None
    y = np.array([0, 1, 2, 2])
    q = classify_quality(_logits([0, 1, 2, 2], 3), _logits([0, 1, 2, 2], 3), y)
    assert q.extra["roc_auc"] == pytest.approx(1.0)
    q2 = classify_quality(_logits([0, 0, 0], 3), _logits([0, 0, 0], 3), np.array([0, 0, 1]))
    assert "roc_auc" not in q2.extra


def test_slices_report_accuracy_and_size_per_value() -> None:
    correct = np.array([True, False, True, True])
    out = slice_accuracy(correct, {"genre": ["a", "a", "b", ""]})
    assert out == {"accuracy[genre=a]": 0.5, "n[genre=a]": 2.0, "accuracy[genre=b]": 1.0, "n[genre=b]": 1.0}
    with pytest.raises(DataError, match="slice 'genre'"):
        slice_accuracy(correct, {"genre": ["a"]})


def test_length_buckets() -> None:
    assert length_bucket("one two") == "short"
    assert length_bucket(" ".join(["w"] * 20)) == "medium"
    assert length_bucket(" ".join(["w"] * 40)) == "long"


def test_shape_problems_are_reported() -> None:
    y = np.array([0, 1])
    with pytest.raises(BuildError, match="shape"):
        classify_quality(np.zeros((3, 2)), np.zeros((2, 2)), y)
    with pytest.raises(DataError, match="2 classes"):
        classify_quality(np.zeros((2, 2)), np.zeros((2, 2)), np.array([0, 5]))
    with pytest.raises(DataError, match="empty"):
        classify_quality(np.zeros((0, 2)), np.zeros((0, 2)), np.array([], dtype=np.int64))
    with pytest.raises(BuildError):
        top1_agreement(np.zeros((2, 2)), np.zeros((2, 3)))
