"""A Plan for people: parameter, memory and target tables (rich). Estimates say so in their headers."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from kiln.analyze.render import human_bytes, human_count
from kiln.plan.plan import Plan, TargetPlan


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 0.1 else f"${value:.4f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def params_table(plan: Plan) -> Table:
    s = plan.architecture
    title = f"kiln plan: {plan.model} ({s.model_type}, {s.family})"
    t = Table(title=title, title_justify="left")
    t.add_column("parameters", style="bold")
    t.add_column("total", justify="right")
    t.add_column("active / token", justify="right")
    t.add_column("how")
    for g in plan.breakdown.groups:
        t.add_row(g.name, human_count(g.total), human_count(g.active), g.detail)
    total = f"{human_count(plan.parameters)} ({plan.parameters:,})"
    t.add_row("total (from the architecture)", total, human_count(plan.active_parameters), "", style="bold")
    if plan.file_parameters is not None:
        t.add_row("in the weight files (exact)", f"{plan.file_parameters:,}", "", "read from headers")
    return t


def _shape(plan: Plan) -> str:
    if plan.architecture.family == "cnn":
        return f"images {plan.context}x{plan.context}"
    return f"context {plan.context:,}"


def memory_table(plan: Plan, kind: str) -> Table:
    mem = plan.memory[kind]
    t = Table(
        title=(
            f"memory of one replica on {kind.upper()} ({plan.dtype}, {plan.dtype_from}; batch {plan.batch}, "
            f"{_shape(plan)}, runtime {plan.runtime})"
        ),
        title_justify="left",
    )
    t.add_column("line", style="bold")
    t.add_column("bytes", justify="right")
    t.add_column("exact/estimate")
    t.add_column("how")
    for line in mem.lines:
        label = Text("estimate", style="yellow") if line.estimate else Text("exact", style="green")
        t.add_row(line.name, human_bytes(line.bytes), label, line.how)
    t.add_row("total", human_bytes(mem.total), Text("estimate", style="yellow"), "", style="bold")
    kv = plan.kv_bytes_per_token
    if kv:
        t.caption = f"KV cache per token: {human_bytes(kv)} ({kv:,} B)"
    return t


def _fit(tp: TargetPlan) -> Text:
    if tp.devices is None:
        return Text("no", style="red")
    if tp.fits_one_device:
        return Text("yes", style="green")
    return Text(f"on {tp.devices}", style="yellow")


def targets_table(plan: Plan) -> Table:
    decoder = plan.architecture.has_kv_cache
    t = Table(title="targets (throughput and cost are roofline estimates)", title_justify="left")
    t.add_column("target", style="bold")
    t.add_column("fits")
    t.add_column("devices (tp x pp)", justify="right")
    t.add_column("mem / device", justify="right")
    if decoder:
        t.add_column("decode tok/s (est.)", justify="right")
        t.add_column("prefill tok/s (est.)", justify="right")
    t.add_column("req/s (est.)", justify="right")
    t.add_column("cloud $/h", justify="right")
    if decoder:
        t.add_column("cloud $/1M tok (est.)", justify="right")
    t.add_column("cloud $/1M req (est.)", justify="right")
    t.add_column("on-prem $/1M req (est.)", justify="right")
    t.add_column("serverless $/1M req (est.)", justify="right")
    for tp in plan.targets:
        th, c = tp.throughput, tp.costs
        devices = (
            "-" if tp.devices is None else f"{tp.devices} ({tp.tensor_parallel} x {tp.pipeline_parallel})"
        )
        mem = f"{human_bytes(tp.bytes_per_device)} / {human_bytes(tp.usable_bytes_per_device)}"
        row: list[str | Text] = [tp.name, _fit(tp), devices, mem]
        if decoder:
            row += [
                _rate(th.decode_tokens_per_s if th else None) + (f" {th.decode_bound}" if th else ""),
                _rate(th.prefill_tokens_per_s if th else None) + (f" {th.prefill_bound}" if th else ""),
            ]
        row.append(_rate(th.requests_per_s if th else None))
        row.append(_usd(c.cloud_usd_per_hour if c else None))
        if decoder:
            row.append(_usd(c.cloud_per_1m_tokens if c else None))
        row += [
            _usd(c.cloud_per_1m_requests if c else None),
            _usd(c.onprem_per_1m_requests if c else None),
            _usd(c.serverless_per_1m_requests if c else None),
        ]
        t.add_row(*row)
    return t


def _footer(plan: Plan) -> Text:
    lines = [f"source: {plan.source}"]
    if plan.architecture.has_kv_cache:
        lines.append(
            f"a request = {plan.context - plan.output_tokens:,} prompt + {plan.output_tokens} output tokens; "
            "serverless = batch 1, billed per busy second"
        )
    prices = sorted(
        {f"{tp.name}: {tp.costs.price_source} ({tp.costs.price_date})" for tp in plan.targets if tp.costs}
        - {f"{tp.name}: None (None)" for tp in plan.targets}
    )
    if prices:
        lines.append("prices: " + "; ".join(prices))
    for tp in plan.targets:
        lines.extend(f"{tp.name}: {n}" for n in tp.notes)
        if tp.throughput:
            lines.extend(f"{tp.name}: {n}" for n in tp.throughput.notes)
    lines.extend(f"note: {n}" for n in plan.notes)
    lines.extend(f"estimate: {e}" for e in plan.estimates)
    return Text("\n".join(lines), style="dim")


def plan_view(plan: Plan) -> Group:
    """Everything ``kiln plan`` prints: parameters, memory per device kind, targets, notes."""
    parts: list[Table | Text] = [params_table(plan)]
    parts += [memory_table(plan, kind) for kind in plan.memory]
    parts += [targets_table(plan), _footer(plan)]
    return Group(*parts)
