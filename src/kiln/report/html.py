"""The build report: one self-contained HTML page from a bundle's manifest (``report.html``).

What it shows, all from numbers the build measured: the variant table, two Pareto plots (quality against
batch-1 latency and against file size; the Pareto-optimal variants and the chosen one marked), per-slice
quality, latency percentiles, the search trace (every variant: how it was made, its parity, whether it was
kept and why; plus the manifest's ``search_trace`` entries when it has them) and a one-paragraph
recommendation. Inline CSS and SVG (:mod:`kiln.report.svg`), no script, nothing fetched: it opens offline.

The page depends only on the manifest (no clock, no host), so refreshing it gives the same bytes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kiln.bench.scores import VariantRecord
from kiln.bundle.hashing import sha256_file
from kiln.bundle.load import read_manifest
from kiln.bundle.manifest import Manifest
from kiln.errors import BundleError
from kiln.report.svg import COLORS, Point, Series, svg_chart, svg_scatter
from kiln.report.variants import columns, variant_row

REPORT_NAME = "report.html"
BASELINE = "onnx-fp32"
SLICE_PREFIX = "accuracy["

CHOSEN_COLOR, PARETO_COLOR, KEPT_COLOR, REJECTED_COLOR = "#16a34a", "#2563eb", "#94a3b8", "#dc2626"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
header{background:#0f172a;color:#f8fafc;padding:12px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}main{padding:16px 24px;max-width:1400px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px;margin-top:16px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 14px}
section.wide{margin-top:16px}section h2{font-size:15px;margin:0 0 6px}svg.chart{width:100%;height:auto}
svg .grid{stroke:#e2e8f0}svg .axis,svg .legend{font-size:11px;fill:#475569}
svg .label{font-size:11px;fill:#0f172a}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #e2e8f0;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}td.text,th.text{text-align:left}
tr.chosen td{background:#f0fdf4;font-weight:600}tr.rejected td,tr.failed td{color:#b91c1c}
.recommendation{font-size:14px;line-height:1.5;margin:0}.note{color:#64748b;font-size:12px}
code{font-size:12px}
"""


# -- numbers ----------------------------------------------------------------------------------------------


def reference_variant(m: Manifest) -> VariantRecord | None:
    """The unoptimised model the build compared against (its recipe starts with ``reference``)."""
    for v in m.variants:
        if v.recipe and v.recipe[0].get("kind") == "reference":
            return v
    return next((v for v in m.variants if v.format == "pytorch"), None)


def _by_name(m: Manifest, name: str) -> VariantRecord | None:
    return next((v for v in m.variants if v.name == name), None)


def _latency(v: VariantRecord) -> float | None:
    return v.p50("batch1")


def _size_mb(v: VariantRecord) -> float | None:
    return v.scores.file_bytes / 1e6 if v.scores.file_bytes else None


def pareto_front(points: Sequence[tuple[str, float, float]]) -> set[str]:
    """Names of the points no other beats (lower or equal ``x``, higher or equal ``y``, one strictly)."""
    front: set[str] = set()
    for name, x, y in points:
        dominated = any(
            ox <= x and oy >= y and (ox < x or oy > y) for other, ox, oy in points if other != name
        )
        if not dominated:
            front.add(name)
    return front


def _times(a: float, b: float, faster: str = "faster", slower: str = "slower") -> str:
    """``a/b`` as a ratio phrase: how many times faster (or smaller) b is than a."""
    ratio = a / b
    return f"{ratio:.2f}x {faster}" if ratio >= 1 else f"{1 / ratio:.2f}x {slower}"


def recommendation(m: Manifest) -> str:
    """One paragraph, plain text, from the measured numbers: what to serve and what it costs in quality."""
    chosen = _by_name(m, m.chosen)
    if chosen is None:
        return f"The manifest names {m.chosen!r} as chosen, but no variant of that name was recorded."
    ref, base = reference_variant(m), _by_name(m, BASELINE)
    kinds = " + ".join(str(r.get("kind", "?")) for r in chosen.recipe) or "no recipe recorded"
    parts = [f"Serve {chosen.name} ({chosen.format}; {kinds})."]
    p50 = _latency(chosen)
    if p50 is None:
        parts.append("Its batch-1 latency was not measured.")
    else:
        versus = []
        for other, label in ((ref, "the PyTorch fp32 reference"), (base, BASELINE)):
            if other is None or other.name == chosen.name:
                continue
            o50 = _latency(other)
            if o50 is None:
                versus.append(f"no latency measured for {label}")
            else:
                versus.append(f"{_times(o50, p50)} than {label} ({o50:.2f} ms)")
        tail = f": {', '.join(versus)}" if versus else ""
        parts.append(f"Its batch-1 p50 latency is {p50:.2f} ms{tail}.")
    size = chosen.scores.file_bytes
    if size:
        sizes = []
        for other, label in ((ref, "the reference's"), (base, f"{BASELINE}'s")):
            if other is not None and other.name != chosen.name and other.scores.file_bytes:
                sizes.append(
                    f"{_times(other.scores.file_bytes, size, 'smaller', 'larger')} than {label} "
                    f"{other.scores.file_bytes / 1e6:.1f} MB"
                )
        parts.append(f"Its file is {size / 1e6:.1f} MB" + (f", {', '.join(sizes)}." if sizes else "."))
    q = chosen.scores.quality
    if q is None:
        parts.append("Its quality was not measured.")
    else:
        metric = q.metric.replace("_", " ")
        parts.append(
            f"Its {metric} is {q.value:.4f}, a drop of {q.drop:+.4f} from the reference "
            f"(95% CI [{q.drop_ci95[0]:+.4f}, {q.drop_ci95[1]:+.4f}])."
        )
    dropped = [v for v in m.variants if v.status != "ok"]
    if dropped:
        why = "; ".join(f"{v.name} {v.status} ({v.reason or 'no reason recorded'})" for v in dropped)
        parts.append(f"{len(dropped)} of {len(m.variants)} variants were not kept: {why}.")
    else:
        parts.append(f"All {len(m.variants)} variants passed their checks.")
    parts.append(f"Selection rule: {m.chosen_reason}.".replace("..", "."))
    return " ".join(parts)


# -- page parts -------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value))


def _row_class(m: Manifest, v: VariantRecord) -> str:
    return "chosen" if v.name == m.chosen else v.status


def _variant_table(m: Manifest) -> str:
    head = "".join(
        f"<th{' class=text' if c in ('variant', 'status') else ''}>{_e(c)}</th>" for c in columns(m.variants)
    )
    rows = []
    for v in m.variants:
        cells = variant_row(v)
        if v.name == m.chosen:
            cells[0] = f"★ {cells[0]}"
        tds = "".join(f"<td{' class=text' if i == 1 else ''}>{_e(c)}</td>" for i, c in enumerate(cells))
        rows.append(f"<tr data-variant='{_e(v.name)}' class='{_row_class(m, v)}'>{tds}</tr>")
    return (
        f"<table id='variants'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<p class='note'>Measured on the build machine during the build: latency end to end after warm-up; "
        "drop = reference minus variant on the primary metric, with a paired bootstrap 95% interval.</p>"
    )


def _pareto_chart(
    m: Manifest, chart_id: str, x_of: Callable[[VariantRecord], float | None], x_title: str
) -> tuple[str, str]:
    measured = [
        (v, x, v.scores.quality.value)
        for v in m.variants
        if v.scores.quality is not None and (x := x_of(v)) is not None
    ]
    front = pareto_front([(v.name, x, y) for v, x, y in measured if v.status == "ok"])
    points = []
    for v, x, y in measured:
        classes: list[str] = [v.status]
        if v.name in front:
            classes.append("pareto")
        if v.name == m.chosen:
            classes.append("chosen")
        color = (
            CHOSEN_COLOR
            if v.name == m.chosen
            else REJECTED_COLOR
            if v.status != "ok"
            else PARETO_COLOR
            if v.name in front
            else KEPT_COLOR
        )
        note = "chosen" if v.name == m.chosen else ("Pareto-optimal" if v.name in front else v.status)
        points.append(Point(v.name, x, y, color, tuple(classes), note))
    metric = next((v.scores.quality.metric for v, _, _ in measured if v.scores.quality), "quality")
    legend = [
        ("chosen", CHOSEN_COLOR),
        ("Pareto-optimal", PARETO_COLOR),
        ("dominated", KEPT_COLOR),
        ("rejected", REJECTED_COLOR),
    ]
    svg = svg_scatter(
        chart_id,
        points,
        x_title,
        metric.replace("_", " "),
        front=[i for i, p in enumerate(points) if "pareto" in p.classes],
        legend=legend,
    )
    missing = [v.name for v in m.variants if v.name not in {p.label for p in points}]
    caption = "Pareto-optimal among kept variants: no other kept variant is both at least as fast (small) "
    caption += "and at least as good. Dashed: the front."
    if missing:
        caption += f" Not plotted (not measured): {', '.join(missing)}."
    return svg, caption


def _slices(m: Manifest) -> list[str]:
    keys: list[str] = []
    for v in m.variants:
        for k in v.scores.quality.extra if v.scores.quality else {}:
            if k.startswith(SLICE_PREFIX) and k.endswith("]") and k not in keys:
                keys.append(k)
    return keys


def _slice_section(m: Manifest) -> tuple[str, str]:
    keys = _slices(m)
    if not keys:
        return (
            "<p class='note' id='no-slices'>No per-slice quality in this manifest (classify builds record "
            "accuracy per length bucket and per --slice-by column).</p>",
            "",
        )
    labels = [k[len(SLICE_PREFIX) : -1] for k in keys]
    with_slices = [
        v for v in m.variants if v.scores.quality and any(k in v.scores.quality.extra for k in keys)
    ]
    series = [
        Series(
            v.name,
            [v.scores.quality.extra.get(k) if v.scores.quality else None for k in keys],
            CHOSEN_COLOR if v.name == m.chosen else COLORS[i % len(COLORS)],
        )
        for i, v in enumerate(with_slices)
    ]
    svg = svg_chart("slices", labels, series, "bar", y_min=0.0, y_max=1.0)
    head = "".join(f"<th>{_e(v.name)}</th>" for v in with_slices)
    rows = []
    for k, label in zip(keys, labels, strict=True):
        ns = {v.scores.quality.extra.get(f"n[{label}]") for v in with_slices if v.scores.quality}
        n = next((f"{int(x)}" for x in ns if x is not None), "-")
        tds = "".join(
            "<td>-</td>"
            if (val := v.scores.quality.extra.get(k) if v.scores.quality else None) is None
            else f"<td>{val:.4f}</td>"
            for v in with_slices
        )
        rows.append(f"<tr data-slice='{_e(label)}'><td>{_e(label)}</td><td>{n}</td>{tds}</tr>")
    table = (
        f"<table id='slices'><thead><tr><th>slice</th><th>n</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return svg, table


def _recipe_text(recipe: Sequence[dict[str, Any]]) -> str:
    steps = []
    for r in recipe:
        kind = str(r.get("kind", "?"))
        params = ", ".join(f"{k}={v}" for k, v in r.items() if k != "kind" and not isinstance(v, dict | list))
        steps.append(f"{kind}({params})" if params else kind)
    return " → ".join(steps) or "-"


def _decision(m: Manifest, v: VariantRecord, front: set[str]) -> str:
    if v.name == m.chosen:
        return "chosen"
    if v.status == "rejected":
        return "rejected"
    if v.status == "failed":
        return "failed"
    return "kept, Pareto-optimal" if v.name in front else "kept, dominated"


def _trace_section(m: Manifest) -> str:
    front = pareto_front(
        [
            (v.name, x, v.scores.quality.value)
            for v in m.variants
            if v.status == "ok" and v.scores.quality is not None and (x := _latency(v)) is not None
        ]
    )
    rows = []
    for step, v in enumerate(m.variants, 1):
        if v.parity:
            worst = max(p.max_abs_diff for p in v.parity)
            cos = min(p.min_cosine for p in v.parity)
            parity = f"{len(v.parity)} shapes: max |Δ| {worst:.2e}, min cos {cos:.5f}"
        else:
            parity = "-"
        reason = v.reason or (m.chosen_reason if v.name == m.chosen else "")
        rows.append(
            f"<tr data-variant='{_e(v.name)}' class='{_row_class(m, v)}'><td>{step}</td>"
            f"<td class=text>{_e(v.name)}</td><td class=text><code>{_e(_recipe_text(v.recipe))}</code></td>"
            f"<td class=text>{_e(parity)}</td>"
            f"<td class=text data-field='decision'>{_e(_decision(m, v, front))}</td>"
            f"<td class=text data-field='reason'>{_e(reason)}</td></tr>"
        )
    out = [
        "<table id='trace'><thead><tr><th>#</th><th class=text>variant</th><th class=text>recipe</th>"
        "<th class=text>parity vs reference</th><th class=text>decision</th><th class=text>why</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    ]
    trace = getattr(m, "search_trace", None)
    if trace is None and m.model_extra:
        trace = m.model_extra.get("search_trace")
    entries = [t for t in trace if isinstance(t, dict)] if isinstance(trace, list) else []
    if entries:
        keys: list[str] = []
        for t in entries:
            keys += [k for k in t if k not in keys]
        head = "".join(f"<th class=text>{_e(k)}</th>" for k in keys)
        body = "".join(
            "<tr>" + "".join(f"<td class=text>{_e(_cell(t.get(k)))}</td>" for k in keys) + "</tr>"
            for t in entries
        )
        out.append(
            "<h2 style='margin-top:12px'>Search steps</h2>"
            f"<table id='search-trace'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    else:
        out.append("<p class='note' id='no-search-trace'>The manifest records no search steps beyond the "
                   "variants above.</p>")  # fmt: skip
    return "".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _latency_chart(m: Manifest) -> str:
    stats = [v.scores.latency.get("batch1") for v in m.variants]
    names = [v.name for v in m.variants]
    series = [
        Series(p, [getattr(s, f"{p}_ms") if s else None for s in stats], color)
        for p, color in (("p50", COLORS[0]), ("p95", COLORS[4]), ("p99", COLORS[1]))
    ]
    return svg_chart("latency", names, series, "bar")


# -- the page ---------------------------------------------------------------------------------------------


def render_report(manifest: Manifest) -> str:
    """The build report for ``manifest`` as one self-contained HTML page (deterministic)."""
    m = manifest
    e = _e
    ev = m.evaluation
    src = m.source
    sub = (
        f"{e(m.task)} · {e(src.kind)} {e(src.spec)}{f' @ {e(src.revision)}' if src.revision else ''} · "
        f"built {e(m.created_at)} with kiln {e(m.kiln_version)} on {e(m.machine.get('cpu', 'unknown CPU'))}"
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>kiln report · {e(m.model_name)}</title><style>{_CSS}</style></head>",
        f"<body><header><h1>kiln report · {e(m.model_name)}</h1><p>{sub}</p></header><main>",
        "<section id='recommendation-section'><h2>Recommendation</h2>"
        f"<p class='recommendation' id='recommendation'>{e(recommendation(m))}</p></section>",
        f"<section class='wide'><h2>Variants</h2>{_variant_table(m)}",
    ]
    if ev is not None:
        parts.append(
            f"<p class='note'>Evaluation: {e(ev.dataset)}, {ev.n_train} fit / {ev.n_test} held out "
            f"(seed {ev.seed}). {e(ev.notes)}</p>"
        )
    parts.append("</section><div class='grid2'>")
    for chart_id, title, x_of, x_title in (
        ("pareto-latency", "Quality vs batch-1 latency", _latency, "batch-1 p50 latency (ms)"),
        ("pareto-size", "Quality vs file size", _size_mb, "file size (MB)"),
    ):
        svg, note = _pareto_chart(m, chart_id, x_of, x_title)
        parts.append(f"<section><h2>{e(title)}</h2>{svg}<p class='note'>{e(note)}</p></section>")
    slice_svg, slice_table = _slice_section(m)
    parts.append(f"<section><h2>Per-slice quality</h2>{slice_svg}{slice_table}</section>")
    parts.append(
        f"<section><h2>Batch-1 latency (ms)</h2>{_latency_chart(m)}"
        "<p class='note'>p50, p95 and p99 per variant; gaps: not measured.</p></section></div>"
    )
    parts.append(
        "<section class='wide'><h2>Search trace</h2><p class='note'>Every variant in the order it was "
        "made, with its parity against the reference and what happened to it.</p>"
        f"{_trace_section(m)}</section>"
    )
    parts.append("</main></body></html>")
    return "".join(parts)


def write_report(bundle_dir: Path, out: Path | None = None) -> Path:
    """Render the report of the bundle at ``bundle_dir`` to ``out`` (default: ``bundle_dir/report.html``).

    A ``report.html`` the manifest hashes is part of the verified bundle: it is rewritten only when the new
    page matches that hash (otherwise the bundle would fail verification); write elsewhere with ``out``.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    page = render_report(manifest).encode("utf-8")
    target = Path(out) if out is not None else bundle_dir / REPORT_NAME
    recorded = manifest.files.get(REPORT_NAME)
    if out is None and recorded is not None and target.is_file():
        import hashlib

        if hashlib.sha256(page).hexdigest() != recorded:
            if sha256_file(target) == recorded:
                return target  # the bundle's own report stands; this kiln renders it differently
            raise BundleError(
                f"{target} was changed after the build and the manifest records its hash; rebuild the "
                "bundle, or write the report elsewhere (kiln report BUNDLE --out FILE)"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(page)
    return target
