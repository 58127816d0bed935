"""Accuracy control for the recipe search: which nodes lose most when quantized, and how many to keep
in float until the variant passes.

Sensitivity is measured per node and *locally*: for every MatMul / Conv / Gemm / Gather node of the float
graph, the quantized graph's version of that node (the node with its Quantize/Dequantize or
DynamicQuantize companions, or its ``MatMulNBits`` replacement) is cut out into a tiny model and fed the
float graph's own inputs to that node, captured in one run of the float graph with those tensors added as
outputs. Its output is compared with the float node's output, so upstream error does not pile onto deep
layers and one quantization of the whole graph suffices (no re-quantization per node).

:func:`exclude_until_passes` then re-applies the recipe with the top-k nodes in ``nodes_to_exclude``,
k growing one group at a time, until the caller's ``passes(path)`` says yes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from kiln.errors import BuildError
from kiln.optimize.quant_static import QuantizeStatic

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Conv", "Gemm", "Gather")
# A cut-out larger than this means the tensors did not line up (renamed by an optimiser): skip the node.
MAX_SUBGRAPH_NODES = 24


class ExcludableRecipe(Protocol):
    """A recipe with ``nodes_to_exclude`` (QuantizeDynamic, QuantizeStatic, QuantizeInt4, ...)."""

    @property
    def nodes_to_exclude(self) -> tuple[str, ...]: ...

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


R = TypeVar("R", bound=ExcludableRecipe)


@dataclass(frozen=True)
class NodeSensitivity:
    """Local error of one node: ``rel_error`` = ‖quantized − float‖ / ‖float‖ over every fed value."""

    node: str
    op_type: str
    rel_error: float
    quantized: bool

    @property
    def sqnr_db(self) -> float:
        return float("inf") if self.rel_error <= 0 else float(-20.0 * np.log10(self.rel_error))


@dataclass
class ExclusionResult:
    passed: bool
    recipe: Any
    excluded: tuple[str, ...]
    path: Path | None
    attempts: list[tuple[int, bool]] = field(default_factory=list)


def apply_recipe(recipe: Any, src: Path, dst: Path, calibration: CalibrationDataReader | None = None) -> Path:
    """``recipe.apply(src, dst)``, handing calibration data to recipes that need it."""
    if isinstance(recipe, QuantizeStatic):
        return recipe.apply(src, dst, calibration)
    return Path(recipe.apply(src, dst))


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _cut_out(
    quant: onnx.ModelProto, output: str, known: set[str]
) -> tuple[list[onnx.NodeProto], list[str]] | None:
    """Nodes of ``quant`` computing ``output`` from tensors in ``known`` (float-graph activations) and
    initializers; None when the walk strays too far."""
    graph_nodes = list(quant.graph.node)
    producer_at = {out: i for i, node in enumerate(graph_nodes) for out in node.output if out}
    inits = {t.name for t in quant.graph.initializer}
    picked: set[int] = set()
    boundary: list[str] = []
    stack = [output]
    while stack:
        index = producer_at.get(stack.pop())
        if index is None or index in picked:
            continue
        picked.add(index)
        if len(picked) > MAX_SUBGRAPH_NODES:
            return None
        for inp in graph_nodes[index].input:
            if not inp or inp in inits:
                continue
            if inp in known and inp != output:
                if inp not in boundary:
                    boundary.append(inp)
            elif inp in producer_at:
                stack.append(inp)
            else:
                return None  # a graph input the float graph lacks
    nodes = [graph_nodes[i] for i in sorted(picked)]
    return nodes, boundary


def _submodel(
    quant: onnx.ModelProto,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[str],
    output: str,
    types: dict[str, int],
) -> bytes:
    from onnx import TensorProto, helper

    used = {i for n in nodes for i in n.input}
    inits = [t for t in quant.graph.initializer if t.name in used]
    graph = helper.make_graph(
        list(nodes),
        "cut",
        [helper.make_tensor_value_info(i, types.get(i, TensorProto.FLOAT), None) for i in inputs],
        [helper.make_tensor_value_info(output, types.get(output, TensorProto.FLOAT), None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=list(quant.opset_import))
    model.ir_version = quant.ir_version
    return bytes(model.SerializeToString())


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> bytes:
    from onnx import ModelProto, ValueInfoProto

    copy = ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(ValueInfoProto(name=name))
    return bytes(copy.SerializeToString())


_NP_TO_ONNX = {
    np.dtype(np.float32): 1,
    np.dtype(np.int64): 7,
    np.dtype(np.int32): 6,
    np.dtype(np.float16): 10,
}


def rank_sensitivity(
    fp32_path: Path,
    quantized_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    threads: int = 0,
) -> list[NodeSensitivity]:
    """Every ``op_types`` node of the float graph that the quantized graph changed, most sensitive first.

    Nodes whose output tensor the quantized graph lacks, or whose quantized form cannot be cut out, are
    left out; nodes the quantizer left alone are listed last with error 0.
    """
    import onnx
    import onnxruntime as ort

    from kiln.runtime.onnx_backend import session_options

    if not feeds:
        raise BuildError("sensitivity needs at least one encoded batch")
    fp32 = onnx.load(str(fp32_path))
    quant = onnx.load(str(quantized_path))
    known = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output if o}
    fp32_nodes = {n.output[0]: n for n in fp32.graph.node if n.op_type in op_types and n.output}
    q_producers = _producers(quant.graph)

    cuts: dict[str, tuple[onnx.NodeProto, list[onnx.NodeProto], list[str]]] = {}
    untouched: list[onnx.NodeProto] = []
    for out, node in fp32_nodes.items():
        producer = q_producers.get(out)
        if producer is None:
            continue
        if producer.op_type == node.op_type and list(producer.input) == list(node.input):
            untouched.append(node)
            continue
        cut = _cut_out(quant, out, known)
        if cut is not None:
            cuts[out] = (node, *cut)

    wanted = sorted({out for out in cuts} | {b for _, _, bs in cuts.values() for b in bs})
    opts = session_options(threads)
    ref = ort.InferenceSession(_with_outputs(fp32, wanted), opts, providers=["CPUExecutionProvider"])
    input_names = [i.name for i in ref.get_inputs()]
    captured: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        values = ref.run(wanted, {k: feed[k] for k in input_names})
        captured.append(dict(zip(wanted, values, strict=True)))
    types = {name: _NP_TO_ONNX.get(arr.dtype, 1) for name, arr in captured[0].items()}

    ranked: list[NodeSensitivity] = []
    for out, (node, nodes, boundary) in cuts.items():
        try:
            sess = ort.InferenceSession(
                _submodel(quant, nodes, boundary, out, types), opts, providers=["CPUExecutionProvider"]
            )
        except Exception:  # a cut-out ORT cannot build (e.g. a fused contrib op): not ranked
            continue
        err = ref_sq = 0.0
        for values in captured:
            got = sess.run([out], {b: values[b] for b in boundary})[0]
            want = values[out]
            if got.shape != want.shape:
                break
            err += float(np.sum((got.astype(np.float64) - want) ** 2))
            ref_sq += float(np.sum(want.astype(np.float64) ** 2))
        else:
            rel = float(np.sqrt(err / ref_sq)) if ref_sq > 0 else float(np.sqrt(err))
            ranked.append(NodeSensitivity(node.name, node.op_type, rel, quantized=True))
    ranked.sort(key=lambda s: s.rel_error, reverse=True)
    ranked += [NodeSensitivity(n.name, n.op_type, 0.0, quantized=False) for n in untouched]
    return ranked


def recipe_sensitivity(
    recipe: Any,
    src: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    calibration: CalibrationDataReader | None = None,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    threads: int = 0,
) -> list[NodeSensitivity]:
    """Apply ``recipe`` to ``src`` once (in a temporary folder) and rank its nodes by local error."""
    work = Path(tempfile.mkdtemp(prefix="kiln-sens-"))
    try:
        quantized = apply_recipe(recipe, src, work / "quantized.onnx", calibration)
        return rank_sensitivity(src, quantized, feeds, op_types, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def exclude_until_passes(
    recipe: R,
    src: Path,
    dst: Path,
    ranking: Sequence[NodeSensitivity],
    passes: Callable[[Path], bool],
    group_size: int = 1,
    max_excluded: int | None = None,
    calibration: CalibrationDataReader | None = None,
) -> ExclusionResult:
    """Re-apply ``recipe`` with the k most sensitive quantized nodes excluded, k = group_size,
    2·group_size, … (at most ``max_excluded``), until ``passes(dst)``; nodes the recipe already excludes
    stay excluded. The result holds the passing recipe (or the last one tried when none passed)."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    order = [s.node for s in ranking if s.quantized and s.node not in recipe.nodes_to_exclude]
    limit = len(order) if max_excluded is None else min(max_excluded, len(order))
    attempts: list[tuple[int, bool]] = []
    current: Any = recipe
    k = 0
    while k < limit:
        k = min(k + group_size, limit)
        excluded = tuple(recipe.nodes_to_exclude) + tuple(order[:k])
        current = recipe.model_copy(update={"nodes_to_exclude": excluded})
        apply_recipe(current, src, dst, calibration)
        ok = bool(passes(dst))
        attempts.append((k, ok))
        if ok:
            return ExclusionResult(True, current, excluded, dst, attempts)
    return ExclusionResult(
        False, current, tuple(current.nodes_to_exclude), dst if attempts else None, attempts
    )
