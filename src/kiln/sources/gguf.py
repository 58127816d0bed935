"""A small reader for GGUF (v2/v3) headers: metadata key/values and tensor infos, never tensor data.

Layout (little-endian, or big-endian when the version reads byte-swapped)::

    "GGUF"  u32 version  u64 tensor_count  u64 metadata_kv_count
    metadata_kv_count x (string key, u32 value_type, value)
    tensor_count x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    padding to ``general.alignment`` (default 32), then the tensor data

Strings are a u64 length then UTF-8 bytes. Arrays are (u32 item_type, u64 count, items).
Every count and length is checked against the file size, so a corrupt file gives
:class:`kiln.errors.UnsupportedFormatError`, never a huge allocation or a traceback.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kiln.errors import UnsupportedFormatError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_KEEP_ARRAY = 64  # arrays longer than this keep only their length (vocabularies run to 100k+ strings)

# GGUF metadata value types: id -> struct code (fixed-size ones)
_FIXED: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9

QK_K = 256
# ggml tensor type id -> (name, elements per block, bytes per block), as in llama.cpp's gguf-py
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 2 + 2 + 32),
    10: ("Q2_K", 256, 2 + 2 + QK_K // 16 + QK_K // 4),
    11: ("Q3_K", 256, 2 + QK_K // 4 + QK_K // 8 + 12),
    12: ("Q4_K", 256, 2 + 2 + QK_K // 2 + 12),
    13: ("Q5_K", 256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    14: ("Q6_K", 256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    15: ("Q8_K", 256, 4 + QK_K + QK_K // 8),
    16: ("IQ2_XXS", 256, 2 + QK_K // 4),
    17: ("IQ2_XS", 256, 2 + QK_K // 4 + QK_K // 32),
    18: ("IQ3_XXS", 256, 2 + QK_K // 4 + QK_K // 8),
    19: ("IQ1_S", 256, 2 + QK_K // 8 + QK_K // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", 256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    22: ("IQ2_S", 256, 2 + QK_K // 4 + QK_K // 16),
    23: ("IQ4_XS", 256, 2 + 2 + QK_K // 2 + QK_K // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 2 + 4 * 13),
    35: ("TQ2_0", 256, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
}


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its item type, its length, and its items when short (``MAX_KEEP_ARRAY``)."""

    item_type: int
    length: int
    items: list[object] | None = None


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        info = GGML_TYPES.get(self.ggml_type)
        return info[0] if info else f"ggml_type_{self.ggml_type}"

    @property
    def nbytes(self) -> int | None:
        info = GGML_TYPES.get(self.ggml_type)
        if info is None:
            return None
        _, block, size = info
        return math.ceil(self.numel / block) * size


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    byteorder: str  # "<" or ">"
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_offset: int = 0

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def arch_value(self, key: str) -> object | None:
        """``{general.architecture}.{key}``, e.g. ``arch_value("context_length")``."""
        arch = self.architecture
        return self.metadata.get(f"{arch}.{key}") if arch else None


class _Reader:
    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path, self.bo = f, size, path, "<"

    def fail(self, why: str) -> UnsupportedFormatError:
        return UnsupportedFormatError(
            f"{self.path} is a GGUF file but {why} (at byte {self.f.tell()}); it is corrupt or truncated "
            "(download or convert it again)"
        )

    def take(self, n: int) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise self.fail(f"needs {n} more bytes than the file holds")
        return self.f.read(n)

    def unpack(self, code: str) -> object:
        fmt = self.bo + code
        value: object = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def u32(self) -> int:
        return int(self.unpack("I"))  # type: ignore[call-overload]

    def u64(self) -> int:
        return int(self.unpack("Q"))  # type: ignore[call-overload]

    def count(self, what: str, min_item_bytes: int) -> int:
        n = self.u64()
        if n * max(min_item_bytes, 1) > self.size - self.f.tell():
            raise self.fail(f"claims {n} {what}, more than the file can hold")
        return n

    def string(self) -> str:
        n = self.count("string bytes", 1)
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> object:
        if vtype in _FIXED:
            return self.unpack(_FIXED[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.u32()
            if item_type not in _FIXED and item_type not in (_STRING, _ARRAY):
                raise self.fail(f"has an array of unknown value type {item_type}")
            item_size = struct.calcsize(self.bo + _FIXED[item_type]) if item_type in _FIXED else 8
            n = self.count("array items", item_size)
            if n > MAX_KEEP_ARRAY and item_type in _FIXED:
                self.f.seek(n * item_size, 1)
                return GGUFArray(item_type, n)
            items = [self.value(item_type) for _ in range(n)]
            return GGUFArray(item_type, n, items if n <= MAX_KEEP_ARRAY else None)
        raise self.fail(f"has a metadata value of unknown type {vtype}")


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parse the metadata and tensor infos of a GGUF file; check that the tensor data fits in the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f, size, path)
        if f.read(4) != GGUF_MAGIC:
            raise UnsupportedFormatError(f"{path} is not a GGUF file (no GGUF magic bytes)")
        if size < 24:
            raise r.fail(f"is only {size} bytes long")
        version = r.u32()
        if version not in (1, 2, 3):
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            if swapped in (2, 3):
                r.bo, version = ">", swapped
        if version == 1:
            raise UnsupportedFormatError(
                f"{path} is GGUF version 1, which kiln does not read; convert it with a current llama.cpp"
            )
        if version not in (2, 3):
            raise r.fail(f"has unknown version {version}")
        n_tensors = r.count("tensors", 8 + 4 + 8 + 4 + 8)
        n_kv = r.count("metadata entries", 8 + 4)
        metadata: dict[str, object] = {}
        for _ in range(n_kv):
            key = r.string()
            metadata[key] = r.value(r.u32())
        tensors: list[GGUFTensor] = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            if n_dims > 8:
                raise r.fail(f"gives tensor {name!r} {n_dims} dimensions")
            shape = tuple(r.u64() for _ in range(n_dims))
            ggml_type = r.u32()
            offset = r.u64()
            tensors.append(GGUFTensor(name=name, shape=shape, ggml_type=ggml_type, offset=offset))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise r.fail(f"has an invalid general.alignment {alignment!r}")
        data_offset = -(-f.tell() // alignment) * alignment
    need = max((t.offset + (t.nbytes or 0) for t in tensors), default=0)
    if data_offset + need > size:
        raise UnsupportedFormatError(
            f"{path} is a GGUF file but its tensors need {data_offset + need} bytes and the file has {size}; "
            "it is truncated (download or convert it again)"
        )
    return GGUFHeader(
        path=path,
        version=version,
        byteorder=r.bo,
        metadata=metadata,
        tensors=tensors,
        data_offset=data_offset,
    )
