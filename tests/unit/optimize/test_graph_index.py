"""GraphIndex: producers, consumers and constants of a graph; omitted optional tensors not indexed."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from kiln.optimize.graph_index import GraphIndex


def test_producers_consumers_and_constants() -> None:
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32([2.0]))),
        helper.make_node("Mul", ["x", "k"], ["y"]),
        helper.make_node("Clip", ["y", "", "hi"], ["z"]),  # min omitted
        helper.make_node("Relu", ["y"], ["r"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.float32(6.0), "hi")],
    )
    g = GraphIndex(graph)
    assert g.node("y", "Mul") is graph.node[1] and g.node("y", "Relu") is None
    assert [n.op_type for n in g.consumers["y"]] == ["Clip", "Relu"]
    assert g.only_consumer("z", "Relu") is None and g.only_consumer("k", "Mul") is graph.node[1]
    assert "" not in g.consumers and "" not in g.producer
    assert g.const("k") == np.float32([2.0]) and g.const("hi") == np.float32(6.0) and g.const("x") is None
