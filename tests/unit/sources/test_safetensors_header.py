"""safetensors headers are read, checked against the file size, and never trusted blindly."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import UnsupportedFormatError
from kiln.sources.safetensors_header import looks_like_safetensors, read_safetensors_header
from unit.sources.model_builders import tiny_bert_tensors, write_safetensors


def _raw(path: Path, header: Mapping[str, object], data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_reads_names_dtypes_shapes(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", tiny_bert_tensors())
    h = read_safetensors_header(path)
    assert h.metadata == {}
    assert {n: (t.dtype, t.shape, t.numel) for n, t in h.tensors.items()} == {
        "embeddings.word_embeddings.weight": ("F32", (6, 4), 24),
        "encoder.layer.0.dense.weight": ("F16", (4, 4), 16),
        "encoder.layer.0.dense.bias": ("F32", (4,), 4),
        "embeddings.position_ids": ("I64", (1, 8), 8),
    }
    assert h.data_bytes == 24 * 4 + 16 * 2 + 4 * 4 + 8 * 8


def test_metadata_is_kept(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2,), np.float32)}, str(tmp_path / "m.st"), metadata={"format": "pt"})
    assert read_safetensors_header(tmp_path / "m.st").metadata == {"format": "pt"}


def test_truncated_data_is_reported(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", tiny_bert_tensors())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UnsupportedFormatError, match=r"need 208 bytes of data but only 198 are present"):
        read_safetensors_header(path)


def test_truncated_header_is_reported(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", tiny_bert_tensors())
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UnsupportedFormatError, match=r"corrupt or truncated"):
        read_safetensors_header(path)


def test_bad_json_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(UnsupportedFormatError, match=r"not valid JSON"):
        read_safetensors_header(path)


def test_offsets_must_match_dtype_and_shape(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}
    with pytest.raises(UnsupportedFormatError, match=r"spans 12 bytes, not 16"):
        read_safetensors_header(_raw(tmp_path / "m.st", header, b"\x00" * 12))


def test_negative_shape_is_rejected(tmp_path: Path) -> None:
    header = {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}
    with pytest.raises(UnsupportedFormatError, match=r"invalid shape"):
        read_safetensors_header(_raw(tmp_path / "m.st", header, b""))


def test_looks_like_safetensors() -> None:
    assert looks_like_safetensors(struct.pack("<Q", 100) + b"{")
    assert not looks_like_safetensors(struct.pack("<Q", 100) + b"[")
    assert not looks_like_safetensors(struct.pack("<Q", 1 << 40) + b"{")
    assert not looks_like_safetensors(b"{")


def test_overlapping_tensors_are_rejected(tmp_path: Path) -> None:
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    with pytest.raises(UnsupportedFormatError, match=r"overlap"):
        read_safetensors_header(_raw(tmp_path / "m.st", header, b"\x00" * 12))


def test_tensor_count_and_rank_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.sources import safetensors_header

    monkeypatch.setattr(safetensors_header, "MAX_TENSORS", 2)
    header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(3)}
    with pytest.raises(UnsupportedFormatError, match=r"lists 3 tensors \(more than 2\)"):
        read_safetensors_header(_raw(tmp_path / "m.st", header, b"\x00" * 3))
    deep = {"w": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}
    with pytest.raises(UnsupportedFormatError, match=r"invalid shape"):
        read_safetensors_header(_raw(tmp_path / "n.st", deep, b"\x00"))


def test_bad_header_in_a_folder_is_a_safety_finding(tmp_path: Path) -> None:
    from kiln.sources.scan import scan_path

    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    _raw(tmp_path / "extra.safetensors", header, b"\x00" * 4)
    [f] = scan_path(tmp_path)
    assert (f.kind, f.path, f.id) == (
        "safetensors-header",
        "extra.safetensors",
        "safetensors-header:extra.safetensors",
    )
