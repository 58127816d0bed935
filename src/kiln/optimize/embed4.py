"""4-bit token-embedding tables built from standard ONNX ops only.

ORT's ``GatherBlockQuantized`` (what ``MatMulNBitsQuantizer`` writes for ``Gather``) is a slow contrib
op on CPU: a lookup of a few dozen tokens can cost more than a whole quantized encoder layer. This
recipe packs each large ``Gather`` table (the token embeddings) into 4-bit codes and unpacks the looked-up
rows with plain opset-18 ops (Gather, BitwiseAnd, BitShift, Concat, Reshape, Cast, Mul, Add), so any
ORT build runs it, and only the rows asked for are ever dequantized.

Layout, per table of ``rows x hidden``:

- ``<table>_kiln_emb4_q4``: uint8 ``[rows, hidden / 2]``, two codes a byte, low nibble = even column,
  high nibble = odd column;
- ``<table>_kiln_emb4_scale`` and ``<table>_kiln_emb4_offset``: float16 ``[rows, hidden / block_size]``,
  one (scale, offset) pair per row and block of ``block_size`` columns, ``x ~ code * scale + offset``.

The offset is rounded down to float16 and the scale up, so the 16 levels always cover the block's
float32 range: the error per element is at most half a (float16) scale, plus float32 rounding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiln.errors import BuildError

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto

log = logging.getLogger(__name__)

NODE_PREFIX = "kiln_emb4_"
"""Every node (and constant) this recipe adds is named with this prefix."""
_SUFFIX_Q4 = "_kiln_emb4_q4"
_SUFFIX_SCALE = "_kiln_emb4_scale"
_SUFFIX_OFFSET = "_kiln_emb4_offset"
_MIN_OPSET = 18  # BitwiseAnd
_FP16_MAX = float(np.finfo(np.float16).max)


class QuantizeEmbedding4(BaseModel):
    """Large ``Gather`` tables (token embeddings) → 4-bit codes + float16 scale/offset per row block,
    looked up and dequantized with standard ONNX ops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["int4-embedding"] = "int4-embedding"
    block_size: int = Field(
        default=128,
        description="values per (scale, offset) pair along the hidden axis, at most; a table whose hidden "
        "size it does not divide uses the largest smaller power of two (>= 16) that does",
    )
    min_rows: int = Field(
        default=1024, ge=1, description="only tables with at least this many rows (token embeddings)"
    )
    why: str = ""
    precision: Literal["lossy"] = "lossy"

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value < 16 or value & (value - 1):
            raise ValueError(f"block_size must be a power of two of at least 16, got {value}")
        return value

    def apply(self, src: Path, dst: Path) -> Path:
        import onnx

        try:
            model = onnx.load(str(src))
        except Exception as exc:
            raise BuildError(f"4-bit embedding: cannot read {src}: {exc}") from exc
        replaced = self.rewrite(model, name=src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            onnx.save(model, str(dst))
            onnx.checker.check_model(str(dst))
        except Exception as exc:
            raise BuildError(f"4-bit embedding of {src.name} wrote an invalid model: {exc}") from exc
        for table in replaced:
            log.info(
                "4-bit embedding: %s [%d, %d] → %d bytes (was %d)",
                table.name,
                table.rows,
                table.hidden,
                table.packed_bytes,
                table.float_bytes,
            )
        return dst

    def rewrite(self, model: ModelProto, name: str = "model") -> list[PackedTable]:
        """Rewrite ``model`` in place; returns the tables packed. Raises ``BuildError`` when no table
        qualifies, the opset is below 18, a table's hidden size is not a multiple of ``block_size``,
        or a table is also read by something other than a row lookup."""
        from onnx import TensorProto, numpy_helper

        opset = _default_opset(model)
        if opset < _MIN_OPSET:
            raise BuildError(
                f"4-bit embedding of {name} needs opset {_MIN_OPSET} or later (BitwiseAnd), the model "
                f"has opset {opset}; re-export it with opset >= {_MIN_OPSET}"
            )
        graph = model.graph
        inits = {t.name: t for t in graph.initializer}
        overridable = {i.name for i in graph.input}
        lookups: dict[str, list[int]] = {}
        seen: list[str] = []
        for index, node in enumerate(graph.node):
            if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
                continue
            table = inits.get(node.input[0])
            if table is None or table.name in overridable or len(table.dims) != 2:
                continue
            if table.data_type != TensorProto.FLOAT:
                continue
            seen.append(f"{table.name} {list(table.dims)}")
            if table.dims[0] < self.min_rows or _axis(node) not in (0, -2):
                continue
            lookups.setdefault(table.name, []).append(index)
        if not lookups:
            found = f" (2-D float32 Gather tables found: {', '.join(seen)})" if seen else ""
            raise BuildError(
                f"4-bit embedding of {name}: no Gather (axis 0) reads a 2-D float32 initializer with at "
                f"least {self.min_rows} rows{found}; nothing to pack"
            )

        lookup_at = {i for at in lookups.values() for i in at}
        for table_name in lookups:
            users = _other_users(graph, table_name, lookup_at)
            if users:
                raise BuildError(
                    f"4-bit embedding of {name}: embedding table {table_name} is shared with "
                    f"{', '.join(users)}; 4-bit copy would not save bytes (the float table must stay)"
                )
            hidden = inits[table_name].dims[1]
            if block_for(hidden, self.block_size) is None:
                raise BuildError(
                    f"4-bit embedding of {name}: no power of two from 16 to block_size {self.block_size} "
                    f"divides the hidden size {hidden} of table {table_name}"
                )

        taken = {n.name for n in graph.node} | {v for n in graph.node for v in (*n.input, *n.output)}
        taken |= set(inits) | {i.name for i in graph.input} | {o.name for o in graph.output}
        namer = _Namer(taken)
        packed_tables: list[PackedTable] = []
        replacements: dict[int, list[NodeProto]] = {}
        consts = _Consts(graph, namer)
        for table_name, at in lookups.items():
            table = numpy_helper.to_array(inits[table_name])
            if not np.all(np.isfinite(table)) or np.abs(table).max(initial=0.0) > _FP16_MAX:
                raise BuildError(
                    f"4-bit embedding of {name}: table {table_name} has values that are not finite or "
                    f"beyond float16 range (|x| > {_FP16_MAX:g}); scales and offsets are stored in float16"
                )
            rows, hidden = table.shape
            block = block_for(hidden, self.block_size)
            assert block is not None  # checked above
            packed, scale, offset = quantize_table(table, block)
            names = (
                namer.fresh(table_name + _SUFFIX_Q4),
                namer.fresh(table_name + _SUFFIX_SCALE),
                namer.fresh(table_name + _SUFFIX_OFFSET),
            )
            for arr, tensor_name in zip((packed, scale, offset), names, strict=True):
                graph.initializer.append(numpy_helper.from_array(arr, tensor_name))
            for index in at:
                replacements[index] = _lookup_nodes(
                    graph.node[index],
                    names,
                    rows_hidden=(rows, hidden),
                    block=block,
                    namer=namer,
                    consts=consts,
                )
            packed_tables.append(
                PackedTable(
                    name=table_name,
                    rows=rows,
                    hidden=hidden,
                    block_size=block,
                    packed_bytes=packed.nbytes + scale.nbytes + offset.nbytes,
                    float_bytes=table.nbytes,
                )
            )

        new_nodes: list[NodeProto] = []
        for index, node in enumerate(graph.node):
            new_nodes.extend(replacements.get(index, [node]))
        del graph.node[:]
        graph.node.extend(new_nodes)
        keep = [t for t in graph.initializer if t.name not in lookups]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        return packed_tables


@dataclass(frozen=True)
class PackedTable:
    name: str
    rows: int
    hidden: int
    block_size: int
    packed_bytes: int
    float_bytes: int


def block_for(hidden: int, block_size: int) -> int | None:
    """The largest power of two from 16 to ``block_size`` that divides ``hidden`` (None: none does):
    a narrow model (hidden 32) gets blocks of 32, never a failed build."""
    block = block_size
    while block >= 16:
        if hidden % block == 0:
            return block
        block //= 2
    return None


def quantize_table(table: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[rows, hidden]`` float → (uint8 ``[rows, hidden/2]`` codes, float16 scale and offset
    ``[rows, hidden/block_size]``). Offsets round down and scales up to float16, so the 16 levels cover
    each block's range; a constant block gets scale 0."""
    rows, hidden = table.shape
    if hidden % block_size or block_size % 2:
        raise ValueError(f"block_size {block_size} must be even and divide hidden size {hidden}")
    blocks = table.astype(np.float64).reshape(rows, hidden // block_size, block_size)
    lo = blocks.min(axis=-1)
    hi = blocks.max(axis=-1)
    flat = lo == hi
    offset = _round_f16(lo, down=True)
    offset[flat] = lo[flat].astype(np.float16)  # nearest: a constant block is just its offset
    need = (hi - offset.astype(np.float64)) / 15.0
    scale = _round_f16(need, down=False)
    scale[flat] = 0
    s = scale.astype(np.float64)[..., None]
    o = offset.astype(np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s > 0, np.rint((blocks - o) / np.where(s > 0, s, 1.0)), 0.0)
    codes = np.clip(q, 0, 15).astype(np.uint8).reshape(rows, hidden)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, scale, offset


def dequantize_table(packed: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_table`, in float32, the same arithmetic as the ONNX subgraph."""
    rows, half = packed.shape
    nblocks = scale.shape[1]
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(rows, nblocks, 2 * half // nblocks)
    out = (
        codes.astype(np.float32) * scale.astype(np.float32)[..., None] + offset.astype(np.float32)[..., None]
    )
    return out.reshape(rows, 2 * half)


def dequantized_tables(model_path: Path) -> dict[str, np.ndarray]:
    """Each 4-bit table in a model this recipe wrote, by its original name, dequantized to float32."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for tensor_name, tensor in inits.items():
        if not tensor_name.endswith(_SUFFIX_Q4):
            continue
        base = tensor_name[: -len(_SUFFIX_Q4)]
        scale, offset = inits.get(base + _SUFFIX_SCALE), inits.get(base + _SUFFIX_OFFSET)
        if scale is None or offset is None:
            continue
        out[base] = dequantize_table(
            numpy_helper.to_array(tensor), numpy_helper.to_array(scale), numpy_helper.to_array(offset)
        )
    return out


def _round_f16(values: np.ndarray, *, down: bool) -> np.ndarray:
    """float64 → float16, rounded toward -inf (``down``) or +inf."""
    half = values.astype(np.float16)
    back = half.astype(np.float64)
    if down:
        bad = back > values
        half[bad] = np.nextafter(half[bad], np.float16(-np.inf))
    else:
        bad = back < values
        half[bad] = np.nextafter(half[bad], np.float16(np.inf))
    return half


def _default_opset(model: ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _axis(node: NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 0


def _other_users(graph: GraphProto, tensor: str, lookups: set[int]) -> list[str]:
    """Everything but the row lookups (top-level node indices) that reads ``tensor``: nodes, subgraphs
    included, and graph outputs."""
    from onnx import AttributeProto

    users: list[str] = []

    def walk(g: GraphProto, top: bool) -> None:
        for index, node in enumerate(g.node):
            if not (top and index in lookups) and tensor in node.input:
                users.append(f"{node.op_type} node {node.name or '(unnamed)'}")
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    walk(attr.g, False)
                elif attr.type == AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        walk(sub, False)

    walk(graph, True)
    users += [f"graph output {o.name}" for o in graph.output if o.name == tensor]
    return users


class _Namer:
    def __init__(self, taken: set[str]) -> None:
        self._taken = set(taken)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._taken:
            name, i = f"{base}_{i}", i + 1
        self._taken.add(name)
        return name


class _Consts:
    """Small int64 / uint8 constant initializers, one per distinct value."""

    def __init__(self, graph: GraphProto, namer: _Namer) -> None:
        self._graph = graph
        self._namer = namer
        self._made: dict[tuple[str, tuple[int, ...]], str] = {}

    def get(self, dtype: type[np.generic], values: tuple[int, ...], scalar: bool = False) -> str:
        from onnx import numpy_helper

        key = (np.dtype(dtype).name + ("s" if scalar else ""), values)
        if key not in self._made:
            arr = np.array(values[0] if scalar else values, dtype=dtype)
            label = "_".join(str(v).replace("-", "m") for v in values)
            name = self._namer.fresh(f"{NODE_PREFIX}{np.dtype(dtype).name}_{label}")
            self._graph.initializer.append(numpy_helper.from_array(arr, name))
            self._made[key] = name
        return self._made[key]


def _lookup_nodes(
    gather: NodeProto,
    tables: tuple[str, str, str],
    *,
    rows_hidden: tuple[int, int],
    block: int,
    namer: _Namer,
    consts: _Consts,
) -> list[NodeProto]:
    """The nodes that replace ``gather``: look up packed rows, unpack, scale, offset, and reshape to
    ``ids.shape + [hidden]`` (any rank of ids, scalar included), writing the Gather's output name."""
    from onnx import TensorProto, helper

    packed, scale, offset = tables
    _, hidden = rows_hidden
    nblocks = hidden // block
    ids = gather.input[1]
    base = gather.name or gather.output[0]
    tag = namer.fresh(f"{NODE_PREFIX}{base}")

    def t(label: str) -> str:
        return namer.fresh(f"{tag}/{label}")

    axes_last = consts.get(np.int64, (-1,))
    nodes: list[NodeProto] = []

    def node(op: str, inputs: list[str], label: str, **attrs: Any) -> str:
        out = t(label)
        nodes.append(helper.make_node(op, inputs, [out], name=namer.fresh(f"{tag}/{op}_{label}"), **attrs))
        return out

    # The bit ops run on [..., hidden/2] on purpose: ORT's elementwise kernels loop once per innermost
    # span, so the same ops on [..., k, 1] (one byte a span) measured ~110 us each instead of ~2 us.
    # For the same reason the nibbles are interleaved by one Concat and never by a broadcast BitShift.
    codes = node("Gather", [packed, ids], "codes", axis=0)
    low = node("BitwiseAnd", [codes, consts.get(np.uint8, (15,), scalar=True)], "low")
    high = node("BitShift", [codes, consts.get(np.uint8, (4,), scalar=True)], "high", direction="RIGHT")
    low1 = node("Unsqueeze", [low, axes_last], "low_1")
    high1 = node("Unsqueeze", [high, axes_last], "high_1")
    pairs = node("Concat", [low1, high1], "pairs", axis=-1)
    ids_shape = node("Shape", [ids], "ids_shape")
    blocked_shape = node(
        "Concat", [ids_shape, consts.get(np.int64, (nblocks, block))], "blocked_shape", axis=0
    )
    blocked = node("Reshape", [pairs, blocked_shape], "blocked", allowzero=1)
    levels = node("Cast", [blocked], "levels", to=TensorProto.FLOAT)
    scale16 = node("Gather", [scale, ids], "scale16", axis=0)
    scale32 = node("Cast", [scale16], "scale32", to=TensorProto.FLOAT)
    scale1 = node("Unsqueeze", [scale32, axes_last], "scale_1")
    scaled = node("Mul", [levels, scale1], "scaled")
    offset16 = node("Gather", [offset, ids], "offset16", axis=0)
    offset32 = node("Cast", [offset16], "offset32", to=TensorProto.FLOAT)
    offset1 = node("Unsqueeze", [offset32, axes_last], "offset_1")
    values = node("Add", [scaled, offset1], "values")
    out_shape = node("Concat", [ids_shape, consts.get(np.int64, (hidden,))], "out_shape", axis=0)
    nodes.append(
        helper.make_node(
            "Reshape",
            [values, out_shape],
            [gather.output[0]],
            name=namer.fresh(f"{tag}/Reshape_out"),
            allowzero=1,
        )
    )
    return nodes
