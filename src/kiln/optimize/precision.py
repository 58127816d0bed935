"""FP16 and BF16 graphs: half the bytes, and faster where the device has half-precision kernels.

Conversion uses ONNX Runtime's copy of onnxconverter-common's ``convert_float_to_float16`` (ships with
``onnxruntime``, no extra dependency), keeping graph inputs and outputs float32 and numerically fragile
operators in float32. BF16 is the same graph with every float16 tensor retyped to bfloat16 (weights go
through float32, so nothing is lost beyond bfloat16's own rounding).

Whether to run such a variant is a separate decision: GPUs have fp16/bf16 tensor cores, while ONNX
Runtime's CPU execution provider has fp16 kernels for only some operators and almost no bf16 ones. On a
CPU the variant is kept only when it loads and measures faster than float32 here
(:func:`measure_on_cpu`); otherwise it is skipped with the reason recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import BuildError
from kiln.optimize.cpu import CpuInfo

Target = Literal["cpu", "cuda", "tensorrt", "rocm", "dml"]
GPU_TARGETS: frozenset[str] = frozenset({"cuda", "tensorrt", "rocm", "dml"})
# Faster by at least this fraction, or the CPU variant is not worth its accuracy loss.
MIN_SPEEDUP = 0.05


class PrecisionDecision(BaseModel):
    """Whether a half-precision variant should run on a target, and why (recorded in the build)."""

    model_config = ConfigDict(frozen=True)

    dtype: Literal["fp16", "bf16"]
    target: Target
    run: bool
    reason: str
    fp32_ms: float | None = None
    variant_ms: float | None = None


class ConvertPrecision(BaseModel):
    """Float32 → float16 or bfloat16, inputs and outputs kept float32 by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["precision"] = "precision"
    dtype: Literal["fp16", "bf16"] = "fp16"
    keep_io_types: bool = True
    op_block_list: tuple[str, ...] | None = Field(
        default=None, description="operators kept float32; None = the converter's default list"
    )
    nodes_to_exclude: tuple[str, ...] = ()
    why: str = ""
    precision: Literal["lossy"] = "lossy"

    def apply(self, src: Path, dst: Path) -> Path:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        try:
            model = onnx.load(str(src))
            blocked = (
                list(self.op_block_list) if self.op_block_list is not None else list(DEFAULT_OP_BLOCK_LIST)
            )
            if self.dtype == "bf16":
                blocked += sorted(_without_bf16(model) - set(blocked))
            half = convert_float_to_float16(
                model,
                keep_io_types=self.keep_io_types,
                op_block_list=blocked,
                node_block_list=list(self.nodes_to_exclude) or None,
                disable_shape_infer=False,
            )
            if self.dtype == "bf16":
                _fp16_to_bf16(half)
            _topological_sort(half.graph)  # the converter appends its Cast nodes at the end
            # its intermediate type annotations can disagree with blocked (float32) nodes; ORT and the
            # ONNX checker infer them again
            del half.graph.value_info[:]
            dst.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(half, str(dst))
        except Exception as exc:  # the converter and onnx raise plain exceptions
            raise BuildError(f"{self.dtype} conversion of {src.name} failed: {exc}") from exc
        return dst

    def should_run_on(
        self,
        target: Target,
        cpu: CpuInfo | None = None,
        fp32_ms: float | None = None,
        variant_ms: float | None = None,
    ) -> PrecisionDecision:
        """The decision for ``target``. On a CPU it rests on measurements (``fp32_ms`` and ``variant_ms``
        timed side by side here, see :func:`measure_on_cpu`); without them the variant is skipped."""
        if target in GPU_TARGETS:
            why = (
                "GPU tensor cores run fp16 at several times the fp32 rate"
                if self.dtype == "fp16"
                else "bf16 tensor cores (NVIDIA Ampere / sm80 and newer, recent AMD): fp32's range, half "
                "the bytes"
            )
            return PrecisionDecision(dtype=self.dtype, target=target, run=True, reason=why)
        where = cpu.summary() if cpu else "this CPU"
        if fp32_ms is None or variant_ms is None:
            return PrecisionDecision(
                dtype=self.dtype,
                target=target,
                run=False,
                reason=f"{self.dtype} on {where}: not measured here; kiln keeps a CPU half-precision "
                "variant only when ONNX Runtime runs it faster than fp32",
            )
        faster = variant_ms < fp32_ms * (1.0 - MIN_SPEEDUP)
        verdict = "faster" if faster else "not faster"
        return PrecisionDecision(
            dtype=self.dtype,
            target=target,
            run=faster,
            reason=(
                f"{self.dtype} on {where}: {variant_ms:.2f} ms vs fp32 {fp32_ms:.2f} ms (p50, interleaved) — "
                f"{verdict} by the {MIN_SPEEDUP:.0%} margin, {'kept' if faster else 'skipped'}"
            ),
            fp32_ms=fp32_ms,
            variant_ms=variant_ms,
        )


def _topological_sort(graph: object) -> None:
    """Reorder nodes so each comes after the producers of its inputs (ONNX requires it; ORT does not)."""
    from onnx import GraphProto

    assert isinstance(graph, GraphProto)
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or an outer-scope input: keep the remaining order
            ordered += rest
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _without_bf16(model: object) -> set[str]:
    """Operator types of ``model`` whose ONNX schema, at the model's opset, has no bfloat16 variant
    (Conv before opset 22, for one): those stay float32 in a BF16 graph so it remains valid ONNX."""
    from onnx import ModelProto, defs

    assert isinstance(model, ModelProto)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    missing: set[str] = set()
    for op in {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}:
        try:
            schema = defs.get_schema(op, opset)
        except Exception:  # unknown operator: leave it to the converter
            continue
        floats = [c for c in schema.type_constraints if "tensor(float)" in c.allowed_type_strs]
        if any("tensor(bfloat16)" not in c.allowed_type_strs for c in floats):
            missing.add(op)
    return missing


def _fp16_to_bf16(model: object) -> None:
    """Retype every float16 tensor, value and cast target of a converted graph to bfloat16."""
    import ml_dtypes
    from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, numpy_helper

    assert isinstance(model, ModelProto)
    f16, bf16 = TensorProto.FLOAT16, TensorProto.BFLOAT16

    def retype(t: TensorProto) -> None:
        if t.data_type == f16:
            arr = numpy_helper.to_array(t).astype(np.float32).astype(ml_dtypes.bfloat16)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    def walk(g: GraphProto) -> None:
        for t in g.initializer:
            retype(t)
        for vi in [*g.value_info, *g.input, *g.output]:
            if vi.type.tensor_type.elem_type == f16:
                vi.type.tensor_type.elem_type = bf16
        for node in g.node:
            for a in node.attribute:
                if a.name == "to" and a.type == AttributeProto.INT and a.i == f16:
                    a.i = bf16
                elif a.type == AttributeProto.TENSOR:
                    retype(a.t)
                elif a.type == AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)

    walk(model.graph)


def measure_on_cpu(
    recipe: ConvertPrecision,
    fp32_path: Path,
    variant_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    cpu: CpuInfo | None = None,
    threads: int = 0,
    seconds: float = 2.0,
) -> PrecisionDecision:
    """Load the variant on ORT's CPU provider and time it against fp32, interleaved, on ``feeds``.

    A variant ORT cannot load (no kernel for some operator in that type) is skipped with ORT's message.
    """
    from kiln.bench.latency import interleaved_latency
    from kiln.errors import BundleError
    from kiln.runtime.onnx_backend import OnnxBackend

    try:
        variant = OnnxBackend(variant_path, threads)
    except BundleError as exc:
        detail = str(exc).split("NOT_IMPLEMENTED :")[-1].strip()
        return PrecisionDecision(
            dtype=recipe.dtype,
            target="cpu",
            run=False,
            reason=f"{recipe.dtype} on {cpu.summary() if cpu else 'this CPU'}: ONNX Runtime's CPU provider "
            f"cannot run it ({detail[:200]})",
        )
    base = OnnxBackend(fp32_path, threads)

    def runner(backend: OnnxBackend) -> Callable[[], object]:
        return lambda: [backend.run(f) for f in feeds]

    stats = interleaved_latency(
        {"fp32": runner(base), "variant": runner(variant)},
        batch_size=1,
        rounds=10,
        warmup=2,
        min_time_s=seconds,
        max_time_s=max(4 * seconds, 10.0),
    )
    return recipe.should_run_on("cpu", cpu, fp32_ms=stats["fp32"].p50_ms, variant_ms=stats["variant"].p50_ms)
