"""``kiln build --task classify``: a tiny random sequence classifier and a labelled CSV become a bundle whose
ONNX graph reproduces the PyTorch logits and whose manifest records accuracy, macro-F1, ROC-AUC and slices."""

from __future__ import annotations

import numpy as np
import pytest

from _fixtures.classify_bundle import CLASSIFY_LABELS, ClassifyBuild
from kiln.bundle.load import load_bundle
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer

pytestmark = pytest.mark.slow


def test_manifest_records_the_classify_task(classify_build: ClassifyBuild) -> None:
    m = load_bundle(classify_build.bundle).manifest
    assert m.task == "classify" and m.model_name == "tiny-classifier" and m.license == "mit"
    assert m.task_config["labels"] == list(CLASSIFY_LABELS) and m.task_config["max_length"] == 128
    assert m.budget["metric"] == "accuracy"
    assert m.evaluation is not None and m.evaluation.dataset == "reviews"
    assert m.evaluation.n_train + m.evaluation.n_test == 160
    assert m.evaluation.n_test == 96 and "held out" in m.evaluation.notes
    assert (
        "held-out evaluation: reviews, 16 calibration, 48 ranking, 96 held out" in classify_build.console_text
    )


def test_every_variant_reports_classification_quality(classify_build: ClassifyBuild) -> None:
    m = load_bundle(classify_build.bundle).manifest
    ref = next(v for v in m.variants if v.name == "pytorch-fp32")
    fp32 = next(v for v in m.variants if v.name == "onnx-fp32")
    assert fp32.status == "ok", fp32.reason
    for v in (ref, fp32):
        q = v.scores.quality
        assert q is not None and q.metric == "accuracy"
        for key in ("macro_f1", "roc_auc", "top1_agreement", "reference_accuracy"):
            assert key in q.extra
        slices = {k for k in q.extra if k.startswith("accuracy[")}
        assert {"accuracy[genre=comedy]", "accuracy[genre=drama]"} <= slices
        assert any(k.startswith("accuracy[length=") for k in slices)
        assert sum(q.extra[k] for k in q.extra if k.startswith("n[genre=")) == m.evaluation.n_test  # type: ignore[union-attr]
    # the exported graph is the same function as the reference: same accuracy, full agreement
    assert fp32.scores.quality is not None and fp32.scores.quality.drop == 0.0
    assert fp32.scores.quality.extra["top1_agreement"] == 1.0
    assert fp32.parity and max(c.max_abs_diff for c in fp32.parity) < 1e-4
    assert ref.scores.peak_rss_mb is not None and fp32.scores.peak_rss_mb is not None
    for v in m.variants:
        if v.status == "rejected":  # by a gate of the search, which says which
            assert v.reason
            assert any(gate in v.reason for gate in ("parity gate", "not faster", "screen")), v.reason


def test_the_served_artifact_reproduces_the_pytorch_logits(classify_build: ClassifyBuild) -> None:
    from kiln.tasks.classify_torch import TorchClassifier

    m = load_bundle(classify_build.bundle).manifest
    tok = TextTokenizer(classify_build.bundle / "tokenizer.json", 128)
    texts = ["a short one", "a somewhat longer sentence about a film that nobody saw", "great"]
    ref = TorchClassifier(classify_build.model_dir, tok).embed(texts)
    got = OnnxEmbedder(OnnxBackend(classify_build.bundle / "model.onnx"), tok).embed(texts)
    assert got.shape == (3, 2)
    if m.chosen == "onnx-fp32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
