"""The pickle scanner reports imports off the allowlist and never unpickles anything."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest

from kiln.errors import UnsafeFileError
from kiln.sources import pickle_scan
from kiln.sources.pickle_scan import assert_safe, is_allowed, scan_pickle
from unit.sources.model_builders import (
    EVIL_GLOBAL_PICKLE,
    EVIL_STACK_GLOBAL_PICKLE,
    OPAQUE_STACK_GLOBAL_PICKLE,
    write_torch_zip,
)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_global_os_system_is_reported(tmp_path: Path) -> None:
    findings = scan_pickle(_write(tmp_path, "evil.bin", EVIL_GLOBAL_PICKLE))
    assert findings == ["evil.bin: imports os.system (GLOBAL at byte 2), which is not on the allowlist"]


def test_stack_global_through_memo_is_resolved(tmp_path: Path) -> None:
    findings = scan_pickle(_write(tmp_path, "evil.pkl", EVIL_STACK_GLOBAL_PICKLE))
    assert findings == [
        "evil.pkl: imports os.system (STACK_GLOBAL at byte 22), which is not on the allowlist"
    ]


def test_unresolvable_stack_global_is_a_finding(tmp_path: Path) -> None:
    findings = scan_pickle(_write(tmp_path, "odd.pkl", OPAQUE_STACK_GLOBAL_PICKLE))
    assert len(findings) == 1
    assert "STACK_GLOBAL at byte 11 imports a name kiln cannot resolve" in findings[0]


def test_scanning_never_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scanner unpickled something")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    assert scan_pickle(_write(tmp_path, "evil.bin", EVIL_GLOBAL_PICKLE))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_data_and_ordered_dict_are_clean(tmp_path: Path, protocol: int) -> None:
    obj = {"state": OrderedDict(a=1, b=[1.5, "x"]), "set": {1, 2}, "bytes": bytearray(b"ab")}
    path = _write(tmp_path, "ok.pkl", pickle.dumps(obj, protocol=protocol))
    assert scan_pickle(path) == []
    assert_safe(path)  # does not raise


def test_zip_checkpoint_members_are_scanned(tmp_path: Path) -> None:
    path = write_torch_zip(tmp_path / "model.pt", EVIL_GLOBAL_PICKLE)
    findings = scan_pickle(path)
    assert findings == [
        "model.pt:archive/data.pkl: imports os.system (GLOBAL at byte 2), which is not on the allowlist"
    ]


def test_pickle_with_zip_appended_is_scanned_as_the_pickle(tmp_path: Path) -> None:
    # torch.load tells zips by their first bytes; a pickle with a zip glued on loads as the pickle.
    zipped = write_torch_zip(tmp_path / "inner.zip", pickle.dumps({"a": 1})).read_bytes()
    path = _write(tmp_path, "sneaky.bin", EVIL_GLOBAL_PICKLE + zipped)
    assert any("os.system" in f for f in scan_pickle(path))


def test_malformed_pickle_is_a_finding(tmp_path: Path) -> None:
    findings = scan_pickle(_write(tmp_path, "bad.pkl", b"\x80\x02\xff\xfe"))
    assert len(findings) == 1
    assert "malformed" in findings[0] and "do not load" in findings[0]


def test_corrupt_zip_is_a_finding(tmp_path: Path) -> None:
    findings = scan_pickle(_write(tmp_path, "bad.pt", b"PK\x03\x04" + b"\x00" * 40))
    assert len(findings) == 1 and "cannot be read for checking" in findings[0]


def test_assert_safe_raises_kiln_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "evil.bin", EVIL_GLOBAL_PICKLE)
    with pytest.raises(UnsafeFileError, match=r"(?s)evil\.bin is not safe to load:.*os\.system"):
        assert_safe(path)
    assert not hasattr(pickle_scan, "UnsafeFileError") or pickle_scan.UnsafeFileError is UnsafeFileError


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("torch._utils._rebuild_tensor_v2", True),
        ("torch.FloatStorage", True),
        ("torch.cuda.HalfStorage", True),
        ("torch.bfloat16", True),
        ("collections.OrderedDict", True),
        ("numpy.core.multiarray._reconstruct", True),
        ("numpy._core.multiarray._reconstruct", True),
        ("__builtin__.set", True),
        ("os.system", False),
        ("builtins.eval", False),
        ("builtins.getattr", False),
        ("torch.load", False),
        ("torch.nn.modules.linear.Linear", False),
        ("subprocess.Popen", False),
        ("__main__.Model", False),
    ],
)
def test_allowlist(name: str, allowed: bool) -> None:
    assert is_allowed(name) is allowed


def test_real_torch_checkpoints_are_clean_and_whole_modules_are_not(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).to(torch.bfloat16)
    torch.save(model.state_dict(), tmp_path / "zip.pt")
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert scan_pickle(tmp_path / "zip.pt") == []
    assert scan_pickle(tmp_path / "legacy.pt") == []
    torch.save(model, tmp_path / "module.pt")
    findings = scan_pickle(tmp_path / "module.pt")
    assert any("torch.nn.modules.linear.Linear" in f for f in findings)
