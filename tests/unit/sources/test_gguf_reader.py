"""The GGUF header reader, on files written byte by byte."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kiln.errors import UnsupportedFormatError
from kiln.sources.gguf import GGUFArray, read_gguf_header
from unit.sources.model_builders import gguf_bytes, write_gguf


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_reads_metadata_and_tensors(tmp_path: Path, byteorder: str) -> None:
    h = read_gguf_header(write_gguf(tmp_path / "m.gguf", byteorder=byteorder))
    assert (h.version, h.byteorder) == (3, byteorder)
    assert h.architecture == "llama"
    assert h.arch_value("context_length") == 2048
    assert h.metadata["general.license"] == "llama3"
    tokens = h.metadata["tokenizer.ggml.tokens"]
    assert tokens == GGUFArray(item_type=8, length=3, items=["<s>", "a", "b"])
    scores = h.metadata["tokenizer.ggml.scores"]
    assert isinstance(scores, GGUFArray) and (scores.length, scores.items) == (100, None)
    assert [(t.name, t.shape, t.type_name, t.numel, t.nbytes) for t in h.tensors] == [
        ("token_embd.weight", (8, 4), "F32", 32, 128),
        ("blk.0.attn_q.weight", (32, 4), "Q4_0", 128, 72),
    ]
    assert h.data_offset % 32 == 0
    assert h.data_offset + 128 + 72 == (tmp_path / "m.gguf").stat().st_size


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes()[:-5])
    with pytest.raises(
        UnsupportedFormatError, match=r"tensors need \d+ bytes and the file has \d+; it is truncated"
    ):
        read_gguf_header(path)


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes()[:60])
    with pytest.raises(UnsupportedFormatError, match=r"is a GGUF file but .* corrupt or truncated"):
        read_gguf_header(path)


def test_absurd_counts_are_rejected_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 0) + b"\x00" * 16)
    with pytest.raises(UnsupportedFormatError, match=r"claims \d+ tensors, more than the file can hold"):
        read_gguf_header(path)


def test_version_1_and_unknown_versions(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(version=1))
    with pytest.raises(UnsupportedFormatError, match="version 1"):
        read_gguf_header(path)
    path.write_bytes(gguf_bytes(version=9))
    with pytest.raises(UnsupportedFormatError, match="unknown version 9"):
        read_gguf_header(path)


def test_not_gguf(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"GGML" + b"\x00" * 40)
    with pytest.raises(UnsupportedFormatError, match="not a GGUF file"):
        read_gguf_header(tmp_path / "x")
