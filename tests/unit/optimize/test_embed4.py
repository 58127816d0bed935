"""4-bit token embeddings from standard ONNX ops: exact against the numpy dequantization, within the
4-bit bound of the float table, any rank of ids, and clear errors where the recipe cannot help."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from kiln.errors import BuildError
from kiln.optimize.embed4 import (
    QuantizeEmbedding4,
    block_for,
    dequantize_table,
    dequantized_tables,
    quantize_table,
)

ROWS, HIDDEN = 2048, 64


def _table(rows: int = ROWS, hidden: int = HIDDEN, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = rng.normal(0.0, 0.05, size=(rows, hidden)).astype(np.float32)
    table[3] = 0.3  # a constant row: scale 0, offset = the value
    table[7, :16] = -1.5  # one wide block
    return table


def _model(
    path: Path,
    *,
    ids_rank: int = 2,
    table: np.ndarray | None = None,
    opset: int = 18,
    pos_rows: int = 0,
    tied_head: bool = False,
    second_lookup: bool = False,
) -> Path:
    """ids → Gather(table) [→ + Gather(pos)] → MatMul; the lookup is a graph output too."""
    table = _table() if table is None else table
    hidden = table.shape[1]
    ids_shape: list[str | int] = [f"d{i}" for i in range(ids_rank)]
    inits = [
        numpy_helper.from_array(table, "word_embeddings"),
        numpy_helper.from_array(np.random.default_rng(1).normal(size=(hidden, 8)).astype(np.float32), "W"),
    ]
    nodes = [helper.make_node("Gather", ["word_embeddings", "ids"], ["emb"], name="embed", axis=0)]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)]
    hidden_out = "emb"
    if pos_rows:
        pos = np.random.default_rng(2).normal(size=(pos_rows, hidden)).astype(np.float32)
        inits.append(numpy_helper.from_array(pos, "position_embeddings"))
        inputs.append(helper.make_tensor_value_info("pos", TensorProto.INT64, ids_shape))
        nodes += [
            helper.make_node("Gather", ["position_embeddings", "pos"], ["pos_emb"], name="pos_embed"),
            helper.make_node("Add", ["emb", "pos_emb"], ["summed"], name="add"),
        ]
        hidden_out = "summed"
    outputs = [
        helper.make_tensor_value_info("emb", TensorProto.FLOAT, [*ids_shape, hidden]),
        helper.make_tensor_value_info("out", TensorProto.FLOAT, [*ids_shape, 8]),
    ]
    nodes.append(helper.make_node("MatMul", [hidden_out, "W"], ["out"], name="head"))
    if tied_head:
        nodes += [
            helper.make_node("Transpose", ["word_embeddings"], ["wt"], name="tied_t"),
            helper.make_node("MatMul", ["emb", "wt"], ["logits"], name="lm_head"),
        ]
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*ids_shape, "rows"]))
    if second_lookup:
        inputs.append(helper.make_tensor_value_info("ids2", TensorProto.INT64, ids_shape))
        nodes.append(helper.make_node("Gather", ["word_embeddings", "ids2"], ["emb2"], name="embed2"))
        outputs.append(helper.make_tensor_value_info("emb2", TensorProto.FLOAT, [*ids_shape, hidden]))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def _ids(shape: tuple[int, ...], rows: int = ROWS, seed: int = 3) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, rows, size=shape, dtype=np.int64)
    flat = ids.reshape(-1)
    if flat.size >= 4:
        flat[:4] = [0, rows - 1, 3, 7]  # first, last, constant and wide rows
    return ids


def _close_downstream(got: np.ndarray, ref: np.ndarray) -> None:
    """The MatMul after the lookup: within a few percent of the float model's output (measured 0.3% to
    4.6% here; the wide row 7 in the ids inflates its block's scale)."""
    assert np.linalg.norm(got - ref) < 0.08 * np.linalg.norm(ref)


def _scales(path: Path, name: str = "word_embeddings") -> tuple[np.ndarray, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    return inits[f"{name}_kiln_emb4_scale"], inits[f"{name}_kiln_emb4_offset"]


@pytest.mark.parametrize("block_size", [16, 64])
def test_lookup_is_exact_to_the_codes_and_within_the_4bit_bound(block_size: int, tmp_path: Path) -> None:
    table = _table()
    src = _model(tmp_path / "f.onnx", table=table)
    dst = QuantizeEmbedding4(block_size=block_size).apply(src, tmp_path / "q.onnx")
    ids = _ids((3, 11))
    got = _run(dst, {"ids": ids})
    ref = _run(src, {"ids": ids})

    deq = dequantized_tables(dst)["word_embeddings"]
    np.testing.assert_allclose(got["emb"], deq[ids], rtol=0, atol=1e-6)

    scale, _ = _scales(dst)
    per_elem = np.repeat(scale.astype(np.float32), block_size, axis=1)[ids]
    fp16_rounding = np.abs(table[ids]) * 2.0**-11 + 1e-7
    err = np.abs(got["emb"] - table[ids])
    assert np.all(err <= per_elem / 2 + fp16_rounding)
    assert err.max() > 0  # it is lossy
    assert np.all(scale[3] == 0)  # the constant row
    _close_downstream(got["out"], ref["out"])


@pytest.mark.parametrize("shape", [(), (5,), (1, 9), (4, 6), (2, 3, 4)])
def test_ids_of_any_rank(shape: tuple[int, ...], tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", ids_rank=len(shape))
    dst = QuantizeEmbedding4(block_size=32).apply(src, tmp_path / "q.onnx")
    ids = _ids(shape, seed=len(shape))
    got = _run(dst, {"ids": ids})
    assert got["emb"].shape == (*shape, HIDDEN)
    assert got["out"].shape == (*shape, 8)
    np.testing.assert_allclose(got["emb"], dequantized_tables(dst)["word_embeddings"][ids], atol=1e-6)


def test_negative_and_empty_ids_follow_gather(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx")
    dst = QuantizeEmbedding4(block_size=32).apply(src, tmp_path / "q.onnx")
    deq = dequantized_tables(dst)["word_embeddings"]
    got = _run(dst, {"ids": np.array([[-1, -ROWS, 5]], dtype=np.int64)})["emb"]
    np.testing.assert_allclose(got, deq[[[ROWS - 1, 0, 5]]], atol=1e-6)
    assert _run(dst, {"ids": np.zeros((2, 0), dtype=np.int64)})["emb"].shape == (2, 0, HIDDEN)


def test_file_shrinks_by_the_table_bytes(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx")
    block = 32
    dst = QuantizeEmbedding4(block_size=block).apply(src, tmp_path / "q.onnx")
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer}
    packed = [a for name, a in inits.items() if name.startswith("word_embeddings_kiln_emb4_")]
    expected = ROWS * HIDDEN // 2 + 2 * 2 * ROWS * HIDDEN // block
    assert sum(a.nbytes for a in packed) == expected
    assert inits["word_embeddings_kiln_emb4_q4"].dtype == np.uint8
    assert inits["word_embeddings_kiln_emb4_scale"].shape == (ROWS, HIDDEN // block)
    assert "word_embeddings" not in inits
    saved = src.stat().st_size - dst.stat().st_size
    assert abs(saved - (ROWS * HIDDEN * 4 - expected)) < 4096  # the rest is graph overhead


def test_graph_interface_and_other_nodes_are_kept(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", pos_rows=128)
    dst = QuantizeEmbedding4(block_size=16, min_rows=1024).apply(src, tmp_path / "q.onnx")
    before, after = onnx.load(str(src)).graph, onnx.load(str(dst)).graph
    assert [i.name for i in after.input] == [i.name for i in before.input]
    assert after.output == before.output
    kept = [n for n in after.node if not n.name.startswith("kiln_emb4_")]
    assert kept == [n for n in before.node if n.name != "embed"]  # the position table stays float
    new_ops = {n.op_type for n in after.node if n.name.startswith("kiln_emb4_")}
    assert "GatherBlockQuantized" not in new_ops and {"BitwiseAnd", "BitShift"} <= new_ops
    assert all(n.domain in ("", "ai.onnx") for n in after.node)
    inits = {t.name for t in after.initializer}
    assert "position_embeddings" in inits and "word_embeddings" not in inits
    ids, pos = _ids((2, 5)), np.tile(np.arange(5, dtype=np.int64), (2, 1))
    got = _run(dst, {"ids": ids, "pos": pos})
    ref = _run(src, {"ids": ids, "pos": pos})
    _close_downstream(got["out"], ref["out"])


def test_two_lookups_of_one_table_share_one_packed_copy(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", second_lookup=True)
    dst = QuantizeEmbedding4(block_size=32).apply(src, tmp_path / "q.onnx")
    names = [t.name for t in onnx.load(str(dst)).graph.initializer]
    assert names.count("word_embeddings_kiln_emb4_q4") == 1 and "word_embeddings" not in names
    ids, ids2 = _ids((2, 4)), _ids((2, 4), seed=9)
    got = _run(dst, {"ids": ids, "ids2": ids2})
    deq = dequantized_tables(dst)["word_embeddings"]
    np.testing.assert_allclose(got["emb2"], deq[ids2], atol=1e-6)


def test_small_tables_only_is_a_clear_error(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", table=_table(rows=512))
    with pytest.raises(BuildError, match=r"no Gather .* at least 1024 rows .*word_embeddings \[512, 64\]"):
        QuantizeEmbedding4(block_size=16).apply(src, tmp_path / "q.onnx")
    dst = QuantizeEmbedding4(block_size=16, min_rows=512).apply(src, tmp_path / "q.onnx")
    assert "word_embeddings" in dequantized_tables(dst)


def test_block_follows_a_hidden_size_it_does_not_divide(tmp_path: Path) -> None:
    """block_size is the most values per pair: hidden 96 with 64 gets blocks of 32, and hidden 32 (a
    tiny test BERT) with the default 128 gets blocks of 32."""
    src = _model(tmp_path / "f.onnx", table=_table(hidden=96))
    dst = QuantizeEmbedding4(block_size=64).apply(src, tmp_path / "q.onnx")
    ids = _ids((2, 4))
    deq = dequantized_tables(dst)["word_embeddings"]
    np.testing.assert_allclose(_run(dst, {"ids": ids})["emb"], deq[ids], atol=1e-6)
    scale = next(t for t in onnx.load(str(dst)).graph.initializer if t.name.endswith("_kiln_emb4_scale"))
    assert list(scale.dims) == [2048, 96 // 32]
    assert block_for(32, 128) == 32 and block_for(384, 128) == 128 and block_for(96, 64) == 32


def test_no_power_of_two_dividing_hidden_is_an_error(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", table=_table(hidden=40))
    with pytest.raises(
        BuildError, match="no power of two from 16 to block_size 64 divides the hidden size 40"
    ):
        QuantizeEmbedding4(block_size=64).apply(src, tmp_path / "q.onnx")


def test_opset_below_18_is_an_error(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", opset=17)
    with pytest.raises(BuildError, match="needs opset 18 .* has opset 17"):
        QuantizeEmbedding4(block_size=16).apply(src, tmp_path / "q.onnx")


def test_shared_table_is_an_error(tmp_path: Path) -> None:
    src = _model(tmp_path / "f.onnx", tied_head=True)
    with pytest.raises(
        BuildError, match="shared with Transpose node tied_t; 4-bit copy would not save bytes"
    ):
        QuantizeEmbedding4(block_size=16).apply(src, tmp_path / "q.onnx")


@pytest.mark.parametrize("size", [0, 8, 15, 48, 100])
def test_bad_block_size_is_refused(size: int) -> None:
    with pytest.raises(ValidationError, match="power of two"):
        QuantizeEmbedding4(block_size=size)


def test_config_validates() -> None:
    recipe = QuantizeEmbedding4()
    assert (recipe.kind, recipe.block_size, recipe.min_rows, recipe.precision) == (
        "int4-embedding",
        128,
        1024,
        "lossy",
    )
    assert QuantizeEmbedding4(block_size=256).block_size == 256
    with pytest.raises(ValidationError):
        QuantizeEmbedding4(min_rows=0)
    with pytest.raises(ValidationError):
        QuantizeEmbedding4(bits=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        recipe.block_size = 64


def test_quantize_table_covers_each_block() -> None:
    table = _table(rows=64, hidden=128, seed=5)
    packed, scale, offset = quantize_table(table, 32)
    assert packed.shape == (64, 64) and scale.shape == offset.shape == (64, 4)
    assert scale.dtype == offset.dtype == np.float16
    blocks = table.reshape(64, 4, 32)
    varying = blocks.max(-1) > blocks.min(-1)
    lo = offset.astype(np.float64)
    hi = lo + 15 * scale.astype(np.float64)
    assert np.all(lo[varying] <= blocks.min(-1)[varying])  # offset rounded down
    assert np.all(hi[varying] >= blocks.max(-1)[varying])  # scale rounded up
    deq = dequantize_table(packed, scale, offset)
    bound = np.repeat(scale.astype(np.float32), 32, axis=1) / 2 + np.abs(table) * 2.0**-11 + 1e-7
    assert np.all(np.abs(deq - table) <= bound)
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(64, 128)
    assert codes.min() == 0 and codes.max() == 15


def test_int8_dynamic_with_4bit_embeddings_packs_then_quantizes_the_rest(tmp_path: Path) -> None:
    from kiln.optimize.embed4 import NODE_PREFIX
    from kiln.optimize.recipes import QuantizeDynamic

    src = _model(tmp_path / "m.onnx")
    # 7-bit weights, as the build quantizes on CPUs without VNNI: full-range U8S8 saturates on AVX2
    recipe = QuantizeDynamic(embeddings="int4", embedding_block_size=32, reduce_range=True)
    dst = recipe.apply(src, tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "q.onnx"]  # no scratch file left
    graph = onnx.load(str(dst)).graph
    ops = {n.op_type for n in graph.node}
    assert {"BitShift", "BitwiseAnd"} <= ops  # the packed table's lookup
    assert "MatMul" not in ops  # the head went INT8
    assert all(t.name != "word_embeddings" for t in graph.initializer)
    packed = [n for n in graph.node if n.name.startswith(NODE_PREFIX)]
    assert packed and all(n.op_type != "DynamicQuantizeLinear" for n in packed)
    feeds = {"ids": _ids((2, 5))}
    _close_downstream(_run(dst, feeds)["out"], _run(src, feeds)["out"])
