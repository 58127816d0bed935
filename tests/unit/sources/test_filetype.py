"""Formats are told by content: renaming a file changes nothing, corrupt files give clear errors."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import pytest

from kiln.errors import ModelNotFoundError, UnsupportedFormatError
from kiln.sources.filetype import detect_format
from unit.sources.model_builders import (
    EVIL_GLOBAL_PICKLE,
    gguf_bytes,
    tiny_bert_tensors,
    write_onnx,
    write_safetensors,
    write_torch_zip,
)


def test_safetensors_under_any_name(tmp_path: Path) -> None:
    assert detect_format(write_safetensors(tmp_path / "weights.bin", tiny_bert_tensors())) == "safetensors"


def test_onnx_under_any_name(tmp_path: Path) -> None:
    assert detect_format(write_onnx(tmp_path / "model.dat")) == "onnx"


def test_gguf(tmp_path: Path) -> None:
    (tmp_path / "m.bin").write_bytes(gguf_bytes())
    assert detect_format(tmp_path / "m.bin") == "gguf"


def test_pickle_and_torch_zip(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert detect_format(tmp_path / "model.safetensors") == "pickle"
    assert detect_format(write_torch_zip(tmp_path / "x.onnx", EVIL_GLOBAL_PICKLE)) == "pytorch-zip"


def test_zip_without_data_pkl_is_a_plain_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    assert detect_format(tmp_path / "a.zip") == "zip"


def test_folders(tmp_path: Path) -> None:
    assert detect_format(tmp_path) == "unknown"
    (tmp_path / "config.json").write_text("{}")
    assert detect_format(tmp_path) == "hf-folder"


def test_text_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "notes.safetensors").write_text("just some text, not weights\n")
    assert detect_format(tmp_path / "notes.safetensors") == "unknown"


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "model.safetensors", tiny_bert_tensors())
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(
        UnsupportedFormatError, match=r"looks like a safetensors file .* corrupt or truncated"
    ):
        detect_format(path)


def test_truncated_onnx(tmp_path: Path) -> None:
    path = write_onnx(tmp_path / "model.onnx")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(
        UnsupportedFormatError, match=r"starts like an ONNX model but .* corrupt or truncated"
    ):
        detect_format(path)


def test_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04" + b"\x01" * 64)
    with pytest.raises(UnsupportedFormatError, match=r"zip archive .* cannot be read"):
        detect_format(tmp_path / "model.pt")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(UnsupportedFormatError, match=r"is empty"):
        detect_format(tmp_path / "model.onnx")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no such file or folder"):
        detect_format(tmp_path / "nope")


def test_more_formats_by_content(tmp_path: Path) -> None:
    import gzip
    import io
    import tarfile

    import numpy as np

    (tmp_path / "p0.bin").write_bytes(pickle.dumps({"a": [1, 2]}, protocol=0))
    (tmp_path / "p1.bin").write_bytes(pickle.dumps({"a": [1, 2]}, protocol=1))
    (tmp_path / "inst.txt").write_bytes(b"(S'x'\nios\nsystem\n.")
    np.save(tmp_path / "a.npy", np.arange(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.safetensors")
    np.savez(tmp_path / "b.npz", x=np.arange(3))
    with tarfile.open(tmp_path / "c.pt", "w") as tf:
        info = tarfile.TarInfo("pickle")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"N."))
    (tmp_path / "d.bin").write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 32)
    (tmp_path / "e.onnx").write_bytes(gzip.compress(b"hello"))
    expected = {
        "p0.bin": "pickle",
        "p1.bin": "pickle",
        "inst.txt": "pickle",
        "a.safetensors": "npy",
        "b.npz": "npz",
        "c.pt": "tar",
        "d.bin": "7z",
        "e.onnx": "compressed",
    }
    assert {name: detect_format(tmp_path / name) for name in expected} == expected
