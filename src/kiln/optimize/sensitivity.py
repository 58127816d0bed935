"""Accuracy control for the recipe search: which nodes lose most when quantized, and how many to keep
in float until the variant passes.

For every MatMul / Conv / Gemm / Gather node of the float graph, the quantized graph's version of that
node (the node with its Quantize/Dequantize or DynamicQuantize companions, or its ``MatMulNBits``
replacement) is cut out. One quantization of the whole graph suffices (no re-quantization per node).
Two scopes:

* ``"node"`` (local): the cut-out runs alone, fed the float graph's own inputs to that node (captured in
  one run of the float graph with those tensors added as outputs), and its output is compared with the
  float node's, so upstream error does not pile onto deep layers. Cheap: one tiny model per node.
* ``"output"``: the cut-out replaces its float node *inside the float graph* (every other node float),
  and the model's first output is compared with the float model's. This is the error the node adds to
  the answer, after everything downstream amplified or damped it: on EfficientNet-Lite0 the first
  depthwise convolution (288 weights) costs more top-1 agreement than any other layer, though its local
  error is unremarkable. One full-model run per node.

:func:`exclude_until_passes` then re-applies the recipe with the top-k nodes in ``nodes_to_exclude``,
k growing one group at a time, until the caller's ``passes(path)`` says yes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np

from kiln.errors import BuildError
from kiln.optimize.graph_index import GraphIndex
from kiln.optimize.quant_static import QuantizeStatic

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Conv", "Gemm", "Gather")
Scope = Literal["node", "output"]
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
    """Error of one node: ``rel_error`` = ‖quantized − float‖ / ‖float‖ over every fed value, of the
    node's own output (scope ``"node"``) or of the model's (scope ``"output"``). ``float_bytes``: what
    keeping the node float adds to the file (its float weights less their quantized form)."""

    node: str
    op_type: str
    rel_error: float
    quantized: bool
    float_bytes: int = 0

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


@dataclass
class _Cut:
    """The quantized form of ``node``: ``nodes`` compute ``output`` from float tensors ``boundary``.
    ``replaced``: the float nodes it stands for (``node``, and the ReLU/Clip the quantizer folded)."""

    node: onnx.NodeProto
    replaced: list[onnx.NodeProto]
    nodes: list[onnx.NodeProto]
    boundary: list[str]


FOLDED_ACTIVATIONS = ("Relu", "Clip")
"""Activations ORT's QDQ quantizer folds into the preceding node's output range (the node then writes
the activation's output tensor)."""


def _folded_activation(
    node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], q_producers: dict[str, onnx.NodeProto]
) -> onnx.NodeProto | None:
    """The float graph's ReLU/Clip after ``node`` whose output the quantized graph's ``node`` writes."""
    after = consumers.get(node.output[0], [])
    if len(after) != 1 or after[0].op_type not in FOLDED_ACTIVATIONS:
        return None
    producer = q_producers.get(after[0].output[0])
    return after[0] if producer is not None and producer.op_type == node.op_type else None


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
    weights: dict[str, onnx.TensorProto],
) -> bytes:
    from onnx import TensorProto, helper

    used = {i for n in nodes for i in n.input} - {o for n in nodes for o in n.output}
    inits = [t for name, t in weights.items() if name in used]
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


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    from onnx import helper

    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _float_bytes(
    node: onnx.NodeProto,
    cut: Sequence[onnx.NodeProto],
    fp32_inits: dict[str, onnx.TensorProto],
    quant_inits: dict[str, onnx.TensorProto],
) -> int:
    """Bytes the file grows by when ``node`` stays float: its float weights less the cut-out's own."""
    own = sum(_tensor_bytes(fp32_inits[i]) for i in node.input if i in fp32_inits)
    used = {i for n in cut for i in n.input if i in quant_inits and i not in fp32_inits}
    return max(0, own - sum(_tensor_bytes(quant_inits[i]) for i in used))


def _rewired(node: onnx.NodeProto, names: dict[str, str]) -> onnx.NodeProto:
    """A copy of ``node`` with its input and output tensors renamed by ``names``."""
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    copy.input[:] = [names.get(i, i) for i in node.input]
    copy.output[:] = [names.get(o, o) for o in node.output]
    return copy


def _renamed_inside(cut: Sequence[onnx.NodeProto], keep: set[str]) -> list[onnx.NodeProto]:
    """Copies of ``cut`` whose inner tensors (all outputs but ``keep``) get names of their own: the
    quantizer may give a dequantized weight its float initializer's name, which the float graph holds."""
    inner = {o: f"{o}__kiln_cut" for n in cut for o in n.output if o and o not in keep}
    return [_rewired(n, inner) for n in cut]


def _with_activation(
    nodes: list[onnx.NodeProto], boundary: list[str], act: onnx.NodeProto, known_inits: set[str]
) -> tuple[list[onnx.NodeProto], list[str]]:
    """A cut-out whose last node writes ``act``'s output, made to apply ``act`` itself: ORT folded the
    ReLU/Clip into the next Quantize's range, so the node's own output there is unclipped."""
    target = act.output[0]
    unclipped = f"{target}__kiln_unclipped"
    body = [_rewired(n, {target: unclipped}) for n in nodes]
    extra = [i for i in act.input[1:] if i and i not in known_inits and i not in boundary]
    return [*body, _rewired(act, {act.input[0]: unclipped})], [*boundary, *extra]


def _spliced(fp32: onnx.ModelProto, cut: _Cut, quant: onnx.ModelProto) -> bytes:
    """``fp32`` with the float nodes ``cut`` replaces swapped, in place, for its quantized nodes (and
    their weights)."""
    from onnx import ModelProto

    copy = ModelProto()
    copy.CopyFrom(fp32)
    nodes = list(copy.graph.node)
    gone = {tuple(n.output) for n in cut.replaced}
    at = next(i for i, n in enumerate(nodes) if list(n.output) == list(cut.node.output))
    kept = [n for n in nodes[at + 1 :] if tuple(n.output) not in gone]
    del copy.graph.node[:]
    copy.graph.node.extend([*nodes[:at], *_renamed_inside(cut.nodes, {_target(cut)}), *kept])
    have = {t.name for t in copy.graph.initializer}
    used = {i for n in cut.nodes for i in n.input}
    copy.graph.initializer.extend(t for t in quant.graph.initializer if t.name in used and t.name not in have)
    domains = {o.domain for o in copy.opset_import}
    copy.opset_import.extend(o for o in quant.opset_import if o.domain not in domains)
    return bytes(copy.SerializeToString())


def _target(cut: _Cut) -> str:
    """The float tensor ``cut`` writes: the output of the last float node it replaces."""
    return str(cut.replaced[-1].output[0])


def _rel_error(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """‖got − want‖ / ‖want‖ over every pair; None when a shape differs."""
    err = ref_sq = 0.0
    for got, want in pairs:
        if got.shape != want.shape:
            return None
        err += float(np.sum((got.astype(np.float64) - want) ** 2))
        ref_sq += float(np.sum(want.astype(np.float64) ** 2))
    return float(np.sqrt(err / ref_sq)) if ref_sq > 0 else float(np.sqrt(err))


def rank_sensitivity(
    fp32_path: Path,
    quantized_path: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    threads: int = 0,
    scope: Scope = "node",
) -> list[NodeSensitivity]:
    """Every ``op_types`` node of the float graph that the quantized graph changed, most sensitive first
    (``scope``: see the module docstring).

    Nodes whose output tensor the quantized graph lacks, or whose quantized form cannot be cut out, are
    left out; nodes the quantizer left alone are listed last with error 0.
    """
    import onnx

    from kiln.runtime.onnx_backend import session_options

    if not feeds:
        raise BuildError("sensitivity needs at least one encoded batch")
    fp32 = onnx.load(str(fp32_path))
    quant = onnx.load(str(quantized_path))
    known = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output if o}
    fp32_nodes = {n.output[0]: n for n in fp32.graph.node if n.op_type in op_types and n.output}
    q_producers = GraphIndex(quant.graph).producer
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    quant_inits = {t.name: t for t in quant.graph.initializer}

    consumers = GraphIndex(fp32.graph).consumers

    cuts: dict[str, _Cut] = {}
    untouched: list[onnx.NodeProto] = []
    for out, node in fp32_nodes.items():
        target, replaced = out, [node]
        producer = q_producers.get(out)
        if producer is None:
            act = _folded_activation(node, consumers, q_producers)
            if act is None:
                continue
            target, replaced = act.output[0], [node, act]
            producer = q_producers[target]
        if producer.op_type == node.op_type and list(producer.input) == list(node.input):
            untouched.append(node)
            continue
        cut = _cut_out(quant, target, known)
        if cut is None:
            continue
        nodes, boundary = cut
        if len(replaced) > 1:
            nodes, boundary = _with_activation(nodes, boundary, replaced[-1], set(fp32_inits))
        cuts[target] = _Cut(node, replaced, nodes, boundary)

    opts = session_options(threads)
    if scope == "output":
        errors = _output_errors(fp32, quant, cuts, feeds, opts)
    else:
        errors = _node_errors(fp32, quant, cuts, feeds, opts)
    ranked = [
        NodeSensitivity(
            c.node.name,
            c.node.op_type,
            errors[out],
            True,
            _float_bytes(c.node, c.nodes, fp32_inits, quant_inits),
        )
        for out, c in cuts.items()
        if out in errors
    ]
    ranked.sort(key=lambda s: s.rel_error, reverse=True)
    ranked += [NodeSensitivity(n.name, n.op_type, 0.0, quantized=False) for n in untouched]
    return ranked


def _node_errors(
    fp32: onnx.ModelProto,
    quant: onnx.ModelProto,
    cuts: dict[str, _Cut],
    feeds: Sequence[dict[str, np.ndarray]],
    opts: Any,
) -> dict[str, float]:
    """Scope ``"node"``: each cut-out alone on the float graph's own inputs to it."""
    from kiln.runtime.onnx_backend import cpu_session

    wanted = sorted({out for out in cuts} | {b for c in cuts.values() for b in c.boundary})
    ref = cpu_session(_with_outputs(fp32, wanted), opts)
    input_names = [i.name for i in ref.get_inputs()]
    captured: list[dict[str, np.ndarray]] = []
    for feed in feeds:
        values = ref.run(wanted, {k: feed[k] for k in input_names})
        captured.append(dict(zip(wanted, values, strict=True)))
    types = {name: _NP_TO_ONNX.get(arr.dtype, 1) for name, arr in captured[0].items()}
    weights = {t.name: t for t in fp32.graph.initializer} | {t.name: t for t in quant.graph.initializer}
    errors: dict[str, float] = {}
    for out, c in cuts.items():
        try:
            sess = cpu_session(_submodel(quant, c.nodes, c.boundary, out, types, weights), opts)
        except Exception:  # a cut-out ORT cannot build (e.g. a fused contrib op): not ranked
            continue
        rel = _rel_error((sess.run([out], {b: v[b] for b in c.boundary})[0], v[out]) for v in captured)
        if rel is not None:
            errors[out] = rel
    return errors


def _output_errors(
    fp32: onnx.ModelProto,
    quant: onnx.ModelProto,
    cuts: dict[str, _Cut],
    feeds: Sequence[dict[str, np.ndarray]],
    opts: Any,
) -> dict[str, float]:
    """Scope ``"output"``: each cut-out spliced into the float graph, the model's first output compared."""
    from kiln.runtime.onnx_backend import cpu_session

    opts.log_severity_level = 3  # a splice leaves the float weights it replaced unused: ORT warns
    ref = cpu_session(fp32.SerializeToString(), opts)
    input_names = [i.name for i in ref.get_inputs()]
    inputs = [{k: feed[k] for k in input_names} for feed in feeds]
    want = [ref.run(None, f)[0] for f in inputs]
    errors: dict[str, float] = {}
    for c in cuts.values():
        try:
            sess = cpu_session(_spliced(fp32, c, quant), opts)
        except Exception:  # a splice ORT cannot build (e.g. a fused contrib op): not ranked
            continue
        rel = _rel_error((sess.run(None, f)[0], w) for f, w in zip(inputs, want, strict=True))
        if rel is not None:
            errors[_target(c)] = rel
    return errors


def recipe_sensitivity(
    recipe: Any,
    src: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    calibration: CalibrationDataReader | None = None,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    threads: int = 0,
    scope: Scope = "node",
) -> list[NodeSensitivity]:
    """Apply ``recipe`` to ``src`` once (in a temporary folder) and rank its nodes by error."""
    work = Path(tempfile.mkdtemp(prefix="kiln-sens-"))
    try:
        quantized = apply_recipe(recipe, src, work / "quantized.onnx", calibration)
        return rank_sensitivity(src, quantized, feeds, op_types, threads, scope)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _within_bytes(ranking: Sequence[NodeSensitivity], budget: int | None) -> list[str]:
    """Node names in ranking order, skipping any whose float weights would overrun ``budget`` bytes."""
    if budget is None:
        return [s.node for s in ranking]
    picked: list[str] = []
    spent = 0
    for s in ranking:
        if spent + s.float_bytes <= budget:
            picked.append(s.node)
            spent += s.float_bytes
    return picked


def exclude_until_passes(
    recipe: R,
    src: Path,
    dst: Path,
    ranking: Sequence[NodeSensitivity],
    passes: Callable[[Path], bool],
    group_size: int = 1,
    max_excluded: int | None = None,
    calibration: CalibrationDataReader | None = None,
    max_float_bytes: int | None = None,
) -> ExclusionResult:
    """Re-apply ``recipe`` with the k most sensitive quantized nodes excluded, k = group_size,
    2·group_size, … (at most ``max_excluded``), until ``passes(dst)``; nodes the recipe already excludes
    stay excluded. ``max_float_bytes``: nodes are taken in ranking order while the float weights they
    add (``NodeSensitivity.float_bytes``) fit in this many bytes, those that do not are passed over (a
    size budget: keep the small sensitive layers float, never the large ones). The result holds the
    passing recipe (or the last one tried when none passed)."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    order = _within_bytes(
        [s for s in ranking if s.quantized and s.node not in recipe.nodes_to_exclude], max_float_bytes
    )
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
