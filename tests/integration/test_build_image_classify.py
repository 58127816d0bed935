"""``kiln build --task image-classify``: a tiny random CNN given as ONNX becomes a bundle whose manifest says
what serving needs (input, preprocessing, labels) and whose artifact reproduces the reference's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _fixtures import image_bundle as _image_fixtures
from _fixtures.image_bundle import TINY_LABELS, TINY_SIDE, ImageBuild
from kiln.bundle.load import load_bundle
from kiln.runtime.image_preprocess import ImagePreprocess, ImagePreprocessor
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.tasks.image_classify_config import ImageClassifyConfig
from kiln.tasks.image_classify_torch import OnnxImageClassifier
from kiln.tasks.images import load_item, view_item

pytest.importorskip("skimage")
pytestmark = pytest.mark.slow
tiny_cnn = _image_fixtures.tiny_cnn  # session fixtures, registered here
image_build = _image_fixtures.image_build


def test_manifest_says_what_serving_needs(image_build: ImageBuild) -> None:
    m = load_bundle(image_build.bundle).manifest
    assert m.task == "image-classify" and m.budget["metric"] == "top1_agreement"
    cfg = ImageClassifyConfig.model_validate(m.task_config)
    assert cfg.labels == list(TINY_LABELS) and cfg.input_name == "input"
    assert cfg.input_shape == ["batch", 3, TINY_SIDE, TINY_SIDE]
    assert cfg.preprocess.resize == 36 and cfg.preprocess.mean == (0.485, 0.456, 0.406)
    assert m.tokenizer == "preprocess.json" and "tokenizer.json" not in m.files
    on_disk = json.loads((image_build.bundle / "preprocess.json").read_text())
    assert ImagePreprocess.model_validate(on_disk["preprocess"]) == cfg.preprocess
    assert m.evaluation is not None and m.evaluation.n_test == 40 and "split by photo" in m.evaluation.notes
    assert "16 calibration, 20 ranking, 40 held out" in image_build.console_text


def test_variants_report_agreement_and_the_export_is_exact(image_build: ImageBuild) -> None:
    m = load_bundle(image_build.bundle).manifest
    by_name = {v.name: v for v in m.variants}
    ref, fp32 = by_name["pytorch-fp32"], by_name["onnx-fp32"]
    assert fp32.status == "ok", fp32.reason
    for v in (ref, fp32):
        assert v.scores.quality is not None and v.scores.quality.metric == "top1_agreement"
        assert v.scores.quality.value == 1.0
        assert v.scores.peak_rss_mb is not None and v.p50("batch1") is not None
    assert fp32.parity and max(c.max_abs_diff for c in fp32.parity) < 1e-4
    assert [c.batch_size for c in fp32.parity] == [1, 4, 8]
    static = by_name.get("onnx-int8-static")
    assert static is not None and static.status in ("ok", "rejected", "failed")
    if static.status == "ok":
        assert static.scores.quality is not None and static.scores.file_bytes is not None
    for v in m.variants:
        if v.status != "ok":
            assert v.reason


def test_the_served_artifact_reproduces_the_reference(image_build: ImageBuild) -> None:
    m = load_bundle(image_build.bundle).manifest
    cfg = ImageClassifyConfig.model_validate(m.task_config)
    pre = ImagePreprocessor(cfg.preprocess, input_name=cfg.input_name, load=load_item)
    items = [view_item("chelsea"), view_item("coffee", (0.1, 0.1, 0.8, 0.9), flip=True)]
    source = next(image_build.model_dir.glob("*.onnx"))
    ref = OnnxImageClassifier(OnnxBackend(source), pre).embed(items)
    got = OnnxImageClassifier(OnnxBackend(image_build.bundle / "model.onnx"), pre).embed(items)
    assert got.shape == (2, len(TINY_LABELS))
    if m.chosen == "onnx-fp32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:
        assert (got.argmax(axis=1) == ref.argmax(axis=1)).all()
