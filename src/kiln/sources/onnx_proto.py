"""Read what kiln needs from an ONNX file by walking its protobuf wire format, without the ``onnx`` package.

Only field tags and lengths are read; tensor payloads (``raw_data``) are skipped with a seek, so a
500 MB model costs a few thousand small reads. The fields used (from onnx.proto3)::

    ModelProto   1 ir_version  2 producer_name  3 producer_version  7 graph  8 opset_import  14 metadata_props
    GraphProto   5 initializer (TensorProto)  15 sparse_initializer (SparseTensorProto)
    TensorProto  1 dims  2 data_type  8 name  13 external_data (key/value)  14 data_location (1 = EXTERNAL)
    SparseTensorProto  1 values (TensorProto)  3 dims

Initializers of sub-graphs (If/Loop bodies) and tensors held in Constant nodes are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kiln.errors import UnsupportedFormatError

# ModelProto field number -> wire type (0 varint, 2 length-delimited)
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_MAX_IR_VERSION = 100
_MAX_TOP_FIELDS = 100_000
_MAX_STRING = 1 << 16

# TensorProto.DataType -> kiln dtype name
ONNX_DTYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8_e4m3fn",
    18: "float8_e4m3fnuz",
    19: "float8_e5m2",
    20: "float8_e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4_e2m1",
    24: "float8_e8m0fnu",
}


class _WireError(Exception):
    """The bytes are not valid protobuf wire format."""


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    value: int  # the varint's value, or the payload length for length-delimited fields
    offset: int  # where a length-delimited payload starts


@dataclass(frozen=True)
class OnnxTensor:
    name: str
    dims: tuple[int, ...]
    data_type: int
    external_location: str | None = None
    sparse: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.dims)

    @property
    def dtype(self) -> str:
        return ONNX_DTYPES.get(self.data_type, f"onnx_type_{self.data_type}")


@dataclass(frozen=True)
class OnnxModelInfo:
    path: Path
    ir_version: int
    producer_name: str = ""
    producer_version: str = ""
    opsets: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    initializers: list[OnnxTensor] = field(default_factory=list)

    @property
    def external_locations(self) -> list[str]:
        return sorted({t.external_location for t in self.initializers if t.external_location is not None})


class _Wire:
    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size

    def varint(self, end: int) -> int:
        result, shift = 0, 0
        for _ in range(10):
            if self.f.tell() >= end:
                raise _WireError("a number runs past the end of its message")
            byte = self.f.read(1)[0]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
        raise _WireError("a number is longer than 10 bytes")

    def fields(self, start: int, end: int) -> Iterator[_Field]:
        pos = start
        while pos < end:
            self.f.seek(pos)
            key = self.varint(end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _WireError("a field has number 0")
            if wire == 0:
                value, offset = self.varint(end), 0
                nxt = self.f.tell()
            elif wire in (1, 5):
                value, offset = 0, 0
                nxt = self.f.tell() + (8 if wire == 1 else 4)
            elif wire == 2:
                value = self.varint(end)
                offset = self.f.tell()
                nxt = offset + value
            else:
                raise _WireError(f"field {number} has unsupported wire type {wire}")
            if nxt > end:
                raise _WireError(f"field {number} runs {nxt - end} bytes past the end of its message")
            yield _Field(number, wire, value, offset)
            pos = nxt

    def read(self, fld: _Field, limit: int = _MAX_STRING) -> bytes:
        self.f.seek(fld.offset)
        return self.f.read(min(fld.value, limit))

    def text(self, fld: _Field) -> str:
        return self.read(fld).decode("utf-8", errors="replace")

    def packed_varints(self, fld: _Field) -> list[int]:
        self.f.seek(fld.offset)
        end = fld.offset + fld.value
        out = []
        while self.f.tell() < end:
            out.append(self.varint(end))
        return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _tensor(w: _Wire, msg: _Field, *, sparse: bool = False) -> OnnxTensor:
    name, dims, data_type, location, external = "", [], 0, None, False
    for fld in w.fields(msg.offset, msg.offset + msg.value):
        if fld.number == 1:
            dims.extend(w.packed_varints(fld) if fld.wire == 2 else [fld.value])
        elif fld.number == 2 and fld.wire == 0:
            data_type = fld.value
        elif fld.number == 8 and fld.wire == 2:
            name = w.text(fld)
        elif fld.number == 13 and fld.wire == 2:
            key = value = ""
            for kv in w.fields(fld.offset, fld.offset + fld.value):
                if kv.number == 1 and kv.wire == 2:
                    key = w.text(kv)
                elif kv.number == 2 and kv.wire == 2:
                    value = w.text(kv)
            if key == "location":
                location = value
        elif fld.number == 14 and fld.wire == 0:
            external = fld.value == 1
    return OnnxTensor(
        name=name,
        dims=tuple(_signed64(d) for d in dims),
        data_type=data_type,
        external_location=location if external else None,
        sparse=sparse,
    )


def _sparse_tensor(w: _Wire, msg: _Field) -> OnnxTensor | None:
    for fld in w.fields(msg.offset, msg.offset + msg.value):
        if fld.number == 1 and fld.wire == 2:  # values: the stored (non-zero) elements
            return _tensor(w, fld, sparse=True)
    return None


def _corrupt(path: Path, why: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"{path} starts like an ONNX model but {why}; the file is corrupt or truncated (export it again)"
    )


def _top_level(w: _Wire, path: Path) -> list[_Field] | None:
    """The ModelProto's top-level fields; None when the bytes do not start like an ONNX model."""
    w.f.seek(0)
    first = w.f.read(1)
    if first != b"\x08":  # field 1 (ir_version), varint: protobuf writes fields in number order
        return None
    try:
        ir_version = w.varint(w.size)
    except _WireError:
        return None
    if not 1 <= ir_version <= _MAX_IR_VERSION:
        return None
    out: list[_Field] = []
    try:
        for fld in w.fields(0, w.size):
            if _MODEL_FIELDS.get(fld.number) != fld.wire:
                raise _WireError(f"it has field {fld.number} (wire type {fld.wire}), which ModelProto lacks")
            out.append(fld)
            if len(out) > _MAX_TOP_FIELDS:
                raise _WireError("it has too many top-level fields")
    except _WireError as exc:
        raise _corrupt(path, str(exc)) from None
    if not any(f.number == 7 for f in out):
        raise _corrupt(path, "it has no graph")
    return out


def looks_like_onnx(path: Path) -> bool:
    """True for an ONNX ModelProto; False when the bytes are something else.

    Raises UnsupportedFormatError when the file starts like ONNX but is corrupt or truncated.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return _top_level(_Wire(f, path.stat().st_size), path) is not None


def read_onnx_info(path: Path) -> OnnxModelInfo:
    """Producer, opsets, metadata and initializers (names, dims, dtypes, external-data locations)."""
    path = Path(path)
    with open(path, "rb") as f:
        w = _Wire(f, path.stat().st_size)
        top = _top_level(w, path)
        if top is None:
            raise UnsupportedFormatError(f"{path} is not an ONNX model")
        try:
            return _model_info(w, path, top)
        except _WireError as exc:
            raise _corrupt(path, str(exc)) from None


def _model_info(w: _Wire, path: Path, top: list[_Field]) -> OnnxModelInfo:
    ir_version, producer, producer_version = 0, "", ""
    opsets: dict[str, int] = {}
    metadata: dict[str, str] = {}
    initializers: list[OnnxTensor] = []
    for fld in top:
        if fld.number == 1:
            ir_version = fld.value
        elif fld.number == 2:
            producer = w.text(fld)
        elif fld.number == 3:
            producer_version = w.text(fld)
        elif fld.number in (8, 14):
            a, b = "", ""
            va = 0
            for sub in w.fields(fld.offset, fld.offset + fld.value):
                if sub.number == 1 and sub.wire == 2:
                    a = w.text(sub)
                elif sub.number == 2 and sub.wire == 2:
                    b = w.text(sub)
                elif sub.number == 2 and sub.wire == 0:
                    va = sub.value
            if fld.number == 8:
                opsets[a or "ai.onnx"] = va
            else:
                metadata[a] = b
        elif fld.number == 7:
            for g in w.fields(fld.offset, fld.offset + fld.value):
                if g.number == 5 and g.wire == 2:
                    initializers.append(_tensor(w, g))
                elif g.number == 15 and g.wire == 2:
                    sparse = _sparse_tensor(w, g)
                    if sparse is not None:
                        initializers.append(sparse)
    return OnnxModelInfo(
        path=path,
        ir_version=ir_version,
        producer_name=producer,
        producer_version=producer_version,
        opsets=opsets,
        metadata=metadata,
        initializers=initializers,
    )
