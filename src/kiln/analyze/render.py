"""ModelFacts for people: a rich table with human sizes ("86.7 MB") and counts ("22.7 M")."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from kiln.analyze.facts import ModelFacts

_LICENSE_STYLE = {
    "permissive": "green",
    "copyleft": "yellow",
    "restricted": "yellow",
    "non-commercial": "red",
    "unknown": "yellow",
}

_VERDICT_STYLE = {"allowed": "green", "conditional": "yellow", "not-allowed": "red", "unknown": "yellow"}


def human_bytes(n: int) -> str:
    """Sizes in SI units (powers of 1000, as the labels say): 90868376 -> "90.9 MB"."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    """Counts in powers of 1000: 22713216 -> "22.7 M"."""
    value = float(n)
    for unit in ("", "K", "M", "B"):
        if abs(value) < 1000 or unit == "B":
            return f"{int(value)}" if unit == "" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def facts_table(facts: ModelFacts) -> Table:
    """Two columns, fact and value, in the order a user reads them."""
    table = Table(
        title=f"kiln inspect: {facts.path.name or facts.path}", show_header=False, title_justify="left"
    )
    table.add_column("fact", style="bold")
    table.add_column("value", overflow="fold")

    if facts.spec is not None:
        source = f"{facts.source_kind} {facts.model_id or facts.spec}"
        if facts.revision:
            source += f" @ {facts.revision}"
        table.add_row("source", source)
    table.add_row("path", str(facts.path))
    fmt = (
        facts.format
        if facts.weight_format in (None, facts.format)
        else f"{facts.format} ({facts.weight_format})"
    )
    table.add_row("format", fmt)
    arch = _opt(facts.architecture)
    if facts.model_type and facts.model_type != facts.architecture:
        arch += f" ({facts.model_type})"
    table.add_row("architecture", arch)
    params = (
        "unknown" if facts.parameters is None else f"{human_count(facts.parameters)} ({facts.parameters:,})"
    )
    table.add_row("parameters", params)
    if facts.stored_dtypes:
        split = ", ".join(
            f"{k} {human_count(v)}" for k, v in sorted(facts.stored_dtypes.items(), key=lambda kv: -kv[1])
        )
        table.add_row("stored dtype", split)
    table.add_row("weights on disk", f"{human_bytes(facts.file_bytes)} in {len(facts.weight_files)} file(s)")
    if facts.bytes:
        sizes = "  ".join(f"{k} {human_bytes(v)}" for k, v in facts.bytes.items())
        table.add_row("weight memory (estimate)", sizes)
    table.add_row("max sequence length", _opt(facts.max_sequence_length))
    shape = (
        f"hidden {_opt(facts.hidden_size)}, layers {_opt(facts.num_layers)}, heads {_opt(facts.num_heads)}, "
        f"vocab {_opt(facts.vocab_size)}"
    )
    table.add_row("shape", shape)
    table.add_row("tokenizer", _opt(facts.tokenizer))
    style = _LICENSE_STYLE.get(facts.license_class, "")
    table.add_row("license", Text(f"{facts.license} ({facts.license_class})", style=style))
    v = facts.license_verdict
    if v is not None:
        verdict_style = _VERDICT_STYLE.get(v.verdict, "")
        lines = [f"{v.verdict} (from {v.source})", *v.conditions]
        table.add_row("commercial use", Text("\n".join(lines), style=verdict_style))
    if facts.safety_findings:
        lines = [f"[{f.severity}] {f.message}  (id {f.id})" for f in facts.safety_findings]
        table.add_row("safety", Text("\n".join(lines), style="bold red"))
    elif facts.safety:
        table.add_row("safety", Text("\n".join(facts.safety), style="bold red"))
    else:
        table.add_row("safety", Text("no findings", style="green"))
    if facts.notes:
        table.add_row("notes", "\n".join(facts.notes))
    return table
