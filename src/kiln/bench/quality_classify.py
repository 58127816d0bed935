"""Quality of a classifier variant against the reference, from logits on held-out labelled texts.

* **accuracy** (the primary metric): ``drop`` is the reference's accuracy minus the variant's, with the
  paired bootstrap 95% interval of :func:`kiln.bench.stats.bootstrap_diff_ci` (both score the same texts);
* **macro-F1** and **ROC-AUC** (binary: the positive class's probability; more classes: one-vs-rest macro,
  reported only when every class occurs in the held-out labels);
* **top-1 agreement** with the reference (label-free: how often the variant names the same class);
* **per-slice accuracy**: ``accuracy[<slice>=<value>]`` for every slice given (e.g. review length bucket,
  or a column the user names), with ``n[<slice>=<value>]`` examples each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kiln.bench.scores import Quality
from kiln.bench.stats import bootstrap_diff_ci
from kiln.errors import BuildError, DataError

LENGTH_SLICE = "length"
LENGTH_BUCKETS: tuple[tuple[str, int], ...] = (("short", 12), ("medium", 25))
"""Words per text: up to 12 is short, up to 25 medium, longer is long."""


def length_bucket(text: str) -> str:
    words = len(text.split())
    for name, limit in LENGTH_BUCKETS:
        if words <= limit:
            return name
    return "long"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def _check(logits: np.ndarray, labels: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(logits)
    if arr.ndim != 2 or arr.shape[0] != len(labels) or arr.shape[1] < 2:
        raise BuildError(f"{what} logits have shape {arr.shape}; expected ({len(labels)}, classes >= 2)")
    if labels.size and (labels.min() < 0 or labels.max() >= arr.shape[1]):
        raise DataError(f"labels run to {labels.max()}, but the model has {arr.shape[1]} classes")
    return arr


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """F1 averaged over the classes present in ``y_true`` or ``y_pred``."""
    from sklearn.metrics import f1_score

    present = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC-AUC, or None when it is undefined (a class of the model missing from ``y_true``)."""
    from sklearn.metrics import roc_auc_score

    n_classes = probs.shape[1]
    if set(np.unique(y_true).tolist()) != set(range(n_classes)):
        return None
    if n_classes == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


def top1_agreement(reference: np.ndarray, variant: np.ndarray) -> float:
    """Share of rows where both logit matrices pick the same class."""
    ref = np.asarray(reference)
    var = np.asarray(variant)
    if ref.shape != var.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise BuildError(f"cannot compare logits of shapes {ref.shape} and {var.shape}")
    return float(np.mean(ref.argmax(axis=1) == var.argmax(axis=1)))


def agreement_failure(reference: np.ndarray, variant: np.ndarray, limit: float, items: str) -> str | None:
    """The lossy parity gate's top-1 verdict: why ``variant`` names the reference's class too rarely on
    these rows (``items`` says what they are: "ranking texts"), or None."""
    agreement = top1_agreement(reference, variant)
    if agreement >= limit:
        return None
    return (
        f"parity gate (lossy): top-1 agreement with the reference {agreement:.3f} on "
        f"{len(reference)} {items} (limit {limit})"
    )


def slice_accuracy(correct: np.ndarray, slices: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``accuracy[name=value]`` and ``n[name=value]`` for every slice value (empty values skipped)."""
    out: dict[str, float] = {}
    for name, values in slices.items():
        if len(values) != len(correct):
            raise DataError(f"slice {name!r} has {len(values)} values for {len(correct)} examples")
        arr = np.asarray(list(values), dtype=object)
        for value in sorted({str(v) for v in values if str(v) != ""}):
            mask = arr == value
            out[f"accuracy[{name}={value}]"] = float(correct[mask].mean())
            out[f"n[{name}={value}]"] = float(mask.sum())
    return out


def classify_quality(
    reference_logits: np.ndarray,
    variant_logits: np.ndarray,
    labels: np.ndarray,
    slices: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
) -> Quality:
    """Accuracy of the variant, its drop from the reference with a paired 95% interval, and the rest.

    ``extra`` holds ``reference_accuracy``, ``macro_f1``, ``reference_macro_f1``, ``roc_auc`` and
    ``reference_roc_auc`` (when defined), ``top1_agreement`` and the per-slice accuracies.
    """
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0:
        raise DataError("the held-out split is empty: quality needs labelled examples")
    ref = _check(reference_logits, y, "reference")
    var = _check(variant_logits, y, "variant")
    if ref.shape != var.shape:
        raise BuildError(f"variant logits have shape {var.shape}, the reference {ref.shape}")
    ref_pred, var_pred = ref.argmax(axis=1), var.argmax(axis=1)
    ref_correct, var_correct = ref_pred == y, var_pred == y
    low, high = bootstrap_diff_ci(ref_correct, var_correct, seed=seed)
    n_classes = ref.shape[1]
    extra: dict[str, float] = {
        "reference_accuracy": float(ref_correct.mean()),
        "macro_f1": macro_f1(y, var_pred, n_classes),
        "reference_macro_f1": macro_f1(y, ref_pred, n_classes),
        "top1_agreement": top1_agreement(ref, var),
    }
    for key, logits in (("roc_auc", var), ("reference_roc_auc", ref)):
        auc = roc_auc(y, softmax(logits))
        if auc is not None:
            extra[key] = auc
    extra.update(slice_accuracy(var_correct, slices or {}))
    return Quality(
        metric="accuracy",
        value=float(var_correct.mean()),
        drop=float(ref_correct.mean() - var_correct.mean()),
        drop_ci95=(low, high),
        extra=extra,
    )
