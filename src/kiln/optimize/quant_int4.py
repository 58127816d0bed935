"""INT4 weight-only quantization: MatMul weights packed into ONNX Runtime's ``MatMulNBits`` blocks.

Each block of ``block_size`` weights along the reduction axis gets its own scale (and, asymmetric, its own
zero point); activations stay float. ``accuracy_level`` picks the compute type of the kernel: 4 lets
ORT quantize activations to int8 per block and use its integer kernels (AVX2 / AVX-512 VNNI on x86,
dot-product instructions on ARM), 0 leaves the choice to ORT (float compute).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiln.errors import BuildError
from kiln.optimize.cpu import CpuInfo


class QuantizeInt4(BaseModel):
    """ORT ``MatMulNBitsQuantizer`` with the default (round-to-nearest) algorithm."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["int4-weight-only"] = "int4-weight-only"
    block_size: int = Field(default=32, description="weights per scale; a power of two, 16 to 256")
    symmetric: bool = True
    accuracy_level: Literal[0, 1, 2, 3, 4] = 0
    op_types: tuple[Literal["MatMul", "Gather"], ...] = Field(
        default=("MatMul", "Gather"), description="Gather: embedding tables, packed as GatherBlockQuantized"
    )
    gemm_as_matmul: bool = Field(
        default=True, description="rewrite Gemm with a constant weight as MatMul (+ Add) so it is packed too"
    )
    nodes_to_exclude: tuple[str, ...] = ()
    why: str = ""
    precision: Literal["lossy"] = "lossy"

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value > 256 or value & (value - 1):
            raise ValueError(
                f"block_size must be a power of two from 16 to 256 (MatMulNBits blocks), got {value}"
            )
        return value

    def apply(self, src: Path, dst: Path) -> Path:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            model = onnx.load(str(src))
            if self.gemm_as_matmul:
                _gemm_to_matmul(model)
            config = DefaultWeightOnlyQuantConfig(
                block_size=self.block_size,
                is_symmetric=self.symmetric,
                accuracy_level=self.accuracy_level,
                op_types_to_quantize=tuple(self.op_types),
                quant_axes=(("MatMul", 0), ("Gather", 1)),
            )
            quantizer = MatMulNBitsQuantizer(
                model, nodes_to_exclude=list(self.nodes_to_exclude), algo_config=config
            )
            quantizer.process()
            dst.parent.mkdir(parents=True, exist_ok=True)
            quantizer.model.save_model_to_file(str(dst), False)
        except Exception as exc:  # ORT quantization raises plain exceptions
            raise BuildError(f"INT4 weight-only quantization of {src.name} failed: {exc}") from exc
        finally:
            root.setLevel(level)
        if not _has_nbits(dst):
            raise BuildError(
                f"INT4 quantization left {src.name} unchanged: no MatMul or Gather has a constant 2-D "
                "weight to pack"
            )
        return dst


def _gemm_to_matmul(model: object) -> int:
    """Rewrite each plain ``Gemm`` (alpha = beta = 1, A not transposed, constant B) as MatMul + Add,
    the MatMul keeping the Gemm's name so ``nodes_to_exclude`` still names it. Returns how many."""
    from onnx import ModelProto, helper, numpy_helper

    assert isinstance(model, ModelProto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes = []
    replaced: set[str] = set()
    count = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
            and node.input[1] in inits
        )
        if not plain:
            new_nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            arr = numpy_helper.to_array(inits[weight]).T.copy()
            replaced.add(weight)
            weight = f"{weight}_kiln_t"
            graph.initializer.append(numpy_helper.from_array(arr, weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        out = node.output[0]
        mm_out = f"{out}_kiln_mm" if bias else out
        new_nodes.append(helper.make_node("MatMul", [node.input[0], weight], [mm_out], name=node.name))
        if bias:
            new_nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=f"{node.name}_bias"))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [t for t in graph.initializer if t.name not in replaced or t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return count


def _has_nbits(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("MatMulNBits", "GatherBlockQuantized") for n in model.graph.node)


def int4_for(cpu: CpuInfo, block_size: int = 32, symmetric: bool = True) -> QuantizeInt4:
    """Integer compute (accuracy level 4) where the CPU has int8 dot products, float compute elsewhere."""
    if cpu.has_vnni or cpu.has_avx2 or "asimddp" in cpu.flags:
        level: Literal[0, 4] = 4
        why = "int8 compute (accuracy_level 4): ORT has int8 dot-product kernels for this CPU (VNNI/AVX2/dot)"
    else:
        level = 0
        why = "float compute (accuracy_level 0): no int8 dot-product instructions detected"
    mode = "symmetric" if symmetric else "asymmetric"
    return QuantizeInt4(
        block_size=block_size,
        symmetric=symmetric,
        accuracy_level=level,
        why=f"{why}; {mode}, block {block_size}",
    )
