"""Memory of one serving replica, line by line: weights, quantization scales, KV cache, activations, runtime.

    weights       exact bytes from the weight files' headers when the plan keeps the stored dtype; else
                  parameters x width, with embeddings, norms and the LM head kept at 16 bits when the
                  matrices are quantized (fp8/int8/int4), as quantizers do
    scales        int8: one fp16 scale per output channel; fp8: one fp32 scale per output channel;
                  int4: one fp16 scale and a 4-bit zero point per group of 128 weights
    KV cache      2 x layers x kv_heads x head_dim x tokens x batch x bytes (decoders only)
    activations   the largest live set of one forward pass over batch x context tokens
                  (decoder: residual, gate/up/product of the MLP, last-token logits in fp32;
                  encoder: max of attention's q/k/v/context and the MLP's in/out; CNN: the input images
                  and the largest set of feature maps alive at once, walked operator by operator with
                  oneDNN's blocked copies on CPU, see kiln.plan.cnn); on GPU and in arena runtimes (ONNX
                  Runtime), times the runtime's allocator slack
    allocator     CPU runtimes that allocate tensors with glibc malloc (PyTorch): what the heap keeps
                  resident beyond the live tensors (see ``glibc_retention``); replaces the slack there
    load copy     CPU: weight copies resident at once while loading, beyond what serving holds
    runtime       CPU: the serving process before weights; GPU: CUDA context and library workspaces

Every line says whether it is exact (read from files) or an estimate (from the architecture).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from kiln.plan.catalog import Runtime
from kiln.plan.errors import PlanError
from kiln.plan.params import ArchSpec, ParamBreakdown

PlanDtype = Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"]
DTYPES: tuple[PlanDtype, ...] = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
WIDTH: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
QUANTIZED = frozenset({"fp8", "int8", "int4"})
INT4_GROUP = 128
MIB = 1 << 20
GLIBC_MMAP_MAX = 32 * MIB  # glibc DEFAULT_MMAP_THRESHOLD_MAX on 64-bit

# stored dtype names (safetensors/ONNX/torch spelling) -> bytes per element
_STORED_WIDTH: dict[str, float] = {
    "float64": 8,
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e8m0fnu": 1,
    "int4": 0.5,
    "uint4": 0.5,
    "float4_e2m1": 0.5,
}
_STORED_AS_PLAN: dict[str, PlanDtype] = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "float8_e4m3fn": "fp8",
    "int8": "int8",
}


def check_dtype(dtype: str) -> PlanDtype:
    for d in DTYPES:
        if d == dtype.lower():
            return d
    raise PlanError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def stored_plan_dtype(stored_dtypes: dict[str, int]) -> PlanDtype | None:
    """The plan dtype all floating weights are stored in, or None when mixed or not a plan dtype."""
    floats = {k for k, v in stored_dtypes.items() if v and k not in ("int64", "int32")}
    if len(floats) != 1:
        return None
    return _STORED_AS_PLAN.get(floats.pop())


def stored_bytes(stored_dtypes: dict[str, int]) -> int | None:
    """Exact bytes of the weights as stored (elements x width per dtype), or None for unknown dtypes."""
    total = 0.0
    for name, count in stored_dtypes.items():
        width = _STORED_WIDTH.get(name)
        if width is None:
            return None
        total += count * width
    return int(total)


class MemoryLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    bytes: int
    how: str
    estimate: bool = True
    per_device: bool = True  # False: held once per device regardless of the split (runtime, activations)


class MemoryBreakdown(BaseModel):
    """The lines for the whole model on one device kind; ``split(tp, pp)`` gives one device's share."""

    model_config = ConfigDict(frozen=True)

    lines: list[MemoryLine]

    @property
    def total(self) -> int:
        return sum(line.bytes for line in self.lines)

    def line(self, name: str) -> int:
        return sum(line.bytes for line in self.lines if line.name == name)

    def per_device(self, tp: int, pp: int) -> int:
        """Bytes on each of tp x pp devices: weights, scales and KV cache split across all of them,
        activations (and what the allocator keeps) split by tensor parallelism, runtime overhead on
        every device."""
        out = 0.0
        for line in self.lines:
            if line.name == "runtime":
                out += line.bytes
            elif line.name in ("activations", "allocator"):
                out += line.bytes / tp
            else:
                out += line.bytes / (tp * pp)
        return int(out)


def weight_bytes(params: ParamBreakdown, dtype: PlanDtype) -> int:
    """Weights at ``dtype``: quantized dtypes convert the matrices only; the rest stays at 16 bits."""
    if dtype in QUANTIZED:
        kept = params.total - params.quantizable
        return int(params.quantizable * WIDTH[dtype] + kept * 2)
    return int(params.total * WIDTH[dtype])


def scale_bytes(params: ParamBreakdown, spec: ArchSpec, dtype: PlanDtype) -> tuple[int, str]:
    q = params.quantizable
    if dtype == "int4":
        return int(
            q / INT4_GROUP * 2.5
        ), f"{q:,} weights / {INT4_GROUP} per group x (fp16 scale + 4-bit zero)"
    if dtype == "int8":
        return int(q / spec.hidden * 2), "one fp16 scale per output channel"
    if dtype == "fp8":
        return int(q / spec.hidden * 4), "one fp32 scale per output channel"
    return 0, "none at this dtype"


def kv_cache_bytes(spec: ArchSpec, dtype: PlanDtype, tokens: int, batch: int) -> int:
    """2 x layers x kv_heads x head_dim x tokens x batch x bytes; fp32 plans keep fp32 K/V, others 16-bit."""
    return spec.kv_elements_per_token() * tokens * batch * kv_width(dtype)


def kv_width(dtype: PlanDtype) -> int:
    return 4 if dtype == "fp32" else 2


def activation_bytes(
    spec: ArchSpec, dtype: PlanDtype, tokens: int, batch: int, device: Literal["gpu", "cpu"] = "gpu"
) -> tuple[int, str]:
    """Largest live set of one forward pass over batch x tokens (fused/SDPA attention: no T x T matrix).

    ``device`` matters for CNNs only: CPU convolutions go through oneDNN's blocked copies."""
    width = _act_width(dtype)
    h = spec.hidden
    n = batch * tokens
    if spec.convnet is not None:  # tokens is the image side
        per_image, where = spec.convnet.activation_elements(tokens, onednn=device == "cpu")
        return (
            batch * per_image * width,
            f"batch {batch} x {per_image:,} elements ({where}, {tokens}x{tokens} images) x {width} B",
        )
    if spec.family == "encoder":
        per_token = max(6 * h, 2 * h + 2 * spec.intermediate)
        return (
            n * per_token * width,
            f"{n:,} tokens x max(6 x {h}, 2 x ({h} + {spec.intermediate})) x {width} B",
        )
    inter = _mlp_width(spec)
    per_token = 2 * h + 3 * inter
    logits = batch * spec.vocab * 4
    how = (
        f"{n:,} tokens x (2 x {h} + 3 x {inter}) x {width} B + last-token logits {batch} x {spec.vocab} x 4 B"
    )
    return n * per_token * width + logits, how


def _act_width(dtype: PlanDtype) -> int:
    return 4 if dtype == "fp32" else 2


def _mlp_width(spec: ArchSpec) -> int:
    return spec.expert_intermediate if spec.experts else spec.intermediate


def largest_transient_below(spec: ArchSpec, dtype: PlanDtype, tokens: int, batch: int, cap: int) -> int:
    """Bytes of the largest activation tensor of one forward pass that is at most ``cap`` bytes.

    CNN: every feature map (input, padded copies, expanded/depthwise/block outputs, head) x batch;
    transformers: the [tokens, width] matrices of a layer (hidden, q, k/v, MLP intermediate)."""
    width = _act_width(dtype)
    if spec.convnet is not None:
        sizes = [batch * e * width for e in spec.convnet.feature_maps(tokens)]
    else:
        n = batch * tokens
        widths = [spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim]
        widths.append(spec.intermediate if spec.family == "encoder" else _mlp_width(spec))
        sizes = [n * w * width for w in widths]
    return max((x for x in sizes if x <= cap), default=0)


def glibc_retention(spec: ArchSpec, dtype: PlanDtype, tokens: int, batch: int) -> tuple[int, str]:
    """Heap memory glibc malloc keeps resident beyond the live tensors, at the forward pass's peak.

    Two mechanisms, both from glibc's documented behaviour (mallopt(3)), none fitted to a measurement:

    * trim threshold: a block of at least the mmap threshold is served by ``mmap`` and returned to the
      system when freed; freeing one raises the threshold to its size (up to ``M_MMAP_THRESHOLD`` max,
      32 MiB on 64-bit) and the trim threshold to twice that. From then on, tensors below the threshold
      come from the heap, and the heap's top is only given back once more than 2 x threshold is free:
      up to ``2 x`` the largest activation tensor of at most 32 MiB stays resident.
    * KV cache strands holes (decoders): a prefill allocates each layer's K and V (kept) between that
      layer's activations (freed). When K/V tensors come from the heap (at most 32 MiB each), one of the
      pair can land in a hole the layer's next activation then does not fit, which strands a K/V-sized
      hole per layer: up to half the KV cache again. Seen in some runs and not in others (thread
      timing); a replica must fit the runs where it happens, so the plan counts it.
    """
    largest = largest_transient_below(spec, dtype, tokens, batch, GLIBC_MMAP_MAX)
    retained = 2 * largest
    how = (
        f"glibc keeps the heap top below its trim threshold: 2 x {largest / MIB:,.1f} MiB "
        "(largest activation tensor <= 32 MiB)"
    )
    if spec.has_kv_cache:
        kv = kv_cache_bytes(spec, dtype, tokens, batch)
        per_tensor = kv // (2 * spec.layers) if spec.layers else 0
        if 0 < per_tensor <= GLIBC_MMAP_MAX:
            retained += kv // 2
            how += (
                f" + holes stranded by heap-served K/V tensors ({per_tensor / MIB:,.1f} MiB each): "
                "KV cache / 2"
            )
    return retained, how


def memory_breakdown(
    spec: ArchSpec,
    params: ParamBreakdown,
    dtype: PlanDtype,
    batch: int,
    context: int,
    runtime: Runtime,
    device: Literal["gpu", "cpu"],
    exact_weight_bytes: int | None = None,
) -> MemoryBreakdown:
    """Memory lines for serving ``batch`` sequences of ``context`` tokens at ``dtype`` on one device kind.

    ``exact_weight_bytes``: bytes read from the weight files' headers, used as the weights line when the
    plan keeps the stored dtype.
    """
    if exact_weight_bytes is not None:
        w = exact_weight_bytes
        w_line = MemoryLine(
            name="weights", bytes=w, how="read from the weight files' headers", estimate=False
        )
    else:
        w = weight_bytes(params, dtype)
        how = f"{params.total:,} parameters x {WIDTH[dtype]:g} B"
        if dtype in QUANTIZED:
            how = (
                f"{params.quantizable:,} matrix weights x {WIDTH[dtype]:g} B + "
                f"{params.total - params.quantizable:,} others (embeddings, norms, head) x 2 B"
            )
        w_line = MemoryLine(name="weights", bytes=w, how=how)
    scales, scales_how = (
        (0, "none: weights as stored")
        if exact_weight_bytes is not None
        else (scale_bytes(params, spec, dtype))
    )
    kv = kv_cache_bytes(spec, dtype, context, batch)
    no_kv = "a CNN" if spec.family == "cnn" else "an encoder"
    kv_how = (
        f"2 x {spec.layers} layers x {spec.kv_heads} kv heads x {spec.head_dim} x {context:,} tokens x "
        f"batch {batch} x {kv_width(dtype)} B"
        if spec.has_kv_cache
        else f"none: {no_kv} keeps no KV cache"
    )
    act, act_how = activation_bytes(spec, dtype, context, batch, device)
    glibc = device == "cpu" and runtime.cpu_allocator == "glibc"
    if not glibc:
        act = int(act * runtime.activation_slack)
        if runtime.activation_slack != 1:
            act_how += f", x {runtime.activation_slack:g} allocator slack"
    lines = [
        w_line,
        MemoryLine(name="quantization scales", bytes=scales, how=scales_how),
        MemoryLine(name="KV cache", bytes=kv, how=kv_how),
        MemoryLine(name="activations", bytes=act, how=act_how),
    ]
    if glibc:
        held, held_how = glibc_retention(spec, dtype, context, batch)
        lines.append(MemoryLine(name="allocator", bytes=held, how=held_how))
    if device == "cpu" and runtime.load_copies > 1:
        load_extra = max(0, int((runtime.load_copies - 1) * w) - kv - act)
        lines.append(
            MemoryLine(
                name="load copy",
                bytes=load_extra,
                how=f"{runtime.load_copies:g} weight copies resident while loading, beyond KV + activations",
            )
        )
    if device == "cpu":
        lines.append(
            MemoryLine(
                name="runtime",
                bytes=int(runtime.process_mib * MIB),
                how=f"{runtime.description or 'runtime'} process before weights "
                f"({runtime.process_mib:g} MiB)",
            )
        )
    else:
        lines.append(
            MemoryLine(
                name="runtime",
                bytes=int(runtime.gpu_context_mib * MIB),
                how=f"CUDA context + library workspaces, per GPU ({runtime.gpu_context_mib:g} MiB)",
            )
        )
    return MemoryBreakdown(lines=lines)
