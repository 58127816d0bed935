"""The table of every variant, for the terminal (rich) and for the bundle's model card (markdown)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from kiln.bench.scores import VariantRecord

COLUMNS = (
    "variant",
    "status",
    "probe acc",
    "drop [95% CI]",
    "cosine",
    "b1 p50/p95/p99 ms",
    "b32 p50 ms",
    "b32 items/s",
    "peak RSS MB",
    "file MB",
)


AGREEMENT = {"probe_accuracy": ("cosine", "mean_cosine"), "accuracy": ("top-1 agree", "top1_agreement")}
"""Per primary metric: the header and ``Quality.extra`` key of the label-free agreement column."""


def columns(variants: Sequence[VariantRecord]) -> list[str]:
    """The headers, naming the variants' quality metric (``probe acc`` for embed, ``accuracy``...)."""
    metric = next((v.scores.quality.metric for v in variants if v.scores.quality), "probe_accuracy")
    if metric == "probe_accuracy":
        return list(COLUMNS)
    return [
        "variant",
        "status",
        metric.replace("_", " "),
        *COLUMNS[3:4],
        AGREEMENT.get(metric, ("agreement", ""))[0],
        *COLUMNS[5:],
    ]


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def variant_row(v: VariantRecord) -> list[str]:
    q = v.scores.quality
    b1 = v.scores.latency.get("batch1")
    bn = v.scores.latency.get("batch32")
    size = v.scores.file_bytes
    return [
        v.name,
        v.status,
        _fmt(q.value if q else None, ".4f"),
        f"{q.drop:+.4f} [{q.drop_ci95[0]:+.4f}, {q.drop_ci95[1]:+.4f}]" if q else "-",
        _fmt(q.extra.get(AGREEMENT.get(q.metric, ("", ""))[1]) if q else None, ".4f"),
        f"{b1.p50_ms:.2f}/{b1.p95_ms:.2f}/{b1.p99_ms:.2f}" if b1 else "-",
        _fmt(bn.p50_ms if bn else None, ".1f"),
        _fmt(bn.throughput_per_s if bn else None, ".0f"),
        _fmt(v.scores.peak_rss_mb, ".0f"),
        _fmt(size / 1e6 if size else None, ".1f"),
    ]


def variants_table(variants: Sequence[VariantRecord], chosen: str | None = None) -> Table:
    table = Table(title="variants (measured on this machine, this run)", header_style="bold")
    for col in columns(variants):
        table.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for v in variants:
        row = variant_row(v)
        style = "bold green" if v.name == chosen else ("red" if v.status != "ok" else None)
        if v.name == chosen:
            row[0] = f"★ {row[0]}"
        table.add_row(*row, style=style)
    return table


def rejected_notes(variants: Sequence[VariantRecord]) -> list[str]:
    return [f"{v.name}: {v.reason}" for v in variants if v.status != "ok" and v.reason]


def variants_markdown(variants: Sequence[VariantRecord], chosen: str | None = None) -> str:
    headers = columns(variants)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for v in variants:
        row = variant_row(v)
        if v.name == chosen:
            row[0] = f"**{row[0]}** (chosen)"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
