"""INT8 static quantization in QDQ format: activation ranges fixed ahead of time from calibration data.

Settings follow ONNX Runtime's quantization guide ("Data type selection", "When to use reduce-range"):
S8S8 in QDQ format is the recommended default. On x86 CPUs without VNNI, ORT's U8S8 kernels multiply
with ``VPMADDUBSW``, whose 16-bit intermediate sums can saturate; ``reduce_range`` (7-bit weights) avoids
that, at a small cost in weight precision, and is not needed where VNNI (or AMX) exists or on ARM.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kiln.errors import BuildError
from kiln.optimize.cpu import CpuInfo
from kiln.optimize.graph_index import GraphIndex

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader

CalibrationMethodName = Literal["MinMax", "Entropy", "Percentile"]
IntType = Literal["QInt8", "QUInt8"]


class QuantizeStatic(BaseModel):
    """ONNX Runtime static INT8 quantization (``quantize_static``, QDQ format).

    ``apply`` needs a calibration reader (:class:`kiln.optimize.calibration.CalibrationReader`) built by
    the caller from data kept apart from the held-out split; ``calibration_note`` records where it came
    from so the manifest says how to rebuild the variant.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["int8-static"] = "int8-static"
    calibration_method: CalibrationMethodName = "Percentile"
    percentile: float = Field(default=99.999, gt=90.0, le=100.0, description="Percentile method only")
    per_channel: bool = True
    activation_type: IntType = "QInt8"
    weight_type: IntType = "QInt8"
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Conv", "Gemm")
    nodes_to_exclude: tuple[str, ...] = ()
    preprocess: bool = True
    calibration_note: str = ""
    why: str = ""
    precision: Literal["lossy"] = "lossy"

    @model_validator(mode="after")
    def _supported_types(self) -> QuantizeStatic:
        if self.activation_type == "QInt8" and self.weight_type == "QUInt8":
            raise ValueError(
                "S8 activations with U8 weights have no ONNX Runtime kernels: use QInt8/QInt8 (S8S8), "
                "QUInt8/QInt8 (U8S8) or QUInt8/QUInt8 (U8U8)"
            )
        if not self.op_types:
            raise ValueError("op_types is empty: name the operators to quantize, e.g. MatMul, Conv")
        return self

    def apply(self, src: Path, dst: Path, calibration: CalibrationDataReader | None = None) -> Path:
        """Calibrate on ``calibration`` (rewound first) and write the QDQ model to ``dst``."""
        if calibration is None:
            raise BuildError(
                "INT8 static quantization needs calibration data: pass a CalibrationReader built from "
                "encoded batches that are not part of the held-out split"
            )
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        dst.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()  # ORT logs pre-processing advice and progress on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        work = Path(tempfile.mkdtemp(prefix="kiln-qstatic-"))
        try:
            model_in = _preprocessed(src, work) if self.preprocess else src
            calibration.rewind()
            with contextlib.redirect_stdout(io.StringIO()):  # calibrators print progress
                quantize_static(
                    model_input=model_in,
                    model_output=dst,
                    calibration_data_reader=calibration,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(self.op_types),
                    per_channel=self.per_channel,
                    reduce_range=self.reduce_range,
                    activation_type=QuantType[self.activation_type],
                    weight_type=QuantType[self.weight_type],
                    nodes_to_exclude=list(self.nodes_to_exclude),
                    calibrate_method=CalibrationMethod[self.calibration_method],
                    extra_options={"CalibPercentile": self.percentile},
                )
            unquantize_graph_outputs(dst)
        except BuildError:
            raise
        except Exception as exc:  # ORT quantization raises plain exceptions
            raise BuildError(f"INT8 static quantization of {src.name} failed: {exc}") from exc
        finally:
            root.setLevel(level)
            shutil.rmtree(work, ignore_errors=True)
        return dst


def unquantize_graph_outputs(path: Path) -> int:
    """Drop the QuantizeLinear/DequantizeLinear pair ORT puts on each graph output, in place; returns
    how many. Rounding what the model hands back saves nothing (the caller wants floats) and costs the
    answer: EfficientNet-Lite0's logits rounded to 8 bits flipped 4 points of top-1 agreement with fp32
    on near ties (benchmarks/image_classify.py). ORT then fuses the last operator with a float output
    (QGemm without an output scale, or Conv in float)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    index = GraphIndex(graph)
    dropped = 0
    for out in graph.output:
        dq = index.node(out.name, "DequantizeLinear")
        q = index.node(dq.input[0], "QuantizeLinear") if dq is not None else None
        if q is None or q.input[0] not in index.producer:  # not a pair, or it rounds a graph input
            continue
        if len(index.consumers.get(q.output[0], [])) != 1:
            continue  # the rounded tensor feeds more than the output: leave the graph as it is
        source = q.input[0]
        for node in index.consumers.get(source, []):  # other readers of the float tensor read the output
            node.input[:] = [out.name if name == source else name for name in node.input]
        src_node = index.producer[source]
        src_node.output[:] = [out.name if name == source else name for name in src_node.output]
        graph.node.remove(q)
        graph.node.remove(dq)
        stale = [v for v in graph.value_info if v.name == source]
        for v in stale:
            graph.value_info.remove(v)
        dropped += 1
    if dropped:
        used = {name for node in graph.node for name in node.input}
        for t in [t for t in graph.initializer if t.name not in used]:  # the pairs' scales, zero points
            graph.initializer.remove(t)
        onnx.save(model, str(path))
    return dropped


def _preprocessed(src: Path, work: Path) -> Path:
    """ORT's pre-processing (graph optimisation + ONNX shape inference) where it succeeds, else ``src``.

    Symbolic shape inference is skipped: it gives up on dynamo-exported transformer graphs ("Incomplete
    symbolic shape inference"), whose shapes the exporter already recorded.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception:  # pre-processing is an optimisation; quantizing the graph as it is still works
        return src
    return out if out.is_file() else src


def _is_x86(cpu: CpuInfo) -> bool:
    return bool({"sse2", "avx", "avx2"} & cpu.flags)


def int8_static_for(
    cpu: CpuInfo,
    calibration_method: CalibrationMethodName = "Percentile",
    per_channel: bool = True,
    op_types: tuple[str, ...] = ("MatMul", "Conv", "Gemm"),
) -> QuantizeStatic:
    """S8S8 QDQ everywhere (ORT's recommended default); 7-bit weights on x86 without VNNI so the U8S8
    kernels ORT runs there cannot saturate."""
    scale = "per-channel" if per_channel else "per-tensor"
    if cpu.has_vnni:
        why = f"S8S8 QDQ, {scale}: VNNI/AMX present, full 8-bit weights cannot saturate"
        reduce_range = False
    elif _is_x86(cpu):
        why = (
            f"S8S8 QDQ, {scale}, reduce_range: x86 without VNNI multiplies U8S8 with VPMADDUBSW, whose "
            "16-bit sums can saturate; 7-bit weights avoid it"
        )
        reduce_range = True
    else:
        why = f"S8S8 QDQ, {scale}: not x86, no VPMADDUBSW saturation path"
        reduce_range = False
    return QuantizeStatic(
        calibration_method=calibration_method,
        per_channel=per_channel,
        activation_type="QInt8",
        weight_type="QInt8",
        reduce_range=reduce_range,
        op_types=op_types,
        why=why,
    )
