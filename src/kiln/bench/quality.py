"""Quality of an embedding variant against the reference: agreement of vectors and a linear probe.

Two views, both on held-out texts:

* **agreement**: cosine similarity of each variant embedding to the reference embedding of the same text.
  Cheap and label-free, but a cosine of 0.99 says nothing about what the lost 1% costs on a task.
* **linear probe**: a logistic regression trained on labelled embeddings, scored on a test split. Each
  model's probe is trained on *its own* train embeddings, as a user re-indexing with the variant would,
  so ``drop`` is the task accuracy a user loses by switching, with a paired bootstrap interval.

The probe is plain ``LogisticRegression`` (C=1, lbfgs, ``max_iter=2000``) on L2-normalised embeddings,
without feature standardisation: sentence embeddings are used as unit vectors (cosine space) and
normalising makes the probe blind to a variant merely rescaling its outputs, while standardising would
re-weight dimensions in a way no cosine-similarity user sees.
"""

from __future__ import annotations

import numpy as np

from kiln.bench.scores import Quality
from kiln.bench.stats import bootstrap_diff_ci
from kiln.errors import BuildError, DataError

_EPS = 1e-12


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise BuildError(f"embeddings must be a 2-D array (n, dim), got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, _EPS)


def embedding_agreement(ref: np.ndarray, var: np.ndarray) -> dict[str, float]:
    """Row-wise agreement of two embedding matrices of the same texts.

    Returns ``mean_cosine`` and ``min_cosine`` (both normalised first, whatever the inputs) and
    ``mean_abs_diff`` (element-wise, on the raw values).
    """
    ref_arr = np.asarray(ref, dtype=np.float64)
    var_arr = np.asarray(var, dtype=np.float64)
    if ref_arr.shape != var_arr.shape:
        raise BuildError(f"variant embeddings have shape {var_arr.shape}, the reference {ref_arr.shape}")
    if ref_arr.ndim != 2 or ref_arr.shape[0] == 0:
        raise BuildError(f"embeddings must be a non-empty 2-D array (n, dim), got shape {ref_arr.shape}")
    cosine = np.sum(l2_normalize(ref_arr) * l2_normalize(var_arr), axis=1)
    return {
        "mean_cosine": float(cosine.mean()),
        "min_cosine": float(cosine.min()),
        "mean_abs_diff": float(np.abs(ref_arr - var_arr).mean()),
    }


def probe_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """Fit a logistic-regression probe on ``train`` and score it on ``test``.

    Returns the test accuracy and the per-example correctness vector (``bool``, one per test row), which
    :func:`kiln.bench.stats.bootstrap_diff_ci` pairs against another model's.
    """
    from sklearn.linear_model import LogisticRegression

    train_y = np.asarray(train_y)
    test_y = np.asarray(test_y)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataError(
            f"embeddings and labels differ in length: train {len(train_x)} vs {len(train_y)}, "
            f"test {len(test_x)} vs {len(test_y)}"
        )
    if len(test_y) == 0:
        raise DataError("the test split is empty: quality needs held-out labelled examples")
    if np.unique(train_y).size < 2:
        raise DataError("the probe's training split holds a single class: it needs at least 2")
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit(l2_normalize(train_x), train_y)
    correct = np.asarray(clf.predict(l2_normalize(test_x)) == test_y, dtype=bool)
    return float(correct.mean()), correct


def embed_quality(
    ref_train: np.ndarray,
    ref_test: np.ndarray,
    var_train: np.ndarray,
    var_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    seed: int = 0,
) -> Quality:
    """Probe accuracy of the variant, its drop from the reference and the drop's paired 95% interval.

    ``extra`` holds ``reference_accuracy`` and the agreement of ``var_test`` with ``ref_test``
    (``mean_cosine``, ``min_cosine``, ``mean_abs_diff``).
    """
    ref_acc, ref_correct = probe_accuracy(ref_train, y_train, ref_test, y_test, seed=seed)
    var_acc, var_correct = probe_accuracy(var_train, y_train, var_test, y_test, seed=seed)
    low, high = bootstrap_diff_ci(ref_correct, var_correct, seed=seed)
    agreement = embedding_agreement(ref_test, var_test)
    return Quality(
        metric="probe_accuracy",
        value=var_acc,
        drop=ref_acc - var_acc,
        drop_ci95=(low, high),
        extra={"reference_accuracy": ref_acc, **agreement},
    )
