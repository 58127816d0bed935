"""An ONNX Runtime session that runs batches of named numpy arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict

from kiln.errors import BundleError

# ORT's load-time fusions a bundle may switch off (ORT itself ignores names it does not know).
OrtFusion = Literal[
    "SkipLayerNormFusion",
    "BiasGeluFusion",
    "GeluFusion",
    "LayerNormFusion",
    "AttentionFusion",
    "EmbedLayerNormFusion",
]


# Always off: ORT's WeightBiasQuantization (1.20+) rounds the float weights of any Conv/Gemm that reads
# a DequantizeLinear to per-tensor INT8 at load time, i.e. it quantizes again exactly the nodes that
# accuracy control returned to float, and per-tensor where the recipe was per-channel. Measured on
# EfficientNet-Lite0 with its first depthwise convolution kept float: that conv's output off by 1.6 (of
# +-100) and top-1 agreement with fp32 0.35 instead of 0.79 (benchmarks/image_classify.py's views).
ALWAYS_DISABLED: tuple[str, ...] = ("WeightBiasQuantization",)


class SessionSettings(BaseModel):
    """ONNX Runtime settings a bundle's model was measured with (recorded in its manifest).

    ``disabled_optimizers``: load-time graph rewrites ORT must not apply, because on the CPU the build
    ran on the fused kernel they produce is slower than the operators it replaces
    (:mod:`kiln.runtime.session_tuning` measures it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    disabled_optimizers: tuple[OrtFusion, ...] = ()
    why: str = ""


def session_options(threads: int = 0, spinning: bool = True) -> ort.SessionOptions:
    """``spinning=False``: worker threads sleep between operators instead of spinning. Needed when
    several sessions take turns on the same cores (interleaved timing): an idle session's spinning
    threads would otherwise steal the cores from the one being timed."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def cpu_session(
    model: str | bytes, opts: ort.SessionOptions, disabled: tuple[str, ...] = ()
) -> ort.InferenceSession:
    """An ORT session on the CPU for a file path or serialized graph, with :data:`ALWAYS_DISABLED` (and
    ``disabled``) switched off: every session that runs or judges a kiln graph computes it the same way."""
    return ort.InferenceSession(
        model, opts, providers=["CPUExecutionProvider"], disabled_optimizers=[*ALWAYS_DISABLED, *disabled]
    )


class OnnxBackend:
    """Loads one ``.onnx`` file on the CPU execution provider."""

    def __init__(
        self, path: Path, threads: int = 0, settings: SessionSettings | None = None, spinning: bool = True
    ) -> None:
        self.path = Path(path)
        self.settings = settings or SessionSettings()
        try:
            self.session = cpu_session(
                str(self.path), session_options(threads, spinning), self.settings.disabled_optimizers
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, {name: feed[name] for name in self.input_names}))
