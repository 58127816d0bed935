"""make_plan: a model (folder, cached hub id, GGUF file or bare config.json) -> a Plan for each target.

The architecture comes from ``config.json`` (or GGUF metadata); when weight files are present, their headers
give the exact parameter count and the exact bytes as stored. Everything else is an estimate and is
labelled so: ``Plan.estimates`` names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from kiln.analyze.facts import ModelFacts
from kiln.errors import SourceError
from kiln.plan.catalog import Catalog, load_catalog
from kiln.plan.errors import PlanError
from kiln.plan.memory import (
    MemoryBreakdown,
    PlanDtype,
    check_dtype,
    kv_width,
    memory_breakdown,
    stored_bytes,
    stored_plan_dtype,
)
from kiln.plan.params import ArchSpec, ParamBreakdown, count_parameters
from kiln.plan.roofline import Costs, Throughput, estimate_costs, estimate_throughput

DEFAULT_DECODER_CONTEXT = 4096
DEFAULT_ENCODER_CONTEXT = 128
DEFAULT_OUTPUT_TOKENS = 256
GIB = 1 << 30

ESTIMATES = (
    "activations, quantization scales, runtime overhead and KV cache are estimates from the architecture",
    "weights are exact only where read from weight-file headers at the stored dtype, else parameters x width",
    "throughput is a roofline estimate (datasheet peaks x the catalog's efficiencies), not a measurement",
    "costs follow from the estimated throughput and the catalog's dated prices",
)


class TargetPlan(BaseModel):
    """One target: whether the model fits, on how many devices (tensor x pipeline parallel), how fast
    (estimate) and at what cost (estimate). ``devices`` is None when it cannot fit at all."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    kind: Literal["gpu", "cpu"]
    fits_one_device: bool
    devices: int | None
    tensor_parallel: int | None
    pipeline_parallel: int | None
    bytes_per_device: int
    usable_bytes_per_device: int
    throughput: Throughput | None = None
    costs: Costs | None = None
    notes: list[str] = []


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: str
    source: str
    architecture: ArchSpec
    parameters: int
    active_parameters: int
    file_parameters: int | None
    breakdown: ParamBreakdown
    dtype: PlanDtype
    dtype_from: str
    batch: int
    context: int
    output_tokens: int
    runtime: str
    kv_bytes_per_token: int
    memory: dict[str, MemoryBreakdown]
    targets: list[TargetPlan]
    notes: list[str]
    estimates: list[str] = list(ESTIMATES)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    source: str
    config: dict[str, Any]
    file_parameters: int | None = None
    stored_dtypes: dict[str, int] = {}
    file_bytes: int = 0
    weight_format: str | None = None
    notes: list[str] = []


def _gguf_config(path: Path) -> dict[str, Any]:
    """A transformers-style config from a GGUF header's ``{arch}.*`` metadata."""
    from kiln.sources.gguf import GGUFArray, read_gguf_header

    h = read_gguf_header(path)
    tokens = h.metadata.get("tokenizer.ggml.tokens")
    names = {t.name for t in h.tensors}
    cfg: dict[str, Any] = {
        "model_type": h.architecture,
        "hidden_size": h.arch_value("embedding_length"),
        "num_hidden_layers": h.arch_value("block_count"),
        "num_attention_heads": h.arch_value("attention.head_count"),
        "num_key_value_heads": h.arch_value("attention.head_count_kv"),
        "intermediate_size": h.arch_value("feed_forward_length"),
        "max_position_embeddings": h.arch_value("context_length"),
        "vocab_size": tokens.length if isinstance(tokens, GGUFArray) else h.arch_value("vocab_size"),
        "tie_word_embeddings": "output.weight" not in names,
    }
    experts = h.arch_value("expert_count")
    if experts:
        cfg["num_local_experts"] = experts
        cfg["num_experts_per_tok"] = h.arch_value("expert_used_count")
    return {k: v for k, v in cfg.items() if v is not None}


def _read_config(path: Path) -> dict[str, Any]:
    from kiln.analyze.hf_config import read_json

    notes: list[str] = []
    data = read_json(path, notes)
    if data is None:
        raise PlanError(f"{path} cannot be read as a config: {'; '.join(notes) or 'not a JSON object'}")
    return dict(data)


def _load_model(model: str | Path | None) -> _Model:
    from kiln.analyze.inspect import inspect_model
    from kiln.sources.filetype import detect_format
    from kiln.sources.resolve import resolve_source

    spec = None if model is None else str(model)
    if spec is not None and spec.endswith(".json") and Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        return _Model(label=path.name, source=f"config only ({path})", config=_read_config(path))
    resolved = resolve_source(spec)
    path = resolved.path
    label = resolved.model_id or path.name
    if path.is_file():
        if detect_format(path) != "gguf":
            raise PlanError(
                f"{path} is a single weight file without its architecture: pass the folder that holds "
                "config.json, the config.json itself, or a GGUF file"
            )
        gguf_facts = inspect_model(resolved)
        return _Model(
            label=label,
            source=resolved.describe(),
            config=_gguf_config(path),
            file_parameters=gguf_facts.parameters,
            stored_dtypes=gguf_facts.stored_dtypes,
            file_bytes=gguf_facts.file_bytes,
            weight_format="gguf",
        )
    config_path = path / "config.json"
    notes: list[str] = []
    facts: ModelFacts | None
    try:
        facts = inspect_model(resolved)
    except SourceError as exc:  # no weights: a config-only folder is fine
        facts = None
        notes.append(f"no weights read ({exc}); sizes from the architecture only")
    if config_path.is_file():
        config = _read_config(config_path)
    elif facts is not None and facts.weight_format == "gguf" and facts.weight_files:
        config = _gguf_config(path / facts.weight_files[0])
    else:
        raise PlanError(
            f"{path} has no config.json: kiln plan needs the architecture. Put the model's config.json in "
            "the folder or pass the config.json file itself"
        )
    if facts is None:
        return _Model(label=label, source=resolved.describe(), config=config, notes=notes)
    return _Model(
        label=label,
        source=resolved.describe(),
        config=config,
        file_parameters=facts.parameters,
        stored_dtypes=facts.stored_dtypes,
        file_bytes=facts.file_bytes,
        weight_format=facts.weight_format,
        notes=notes + list(facts.notes),
    )


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _place(
    mem: MemoryBreakdown, usable: int, split_heads: int, per_node: int, layers: int
) -> tuple[int, int] | None:
    """Smallest (tp, pp): tensor parallel within a node (tp divides the KV heads), then pipeline stages."""
    tps = _divisors(split_heads, per_node)
    for tp in tps:
        if mem.per_device(tp, 1) <= usable:
            return tp, 1
    tp = tps[-1]
    for pp in range(2, layers + 1):
        if mem.per_device(tp, pp) <= usable:
            return tp, pp
    return None


def make_plan(
    model: str | Path | None,
    *,
    dtype: str | None = None,
    batch: int = 1,
    context: int | None = None,
    targets: list[str] | None = None,
    catalog: Catalog | None = None,
    catalog_path: Path | str | None = None,
    runtime: str | None = None,
    output_tokens: int | None = None,
) -> Plan:
    """Plan memory, devices, throughput and cost of serving ``model`` on each target.

    ``dtype`` None keeps the stored dtype when the weight files have one plan dtype, else bf16.
    ``context`` None: 4096 tokens for decoders, 128 for encoders (capped at the model's maximum); for a
    CNN, ``context`` is the side of the square input image (None: the config's ``image_size``).
    ``targets`` None: every target of the catalog.
    ``runtime`` None: ``torch-nn`` (plain PyTorch) for a CNN, ``torch`` (with transformers) otherwise.
    """
    if batch < 1:
        raise PlanError(f"--batch must be at least 1, got {batch}")
    if context is not None and context < 1:
        raise PlanError(f"--context must be at least 1 token, got {context}")
    cat = catalog or load_catalog(catalog_path)
    names = list(targets) if targets else sorted(cat.targets)
    chosen = [(n, cat.target(n)) for n in names]

    m = _load_model(model)
    spec = ArchSpec.from_config(m.config, source=m.source)
    params = count_parameters(spec)
    runtime = runtime or ("torch-nn" if spec.family == "cnn" else "torch")
    rt = cat.runtime(runtime)
    notes = list(spec.notes) + list(m.notes)
    if m.file_parameters is not None and m.file_parameters != params.total:
        diff = (m.file_parameters - params.total) / params.total
        notes.append(
            f"the weight files hold {m.file_parameters:,} parameters, the architecture counts "
            f"{params.total:,} ({diff:+.1%}); memory uses the files where their bytes are exact"
        )

    stored = stored_plan_dtype(m.stored_dtypes)
    if dtype is not None:
        plan_dtype, dtype_from = check_dtype(dtype), "--dtype"
    elif stored is not None:
        plan_dtype, dtype_from = stored, "as stored in the weight files"
    else:
        plan_dtype, dtype_from = "bf16", "default (no weight files with one dtype)"
    exact: int | None = None
    if m.stored_dtypes and (stored == plan_dtype or (dtype is None and stored is None)):
        exact = stored_bytes(m.stored_dtypes)
        if exact is None and dtype is None and m.file_bytes:
            exact = m.file_bytes
            notes.append(f"weights as stored ({', '.join(m.stored_dtypes)}): bytes from the file size")

    limit = spec.max_positions
    default_ctx = DEFAULT_ENCODER_CONTEXT if spec.family == "encoder" else DEFAULT_DECODER_CONTEXT
    if spec.family == "cnn":  # context is the image side; the config's image_size by default
        ctx = context or spec.max_positions or 224
        out_tokens = 0
    else:
        ctx = context or (min(default_ctx, limit) if limit else default_ctx)
        if limit and ctx > limit:
            notes.append(f"context {ctx:,} is beyond the model's maximum of {limit:,} positions")
        out_tokens = output_tokens if output_tokens is not None else min(DEFAULT_OUTPUT_TOKENS, ctx // 2)

    memory: dict[str, MemoryBreakdown] = {
        kind: memory_breakdown(spec, params, plan_dtype, batch, ctx, rt, kind, exact_weight_bytes=exact)
        for kind in sorted({t.kind for _, t in chosen})
    }
    split_heads = spec.kv_heads if spec.has_kv_cache else spec.heads
    weights = memory[next(iter(memory))].line("weights") + memory[next(iter(memory))].line(
        "quantization scales"
    )
    results: list[TargetPlan] = []
    for name, t in chosen:
        mem = memory[t.kind]
        usable_frac, _, _ = cat.efficiency(t)
        usable = int(t.memory_gib * GIB * usable_frac)
        placed = _place(mem, usable, split_heads, t.devices_per_node, spec.layers)
        t_notes: list[str] = []
        throughput = costs = None
        if placed is None:
            tp = pp = devices = None
            per_device = mem.per_device(split_heads, spec.layers)
            t_notes.append("does not fit even split across all layers; use a smaller dtype or context")
        else:
            tp, pp = placed
            devices = tp * pp
            per_device = mem.per_device(tp, pp)
            if pp > 1:
                t_notes.append(f"{pp} pipeline stages of {tp} devices: stages add memory, not speed")
            overhead = rt.call_overhead_ms / 1e3 if t.kind == "cpu" else 0.0
            throughput = estimate_throughput(
                spec, params, plan_dtype, weights, batch, ctx, out_tokens, t, cat, tp, overhead
            )
            costs = estimate_costs(t, cat, devices, throughput, spec.has_kv_cache)
        results.append(
            TargetPlan(
                name=name,
                description=t.description,
                kind=t.kind,
                fits_one_device=mem.per_device(1, 1) <= usable,
                devices=devices,
                tensor_parallel=tp,
                pipeline_parallel=pp,
                bytes_per_device=per_device,
                usable_bytes_per_device=usable,
                throughput=throughput,
                costs=costs,
                notes=t_notes,
            )
        )
    return Plan(
        model=m.label,
        source=m.source,
        architecture=spec,
        parameters=params.total,
        active_parameters=params.active,
        file_parameters=m.file_parameters,
        breakdown=params,
        dtype=plan_dtype,
        dtype_from=dtype_from,
        batch=batch,
        context=ctx,
        output_tokens=out_tokens,
        runtime=runtime,
        kv_bytes_per_token=spec.kv_elements_per_token() * kv_width(plan_dtype),
        memory=memory,
        targets=results,
        notes=list(dict.fromkeys(notes)),
    )
