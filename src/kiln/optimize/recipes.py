"""Recipes are data: a validated config per transformation, recorded in the manifest.

Each recipe's ``apply(src, dst)`` reads one ONNX file and writes a new one; ``precision`` says what
the parity gate should expect of its outputs ("exact" for float-preserving steps, "lossy" otherwise).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import BuildError
from kiln.optimize.cpu import CpuInfo
from kiln.optimize.precision import ConvertPrecision
from kiln.optimize.quant_int4 import QuantizeInt4
from kiln.optimize.quant_static import QuantizeStatic

if TYPE_CHECKING:
    from onnx import ModelProto


class _Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportOnnx(_Recipe):
    """PyTorch → ONNX with the dynamo exporter, dynamic batch and sequence axes, graph-optimised."""

    kind: Literal["export-onnx"] = "export-onnx"
    opset: int = Field(default=18, ge=17)
    optimize: bool = True
    precision: Literal["exact"] = "exact"


class QuantizeDynamic(_Recipe):
    """ONNX Runtime dynamic INT8 quantization: MatMul and fused Attention weights (activations quantized
    at run time) and Gather tables (the token embeddings, a third of a small encoder's bytes; dequantized
    on lookup). ``embeddings="int4"`` first packs the token-embedding tables to 4 bits
    (:class:`~kiln.optimize.embed4.QuantizeEmbedding4`: half of INT8's bytes, standard operators)."""

    kind: Literal["int8-dynamic"] = "int8-dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"
    op_types: tuple[str, ...] = ("MatMul", "Attention", "Gather")
    embeddings: Literal["int8", "int4"] = "int8"
    embedding_block_size: int = Field(default=128, ge=16)
    nodes_to_exclude: tuple[str, ...] = ()
    why: str = ""
    precision: Literal["lossy"] = "lossy"

    def apply(self, src: Path, dst: Path) -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source: Path | ModelProto = src
        exclude = list(self.nodes_to_exclude)
        if self.embeddings == "int4":
            import onnx

            from kiln.optimize.embed4 import NODE_PREFIX, QuantizeEmbedding4

            source = onnx.load(str(src))
            QuantizeEmbedding4(block_size=self.embedding_block_size).rewrite(source, name=src.name)
            # the packed tables' lookups (a Gather of uint8 codes, of float16 scales) stay as they are
            exclude += [n.name for n in source.graph.node if n.name.startswith(NODE_PREFIX)]
        quiet = logging.getLogger()  # ORT logs a pre-processing suggestion on the root logger
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                model_input=source,
                model_output=dst,
                op_types_to_quantize=list(self.op_types),
                per_channel=self.per_channel,
                reduce_range=self.reduce_range,
                weight_type=QuantType[self.weight_type],
                nodes_to_exclude=exclude,
            )
        except Exception as exc:  # ORT quantization raises plain exceptions
            raise BuildError(f"INT8 dynamic quantization of {src.name} failed: {exc}") from exc
        finally:
            quiet.setLevel(level)
        return dst


Recipe = Annotated[
    ExportOnnx | QuantizeDynamic | QuantizeStatic | QuantizeInt4 | ConvertPrecision,
    Field(discriminator="kind"),
]


def int8_dynamic_for(cpu: CpuInfo, embeddings: Literal["int8", "int4"] = "int8") -> QuantizeDynamic:
    """Per-channel signed weights always (per-tensor loses too much on transformer MatMuls); 7-bit
    weights (``reduce_range``) where the CPU lacks VNNI, so AVX2's U8S8 16-bit accumulation cannot
    saturate. ``embeddings="int4"``: token embeddings packed to 4 bits first."""
    tables = "; token embeddings 4-bit" if embeddings == "int4" else ""
    if cpu.has_vnni:
        return QuantizeDynamic(
            per_channel=True,
            reduce_range=False,
            embeddings=embeddings,
            why=f"VNNI present: full 8-bit weights{tables}",
        )
    return QuantizeDynamic(
        per_channel=True,
        reduce_range=True,
        embeddings=embeddings,
        why=f"no VNNI on this CPU: 7-bit weights avoid U8S8 saturation in AVX2 kernels{tables}",
    )


def int8_dynamic_per_tensor() -> QuantizeDynamic:
    """The cheapest INT8 setting (one scale per weight tensor): tried so the parity gate can judge it."""
    return QuantizeDynamic(per_channel=False, reduce_range=False, why="per-tensor scales (smallest recipe)")
