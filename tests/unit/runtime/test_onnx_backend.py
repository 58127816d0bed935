"""OnnxBackend: a node a QDQ graph leaves float is computed in float (ORT would re-quantize it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from kiln.errors import BundleError
from kiln.runtime.onnx_backend import OnnxBackend


def _dq_then_float_conv(path: Path) -> tuple[Path, np.ndarray]:
    """x -> Q -> DQ -> Conv with float weights -> Q -> DQ (per channel), as accuracy control leaves a
    node it returned to float: the weights spread over four orders of magnitude across channels."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 1, 3, 3)) * np.logspace(-3, 1, 8)[:, None, None, None]).astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "cs", "cz"], ["cq"], axis=1),
        helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["y"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        numpy_helper.from_array((0.02 * np.logspace(-3, 1, 8)).astype(np.float32), "cs"),
        numpy_helper.from_array(np.zeros(8, np.int8), "cz"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path, w


def test_a_float_node_after_dequantize_stays_float(tmp_path: Path) -> None:
    import torch

    path, w = _dq_then_float_conv(tmp_path / "g.onnx")
    x = np.random.default_rng(1).uniform(-6, 6, (1, 8, 6, 6)).astype(np.float32)
    xd = np.clip(np.round(x / 0.05), -128, 127) * 0.05
    want = torch.nn.functional.conv2d(
        torch.from_numpy(xd.astype(np.float32)), torch.from_numpy(w), padding=1, groups=8
    )
    step = (0.02 * np.logspace(-3, 1, 8)).astype(np.float32)[None, :, None, None]
    want = np.clip(np.round(want.numpy() / step), -128, 127) * step
    got = OnnxBackend(path).run({"x": x})[0]
    assert np.abs(got - want).max() <= 1.01 * step.max()  # at most one output step apart, anywhere
    assert (np.abs(got - want) / step).mean() < 0.05
    # what ORT does on its own: the weights rounded with one per-tensor scale, small channels lost
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert (np.abs(plain - want) / step)[0, 0].mean() > 5


def test_a_file_ort_cannot_load_is_a_bundle_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="cannot load"):
        OnnxBackend(bad)
