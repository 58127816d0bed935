"""Scan files and folders for anything that would run code, or read outside the model, when loaded.

Every file is told by its content, never its name, and opened as what it is:

    pickle (protocols 0-5)    opcode walk (:mod:`kiln.sources.pickle_scan`); legacy torch files hold
                              several pickles back to back, up to ``MAX_PICKLES`` are scanned
    zip (torch, npz, any)     every member, whatever its name; members are read from their local headers
                              with the flag bits ignored (as PyTorch's reader does), so an "encrypted" flag
                              or a name that differs between the directory and the header hides nothing
    tar                       every regular member (very old ``torch.save`` wrote tars of pickles)
    .npy                      object arrays hold a pickle after the header: scanned
    gzip / bz2 / xz / zlib    decompressed (bounded) and scanned as what they hold (joblib's compressed dumps)
    7z                        cannot be opened without extra packages: a low-severity finding
    safetensors               header checked against the sanity limits of ``safetensors_header``
    ONNX                      external-data locations must stay inside the model folder

Members of archives and compressed streams are followed ``MAX_NESTING`` levels deep.
"""

from __future__ import annotations

import bz2
import io
import lzma
import os
import re
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from kiln.errors import UnsupportedFormatError
from kiln.sources.findings import SafetyFinding, make_finding
from kiln.sources.onnx_proto import looks_like_onnx, read_onnx_info
from kiln.sources.pickle_scan import (
    MAX_NESTING,
    MAX_PICKLES,
    ZIP_MAGIC,
    ScanContext,
    parses_as_pickle,
    scan_stream,
)
from kiln.sources.safetensors_header import looks_like_safetensors, read_safetensors_header

MAX_FILES = 10_000
MAX_MEMBER_BYTES = 1 << 30  # a pickle member (or decompressed stream) larger than this is not checked
NPY_MAGIC = b"\x93NUMPY"
SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_HEAD = 512
_CHUNK = 1 << 20
_IDENT = re.compile(r"[A-Za-z_][\w.]*")
_ZIP_LOCAL = struct.Struct("<4s2B4HL2L2H")  # zipfile's local file header layout (30 bytes)


def _unreadable(ctx: ScanContext, why: str) -> SafetyFinding:
    return ctx.finding("unreadable", "high", f"cannot be read for checking ({why}); do not load it")


def _too_large(ctx: ScanContext, size: int) -> SafetyFinding:
    return ctx.finding("too-large", "high", f"a {size}-byte pickle is too large to check; do not load it")


# --- pickles -------------------------------------------------------------------------------------------


def _scan_pickles(f: BinaryIO, ctx: ScanContext, *, strict: bool) -> list[SafetyFinding]:
    """The first pickle in ``f``, then up to MAX_PICKLES - 1 more that follow it (legacy torch files)."""
    findings = scan_stream(f, ctx, malformed_is_finding=strict)
    if any(x.kind == "pickle-malformed" for x in findings):
        return findings
    for _ in range(MAX_PICKLES - 1):
        pos = f.tell()
        if f.read(1) != b"\x80":  # no further pickle (PROTO opcode) follows: raw storage bytes or the end
            break
        f.seek(pos)
        # Past the first pickle, bytes that fail to parse are raw tensor data, not code: the imports
        # decoded before the failure still count, the failure itself does not.
        findings.extend(
            scan_stream(
                f,
                ScanContext(ctx.path, f"{ctx.where} (pickle at byte {pos})", ctx.container, ctx.depth),
                malformed_is_finding=False,
            )
        )
    return findings


def _lenient(findings: list[SafetyFinding]) -> list[SafetyFinding]:
    """For bytes nothing loads as a pickle by name (tensor data, misc archive members): keep only imports
    Python could perform; parse failures, EXT codes and unresolved names are what random bytes produce."""
    return [x for x in findings if x.kind == "pickle-import" and _IDENT.fullmatch(x.id.split(":", 1)[1])]


# --- archives --------------------------------------------------------------------------------------------


def _member_bytes(f: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes read from its local header, whatever its flag bits say."""
    f.seek(info.header_offset)
    raw = f.read(_ZIP_LOCAL.size)
    if len(raw) != _ZIP_LOCAL.size or raw[:4] != ZIP_MAGIC:
        raise ValueError("its local header is missing")
    fields = _ZIP_LOCAL.unpack(raw)
    name_len, extra_len = fields[-2], fields[-1]
    f.seek(info.header_offset + _ZIP_LOCAL.size + name_len + extra_len)
    data = f.read(info.compress_size)
    if len(data) != info.compress_size:
        raise ValueError("it is truncated")
    if info.compress_type == zipfile.ZIP_STORED:
        return data[: MAX_MEMBER_BYTES + 1]
    decompressor = zipfile._get_decompressor(info.compress_type)  # type: ignore[attr-defined]
    return bytes(decompressor.decompress(data, MAX_MEMBER_BYTES + 1))


def _scan_zip(f: BinaryIO, ctx: ScanContext) -> list[SafetyFinding]:
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        return [_unreadable(ctx, str(exc))]
    findings: list[SafetyFinding] = []
    for info in infos:
        if info.is_dir():
            continue
        member = ctx.inner(info.filename)
        if info.file_size > MAX_MEMBER_BYTES and info.filename.endswith(".pkl"):
            findings.append(_too_large(member, info.file_size))
            continue
        try:
            data = _member_bytes(f, info)
        except (ValueError, NotImplementedError, zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            findings.append(_unreadable(member, str(exc) or type(exc).__name__))
            continue
        if len(data) > MAX_MEMBER_BYTES:
            if data[:1] == b"\x80":
                findings.append(_too_large(member, info.file_size))
            continue
        strict = info.filename.endswith(".pkl")
        findings.extend(_scan_any(io.BytesIO(data), member, strict=strict))
    return findings


def _scan_tar(f: BinaryIO, ctx: ScanContext) -> list[SafetyFinding]:
    findings: list[SafetyFinding] = []
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                inner = ctx.inner(member.name)
                if member.size > MAX_MEMBER_BYTES:
                    findings.append(_too_large(inner, member.size))
                    continue
                extracted = tf.extractfile(member)
                if extracted is None:
                    continue
                # torch's tar format unpickles these three members
                strict = member.name in ("pickle", "storages", "tensors") or member.name.endswith(".pkl")
                findings.extend(_scan_any(io.BytesIO(extracted.read()), inner, strict=strict))
    except (tarfile.TarError, EOFError, OSError) as exc:
        findings.append(_unreadable(ctx, str(exc)))
    return findings


def _scan_npy(f: BinaryIO, ctx: ScanContext) -> list[SafetyFinding]:
    """An .npy file: an object dtype means the data is a pickle (np.load with allow_pickle unpickles it)."""
    import ast

    head = f.read(10)
    if len(head) < 10:
        return []
    major = head[6]
    if major == 1:
        (n,) = struct.unpack("<H", head[8:10])
        start = 10
    else:
        more = f.read(2)
        (n,) = struct.unpack("<I", head[8:10] + more)
        start = 12
    try:
        header = ast.literal_eval(f.read(n).decode("latin-1"))
        descr = header["descr"]
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
        return []  # numpy refuses such a header too: nothing gets unpickled
    if "O" not in repr(descr):
        return []
    f.seek(start + n)
    return scan_stream(f, ctx.inner(f"object array at byte {start + n}", separator=" "))


def _decompressor(head: bytes) -> Callable[[], object] | None:
    if head[:2] == b"\x1f\x8b":
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if head[:3] == b"BZh":
        return bz2.BZ2Decompressor
    if head[:6] == b"\xfd7zXZ\x00" or head[:5] == b"]\x00\x00\x80\x00":
        return lzma.LZMADecompressor
    if len(head) >= 2 and head[0] == 0x78 and ((head[0] << 8) | head[1]) % 31 == 0:
        return zlib.decompressobj
    return None


def _scan_compressed(
    f: BinaryIO, ctx: ScanContext, make: Callable[[], object], *, strict: bool
) -> list[SafetyFinding]:
    """Decompress into a spooled file (bounded), then scan what came out, even if the stream broke off."""
    d = make()
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115
    with out:
        total = 0
        first = b""
        try:
            while chunk := f.read(_CHUNK):
                piece = d.decompress(chunk)  # type: ignore[attr-defined]
                first = first or piece[:_HEAD]
                total += len(piece)
                if total > MAX_MEMBER_BYTES:
                    looks_pickled = first[:1] == b"\x80" or parses_as_pickle(first)
                    return [_too_large(ctx, total)] if looks_pickled else []
                out.write(piece)
                if getattr(d, "eof", False):
                    break
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
            if total == 0:
                return []  # not compressed after all: bytes that only look like a header
        out.seek(0)
        return _scan_any(out, ctx.inner("decompressed", separator=" "), strict=strict)  # type: ignore[arg-type]


# --- dispatch --------------------------------------------------------------------------------------------


def _scan_any(f: BinaryIO, ctx: ScanContext, *, strict: bool) -> list[SafetyFinding]:
    """Findings for the bytes of ``f`` (at position 0), told by their content."""
    head = f.read(_HEAD)
    f.seek(0)
    if not head:
        return []
    if head[:4] == ZIP_MAGIC:
        return _scan_zip(f, ctx) if ctx.depth <= MAX_NESTING else []
    if head[:1] == b"\x80" and len(head) >= 2 and head[1] <= 5:
        found = _scan_pickles(f, ctx, strict=strict)
        return found if strict else _lenient(found)
    if head[:6] == NPY_MAGIC:
        return _scan_npy(f, ctx)
    if head[:6] == SEVEN_ZIP_MAGIC:
        return [
            ctx.finding(
                "archive-unscanned",
                "low",
                "is a 7z archive, which kiln cannot look inside; extract it and scan what it holds",
            )
        ]
    if len(head) >= 262 and head[257:262] == b"ustar":
        return _scan_tar(f, ctx) if ctx.depth <= MAX_NESTING else []
    make = _decompressor(head)
    if make is not None and ctx.depth <= MAX_NESTING:
        return _scan_compressed(f, ctx, make, strict=strict)
    if not strict and ctx.depth > 0:
        return []  # an archive member told only by parsing opcodes: nothing loads it as a pickle
    if parses_as_pickle(head) or (len(head) == _HEAD and parses_as_pickle(f.read(_HEAD * 64))):
        f.seek(0)
        found = _scan_pickles(f, ctx, strict=strict)
        return found if strict else _lenient(found)
    return []


def scan_file(path: Path, *, label: str | None = None, root: Path | None = None) -> list[SafetyFinding]:
    """Every finding for one file (``label`` names it in messages; default its name).

    ``root`` is the folder an ONNX model's external data must stay in (default: the file's folder).
    """
    path = Path(path)
    where = label or path.name
    ctx = ScanContext(path=where, where=where)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(0)
            if looks_like_safetensors(head):
                return _check_safetensors(path, ctx)
            if head[:1] == b"\x08":
                try:
                    if looks_like_onnx(path):
                        return check_onnx_external_data(
                            path, read_onnx_info(path).external_locations, root or path.parent, label=where
                        )[0]
                except UnsupportedFormatError:
                    pass  # not ONNX after all (or broken, which the loader will say): scan the bytes
            return _scan_any(f, ctx, strict=True)
    except OSError as exc:
        return [_unreadable(ctx, exc.strerror or str(exc))]


def _check_safetensors(path: Path, ctx: ScanContext) -> list[SafetyFinding]:
    try:
        read_safetensors_header(path)
    except UnsupportedFormatError as exc:
        return [ctx.finding("safetensors-header", "medium", str(exc).replace(f"{path} ", "", 1))]
    return []


# --- ONNX external data ----------------------------------------------------------------------------------


def _inside(root: str, target: str) -> bool:
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def _allowed_real_roots(root: Path) -> list[str]:
    """The real folders files of ``root`` may live in: itself and, for a Hugging Face cache snapshot
    (``models--x--y/snapshots/<rev>``, whose files are symlinks), the repository's ``blobs`` folder."""
    real = os.path.realpath(root)
    out = [real]
    if Path(real).parent.name == "snapshots":
        out.append(os.path.realpath(Path(real).parent.parent / "blobs"))
    return out


def check_onnx_external_data(
    onnx_path: Path, locations: list[str], root: Path, *, label: str | None = None
) -> tuple[list[SafetyFinding], list[Path]]:
    """Findings for external-data locations that leave ``root`` (``..``, absolute paths, symlinks out),
    and the external files that stay inside."""
    where = label or onnx_path.name
    findings: list[SafetyFinding] = []
    inside: list[Path] = []
    root_abs = os.path.normpath(os.path.abspath(root))
    real_roots = _allowed_real_roots(root)
    for loc in locations:
        target = onnx_path.parent / loc
        parts = re.split(r"[\\/]+", loc)
        why = None
        absolute = os.path.isabs(loc) or loc.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", loc))
        if absolute or ".." in parts or not _inside(root_abs, os.path.normpath(os.path.abspath(target))):
            why = "points outside the model folder"
        elif target.exists() and not any(_inside(r, os.path.realpath(target)) for r in real_roots):
            why = "points outside the model folder through a symlink"
        if why is not None:
            findings.append(
                make_finding(
                    path=where,
                    where=where,
                    location=f"external data {loc!r}",
                    severity="high",
                    kind="onnx-external-data",
                    detail=f"external data location {loc!r} {why} {root}; loading it would read files kiln "
                    "did not scan",
                    subject=loc,
                )
            )
        else:
            inside.append(target)
    return findings, inside


# --- folders ---------------------------------------------------------------------------------------------


def _files(root: Path, notes: list[str]) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            out.append(Path(dirpath) / name)
            if len(out) >= MAX_FILES:
                notes.append(
                    f"{root} holds more than {MAX_FILES} files; only the first {MAX_FILES} were scanned"
                )
                return out
    return out


def scan_folder(root: Path, notes: list[str] | None = None) -> list[SafetyFinding]:
    """Findings for every file under ``root`` (named relative to it); unreadable files go to ``notes``."""
    notes = notes if notes is not None else []
    findings: list[SafetyFinding] = []
    for path in _files(root, notes):
        rel = path.relative_to(root).as_posix()
        try:
            if not path.is_file() or path.stat().st_size == 0:
                continue
        except OSError as exc:
            notes.append(f"{rel}: cannot be read ({exc.strerror}); not scanned")
            continue
        findings.extend(scan_file(path, label=rel, root=root))
    return findings


def scan_path(path: Path, notes: list[str] | None = None) -> list[SafetyFinding]:
    """Findings for a file or for every file of a folder."""
    path = Path(path)
    return scan_folder(path, notes) if path.is_dir() else scan_file(path)
