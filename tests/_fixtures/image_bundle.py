"""A tiny random CNN (conv-BN-ReLU6 blocks, 4 classes, 32 x 32 input) exported to ONNX in a model folder
with ``labels.txt`` and ``preprocess.json``, and the image-classify bundle ``kiln build`` makes of it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_LABELS = ("tabby", "espresso", "missile", "palace")
TINY_SIDE = 32


@dataclass(frozen=True)
class ImageBuild:
    model_dir: Path
    bundle: Path
    console_text: str


def make_tiny_cnn_folder(folder: Path, seed: int = 0) -> Path:
    """``folder`` with ``tiny-cnn.onnx`` (input ``input``: N x 3 x 32 x 32), labels and preprocessing."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    model = nn.Sequential(
        block(3, 8, 2),
        block(8, 16, 2),
        block(16, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, len(TINY_LABELS)),
    )
    with torch.no_grad():  # BN statistics that are not the identity, as in a trained net
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; for 3 convs it is exact
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, TINY_SIDE, TINY_SIDE),),
            str(folder / "tiny-cnn.onnx"),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    (folder / "labels.txt").write_text("\n".join(TINY_LABELS) + "\n", encoding="utf-8")
    (folder / "preprocess.json").write_text(
        '{"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}',
        encoding="utf-8",
    )
    (folder / "LICENSE").write_text("MIT License\n\nCopyright (c) kiln tests\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cnn_folder(tmp_path_factory.mktemp("tiny-cnn") / "tiny-cnn")


@pytest.fixture(scope="session")
def image_build(tiny_cnn: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageBuild:
    from rich.console import Console

    from kiln.optimize.build import BuildOptions, build

    root = tmp_path_factory.mktemp("image-build")
    console = Console(record=True, width=200)
    result = build(
        BuildOptions(
            model=str(tiny_cnn),
            task="image-classify",
            out=root / "bundle",
            eval_samples=40,
            latency_seconds=0.2,
            measure_memory=True,
        ),
        console=console,
    )
    return ImageBuild(tiny_cnn, result.bundle_dir, console.export_text())


TINY_IMAGE_MODEL = "tiny-cnn"
TINY_IMAGE_PREPROCESS = {
    "resize": 36,
    "crop": TINY_SIDE,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}


def write_tiny_cnn_onnx(path: Path, seed: int = 0) -> Path:
    """A CNN built with ``onnx.helper`` (no torch, well under a second): two stride-2 conv + ReLU blocks,
    global average pooling and a linear head; input ``input`` N x 3 x 32 x 32, output ``logits`` N x 4."""
    import numpy as np

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(weights(8, 3, 3, 3), "w1"),
        numpy_helper.from_array((0.1 * rng.standard_normal(8)).astype(np.float32), "b1"),
        numpy_helper.from_array(weights(16, 8, 3, 3), "w2"),
        numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "b2"),
        numpy_helper.from_array(weights(len(TINY_LABELS), 16) * 4, "w3"),
        numpy_helper.from_array(np.zeros(len(TINY_LABELS), dtype=np.float32), "b3"),
    ]
    conv = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, TINY_SIDE, TINY_SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(TINY_LABELS)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def build_tiny_image_bundle(out: Path, model_name: str = TINY_IMAGE_MODEL, seed: int = 0) -> Path:
    """An image-classify bundle as ``kiln build`` writes one (manifest, ``model.onnx``, ``preprocess.json``),
    written directly from :func:`write_tiny_cnn_onnx` (no search): for serving tests."""

    from _fixtures.tiny_bundle import fixture_manifest
    from kiln.bundle.manifest import SourceRecord
    from kiln.bundle.write import write_bundle
    from kiln.runtime.image_preprocess import ImagePreprocess
    from kiln.tasks.image_classify_config import ImageClassifyConfig

    work = out.parent / f".{out.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    artifact = write_tiny_cnn_onnx(work / "model.onnx", seed)
    pre = ImagePreprocess.model_validate(TINY_IMAGE_PREPROCESS)
    config = ImageClassifyConfig(
        input_name="input", input_shape=pre.input_shape(), preprocess=pre, labels=list(TINY_LABELS)
    )
    manifest = fixture_manifest(
        model_name,
        "image-classify",
        config.model_dump(mode="json"),
        SourceRecord(kind="local", spec=str(work), path=str(work)),
        license="mit",
        tokenizer="preprocess.json",
    )
    preprocess = config.model_dump_json(include={"input_name", "input_shape", "input_dtype", "preprocess"})
    return write_bundle(out, manifest, {"model.onnx": artifact}, texts={"preprocess.json": preprocess})


@pytest.fixture(scope="session")
def tiny_image_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny image-classify bundle for the whole session (treat it as read-only)."""
    return build_tiny_image_bundle(tmp_path_factory.mktemp("tiny-image") / "tiny-cnn-bundle")
