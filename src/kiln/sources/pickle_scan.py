"""Find the imports a pickle would perform, without unpickling it.

Loading a pickle runs whatever callables its GLOBAL / STACK_GLOBAL / INST opcodes import. This module walks
the opcode stream with :func:`pickletools.genops` (which decodes, never executes) on a symbolic stack:
strings, numbers, tuples, lists and dicts are tracked as values, anything built by a call as an opaque
object, and the memo as the unpickler keeps it. So ``STACK_GLOBAL`` is resolved however its two strings got
on the stack (pushed, memoised and fetched back, duplicated), ``INST``/``OBJ`` (protocols 0 and 1) are seen,
byte strings that are pickles themselves are scanned too, and joblib's raw array data (written between
opcodes) is skipped by its declared size rather than misread as opcodes.

The default is to deny: every import not on the allowlist is a finding. The allowlist is what real
checkpoints need and what runs no user code: PyTorch's tensor and storage rebuild helpers and dtypes,
NumPy array and scalar reconstruction, ``collections.OrderedDict``, a few inert builtins, and, for
scikit-learn pipelines, estimator *classes* (not functions) of scikit-learn, SciPy sparse matrices and NumPy
random generators. A whole pickled ``torch.nn.Module`` is therefore not clean: it imports its classes
(``torch.nn.modules.linear.Linear``, often ``__main__.MyNet``), and loading it runs their code; save the
``state_dict`` instead, or name each finding in an override after checking it.

    scan_stream(f, ctx)              findings for one pickle stream (a file object at its start)
    scan_pickle_findings(path)       SafetyFinding list for a file (pickle, torch zip, tar, npy, ...)
    scan_pickle(path)                the same findings as strings (their ``message``)
    assert_safe(path, allow=())      raise UnsafeFileError unless every finding's id is in ``allow``

Containers (zip, tar, npy/npz, compressed streams) are opened in :mod:`kiln.sources.scan`.
"""

from __future__ import annotations

import pickletools
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kiln.errors import UnsafeFileError
from kiln.sources.findings import SafetyFinding, Severity, make_finding, not_allowed, refusal_message

MAX_PICKLES = 6  # legacy torch.save writes 5: magic, protocol, sys info, the object, storage keys
MAX_NESTING = 4  # pickles inside pickles / archives inside archives, followed this deep
ZIP_MAGIC = b"PK\x03\x04"
_HIGHEST_PROTOCOL = 5
_MIN_NESTED = 4

SAFE_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "collections.Counter",
        "collections.defaultdict",
        "_codecs.encode",
        "copyreg._reconstructor",  # calls base.__new__(cls) with cls and base themselves imported
        "copy_reg._reconstructor",
        "builtins.bytearray",
        "builtins.bytes",
        "builtins.set",
        "builtins.frozenset",
        "builtins.complex",
        "builtins.slice",
        "builtins.range",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
        "builtins.str",
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        # protocol 0-2 pickles name the builtins module as Python 2 did
        "__builtin__.bytearray",
        "__builtin__.bytes",
        "__builtin__.set",
        "__builtin__.frozenset",
        "__builtin__.complex",
        "__builtin__.slice",
        "__builtin__.int",
        "__builtin__.float",
        "__builtin__.bool",
        "__builtin__.str",
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
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.core.numeric._frombuffer",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy._core.numeric._frombuffer",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.mtrand.RandomState",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
        "joblib.numpy_pickle.NumpyArrayWrapper",
    }
)

_TORCH_DTYPES = (
    r"bool|u?int(?:1|2|3|4|5|6|7|8|16|32|64)|float(?:16|32|64)|bfloat16|half|double|long|short|"
    r"complex(?:32|64|128)|float8_e4m3fn(?:uz)?|float8_e5m2(?:fnuz)?|float8_e8m0fnu|float4_e2m1fn_x2|"
    r"bits(?:16|1x8|2x4|4x2|8)|q(?:u)?int(?:8|32)|quint(?:4x2|2x4)"
)
_NUMPY_SCALARS = (
    r"bool_?|u?int(?:8|16|32|64)?|u?intc|u?intp|u?longlong|u?short|u?byte|float(?:16|32|64|128)?|half|"
    r"single|double|longdouble|complex(?:64|128|256)?|csingle|cdouble|clongdouble|str_|bytes_|void|"
    r"datetime64|timedelta64"
)
# scikit-learn modules whose classes are not plain estimators or that reach the network or the disk
_SKLEARN_DENIED = (
    r"datasets|externals|experimental|_build_utils|tests|utils\.(?:_testing|parallel|_joblib|fixes)"
)
SAFE_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"torch\._utils\._rebuild_[a-z0-9_]+"),
    re.compile(r"torch(?:\.cuda)?\.[A-Za-z0-9]+Storage"),
    re.compile(r"torch(?:\.cuda)?(?:\.sparse)?\.[A-Z][A-Za-z0-9]*Tensor"),
    re.compile(rf"torch\.(?:{_TORCH_DTYPES})"),
    re.compile(r"numpy\.dtypes\.[A-Za-z0-9]+DType"),
    re.compile(rf"numpy\.(?:{_NUMPY_SCALARS})"),
    re.compile(r"numpy\.random\._(?:mt19937|pcg64|philox|sfc64)\.(?:MT19937|PCG64|PCG64DXSM|Philox|SFC64)"),
    # scikit-learn: estimator classes (CapWords, not functions) and the Cython helpers that rebuild them
    re.compile(
        rf"sklearn\.(?!(?:{_SKLEARN_DENIED})\.)(?:[a-z_][a-z0-9_]*\.)*"
        r"(?:[A-Z][A-Za-z0-9_]*|newObj|__pyx_unpickle_[A-Za-z0-9_]+)"
    ),
    # SciPy sparse matrices and arrays (plain data containers)
    re.compile(r"scipy\.sparse\.(?:_[a-z]+\.)?(?:csr|csc|coo|bsr|dia|dok|lil)_(?:matrix|array)"),
)

# Imports that are dangerous in themselves (a shell, eval, file or network access, a second unpickler):
# reported as critical rather than merely unknown.
_CRITICAL_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "runpy", "importlib", "pickle",
        "_pickle", "cPickle", "dill", "marshal", "ctypes", "code", "codeop", "pty", "webbrowser", "commands",
        "pdb", "bdb", "timeit", "multiprocessing", "asyncio", "signal", "requests", "urllib", "urllib2",
        "http", "ftplib", "smtplib", "telnetlib", "tempfile", "pathlib", "io", "_io", "operator",
        "functools", "types", "platform", "shelve", "glob", "zipimport", "pkgutil", "cProfile", "profile",
        "trace", "doctest", "joblib", "numpy.testing", "torch.hub", "torch.jit", "torch.serialization",
    }
)  # fmt: skip
_CRITICAL_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__", "open", "globals", "locals",
        "vars", "input", "breakpoint", "memoryview", "type", "object", "super", "classmethod", "staticmethod",
        "help", "exit", "quit", "print", "apply", "execfile", "file", "reload",
    }
)  # fmt: skip


def is_allowed(import_name: str) -> bool:
    """True when ``module.name`` is something checkpoints need and that runs no user code."""
    return import_name in SAFE_GLOBALS or any(p.fullmatch(import_name) for p in SAFE_PATTERNS)


def import_severity(import_name: str) -> Severity:
    """critical for shells, eval, files, network and unpicklers; medium for any other unknown import."""
    module, _, attr = import_name.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return "critical" if attr in _CRITICAL_BUILTINS or attr.startswith("_") else "medium"
    parts = module.split(".")
    if any(".".join(parts[:i]) in _CRITICAL_MODULES for i in range(1, len(parts) + 1)):
        return "critical"
    if import_name in ("torch.load", "numpy.load", "torch.from_file"):
        return "critical"
    return "medium"


@dataclass(frozen=True)
class ScanContext:
    """Where the bytes being scanned are: file label, message prefix, location inside the file."""

    path: str
    where: str
    container: str = ""
    depth: int = 0

    def inner(self, name: str, *, separator: str = ":") -> ScanContext:
        """The context of a member or nested stream ``name`` inside this one."""
        return ScanContext(
            path=self.path,
            where=f"{self.where}{separator}{name}",
            container=f"{self.container} > {name}" if self.container else name,
            depth=self.depth + 1,
        )

    def finding(
        self,
        kind: str,
        severity: Severity,
        detail: str,
        *,
        pos: int | None = None,
        subject: str | None = None,
    ) -> SafetyFinding:
        parts = [p for p in (self.container, f"byte {pos}" if pos is not None else "") if p]
        return make_finding(
            path=self.path,
            where=self.where,
            location=", ".join(parts) or "whole file",
            severity=severity,
            kind=kind,
            detail=detail,
            subject=subject,
        )


# --- the symbolic stack -------------------------------------------------------------------------------


class _Mark:
    __slots__ = ()


class _Opaque:
    """A value kiln does not track (the result of a call it did not make)."""

    __slots__ = ()


_MARK = _Mark()
_OPAQUE = _Opaque()


@dataclass(eq=False)
class _Global:
    name: str


@dataclass(eq=False)
class _Obj:
    """What a REDUCE / NEWOBJ / INST / OBJ would build: ``cls(*args)``, then BUILD's ``state``."""

    cls: object
    args: object
    state: object = None


class _Malformed(Exception):
    pass


_STRINGS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
)
_BYTES = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})
_NUMBERS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


@dataclass
class _Machine:
    f: BinaryIO
    ctx: ScanContext
    findings: list[SafetyFinding] = field(default_factory=list)
    stack: list[object] = field(default_factory=list)
    memo: dict[int, object] = field(default_factory=dict)

    def pop(self) -> object:
        if not self.stack or self.stack[-1] is _MARK:
            raise _Malformed("an opcode pops from an empty stack")
        return self.stack.pop()

    def pop_mark(self) -> list[object]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise _Malformed("an opcode needs a MARK that is not there")

    def top(self) -> object:
        if not self.stack or self.stack[-1] is _MARK:
            raise _Malformed("an opcode needs a value on an empty stack")
        return self.stack[-1]

    def imported(self, name: str, op: str, pos: int) -> _Global:
        if not is_allowed(name):
            self.findings.append(
                self.ctx.finding(
                    "pickle-import",
                    import_severity(name),
                    f"imports {name} ({op} at byte {pos}), which is not on the allowlist",
                    pos=pos,
                    subject=name,
                )
            )
        return _Global(name)

    def nested(self, value: bytes, pos: int) -> None:
        """Scan a byte string that is a pickle itself (something may ``pickle.loads`` it)."""
        if (
            len(value) >= _MIN_NESTED
            and value[:1] == b"\x80"
            and value[1] <= _HIGHEST_PROTOCOL
            and value.endswith(b".")
            and self.ctx.depth < MAX_NESTING
        ):
            import io

            inner = self.ctx.inner(f"nested pickle at byte {pos}", separator=" ")
            self.findings.extend(scan_stream(io.BytesIO(value), inner, malformed_is_finding=False))

    def build(self, pos: int) -> None:
        state = self.pop()
        obj = self.top()
        if isinstance(obj, _Obj):
            obj.state = state
            cls = obj.cls
            if isinstance(cls, _Global) and cls.name == "joblib.numpy_pickle.NumpyArrayWrapper":
                self.skip_joblib_array(state, pos)

    def skip_joblib_array(self, state: object, pos: int) -> None:
        """Step over the array bytes joblib writes right after a NumpyArrayWrapper's BUILD."""
        if not isinstance(state, dict):
            raise _Malformed(f"joblib array at byte {pos} has no state")
        shape, dtype = state.get("shape"), state.get("dtype")
        descr = dtype.args[0] if isinstance(dtype, _Obj) and isinstance(dtype.args, tuple) else None
        if (
            not isinstance(shape, tuple)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(descr, str)
            or not re.fullmatch(r"[<>|=]?[A-Za-z]\d{0,4}", descr)
        ):
            raise _Malformed(f"joblib array at byte {pos} has a shape or dtype kiln cannot read")
        try:
            dt = np.dtype(descr)
        except TypeError:
            raise _Malformed(f"joblib array at byte {pos} has an unknown dtype {descr!r}") from None
        if dt.hasobject:  # the objects follow as a pickle of their own
            inner = self.ctx.inner(f"joblib object array at byte {self.f.tell()}", separator=" ")
            self.findings.extend(scan_stream(self.f, inner))
            return
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self.f.read(1)
            if len(padding) != 1:
                raise _Malformed(f"joblib array at byte {pos} is truncated")
            self.f.seek(padding[0], 1)
        count = 1
        for d in shape:
            count *= d
        self.f.seek(count * dt.itemsize, 1)

    def step(self, name: str, arg: object, pos: int) -> bool:
        """Apply one opcode; True at STOP."""
        s = self.stack
        value: object
        target: object
        module: object
        attr: object
        args: object
        if name in _STRINGS:
            s.append(arg.decode("latin-1") if isinstance(arg, bytes) else str(arg))
        elif name in _BYTES:
            blob = bytes(arg) if isinstance(arg, bytes | bytearray) else b""
            self.nested(blob, pos)
            s.append(blob)
        elif name in _NUMBERS:
            s.append(arg)
        elif name == "MARK":
            s.append(_MARK)
        elif name == "STOP":
            self.pop()
            return True
        elif name == "POP":
            if s and s[-1] is _MARK:
                s.pop()  # POP on a MARK discards it, as the C unpickler does
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            s.append(self.top())
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            s.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "EMPTY_TUPLE":
            s.append(())
        elif name == "TUPLE":
            s.append(tuple(self.pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            s.append(tuple(items))
        elif name in ("EMPTY_LIST", "EMPTY_SET"):
            s.append([])
        elif name == "LIST":
            s.append(self.pop_mark())
        elif name == "APPEND":
            value = self.pop()
            target = self.top()
            if isinstance(target, list):
                target.append(value)
        elif name in ("APPENDS", "ADDITEMS"):
            values = self.pop_mark()
            target = self.top()
            if isinstance(target, list):
                target.extend(values)
        elif name == "FROZENSET":
            s.append(tuple(self.pop_mark()))
        elif name == "EMPTY_DICT":
            s.append({})
        elif name == "DICT":
            items = self.pop_mark()
            s.append(self._dict(items))
        elif name == "SETITEM":
            value, key = self.pop(), self.pop()
            target = self.top()
            if isinstance(target, dict):
                target.update(self._dict([key, value]))
        elif name == "SETITEMS":
            items = self.pop_mark()
            target = self.top()
            if isinstance(target, dict):
                target.update(self._dict(items))
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            s.append(self.imported(f"{module}.{attr}", name, pos))
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(), self.pop()
            if isinstance(module, str) and isinstance(attr, str):
                s.append(self.imported(f"{module}.{attr}", name, pos))
            else:
                self.findings.append(
                    self.ctx.finding(
                        "pickle-unresolved",
                        "high",
                        f"STACK_GLOBAL at byte {pos} imports a name kiln cannot resolve",
                        pos=pos,
                    )
                )
                s.append(_OPAQUE)
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            inst_args = self.pop_mark()
            s.append(_Obj(self.imported(f"{module}.{attr}", name, pos), tuple(inst_args)))
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise _Malformed(f"OBJ at byte {pos} has no class")
            s.append(_Obj(items[0], tuple(items[1:])))
        elif name == "REDUCE" or name == "NEWOBJ":
            args = self.pop()
            s.append(_Obj(self.pop(), args))
        elif name == "NEWOBJ_EX":
            kwargs, args = self.pop(), self.pop()
            s.append(_Obj(self.pop(), (args, kwargs)))
        elif name == "BUILD":
            self.build(pos)
        elif name in _MEMO_PUT:
            self.memo[int(arg)] = self.top()  # type: ignore[call-overload]
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in _MEMO_GET:
            key = int(arg)  # type: ignore[call-overload]
            if key not in self.memo:
                raise _Malformed(f"{name} at byte {pos} fetches memo {key}, which was never stored")
            s.append(self.memo[key])
        elif name == "PERSID":
            s.append(_OPAQUE)
        elif name == "BINPERSID":
            self.pop()
            s.append(_OPAQUE)
        elif name in ("EXT1", "EXT2", "EXT4"):
            self.findings.append(
                self.ctx.finding(
                    "pickle-extension",
                    "high",
                    f"{name} at byte {pos} imports through the copyreg extension registry",
                    pos=pos,
                )
            )
            s.append(_OPAQUE)
        elif name == "NEXT_BUFFER":
            s.append(_OPAQUE)
        elif name in ("PROTO", "FRAME", "READONLY_BUFFER"):
            pass
        else:
            raise _Malformed(f"opcode {name} at byte {pos} is not one kiln knows")
        return False

    @staticmethod
    def _dict(items: list[object]) -> dict[object, object]:
        out: dict[object, object] = {}
        for k, v in zip(items[::2], items[1::2], strict=False):
            try:
                out[k] = v
            except TypeError:  # an unhashable key: the real unpickler fails here too
                raise _Malformed("a dict key is unhashable") from None
        return out


def scan_stream(f: BinaryIO, ctx: ScanContext, *, malformed_is_finding: bool = True) -> list[SafetyFinding]:
    """Findings for the pickle starting at ``f``'s position; ``f`` is left just past its STOP.

    A stream that does not parse to its STOP is a finding too (what kiln cannot check, it does not call
    safe) unless ``malformed_is_finding`` is False; the imports decoded before the failure count either way,
    since the unpickler would have run them before failing.
    """
    m = _Machine(f, ctx)
    error: str | None = None
    try:
        stopped = False
        for op, arg, pos in pickletools.genops(f):
            if m.step(op.name, arg, pos if pos is not None else -1):
                stopped = True
                break
        if not stopped:
            error = "it ends before its STOP opcode"
    except _Malformed as exc:
        error = str(exc)
    except Exception as exc:  # genops raises ValueError and friends on malformed bytes
        error = str(exc) or type(exc).__name__
    if error is not None and malformed_is_finding:
        m.findings.append(
            ctx.finding(
                "pickle-malformed",
                "high",
                f"the pickle stream is malformed ({error}); it cannot be checked, do not load it",
            )
        )
    return m.findings


def parses_as_pickle(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) is a whole pickle of any protocol, or starts like one
    that imports something: protocol 0 and 1 pickles have no magic number, only opcodes."""
    import io

    if head[:1] == b"\x80":
        return len(head) >= 2 and head[1] <= _HIGHEST_PROTOCOL
    data = io.BytesIO(head)
    m = _Machine(data, ScanContext(path="", where=""))
    ops = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            ops += 1
            if op.name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                return bool(re.fullmatch(r"[A-Za-z_][\w.]*", module) and re.fullmatch(r"[A-Za-z_]\w*", attr))
            if m.step(op.name, arg, pos or 0):
                return ops >= 2
    except Exception:
        return False
    return False


def scan_pickle_findings(path: Path, *, label: str | None = None) -> list[SafetyFinding]:
    """Every finding for ``path``: a pickle, a zip-format torch checkpoint, or any container kiln opens.

    An empty list means nothing unsafe was found. Malformed pickles and unreadable archives are findings
    too. Zips are recognised by their first bytes, as ``torch.load`` does, so a pickle with a zip appended
    is still scanned as the pickle it loads as.
    """
    from kiln.sources.scan import scan_file

    return scan_file(Path(path), label=label)


def scan_pickle(path: Path, *, label: str | None = None) -> list[str]:
    """:func:`scan_pickle_findings` as one line each (``message``), prefixed with ``label`` or the name."""
    return [f.message for f in scan_pickle_findings(path, label=label)]


def scan_pickles(paths: Iterable[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        out.extend(scan_pickle(p))
    return out


def assert_safe(path: Path, allow: Collection[str] = ()) -> None:
    """Raise :class:`kiln.errors.UnsafeFileError` unless every finding for ``path`` is named in ``allow``.

    ``path`` is a file or a model folder (every file in it is scanned). ``allow`` holds finding ids
    (``SafetyFinding.id``, e.g. ``"pickle-import:torch.nn.modules.linear.Linear"``) the user has checked.
    """
    from kiln.sources.scan import scan_path

    left = not_allowed(scan_path(Path(path)), allow)
    if left:
        raise UnsafeFileError(refusal_message(path, left))
