"""Operator fusion for BERT-class encoders: fewer, bigger kernels at batch 1.

The dynamo exporter writes each self-attention block as about twenty small nodes (three MatMul + Add,
Reshape, Transpose, a scaled QK^T, the padding mask, Softmax, the context MatMul) and the mask itself as
a dozen more. ONNX Runtime's own BERT fusion (``onnxruntime.transformers``) folds the GELUs of such a
graph but does not recognise the exporter's attention pattern, so this module does that part: each block
becomes one ``com.microsoft.Attention`` node with the Q, K and V weights packed into one
``[hidden, 3*hidden]`` matrix and the raw ``attention_mask`` as its mask. Dynamic INT8 quantization then
turns it into ``QAttention`` (one quantized GEMM for Q, K and V).

Residual + layer norm pairs are left as ``Add`` + ``LayerNormalization``: whether ONNX Runtime should fuse
them into ``SkipLayerNormalization`` when it loads the graph is a property of the CPU, measured once per
build (:mod:`kiln.runtime.session_tuning`), not of the graph.

The fused graph must compute what the exported one does: :meth:`FuseTransformer.apply` compares both
on padded random batches and raises :class:`BuildError` when they differ, so a pattern it misreads can
never reach a bundle. A graph with no block it recognises is an error too (nothing to gain).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import BuildError
from kiln.optimize.graph_index import GraphIndex

MS_DOMAIN = "com.microsoft"
MASK_INPUT = "attention_mask"
# Largest |fused - exported| accepted on the self-check (float32 reorderings only).
MAX_ABS_DIFF = 1e-3


class FuseTransformer(BaseModel):
    """Fold each self-attention block into ``Attention`` and each bias + GELU into ``BiasGelu``.
    Float-preserving."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fuse-transformer"] = "fuse-transformer"
    num_heads: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    why: str = ""
    precision: Literal["exact"] = "exact"

    def apply(self, src: Path, dst: Path) -> Path:
        model = onnx.load(str(src))
        try:
            fused = _ort_bert_fusions(model, self.num_heads, self.hidden_size)
            blocks = fuse_attention(fused, self.hidden_size // self.num_heads)
        except BuildError:
            raise
        except Exception as exc:  # the graph utilities raise plain exceptions on odd graphs
            raise BuildError(f"fusing {src.name} failed: {exc}") from exc
        if blocks == 0:
            raise BuildError(f"{src.name}: no self-attention block of a known shape to fuse")
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(fused, str(dst))
        check_same_outputs(src, dst)
        return dst


def _ort_bert_fusions(model: onnx.ModelProto, num_heads: int, hidden: int) -> onnx.ModelProto:
    """ONNX Runtime's BERT fusions of GELU (its attention fusion does not match the dynamo pattern;
    skip layer norms are the session's decision)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    options = FusionOptions("bert")
    options.enable_attention = False
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        optimized = optimize_by_fusion(
            model, model_type="bert", num_heads=num_heads, hidden_size=hidden, optimization_options=options
        )
    finally:
        quiet.setLevel(level)
    return optimized.model


def _perm(node: onnx.NodeProto) -> list[int]:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return []


def _projection(
    g: GraphIndex, name: str, perm: list[int]
) -> tuple[str, np.ndarray, np.ndarray, list[onnx.NodeProto]] | None:
    """``Transpose(perm)(Reshape(Add(MatMul(h, W), b)))`` → (h, W, b, its nodes)."""
    transpose = g.node(name, "Transpose")
    if transpose is None or _perm(transpose) != perm:
        return None
    reshape = g.node(transpose.input[0], "Reshape")
    if reshape is None:
        return None
    add = g.node(reshape.input[0], "Add")
    if add is None:
        return None
    for mm_name, bias_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        matmul = g.node(mm_name, "MatMul")
        bias = g.const(bias_name)
        if matmul is None or bias is None:
            continue
        weight = g.const(matmul.input[1])
        if weight is None or weight.ndim != 2 or bias.shape != (weight.shape[1],):
            return None
        return matmul.input[0], weight, bias, [matmul, add, reshape, transpose]
    return None


def fuse_attention(model: onnx.ModelProto, head: int) -> int:
    """Replace every recognised self-attention block of ``head``-wide heads in ``model`` (in place);
    returns how many. A block's head count is its projection width over ``head``, so layers whose
    heads were pruned fuse too."""
    g = GraphIndex(model.graph)
    if MASK_INPUT not in {i.name for i in model.graph.input}:
        return 0
    mask_name = f"{MASK_INPUT}_int32"
    new_nodes: dict[int, onnx.NodeProto] = {}  # position of the block's last node -> Attention
    removed: set[int] = set()
    position = {id(n): i for i, n in enumerate(model.graph.node)}
    new_inits: list[onnx.TensorProto] = []
    blocks = 0
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        found = _match_block(g, softmax, head)
        if found is None:
            continue
        hidden_in, weight, bias, scale, nodes, output = found
        blocks += 1
        prefix = f"kiln_attention_{blocks}"
        new_inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"{prefix}_qkv_weight"),
            numpy_helper.from_array(bias.astype(np.float32), f"{prefix}_qkv_bias"),
        ]
        attention = helper.make_node(
            "Attention",
            [hidden_in, f"{prefix}_qkv_weight", f"{prefix}_qkv_bias", mask_name],
            [output],
            name=prefix,
            domain=MS_DOMAIN,
            num_heads=weight.shape[1] // 3 // head,  # fewer where heads were pruned
        )
        if not math.isclose(scale, 1.0 / math.sqrt(head), rel_tol=1e-4):
            attention.attribute.append(helper.make_attribute("scale", float(scale)))
        last = max(position[id(n)] for n in nodes)
        new_nodes[last] = attention
        removed |= {position[id(n)] for n in nodes}
    if blocks == 0:
        return 0
    cast = helper.make_node(
        "Cast", [MASK_INPUT], [mask_name], name="kiln_attention_mask_int32", to=onnx.TensorProto.INT32
    )
    kept: list[onnx.NodeProto] = [cast]
    for i, node in enumerate(model.graph.node):
        if i in new_nodes:
            kept.append(new_nodes[i])
        elif i not in removed:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new_inits)
    _drop_dead(model)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return blocks


def _match_block(
    g: GraphIndex, softmax: onnx.NodeProto, head: int
) -> tuple[str, np.ndarray, np.ndarray, float, list[onnx.NodeProto], str] | None:
    """One block around ``softmax``: (input, packed W, packed b, scale, its nodes, its output)."""
    add = g.node(softmax.input[0], "Add")
    if add is None:
        return None
    scaled = scale = None
    for a, b in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        node = g.producer.get(a)
        if node is not None and node.op_type in ("Mul", "Div"):
            factor = g.const(node.input[1])
            if factor is not None and factor.size == 1:
                value = float(factor.reshape(()))
                scaled, scale = node, value if node.op_type == "Mul" else 1.0 / value
                mask_add_input = b
                break
    if scaled is None or scale is None or g.const(mask_add_input) is not None:
        return None
    qk = g.node(scaled.input[0], "MatMul")
    if qk is None:
        return None
    q = _projection(g, qk.input[0], [0, 2, 1, 3])
    k = _projection(g, qk.input[1], [0, 2, 3, 1])
    context = g.only_consumer(softmax.output[0], "MatMul")
    if q is None or k is None or context is None or context.input[0] != softmax.output[0]:
        return None
    v = _projection(g, context.input[1], [0, 2, 1, 3])
    if v is None:
        return None
    out_t = g.only_consumer(context.output[0], "Transpose")
    if out_t is None or _perm(out_t) != [0, 2, 1, 3]:
        return None
    out_r = g.only_consumer(out_t.output[0], "Reshape")
    if out_r is None:
        return None
    hidden_in = q[0]
    if k[0] != hidden_in or v[0] != hidden_in:
        return None
    width = q[1].shape[1]
    if width % head or any(p[1].shape != q[1].shape for p in (k, v)):
        return None
    weight = np.concatenate([q[1], k[1], v[1]], axis=1)
    bias = np.concatenate([q[2], k[2], v[2]])
    nodes = [*q[3], *k[3], *v[3], qk, scaled, add, softmax, context, out_t, out_r]
    for node in nodes[:-1]:  # nothing outside the block may read an intermediate
        for out in node.output:
            if any(id(c) not in {id(n) for n in nodes} for c in g.consumers.get(out, [])):
                return None
    return hidden_in, weight, bias, scale, nodes, out_r.output[0]


def _drop_dead(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nobody reads (the exporter's mask arithmetic) and unused weights."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _feeds(inputs: Iterable[onnx.ValueInfoProto], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two rows of 19 tokens, the second padded after 7: what text encoders are fed."""
    batch, seq = 2, 19
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, 7:] = 0
    feeds: dict[str, np.ndarray] = {}
    for inp in inputs:
        elem = inp.type.tensor_type.elem_type
        dtype = np.int32 if elem == onnx.TensorProto.INT32 else np.int64
        if inp.name == MASK_INPUT:
            feeds[inp.name] = mask.astype(dtype)
        elif "type" in inp.name:
            feeds[inp.name] = np.zeros((batch, seq), dtype=dtype)
        else:
            feeds[inp.name] = rng.integers(100, 1000, size=(batch, seq)).astype(dtype)
    return feeds


def check_same_outputs(before: Path, after: Path) -> None:
    """Raise :class:`BuildError` unless ``after`` reproduces ``before`` on a padded random batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = [
        ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (before, after)
    ]
    feeds = _feeds(onnx.load(str(before), load_external_data=False).graph.input, np.random.default_rng(0))
    want, got = (s.run(None, feeds)[0] for s in sessions)
    mask = feeds[MASK_INPUT].astype(bool) if want.ndim == 3 else np.ones(want.shape[0], dtype=bool)
    diff = float(np.max(np.abs(want[mask] - got[mask]))) if want.shape == got.shape else math.inf
    if not diff <= MAX_ABS_DIFF:
        raise BuildError(f"fused graph differs from {before.name} (max |diff| {diff:.3g}): not used")


def transformer_shape(module: object) -> tuple[int, int] | None:
    """(attention heads, hidden size) of the first BERT-class config inside ``module``, else None."""
    modules = getattr(module, "modules", None)
    if modules is None:
        return None
    for sub in modules():
        config = getattr(sub, "config", None)
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads == 0:
            return heads, hidden
    return None


def fuse_transformer(shape: tuple[int, int]) -> FuseTransformer:
    """The fusion recipe for an encoder of ``shape`` = (attention heads, hidden size)."""
    return FuseTransformer(
        num_heads=shape[0],
        hidden_size=shape[1],
        why="one Attention kernel per layer instead of ~20 small nodes (QAttention once quantized)",
    )
