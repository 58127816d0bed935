"""Read a safetensors header (names, dtypes, shapes) without touching the tensor data.

Layout: 8 bytes little-endian u64 ``N``, then ``N`` bytes of JSON ``{name: {dtype, shape, data_offsets}}``
(plus an optional ``__metadata__`` of strings), then the raw data. Offsets are relative to the data start.

Sanity limits (a header past them is refused, not trusted): at most ``MAX_HEADER_BYTES`` of header and
``MAX_TENSORS`` tensors of at most ``MAX_DIMS`` dimensions; every tensor's byte span matches its dtype and
shape, lies inside the file, and no two tensors overlap.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import UnsupportedFormatError

MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces
MAX_TENSORS = 1_000_000  # far more than any real checkpoint (a 405B model shard holds a few thousand)
MAX_DIMS = 64

# bytes per element; sub-byte types as fractions
DTYPE_WIDTH: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}

# safetensors dtype -> the name kiln uses everywhere (torch-style)
DTYPE_NAME: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
    "C64": "complex64",
    "F4": "float4_e2m1",
    "F6_E2M3": "float6_e2m3",
    "F6_E3M2": "float6_e3m2",
}


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str  # as written in the file, e.g. "F32"
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_bytes: int
    data_bytes: int
    tensors: dict[str, SafetensorsTensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def looks_like_safetensors(head: bytes) -> bool:
    """True when the first bytes have the safetensors shape: a plausible u64 length, then ``{``."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER_BYTES


def _corrupt(path: Path, why: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"{path} looks like a safetensors file but {why}; the file is corrupt or truncated "
        "(download or export it again)"
    )


def _tensor(path: Path, name: str, info: object) -> SafetensorsTensor:
    if not isinstance(info, dict):
        raise _corrupt(path, f"the header entry for {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise _corrupt(path, f"tensor {name!r} has no dtype")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _corrupt(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
    t = SafetensorsTensor(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0], end=offsets[1])
    width = DTYPE_WIDTH.get(dtype)
    if width is not None and t.end - t.begin != math.ceil(t.numel * width):
        raise _corrupt(
            path,
            f"tensor {name!r} ({dtype} {list(shape)}) spans {t.end - t.begin} bytes, not {t.numel * width:g}",
        )
    return t


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and check the header of ``path``; UnsupportedFormatError when it is corrupt or truncated."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"it is only {size} bytes long")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise _corrupt(path, f"its header claims {n} bytes (more than {MAX_HEADER_BYTES})")
        if 8 + n > size:
            raise _corrupt(
                path, f"its header claims {n} bytes but the file has only {size - 8} after the length"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")

    metadata_raw = header.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in metadata_raw.items()} if isinstance(metadata_raw, dict) else {}
    if len(header) > MAX_TENSORS:
        raise _corrupt(path, f"its header lists {len(header)} tensors (more than {MAX_TENSORS})")
    tensors = {name: _tensor(path, name, info) for name, info in header.items()}
    data_bytes = size - 8 - n
    end = max((t.end for t in tensors.values()), default=0)
    if end > data_bytes:
        raise _corrupt(path, f"its tensors need {end} bytes of data but only {data_bytes} are present")
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise _corrupt(path, f"tensors {name_a!r} and {name_b!r} overlap in the data")
    return SafetensorsHeader(
        path=path, header_bytes=n, data_bytes=data_bytes, tensors=tensors, metadata=metadata
    )
