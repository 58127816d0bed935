"""Find the imports a pickle would perform, without unpickling it.

Loading a pickle runs whatever callables its GLOBAL / STACK_GLOBAL / INST opcodes import. This module walks
the opcode stream with :func:`pickletools.genops` (which decodes, never executes) and reports every import
that is not on an allowlist of what PyTorch and NumPy checkpoints need: tensor rebuild helpers, storages,
dtypes, ``collections.OrderedDict``, NumPy array reconstruction. Zip-format torch checkpoints are scanned
member by member (every ``*.pkl``). Legacy (non-zip) torch files hold several pickles back to back; up to
``MAX_PICKLES`` of them are scanned.

``scan_pickle(path)`` returns findings (empty = nothing to fear); ``assert_safe(path)`` raises
:class:`kiln.errors.UnsafeFileError` when there are any.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from kiln.errors import UnsafeFileError

MAX_PICKLES = 6  # legacy torch.save writes 5: magic, protocol, sys info, the object, storage keys
_MAX_MEMBER_BYTES = 1 << 30
ZIP_MAGIC = b"PK\x03\x04"

SAFE_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "collections.Counter",
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.set",
        "builtins.frozenset",
        "builtins.complex",
        "builtins.slice",
        # protocol 0-2 pickles name the builtins module as Python 2 did
        "__builtin__.bytearray",
        "__builtin__.set",
        "__builtin__.frozenset",
        "__builtin__.complex",
        "__builtin__.slice",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.per_channel_affine",
        "torch.per_channel_symmetric",
        "torch.per_channel_affine_float_qparams",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
    }
)

_TORCH_DTYPES = (
    r"bool|u?int(?:1|2|3|4|5|6|7|8|16|32|64)|float(?:16|32|64)|bfloat16|half|double|long|short|"
    r"complex(?:32|64|128)|float8_e4m3fn(?:uz)?|float8_e5m2(?:fnuz)?|float8_e8m0fnu|float4_e2m1fn_x2|"
    r"bits(?:16|1x8|2x4|4x2|8)|q(?:u)?int(?:8|32)|quint(?:4x2|2x4)"
)
SAFE_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"torch\._utils\._rebuild_[a-z0-9_]+"),
    re.compile(r"torch(?:\.cuda)?\.[A-Za-z0-9]+Storage"),
    re.compile(r"torch(?:\.cuda)?(?:\.sparse)?\.[A-Z][A-Za-z0-9]*Tensor"),
    re.compile(rf"torch\.(?:{_TORCH_DTYPES})"),
    re.compile(r"numpy\.dtypes\.[A-Za-z0-9]+DType"),
)

_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
)
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


def is_allowed(import_name: str) -> bool:
    """True when ``module.name`` is something checkpoints need and that runs no user code."""
    return import_name in SAFE_GLOBALS or any(p.fullmatch(import_name) for p in SAFE_PATTERNS)


def _scan_stream(stream: BinaryIO, where: str) -> tuple[list[str], str | None]:
    """Findings for one pickle, and why it failed to parse to its STOP opcode (None when it did)."""
    findings: list[str] = []
    memo: dict[int, object] = {}
    recent: list[object] = []  # values pushed by the last ops: str for strings, None for anything else
    try:
        for op, arg, pos in pickletools.genops(stream):
            name = op.name
            imported: str | None = None
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                imported = f"{module}.{attr}"
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                    imported = f"{recent[-2]}.{recent[-1]}"
                else:
                    findings.append(f"{where}: STACK_GLOBAL at byte {pos} imports a name kiln cannot resolve")
            elif name in ("EXT1", "EXT2", "EXT4"):
                findings.append(
                    f"{where}: {name} at byte {pos} imports through the copyreg extension registry"
                )

            if imported is not None and not is_allowed(imported):
                findings.append(
                    f"{where}: imports {imported} ({name} at byte {pos}), which is not on the allowlist"
                )

            # Track just enough of the stack to resolve STACK_GLOBAL's two string arguments.
            if name in _STRING_OPS:
                recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
            elif name in _MEMO_PUT:
                key = len(memo) if name == "MEMOIZE" else int(arg)  # type: ignore[arg-type]
                memo[key] = recent[-1] if recent else None
            elif name in _MEMO_GET:
                recent.append(memo.get(int(arg)))  # type: ignore[arg-type]
            elif name not in ("FRAME", "PROTO"):
                recent.append(None)
            del recent[:-2]
    except Exception as exc:  # genops raises ValueError and friends on malformed bytes
        return findings, str(exc) or type(exc).__name__
    return findings, None


def _scan_file(f: BinaryIO, where: str) -> list[str]:
    findings, error = _scan_stream(f, where)
    if error is not None:
        findings.append(
            f"{where}: the pickle stream is malformed ({error}); it cannot be checked, do not load it"
        )
    for _ in range(MAX_PICKLES - 1):
        if error is not None:
            break
        pos = f.tell()
        if f.read(1) != b"\x80":  # no further pickle (PROTO opcode) follows: raw storage bytes or the end
            break
        f.seek(pos)
        # Past the first pickle, bytes that fail to parse are raw tensor data, not code: the imports
        # decoded before the failure still count, the failure itself does not.
        more, error = _scan_stream(f, f"{where} (pickle at byte {pos})")
        findings.extend(more)
    return findings


def _scan_zip(zf: zipfile.ZipFile, where: str) -> list[str]:
    findings: list[str] = []
    for info in zf.infolist():
        if not info.filename.endswith(".pkl"):
            continue
        label = f"{where}:{info.filename}"
        if info.file_size > _MAX_MEMBER_BYTES:
            findings.append(f"{label}: a {info.file_size}-byte pickle is too large to check; do not load it")
            continue
        findings.extend(_scan_file(io.BytesIO(zf.read(info)), label))
    return findings


def scan_pickle(path: Path, *, label: str | None = None) -> list[str]:
    """Every import in ``path`` (a pickle or a zip-format torch checkpoint) that is not on the allowlist.

    An empty list means nothing unsafe was found. Malformed pickles and unreadable zips are findings too:
    what kiln cannot check, it does not call safe. Zips are recognised by their first bytes, as
    ``torch.load`` does, so a pickle with a zip appended is still scanned as the pickle it loads as.
    Findings start with ``label`` (default: the file name).
    """
    path = Path(path)
    where = label or path.name
    try:
        with open(path, "rb") as f:
            if f.read(4) != ZIP_MAGIC:
                f.seek(0)
                return _scan_file(f, where)
        with zipfile.ZipFile(path) as zf:
            return _scan_zip(zf, where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError) as exc:
        return [f"{where}: cannot be read for checking ({exc}); do not load it"]


def scan_pickles(paths: Iterable[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        out.extend(scan_pickle(p))
    return out


def assert_safe(path: Path) -> None:
    """Raise :class:`kiln.errors.UnsafeFileError` when ``path`` would import anything off the allowlist."""
    findings = scan_pickle(path)
    if findings:
        shown = "; ".join(findings[:5]) + (f"; and {len(findings) - 5} more" if len(findings) > 5 else "")
        raise UnsafeFileError(
            f"{path} is not safe to load: {shown}. Loading it could run code on this machine; "
            "use a safetensors or ONNX copy of the model, or one from a source you trust"
        )
