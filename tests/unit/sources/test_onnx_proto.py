"""The wire-format ONNX reader agrees with the onnx package, and rejects what is not ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.errors import UnsupportedFormatError
from kiln.sources.onnx_proto import looks_like_onnx, read_onnx_info
from unit.sources.model_builders import write_onnx


def test_initializers_match_onnx_package(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    path = write_onnx(tmp_path / "m.onnx")
    info = read_onnx_info(path)
    model = onnx.load(str(path), load_external_data=False)
    expected = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    assert {t.name: (t.dims, t.data_type) for t in info.initializers} == expected
    assert [(t.name, t.dtype, t.numel) for t in info.initializers] == [
        ("W", "float32", 12),
        ("B", "float16", 3),
        ("shape", "int64", 2),
    ]
    assert info.ir_version == model.ir_version
    assert info.producer_name == "kiln-test"
    assert info.opsets == {"ai.onnx": 17}
    assert info.external_locations == []


def test_external_data_location(tmp_path: Path) -> None:
    info = read_onnx_info(write_onnx(tmp_path / "m.onnx", external_location="weights.bin"))
    assert info.external_locations == ["weights.bin"]
    assert info.initializers[0].external_location == "weights.bin"


def test_sparse_initializer_counts_stored_values(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    values = numpy_helper.from_array(np.ones((5,), np.float32), "S")
    indices = numpy_helper.from_array(np.arange(5, dtype=np.int64), "S_idx")
    sparse = helper.make_sparse_tensor(values, indices, [10, 10])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["S"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 10])],
        sparse_initializer=[sparse],
    )
    path = tmp_path / "s.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    [t] = read_onnx_info(path).initializers
    assert (t.name, t.sparse, t.numel) == ("S", True, 5)


def test_other_bytes_are_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"\x07hello")
    (tmp_path / "b").write_bytes(b"\x08")  # starts like ir_version but ends at once
    assert not looks_like_onnx(tmp_path / "a")
    assert not looks_like_onnx(tmp_path / "b")
    with pytest.raises(UnsupportedFormatError, match="is not an ONNX model"):
        read_onnx_info(tmp_path / "a")


def test_model_without_graph_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")  # ir_version 7 and nothing else
    with pytest.raises(UnsupportedFormatError, match="has no graph"):
        looks_like_onnx(tmp_path / "m.onnx")


def test_unknown_top_level_field_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07" + b"\x98\x06\x01")  # field 99, varint
    with pytest.raises(UnsupportedFormatError, match="field 99"):
        looks_like_onnx(tmp_path / "m.onnx")
