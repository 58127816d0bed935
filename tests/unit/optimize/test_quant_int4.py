"""INT4 weight-only (MatMulNBits) on the tiny CNN's linear head and, slow, on MiniLM."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from pydantic import ValidationError
from test_quant_static import EPYC, GRAVITON, mean_cosine, minilm, minilm_feeds, review_split, tiny_cnn

from kiln.errors import BuildError
from kiln.optimize.cpu import parse_cpuinfo
from kiln.optimize.quant_int4 import QuantizeInt4, int4_for
from kiln.optimize.recipes import QuantizeDynamic


@pytest.mark.parametrize("size", [0, 8, 48, 100, 512])
def test_bad_block_size_is_refused(size: int) -> None:
    with pytest.raises(ValidationError, match="power of two"):
        QuantizeInt4(block_size=size)


def test_config_fields_validate() -> None:
    assert QuantizeInt4(block_size=128).block_size == 128
    with pytest.raises(ValidationError):
        QuantizeInt4(accuracy_level=7)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        QuantizeInt4(op_types=("Conv",))  # type: ignore[arg-type]


def test_compute_type_follows_the_cpu() -> None:
    assert int4_for(EPYC).accuracy_level == 4
    assert int4_for(GRAVITON).accuracy_level == 4
    assert int4_for(parse_cpuinfo("flags\t\t: fpu sse sse2\n", 1)).accuracy_level == 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_cnn_int4(symmetric: bool, tmp_path: Path) -> None:
    from test_quant_static import cnn_feeds

    src = tiny_cnn()
    dst = QuantizeInt4(block_size=16, symmetric=symmetric).apply(src, tmp_path / "q4.onnx")
    nodes = onnx.load(str(dst)).graph.node
    packed = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert [n.name for n in packed] == ["node_linear_Q4"]  # the Gemm head, rewritten and packed
    assert dst.stat().st_size < 0.7 * src.stat().st_size  # only the head is packed; convs stay fp32
    assert mean_cosine(src, dst, cnn_feeds(2, seed=3)) > 0.99


def test_nothing_to_pack_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="unchanged"):
        QuantizeInt4(block_size=16, nodes_to_exclude=("node_linear",)).apply(tiny_cnn(), tmp_path / "q.onnx")


@pytest.mark.slow
def test_minilm_int4_is_smaller_than_int8(tmp_path: Path) -> None:
    src, tokenizer = minilm()
    _, held_out = review_split()
    int8 = QuantizeDynamic().apply(src, tmp_path / "q8.onnx")
    int4 = int4_for(EPYC, block_size=32).apply(src, tmp_path / "q4.onnx")
    ops = {n.op_type for n in onnx.load(str(int4)).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
    assert int4.stat().st_size < 0.75 * int8.stat().st_size
    assert int4.stat().st_size < 0.2 * src.stat().st_size
    assert (
        mean_cosine(src, int4, minilm_feeds(tokenizer, held_out[:64])) > 0.95
    )  # 4-bit weights on a 22M model: the lossy floor
