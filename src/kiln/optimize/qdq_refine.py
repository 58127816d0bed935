"""Quantization-aware refinement of a QDQ graph: its weights trained toward the float graph's outputs.

Static INT8 rounds every weight to its nearest grid point and every activation to a range fixed by
calibration. Each rounding is locally the best one, but their errors add up along the network. Here
the quantized graph is rebuilt in PyTorch exactly as ONNX Runtime computes it in float (each weight
``DequantizeLinear`` a per-channel fake quantizer over a trainable float weight, each activation
``QuantizeLinear``/``DequantizeLinear`` pair a fixed fake quantizer, rounding passed straight through
for gradients), trained a few hundred steps to reproduce the float reference's outputs on unlabelled
calibration inputs (mean squared error of the logits: distillation, no labels), and the weights are
rounded back into the same graph. Scales, zero points, activation ranges, the operators and the file
size stay as they were: only which integer each weight (and bias) holds changes.

Operators rebuilt: the ones CNN classifiers are made of (Conv, Gemm, MatMul, Add/Sub/Mul/Div, Relu,
Clip, Sigmoid, ReduceMean, GlobalAveragePool, Flatten, Reshape, Transpose, Concat, Identity); any other
operator is refused with its name (:class:`~kiln.errors.BuildError`) and the graph is left as it was.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.errors import BuildError
from kiln.runtime.onnx_backend import OnnxBackend

if TYPE_CHECKING:
    import onnx
    import torch

Feed = dict[str, np.ndarray]
SUPPORTED = frozenset(
    {
        "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "ReduceMean",
        "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Concat", "Identity",
        "QuantizeLinear", "DequantizeLinear",
    }
)  # fmt: skip
_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
}
_INT_RANGE = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


@dataclass(frozen=True)
class RefineReport:
    """What a refinement did: steps run, the training loss before and after, weights that changed."""

    steps: int
    loss_before: float
    loss_after: float
    changed_weights: int
    total_weights: int
    seconds: float


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest even, gradient passed straight through."""
    return x + (x.round() - x).detach()


def _qparams(
    inits: Mapping[str, np.ndarray], node: onnx.NodeProto, ndim: int
) -> tuple[np.ndarray, np.ndarray]:
    """A Q/DQ node's scale and zero point (float64), shaped to broadcast along its axis when per-channel."""
    scale = inits[node.input[1]].astype(np.float64)
    zp = inits[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros(1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * ndim
        shape[int(_attrs(node).get("axis", 1)) % ndim] = scale.size
        return scale.reshape(shape), zp.reshape(shape)
    return scale.reshape(()), zp.reshape(())


@dataclass
class _Weight:
    """A constant ``DequantizeLinear``: the initializer it reads and the trainable value behind it.
    8-bit weights are trained in units of their own step (the integers, as floats), so one learning
    rate fits layers whose scales differ by orders of magnitude; int32 biases (step scale_in * scale_w,
    far below their own size) are trained as floats and rounded only when written back."""

    init: str
    dtype: np.dtype[Any]
    scale: np.ndarray
    zero: np.ndarray
    value: torch.Tensor
    step: torch.Tensor  # scale and zero point as float32 tensors, for the fake quantizer
    offset: torch.Tensor

    @classmethod
    def of(cls, init: str, q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> _Weight:
        import torch

        w = q.astype(np.float64) if q.dtype in _INT_RANGE else (q.astype(np.float64) - zero) * scale
        return cls(
            init=init,
            dtype=q.dtype,
            scale=scale,
            zero=zero,
            value=torch.tensor(w, dtype=torch.float32, requires_grad=True),
            step=torch.from_numpy(scale.astype(np.float32)),
            offset=torch.from_numpy(zero.astype(np.float32)),
        )

    @property
    def eight_bit(self) -> bool:
        return self.dtype in _INT_RANGE

    def fake(self) -> torch.Tensor:
        """What the graph's ``DequantizeLinear`` yields for the current value."""
        import torch

        if not self.eight_bit:  # int32 biases: rounding to scale_in * scale_w is negligible
            return self.value
        lo, hi = _INT_RANGE[self.dtype]
        return (torch.clamp(_round_ste(self.value), lo, hi) - self.offset) * self.step

    def integers(self) -> np.ndarray:
        """The initializer's integers for the current value."""
        values = self.value.detach().double().numpy()
        if self.eight_bit:
            lo, hi = _INT_RANGE[self.dtype]
            return np.clip(np.round(values), lo, hi).astype(self.dtype)
        info = np.iinfo(self.dtype)
        return np.clip(np.round(values / self.scale + self.zero), info.min, info.max).astype(self.dtype)


class QdqModule:
    """A QDQ ONNX graph as a differentiable PyTorch computation (float arithmetic, as ORT's reference
    kernels compute QDQ). ``params`` are the float weights behind each constant ``DequantizeLinear``.
    Each node's attributes and quantizer constants are read once, here, not on every pass."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import torch
        from onnx import numpy_helper

        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - SUPPORTED)
        if unsupported:
            raise BuildError(f"QDQ refinement cannot rebuild the operators {unsupported}")
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.nodes = list(graph.node)
        self.attrs = [_attrs(n) for n in self.nodes]
        self.outputs = [o.name for o in graph.output]
        # shapes, axes, float biases (Q/DQ read their scales and zero points below)
        self.consts = {name: torch.from_numpy(np.array(arr)) for name, arr in self.inits.items()}
        self.weights: dict[str, _Weight] = {}  # by the constant DequantizeLinear's output name
        # activation QuantizeLinear: (scale, zero point, lo, hi); activation DequantizeLinear: (scale, zp)
        self.quantizers: dict[str, tuple[float, float, int, int]] = {}
        self.dequantizers: dict[str, tuple[float, float]] = {}
        for node in self.nodes:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if node.op_type == "DequantizeLinear" and node.input[0] in self.inits:
                q = self.inits[node.input[0]]
                scale, zero = _qparams(self.inits, node, q.ndim)
                self.weights[node.output[0]] = _Weight.of(node.input[0], q, scale, zero)
                continue
            scale, zero = _qparams(self.inits, node, 1)
            if scale.size != 1:
                raise BuildError(
                    f"QDQ refinement: per-channel activation quantizer {node.name!r} is not rebuilt"
                )
            if node.op_type == "QuantizeLinear":
                dtype = self.inits[node.input[2]].dtype if len(node.input) > 2 else np.dtype(np.uint8)
                lo, hi = _INT_RANGE[dtype]
                self.quantizers[node.output[0]] = (float(scale), float(zero), lo, hi)
            else:
                self.dequantizers[node.output[0]] = (float(scale), float(zero))

    @property
    def params(self) -> list[torch.Tensor]:
        return [w.value for w in self.weights.values()]

    def param_groups(self, lr_steps: float, lr_bias: float) -> list[dict[str, Any]]:
        """8-bit weights (in units of their step) at ``lr_steps``, float biases at ``lr_bias``."""
        ints = [w.value for w in self.weights.values() if w.eight_bit]
        floats = [w.value for w in self.weights.values() if not w.eight_bit]
        return [{"params": ints, "lr": lr_steps}, {"params": floats, "lr": lr_bias}]

    def integer_weights(self) -> dict[str, np.ndarray]:
        """Each weight initializer's integers for the current float weights."""
        return {w.init: w.integers() for w in self.weights.values()}

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        import torch
        import torch.nn.functional as F

        env: dict[str, torch.Tensor] = dict(self.consts)
        env.update(feeds)
        for node, a in zip(self.nodes, self.attrs, strict=True):
            op = node.op_type
            out = node.output[0]
            if out in self.weights:
                env[out] = self.weights[out].fake()
                continue
            wanted = node.input[:1] if op in ("QuantizeLinear", "DequantizeLinear") else node.input
            x: list[Any] = [env[name] if name else None for name in wanted]
            if op == "QuantizeLinear":
                s, z, lo, hi = self.quantizers[out]
                y = torch.clamp(_round_ste(x[0] / s) + z, lo, hi)
            elif op == "DequantizeLinear":
                s, z = self.dequantizers[out]
                y = (x[0] - z) * s
            elif op == "Conv":
                y = self._conv(x, a)
            elif op == "Gemm":
                m1 = x[0].t() if a.get("transA", 0) else x[0]
                m2 = x[1].t() if a.get("transB", 0) else x[1]
                y = a.get("alpha", 1.0) * (m1 @ m2)
                if len(x) > 2 and x[2] is not None:
                    y = y + a.get("beta", 1.0) * x[2]
            elif op == "MatMul":
                y = x[0] @ x[1]
            elif op in ("Add", "Sub", "Mul", "Div"):
                y = _ARITHMETIC[op](x[0], x[1])
            elif op == "Relu":
                y = F.relu(x[0])
            elif op == "Clip":
                lo_t = x[1] if len(x) > 1 and x[1] is not None else None
                hi_t = x[2] if len(x) > 2 and x[2] is not None else None
                y = torch.clamp(x[0], lo_t, hi_t)
            elif op == "Sigmoid":
                y = torch.sigmoid(x[0])
            elif op == "ReduceMean":
                axes = a.get("axes")
                if axes is None and len(x) > 1 and x[1] is not None:
                    axes = [int(v) for v in x[1].tolist()]
                keep = bool(a.get("keepdims", 1))
                y = x[0].mean(dim=tuple(axes), keepdim=keep) if axes else x[0].mean()
            elif op == "GlobalAveragePool":
                y = x[0].mean(dim=tuple(range(2, x[0].ndim)), keepdim=True)
            elif op == "Flatten":
                y = torch.flatten(x[0], int(a.get("axis", 1)) % max(x[0].ndim, 1))
                if int(a.get("axis", 1)) == 0:
                    y = y.reshape(1, -1)
            elif op == "Reshape":
                shape = [int(v) for v in x[1].tolist()]
                if not a.get("allowzero", 0):  # 0 copies the input's dimension
                    shape = [x[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
                y = x[0].reshape(shape)
            elif op == "Transpose":
                y = x[0].permute(*a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].ndim)))
            elif op == "Concat":
                y = torch.cat([t for t in x if t is not None], dim=int(a["axis"]))
            else:  # Identity
                y = x[0]
            env[out] = y
        return [env[name] for name in self.outputs]

    @staticmethod
    def _conv(x: list[Any], a: dict[str, Any]) -> torch.Tensor:
        import torch.nn.functional as F

        inp, w = x[0], x[1]
        bias = x[2] if len(x) > 2 else None
        dims = w.ndim - 2
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise BuildError("QDQ refinement: Conv with auto_pad SAME_* is not rebuilt")
        pads = list(a.get("pads", [0] * 2 * dims))
        begin, end = pads[:dims], pads[dims:]
        if begin != end:  # F.pad lists the last axis first
            pad = [p for i in reversed(range(dims)) for p in (begin[i], end[i])]
            inp = F.pad(inp, pad)
            begin = [0] * dims
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        return conv(
            inp,
            w,
            bias,
            stride=tuple(a.get("strides", [1] * dims)),
            padding=tuple(begin),
            dilation=tuple(a.get("dilations", [1] * dims)),
            groups=int(a.get("group", 1)),
        )


def refine_qdq(
    reference: Path,
    quantized: Path,
    dst: Path,
    feeds: Sequence[Feed],
    steps: int = 200,
    lr: float = 0.02,
    lr_bias: float = 1e-4,
    threads: int = 2,
    flip_axis: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> RefineReport:
    """Train the weights of ``quantized`` (QDQ) so its outputs match ``reference`` (float) on ``feeds``,
    write the refined graph to ``dst``. ``lr``: Adam's step for the 8-bit weights, in units of their
    own quantization step (0.02: a weight needs ~50 steps of one sign to reach the next integer);
    ``lr_bias``: for the int32 biases, in their float units. ``flip_axis``: also train on each feed
    mirrored along this axis of every input (3 for NCHW images: left-right), a cheap augmentation.
    The steps cycle through the batches; the weights with the lowest loss over a full pass are kept."""
    import onnx
    import torch
    from onnx import numpy_helper

    if not feeds:
        raise BuildError("QDQ refinement needs at least one calibration batch")
    start = time.perf_counter()
    torch.set_num_threads(threads)
    batches: list[Feed] = list(feeds)
    if flip_axis is not None:
        batches += [{k: np.ascontiguousarray(np.flip(v, flip_axis)) for k, v in f.items()} for f in feeds]
    backend = OnnxBackend(reference, threads)
    targets = [backend.run(f) for f in batches]
    model = onnx.load(str(quantized))
    net = QdqModule(model)
    tensors = [{k: torch.from_numpy(v) for k, v in f.items()} for f in batches]
    goals = [[torch.from_numpy(t) for t in ts] for ts in targets]

    def loss_on(i: int) -> torch.Tensor:
        outs = net(tensors[i])
        return sum((torch.mean((o - g) ** 2) for o, g in zip(outs, goals[i], strict=True)), torch.zeros(()))

    def full_loss() -> float:
        with torch.no_grad():
            return float(sum(float(loss_on(i)) for i in range(len(batches))) / len(batches))

    before = full_loss()
    best = (before, [p.detach().clone() for p in net.params])
    opt = torch.optim.Adam(net.param_groups(lr, lr_bias))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    order = np.random.default_rng(0)
    perm: list[int] = []
    for step in range(steps):
        if not perm:
            perm = list(order.permutation(len(batches)))
        i = perm.pop()
        opt.zero_grad()
        loss = loss_on(i)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
        if (step + 1) % len(batches) == 0 or step + 1 == steps:
            now = full_loss()
            if now < best[0]:
                best = (now, [p.detach().clone() for p in net.params])
    with torch.no_grad():
        for p, kept in zip(net.params, best[1], strict=True):
            p.copy_(kept)
    ints = net.integer_weights()
    changed = total = 0
    for t in model.graph.initializer:
        if t.name in ints:
            old = numpy_helper.to_array(t)
            changed += int((old != ints[t.name]).sum())
            total += old.size
            t.CopyFrom(numpy_helper.from_array(ints[t.name], t.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return RefineReport(
        steps=steps,
        loss_before=before,
        loss_after=best[0],
        changed_weights=changed,
        total_weights=total,
        seconds=time.perf_counter() - start,
    )
