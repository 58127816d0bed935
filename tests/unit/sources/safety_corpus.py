"""A corpus of malicious model files, one per publicly described attack class, written by code.

Nothing here is ever unpickled or run. Payloads are built from raw opcodes, or with ``pickle.dumps`` of an
object whose ``__reduce__`` *names* a dangerous callable: dumping only records the name, it calls nothing.
Each builder writes one file (or folder) under the directory it is given and returns its path.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from unit.sources.model_builders import EVIL_GLOBAL_PICKLE, EVIL_STACK_GLOBAL_PICKLE, write_torch_zip


class Reduce:
    """Pickles as ``func(*args)``; pickling it never calls ``func``."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _evil(protocol: int = 4) -> bytes:
    return pickle.dumps(Reduce(os.system, "echo pwned"), protocol=protocol)


def _raw(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    return build


def _pickled(name: str, obj: object, protocol: int = 4) -> Callable[[Path], Path]:
    return _raw(name, pickle.dumps(obj, protocol=protocol))


def _global_reduce(module: str, attr: str) -> bytes:
    """Protocol 2: GLOBAL module.attr, one string argument, REDUCE."""
    return b"\x80\x02c" + f"{module}\n{attr}\n".encode() + b"X\x01\x00\x00\x00x\x85R."


def _zip(name: str, members: dict[str, bytes], *, flag_bits: int = 0) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        p = d / name
        with zipfile.ZipFile(p, "w") as zf:
            for member, data in members.items():
                info = zipfile.ZipInfo(member)
                info.flag_bits |= flag_bits
                zf.writestr(info, data)
        return p

    return build


def _zip_renamed_in_directory(d: Path) -> Path:
    """The local header says archive/data.pkl, the central directory says archive/data.txt (same length)."""
    p = write_torch_zip(d / "model.pt", EVIL_GLOBAL_PICKLE)
    raw = p.read_bytes()
    cd = raw.index(b"PK\x01\x02")  # the first central-directory entry: archive/data.pkl
    head, tail = raw[:cd], raw[cd:]
    p.write_bytes(head + tail.replace(b"archive/data.pkl", b"archive/data.txt", 1))
    return p


def _memo_dup_stack_global() -> bytes:
    """STACK_GLOBAL whose strings come back from the memo through LONG_BINGET after unrelated work."""
    return (
        b"\x80\x04"
        b"\x8c\x02os\x94"  # "os", memo 0
        b"0"  # POP
        b"\x8c\x06system\x94"  # "system", memo 1
        b"0"  # POP
        b"]\x94K\x01a0"  # an unrelated list, memo 2, append, pop
        b"j\x00\x00\x00\x00j\x01\x00\x00\x00\x93"  # LONG_BINGET 0, LONG_BINGET 1, STACK_GLOBAL
        b"\x8c\x02id\x85R."
    )


def _getattr_chain() -> bytes:
    """builtins.getattr(builtins.__import__('os'), 'system')('id'), in protocol 2."""
    return (
        b"\x80\x02c__builtin__\ngetattr\n"
        b"c__builtin__\n__import__\nX\x02\x00\x00\x00os\x85R"
        b"X\x06\x00\x00\x00system\x86R"
        b"X\x02\x00\x00\x00id\x85R."
    )


def _npy_object(d: Path) -> Path:
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = 1, Reduce(os.system, "echo pwned")
    p = d / "weights.npy"
    np.save(p, arr, allow_pickle=True)
    return p


def _npz_object(d: Path) -> Path:
    arr = np.empty(1, dtype=object)
    arr[0] = Reduce(os.system, "echo pwned")
    p = d / "arrays.npz"
    with open(p, "wb") as f:
        np.savez(f, ok=np.arange(3), evil=arr)
    return p


def _legacy_second_pickle(d: Path) -> Path:
    p = d / "legacy.pt"
    p.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + _evil(2))
    return p


def _tar(d: Path) -> Path:
    p = d / "model.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in (("storages", pickle.dumps(0, protocol=2)), ("pickle", _evil(2))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return p


def _joblib_after_array(d: Path) -> Path:
    import joblib

    p = d / "model.joblib"
    joblib.dump({"coef": np.arange(64.0), "hook": Reduce(os.system, "echo pwned")}, p)
    return p


def _torch_zip_evil(d: Path) -> Path:
    import torch

    p = d / "checkpoint.pt"
    torch.save({"w": torch.zeros(3), "hook": Reduce(os.system, "echo pwned")}, p)
    return p


def _torch_legacy_evil(d: Path) -> Path:
    import torch

    p = d / "checkpoint.bin"
    torch.save(
        {"w": torch.zeros(3), "hook": Reduce(os.system, "echo pwned")},
        p,
        _use_new_zipfile_serialization=False,
    )
    return p


def _folder_with_wrong_names(d: Path) -> Path:
    folder = d / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(EVIL_GLOBAL_PICKLE)
    (folder / "model.safetensors").write_bytes(EVIL_STACK_GLOBAL_PICKLE)
    return folder


# name -> (builder, an import or kind the findings must name)
MALICIOUS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "reduce-os-system-proto0": (_raw("a.pkl", b"cos\nsystem\n(S'echo pwned'\ntR."), "os.system"),
    "reduce-posix-system-proto2": (_raw("a.pkl", _evil(2)), "posix.system"),
    "reduce-subprocess-proto4": (
        _pickled("a.pkl", Reduce(__import__("subprocess").Popen, ["id"])),
        "subprocess",
    ),
    "reduce-eval-proto5": (_pickled("a.pkl", Reduce(eval, "1+1"), 5), "builtins.eval"),
    "reduce-exec-proto2": (_pickled("a.pkl", Reduce(exec, "pass"), 2), "__builtin__.exec"),
    "reduce-exec-proto0": (_pickled("a.pkl", Reduce(exec, "pass"), 0), "__builtin__.exec"),
    "getattr-chain": (_raw("a.pkl", _getattr_chain()), "__builtin__.getattr"),
    "memo-stack-global": (_raw("a.pkl", EVIL_STACK_GLOBAL_PICKLE), "os.system"),
    "memo-long-binget-stack-global": (_raw("a.pkl", _memo_dup_stack_global()), "os.system"),
    "inst-proto0": (_raw("a.pkl", b"(S'echo pwned'\nios\nsystem\n."), "os.system"),
    "obj-proto1": (_raw("a.pkl", b"(cos\nsystem\nS'echo pwned'\no."), "os.system"),
    "ext-opcode": (_raw("a.pkl", b"\x80\x02\x82\x01X\x01\x00\x00\x00x\x85R."), "pickle-extension"),
    "runpy": (_raw("a.pkl", _global_reduce("runpy", "_run_code")), "runpy._run_code"),
    "shutil-rmtree": (_raw("a.pkl", _global_reduce("shutil", "rmtree")), "shutil.rmtree"),
    "webbrowser": (_raw("a.pkl", _global_reduce("webbrowser", "open")), "webbrowser.open"),
    "torch-load-nested": (_raw("a.pkl", _global_reduce("torch", "load")), "torch.load"),
    "main-class": (_raw("a.pkl", b"\x80\x02c__main__\nModel\n)\x81."), "__main__.Model"),
    "nested-pickle-in-bytes": (_pickled("a.pkl", {"blob": _evil(4)}), "posix.system"),
    "pickle-loads-nested": (_pickled("a.pkl", Reduce(pickle.loads, _evil(4))), "pickle.loads"),
    "wrong-extension-safetensors": (_raw("model.safetensors", EVIL_GLOBAL_PICKLE), "os.system"),
    "wrong-extension-onnx": (_raw("model.onnx", _evil(2)), "posix.system"),
    "wrong-extension-json-proto0": (_raw("config.json", b"cos\nsystem\n(S'id'\ntR."), "os.system"),
    "zip-torch-data-pkl": (lambda d: write_torch_zip(d / "model.pt", EVIL_GLOBAL_PICKLE), "os.system"),
    "zip-misleading-member-name": (
        _zip("model.bin", {"archive/weights.txt": EVIL_GLOBAL_PICKLE}),
        "os.system",
    ),
    "zip-encrypted-flag": (
        _zip("model.bin", {"archive/data.pkl": EVIL_GLOBAL_PICKLE}, flag_bits=0x1),
        "os.system",
    ),
    "zip-name-differs-in-directory": (_zip_renamed_in_directory, "os.system"),
    "pickle-with-zip-appended": (
        lambda d: _raw("sneaky.bin", EVIL_GLOBAL_PICKLE + write_torch_zip(d / "z.zip", b"N.").read_bytes())(
            d
        ),
        "os.system",
    ),
    "legacy-torch-second-pickle": (_legacy_second_pickle, "posix.system"),
    "tar-pickle-member": (_tar, "posix.system"),
    "gzip-pickle": (_raw("model.joblib", gzip.compress(_evil(4))), "posix.system"),
    "npy-object-array": (_npy_object, "posix.system"),
    "npz-object-array": (_npz_object, "posix.system"),
    "joblib-after-raw-array": (_joblib_after_array, "posix.system"),
    "torch-save-zip": (_torch_zip_evil, "posix.system"),
    "torch-save-legacy": (_torch_legacy_evil, "posix.system"),
    "folder-wrong-names": (_folder_with_wrong_names, "os.system"),
}


def _zip_in_zip(d: Path) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("archive/data.pkl", EVIL_GLOBAL_PICKLE)
    return _zip("outer.zip", {"x/inner.zip": inner.getvalue()})(d)


MALICIOUS["zip-in-zip"] = (_zip_in_zip, "os.system")


def zip_local_name(raw: bytes) -> bytes:
    """The first local header's file name (to check the directory patch above worked)."""
    (n,) = struct.unpack("<H", raw[26:28])
    return raw[30 : 30 + n]
