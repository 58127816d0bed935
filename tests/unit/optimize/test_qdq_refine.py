"""QDQ refinement on the tiny CNN: the rebuilt graph computes what ONNX Runtime computes, training moves
the integers toward the float graph's outputs, and graphs it cannot rebuild are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_quant_static import cnn_feeds, outputs, tiny_cnn

from kiln.errors import BuildError
from kiln.optimize.calibration import CalibrationReader
from kiln.optimize.qdq_refine import QdqModule, refine_qdq
from kiln.optimize.quant_static import QuantizeStatic


def _quantized(tmp_path: Path) -> Path:
    reader = CalibrationReader.for_model(tiny_cnn(), cnn_feeds(4, seed=1))
    # per-tensor 7-bit weights: coarse enough that rounding leaves something to recover
    recipe = QuantizeStatic(calibration_method="MinMax", per_channel=False, reduce_range=True)
    return recipe.apply(tiny_cnn(), tmp_path / "q.onnx", reader)


def _unfused(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def test_the_rebuilt_graph_computes_what_ort_computes(tmp_path: Path) -> None:
    import torch

    q = _quantized(tmp_path)
    feed = cnn_feeds(1, seed=3)[0]
    with torch.no_grad():
        mine = QdqModule(onnx.load(str(q)))({"pixels": torch.from_numpy(feed["pixels"])})[0].numpy()
    theirs = _unfused(q, feed)
    # float sums in another order can move a value across a rounding boundary now and then
    assert np.median(np.abs(mine - theirs)) < 1e-4
    assert np.abs(mine - theirs).max() < 0.05 * np.abs(theirs).max()


def test_refinement_moves_the_integers_toward_the_float_outputs(tmp_path: Path) -> None:
    q = _quantized(tmp_path)
    dst = tmp_path / "refined.onnx"
    seen: list[tuple[int, float]] = []
    report = refine_qdq(
        tiny_cnn(),
        q,
        dst,
        cnn_feeds(4, seed=1),
        steps=40,
        flip_axis=3,
        progress=lambda i, v: seen.append((i, v)),
    )
    assert [i for i, _ in seen] == list(range(1, 41))
    assert report.loss_after < 0.8 * report.loss_before
    assert 0 < report.changed_weights < report.total_weights
    # same graph, same size: only the integers changed
    before, after = onnx.load(str(q)).graph, onnx.load(str(dst)).graph
    assert [n.op_type for n in before.node] == [n.op_type for n in after.node]
    assert abs(dst.stat().st_size - q.stat().st_size) < 64
    for old, new in zip(before.initializer, after.initializer, strict=True):
        assert (old.name, old.data_type, list(old.dims)) == (new.name, new.data_type, list(new.dims))
    # closer to fp32 on inputs it never saw, run by ORT with its integer kernels
    held = cnn_feeds(3, seed=7)
    ref = outputs(tiny_cnn(), held)
    assert np.abs(outputs(dst, held) - ref).mean() < np.abs(outputs(q, held) - ref).mean()


def test_an_operator_it_cannot_rebuild_is_named(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softplus", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(BuildError, match="Softplus"):
        QdqModule(helper.make_model(graph))


def test_no_batches_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="calibration batch"):
        refine_qdq(tiny_cnn(), tiny_cnn(), tmp_path / "x.onnx", [])
