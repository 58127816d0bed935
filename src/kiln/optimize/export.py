"""PyTorch → ONNX through the dynamo exporter (the TorchScript exporter mis-handles shape changes
on BERT-class models from transformers 5; see MODELS.md)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from kiln.errors import BuildError
from kiln.optimize.recipes import ExportOnnx
from kiln.tasks.embed_torch import INPUT_NAMES


def export_onnx(
    module: torch.nn.Module, example: dict[str, np.ndarray], dst: Path, recipe: ExportOnnx, output_name: str
) -> Path:
    """Export ``module`` (called with INPUT_NAMES in order) with dynamic batch and sequence axes."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=8192)
    args = tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES)
    dynamic = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    noise = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(noise),
            contextlib.redirect_stderr(noise),
        ):
            warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                dynamic_shapes=dynamic,
                input_names=list(INPUT_NAMES),
                output_names=[output_name],
                opset_version=recipe.opset,
                optimize=recipe.optimize,
                verbose=False,
            )
            if program is None:
                raise BuildError("torch.onnx.export returned no program")
            dst.parent.mkdir(parents=True, exist_ok=True)
            program.save(str(dst))
    except BuildError:
        raise
    except Exception as exc:  # the exporter raises a wide variety of internal errors
        tail = noise.getvalue()[-2000:]
        raise BuildError(f"ONNX export failed: {exc}\n{tail}") from exc
    return dst
