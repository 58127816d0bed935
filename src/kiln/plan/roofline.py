"""Roofline throughput estimates and what they cost.

A step takes the longer of its compute time (FLOPs / (peak x compute efficiency)) and its memory time
(bytes read / (bandwidth x bandwidth efficiency)), over the ``tp`` devices of one tensor-parallel group
(pipeline stages run one after another for one batch, so they add memory, not speed).

    decode (decoders)   one token per sequence: reads every active weight and the batch's KV cache;
                        memory-bound at small batch
    prefill (decoders)  batch x prompt tokens at once: compute-bound
    forward (encoders)  batch x context tokens at once

FLOPs: 2 per matrix weight per token, plus attention (QK^T and AV: 4 x layers x heads x head_dim x
tokens attended, halved for causal prefill); CNNs: 2 per multiply-add of their convolutions and classifier
(kiln.plan.cnn). On CPU each forward call (an encoder or CNN batch, a prefill, one decode step) also pays
the runtime's fixed ``call_overhead_ms`` (Python, framework dispatch, thread wake-ups), which the
roofline alone misses at small batches. MoE decode reads the experts the batch is expected to touch:
E x (1 - (1 - k/E)^batch) per layer. All results are estimates and say which bound applied.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from kiln.plan.catalog import Catalog, Target
from kiln.plan.memory import PlanDtype
from kiln.plan.params import ArchSpec, ParamBreakdown

Bound = Literal["compute", "memory"]


class Step(BaseModel):
    model_config = ConfigDict(frozen=True)

    seconds: float
    bound: Bound
    flops: float
    bytes: float


class Throughput(BaseModel):
    """Estimates for one target. Decoders: tokens/s of decode and prefill, and requests/s for requests of
    ``prompt_tokens`` in and ``output_tokens`` out. Encoders: requests/s (one request = one sequence)."""

    model_config = ConfigDict(frozen=True)

    compute_dtype: str
    decode_tokens_per_s: float | None = None
    decode_bound: Bound | None = None
    prefill_tokens_per_s: float | None = None
    prefill_bound: Bound | None = None
    requests_per_s: float
    request_seconds_batch1: float
    notes: list[str] = []


class Costs(BaseModel):
    """USD. ``per_1m_tokens``: output tokens (decoders); ``per_1m_requests`` for everyone."""

    model_config = ConfigDict(frozen=True)

    cloud_usd_per_hour: float | None = None
    cloud_per_1m_tokens: float | None = None
    cloud_per_1m_requests: float | None = None
    onprem_usd_per_hour: float | None = None
    onprem_per_1m_tokens: float | None = None
    onprem_per_1m_requests: float | None = None
    serverless_per_1m_requests: float | None = None
    serverless_basis: str | None = None
    price_date: str | None = None
    price_source: str | None = None


def compute_rate(t: Target, dtype: PlanDtype) -> tuple[float, str, list[str]]:
    """Dense peak FLOP/s per device for ``dtype``'s matmuls, the precision used, and notes on fallbacks."""
    notes: list[str] = []
    fp16 = t.fp16_tflops
    fp32 = t.fp32_tflops
    if dtype == "fp32":
        if fp32 is not None:
            return fp32 * 1e12, "fp32", notes
        assert fp16 is not None
        return fp16 / 2 * 1e12, "fp32", ["no fp32 rate in the catalog: half the fp16 rate assumed"]
    if dtype == "fp8" and t.fp8_tflops is not None:
        return t.fp8_tflops * 1e12, "fp8", notes
    if dtype == "int8" and t.int8_tops is not None:
        return t.int8_tops * 1e12, "int8", notes
    if dtype in ("fp8", "int8"):
        notes.append(f"no {dtype} rate for this device: weights dequantized, matmuls at 16 bits")
    if dtype == "int4":
        notes.append("int4 is weight-only (W4A16): matmuls at 16 bits")
    if fp16 is not None:
        return fp16 * 1e12, "fp16", notes
    assert fp32 is not None
    notes.append("no 16-bit rate for this device: matmuls at fp32")
    return fp32 * 1e12, "fp32", notes


def _step(flops: float, nbytes: float, peak: float, bandwidth: float, overhead: float = 0.0) -> Step:
    tc, tm = flops / peak, nbytes / bandwidth
    return Step(
        seconds=max(tc, tm) + overhead, bound="compute" if tc >= tm else "memory", flops=flops, bytes=nbytes
    )


def _attention_flops(spec: ArchSpec, queries: float, attended: float) -> float:
    return 4 * spec.layers * spec.heads * spec.head_dim * queries * attended


def _expert_read_fraction(spec: ArchSpec, batch: int) -> float:
    if not spec.experts:
        return 1.0
    k, e = spec.experts_per_token, spec.experts
    return 1 - (1 - k / e) ** batch


def estimate_throughput(
    spec: ArchSpec,
    params: ParamBreakdown,
    dtype: PlanDtype,
    weight_bytes: int,
    batch: int,
    context: int,
    output_tokens: int,
    target: Target,
    catalog: Catalog,
    tp: int,
    call_overhead_s: float = 0.0,
) -> Throughput:
    """Roofline estimates for one tensor-parallel group of ``tp`` devices of ``target``, plus
    ``call_overhead_s`` per forward call (the runtime's, on CPU)."""
    peak1, precision, notes = compute_rate(target, dtype)
    _, ce, be = catalog.efficiency(target)
    peak = peak1 * ce * tp
    bandwidth = target.bandwidth_gbs * 1e9 * be * tp
    matmul = params.active_matmul
    oh = call_overhead_s
    if call_overhead_s:
        notes = [*notes, f"+ {call_overhead_s * 1e3:.1f} ms fixed overhead per forward call (the runtime's)"]
    if spec.family in ("encoder", "cnn"):
        net = spec.convnet

        def forward(b: int) -> Step:
            if net is not None:  # context is the image side
                return _step(b * net.flops_per_image(context), weight_bytes, peak, bandwidth, oh)
            tokens = b * context
            flops = 2 * matmul * tokens + _attention_flops(spec, tokens, context)
            return _step(flops, weight_bytes, peak, bandwidth, oh)

        step = forward(batch)
        return Throughput(
            compute_dtype=precision,
            requests_per_s=batch / step.seconds,
            request_seconds_batch1=forward(1).seconds,
            prefill_tokens_per_s=None if net else batch * context / step.seconds,
            prefill_bound=step.bound,
            notes=notes,
        )

    expert_total = sum(g.total for g in params.groups if g.name == "experts")
    expert_bytes = weight_bytes * expert_total / params.total if params.total else 0.0
    kv_per_token = spec.kv_elements_per_token() * (4 if dtype == "fp32" else 2)
    prompt = max(1, context - output_tokens)

    def decode(b: int, attended: int) -> Step:
        read = weight_bytes - expert_bytes * (1 - _expert_read_fraction(spec, b))
        read += b * attended * kv_per_token
        flops = 2 * matmul * b + _attention_flops(spec, b, attended)
        return _step(flops, read, peak, bandwidth, oh)

    def prefill(b: int, tokens: int) -> Step:
        flops = 2 * matmul * b * tokens + _attention_flops(spec, b * tokens, tokens) / 2
        return _step(flops, weight_bytes, peak, bandwidth, oh)

    dec = decode(batch, context)
    pre = prefill(batch, context)

    def request_seconds(b: int) -> float:
        # prefill the prompt, then output tokens attending on average to the middle of the answer
        return prefill(b, prompt).seconds + output_tokens * decode(b, prompt + output_tokens // 2).seconds

    return Throughput(
        compute_dtype=precision,
        decode_tokens_per_s=batch / dec.seconds,
        decode_bound=dec.bound,
        prefill_tokens_per_s=batch * context / pre.seconds,
        prefill_bound=pre.bound,
        requests_per_s=batch / request_seconds(batch),
        request_seconds_batch1=request_seconds(1),
        notes=notes,
    )


def estimate_costs(
    target: Target, catalog: Catalog, devices: int, throughput: Throughput, is_decoder: bool
) -> Costs:
    """Cloud (rented hours), on-prem (purchase amortised + power) and serverless (busy seconds, batch 1)."""
    d = catalog.defaults

    def per_million(usd_per_hour: float, per_second: float | None) -> float | None:
        return usd_per_hour / (per_second * 3600) * 1e6 if per_second else None

    tokens = throughput.decode_tokens_per_s if is_decoder else None
    costs: dict[str, object] = {}
    if target.cloud is not None:
        hourly = target.cloud.usd_per_hour * devices
        costs.update(
            cloud_usd_per_hour=hourly,
            cloud_per_1m_tokens=per_million(hourly, tokens),
            cloud_per_1m_requests=per_million(hourly, throughput.requests_per_s),
            price_date=target.cloud.date,
            price_source=target.cloud.source,
        )
    if target.purchase is not None:
        capex = target.purchase.usd / (d.amortization_years * 365 * 24)
        power = (target.power_w or 0) / 1000 * d.pue * d.electricity_usd_per_kwh
        hourly = (capex + power) * devices
        costs.update(
            onprem_usd_per_hour=hourly,
            onprem_per_1m_tokens=per_million(hourly, tokens),
            onprem_per_1m_requests=per_million(hourly, throughput.requests_per_s),
        )
    if target.serverless is not None:
        per_s, basis = (
            target.serverless.usd_per_second * devices,
            f"serverless price ({target.serverless.source})",
        )
    elif target.cloud is not None:
        per_s, basis = target.cloud.usd_per_hour * devices / 3600, "cloud price per busy second, no idle time"
    else:
        per_s, basis = None, None
    if per_s is not None:
        costs.update(
            serverless_per_1m_requests=per_s * throughput.request_seconds_batch1 * 1e6, serverless_basis=basis
        )
    return Costs.model_validate(costs)
