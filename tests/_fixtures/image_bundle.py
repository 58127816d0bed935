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
