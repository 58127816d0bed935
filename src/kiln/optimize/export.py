"""PyTorch → ONNX through the dynamo exporter (the TorchScript exporter mis-handles shape changes
on BERT-class models from transformers 5; see MODELS.md)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    with eager_attention(module):
        return dynamo_export(
            module,
            tuple(torch.from_numpy(example[name]) for name in INPUT_NAMES),
            dst,
            input_names=list(INPUT_NAMES),
            dynamic_shapes={name: {0: batch, 1: seq} for name in INPUT_NAMES},
            output_name=output_name,
            opset=recipe.opset,
            optimize=recipe.optimize,
        )


@contextlib.contextmanager
def eager_attention(module: torch.nn.Module) -> Iterator[None]:
    """Trace transformers models with their plain ("eager") attention, restored afterwards.

    The SDPA path computes the same thing but exports as a longer graph (NaN guards, a gathered mask)
    that ONNX Runtime runs slower at batch 1 and that :mod:`kiln.optimize.fusion` cannot fold."""
    configs = []
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) not in (None, "eager"):
            configs.append((config, config._attn_implementation))
    try:
        for config, _ in configs:
            config._attn_implementation = "eager"
        yield
    finally:
        for config, previous in configs:
            config._attn_implementation = previous


def dynamo_export(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    dst: Path,
    input_names: list[str],
    dynamic_shapes: Any,
    output_name: str,
    opset: int,
    optimize: bool,
) -> Path:
    """``torch.onnx.export(dynamo=True)`` with its chatter silenced, saved to ``dst``; every exporter
    failure becomes a :class:`BuildError` carrying the tail of what it printed."""
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
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=[output_name],
                opset_version=opset,
                optimize=optimize,
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
