"""Which of ONNX Runtime's load-time fusions pay on this CPU: measured, not assumed.

ORT rewrites a residual ``Add`` followed by ``LayerNormalization`` into its contrib
``SkipLayerNormalization`` kernel whenever it loads a transformer graph. On some CPUs that kernel is far
slower than the two operators it replaces (ORT 1.32 on a Sapphire Rapids-class Xeon: 53 to 88 µs
against 25 µs for 32 tokens of 384 features, twelve times per MiniLM inference). A build times both on
a two-node graph of the model's own width and, when the fusion loses, records it in the bundle's
:class:`~kiln.runtime.onnx_backend.SessionSettings` so every session that runs the bundle (the build's
own measurements, ``kiln serve``, the benchmarks) disables it.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from kiln.bench.latency import interleaved_latency
from kiln.runtime.onnx_backend import OrtFusion, SessionSettings, session_options

SKIP_LAYER_NORM_FUSION: OrtFusion = "SkipLayerNormFusion"
# The fusion is disabled only when it is slower by more than this fraction (timer noise stays put).
MARGIN = 0.10


def _residual_layer_norm(hidden: int) -> bytes:
    """``LayerNormalization(x + residual)`` over ``hidden`` features: what ORT fuses."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(1.0, 0.1, hidden).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0.0, 0.1, hidden).astype(np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("Add", ["x", "residual"], ["sum"]),
        helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
    ]
    shape: list[str | int | None] = ["batch", "sequence", hidden]
    graph = helper.make_graph(
        nodes,
        "residual_layer_norm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "residual")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def time_skip_layer_norm(
    hidden: int, tokens: int = 32, threads: int = 0, runs: int = 300
) -> tuple[float, float]:
    """Median µs of the residual + layer norm with ORT's fusion on, and with it off (interleaved)."""
    graph = _residual_layer_norm(hidden)
    rng = np.random.default_rng(1)
    feed = {n: rng.normal(size=(1, tokens, hidden)).astype(np.float32) for n in ("x", "residual")}
    sessions = {}
    for name, disabled in (("fused", None), ("plain", [SKIP_LAYER_NORM_FUSION])):
        opts = session_options(threads, spinning=False)
        sessions[name] = ort.InferenceSession(
            graph, opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
        )
    stats = interleaved_latency(
        {name: partial(session.run, None, feed) for name, session in sessions.items()},
        batch_size=1,
        rounds=runs,
        warmup=20,
        min_time_s=0.0,
        max_rounds=runs,
    )
    fused, plain = (stats[name].p50_ms * 1000.0 for name in ("fused", "plain"))
    return fused, plain


def tune_session(hidden: int | None, threads: int = 0) -> SessionSettings:
    """Session settings for a transformer of width ``hidden`` on this CPU (defaults for other models)."""
    if hidden is None:
        return SessionSettings()
    fused, plain = time_skip_layer_norm(hidden, threads=threads)
    if fused > plain * (1.0 + MARGIN):
        return SessionSettings(
            disabled_optimizers=(SKIP_LAYER_NORM_FUSION,),
            why=f"ORT's SkipLayerNormalization takes {fused:.0f} µs here against {plain:.0f} µs for "
            f"Add + LayerNormalization ({hidden} features, 32 tokens): fusion disabled",
        )
    return SessionSettings(
        why=f"ORT's SkipLayerNormalization {fused:.0f} µs vs {plain:.0f} µs unfused here: fusion kept"
    )
