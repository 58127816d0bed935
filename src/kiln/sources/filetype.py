"""Tell a model file's format by its content, never by its extension.

    "safetensors"  8-byte little-endian header length, then a JSON header (checked against the file size)
    "pytorch-zip"  a zip archive holding a ``data.pkl`` (torch.save since 1.6)
    "pickle"       a pickle stream of any protocol: 2-5 start with the PROTO opcode (0x80); 0 and 1 have no
                   magic number and are told by parsing their opcodes (legacy torch.save, joblib, pickle)
    "npy"          a NumPy array file (magic ``\\x93NUMPY``)
    "npz"          a zip archive whose members are all .npy arrays (``numpy.savez``)
    "zip"          any other zip archive, whatever its name ("zip in disguise")
    "tar"          a POSIX tar archive (``ustar`` at byte 257); very old torch.save wrote these
    "7z"           a 7-Zip archive
    "compressed"   a gzip, bz2, xz or lzma stream (joblib's compressed dumps, among others)
    "onnx"         a protobuf ModelProto (ir_version first, a graph present)
    "gguf"         the magic bytes ``GGUF``
    "hf-folder"    a folder with a config.json
    "unknown"      anything else

Files that start like a known format but are corrupt or truncated raise
:class:`kiln.errors.UnsupportedFormatError` with a message saying so.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

from kiln.errors import ModelNotFoundError, SourceError, UnsupportedFormatError
from kiln.sources.gguf import GGUF_MAGIC
from kiln.sources.onnx_proto import looks_like_onnx
from kiln.sources.pickle_scan import ZIP_MAGIC, parses_as_pickle
from kiln.sources.safetensors_header import looks_like_safetensors, read_safetensors_header

Format = Literal[
    "safetensors",
    "pytorch-zip",
    "pickle",
    "onnx",
    "gguf",
    "npy",
    "npz",
    "zip",
    "tar",
    "7z",
    "compressed",
    "hf-folder",
    "unknown",
]
WEIGHT_FORMATS: tuple[str, ...] = ("safetensors", "pytorch-zip", "pickle", "onnx", "gguf")
PICKLE_FORMATS: tuple[str, ...] = ("pytorch-zip", "pickle")
_HIGHEST_PICKLE_PROTOCOL = 5


def _zip_kind(path: Path) -> Format:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise UnsupportedFormatError(
            f"{path} is a zip archive (as PyTorch checkpoints are) but it cannot be read ({exc}); "
            "it is corrupt or truncated (download or save it again)"
        ) from None
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "pytorch-zip"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def sniff_magic(head: bytes) -> Format | None:
    """The format the first bytes announce, for formats with a real magic number; None otherwise."""
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:1] == b"\x80" and len(head) >= 2 and head[1] <= _HIGHEST_PICKLE_PROTOCOL:
        return "pickle"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "compressed"
    return None


def detect_format(path: Path) -> Format:
    """The format of ``path`` (a file or a folder), read from its bytes."""
    path = Path(path)
    try:
        if not path.exists():
            raise ModelNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            return "hf-folder" if (path / "config.json").is_file() else "unknown"
        size = path.stat().st_size
        if size == 0:
            raise UnsupportedFormatError(f"{path} is empty (0 bytes): the download or export did not finish")
        with open(path, "rb") as f:
            head = f.read(512)
        if head[:4] == ZIP_MAGIC:
            return _zip_kind(path)
        magic = sniff_magic(head)
        if magic is not None:
            return magic
        if looks_like_safetensors(head):
            read_safetensors_header(path)  # raises on a corrupt or truncated file
            return "safetensors"
        if looks_like_onnx(path):
            return "onnx"
        if len(head) >= 262 and head[257:262] == b"ustar":
            return "tar"
        if parses_as_pickle(head):
            return "pickle"
        return "unknown"
    except PermissionError as exc:
        raise SourceError(f"cannot read {path}: permission denied ({exc.strerror})") from None
    except IsADirectoryError:
        return "unknown"
