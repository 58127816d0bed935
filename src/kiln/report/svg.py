"""Inline SVG charts drawn on the server: no script, no fonts, nothing fetched, so a page opens offline.

:func:`svg_chart` draws one point (line) or bar per category label: the monitor's per-window charts and
the build report's per-slice bars. :func:`svg_scatter` draws labelled points on two numeric axes with an
optional step line through a subset of them: the build report's Pareto plots. Both mark every drawn point
as ``circle.point`` or ``rect.bar`` and count them in the root's ``data-points`` attribute, so tests (and
browsers) can check what was drawn.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 190, 52, 12, 14, 30
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


@dataclass
class Series:
    name: str
    values: Sequence[float | None]
    color: str
    low: Sequence[float | None] | None = None
    high: Sequence[float | None] | None = None
    dashed: bool = False


@dataclass
class Point:
    """One labelled point of a scatter plot; ``classes`` are added to its ``circle`` (e.g. ``pareto``)."""

    label: str
    x: float
    y: float
    color: str = COLORS[0]
    classes: tuple[str, ...] = ()
    note: str = ""


def fmt_number(v: float) -> str:
    """A short axis label: 3 significant digits in the usual range, exponent notation outside it."""
    if v == 0 or 0.01 <= abs(v) < 10_000:
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return f"{v:.2g}"


def _y_grid(out: list[str], lo: float, hi: float, y: Callable[[float], float], width: int) -> None:
    for k in range(5):  # grid and y labels
        gv = lo + (hi - lo) * k / 4
        gy = y(gv)
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{width - PAD_R}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        label = fmt_number(gv)
        out.append(f'<text class="axis" x="{PAD_L - 6}" y="{gy + 4:.1f}" text-anchor="end">{label}</text>')


def svg_chart(
    chart_id: str,
    labels: Sequence[str],
    series: Sequence[Series],
    kind: str = "line",
    y_min: float | None = None,
    y_max: float | None = None,
    bar_colors: Sequence[str | None] | None = None,
) -> str:
    """An inline SVG chart: one point (line) or bar per label; ``None`` values are gaps."""
    n = len(labels)
    values = [v for s in series for v in (*s.values, *(s.low or ()), *(s.high or ())) if v is not None]
    lo = y_min if y_min is not None else min([0.0, *values])
    hi = y_max if y_max is not None else max([*values, lo + 1e-9])
    if hi <= lo:
        hi = lo + 1.0
    hi = hi + (hi - lo) * 0.05 if y_max is None else hi
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    step = plot_w / max(n, 1)

    def x(i: int) -> float:
        return PAD_L + step * (i + 0.5)

    def y(v: float) -> float:
        return PAD_T + plot_h * (1 - (v - lo) / (hi - lo))

    out = [
        f'<svg class="chart" id="chart-{chart_id}" data-chart="{chart_id}" viewBox="0 0 {W} {H}" '
        f'role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    _y_grid(out, lo, hi, y, W)
    every = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        if i % every == 0 or i == n - 1:
            out.append(
                f'<text class="axis" x="{x(i):.1f}" y="{H - 10}" text-anchor="middle">'
                f"{html.escape(label)}</text>"
            )
    points = 0
    for si, s in enumerate(series):
        if kind == "bar":
            width = step * 0.8 / len(series)
            for i, v in enumerate(s.values):
                if v is None:
                    continue
                color = (bar_colors[i] if bar_colors and bar_colors[i] else None) or s.color
                top, base = y(max(v, lo)), y(max(lo, 0.0) if lo <= 0 <= hi else lo)
                bx = x(i) - step * 0.4 + width * si
                out.append(
                    f'<rect class="bar" data-value="{v:g}" x="{bx:.1f}" y="{min(top, base):.1f}" '
                    f'width="{width:.1f}" height="{abs(base - top):.1f}" fill="{color}">'
                    f"<title>{html.escape(labels[i])} {html.escape(s.name)}: {fmt_number(v)}</title></rect>"
                )
                points += 1
            continue
        if s.low is not None and s.high is not None:  # interval band
            pairs = [
                (i, lo_v, hi_v)
                for i, (lo_v, hi_v) in enumerate(zip(s.low, s.high, strict=True))
                if lo_v is not None and hi_v is not None
            ]
            if pairs:
                upper = " L".join(f"{x(i):.1f},{y(h):.1f}" for i, _, h in pairs)
                lower = " L".join(f"{x(i):.1f},{y(lv):.1f}" for i, lv, _ in reversed(pairs))
                out.append(f'<path class="band" d="M{upper} L{lower} Z" fill="{s.color}" opacity="0.15"/>')
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(s.values):
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
        if segment:
            segments.append(segment)
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        for seg in segments:
            d = "M" + " L".join(seg)
            out.append(f'<path class="line" d="{d}" stroke="{s.color}" fill="none" stroke-width="2"{dash}/>')
        for i, v in enumerate(s.values):
            if v is not None:
                out.append(
                    f'<circle class="point" data-value="{v:g}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" '
                    f'fill="{s.color}"><title>{html.escape(labels[i])} {html.escape(s.name)}: {fmt_number(v)}'
                    "</title></circle>"
                )
                points += 1
    _legend(out, [(s.name, s.color) for s in series])
    out.append("</svg>")
    out[0] = out[0].replace('role="img"', f'role="img" data-points="{points}"', 1)
    return "".join(out)


def _legend(out: list[str], entries: Sequence[tuple[str, str]]) -> None:
    legend_x = PAD_L
    for name, color in entries:
        out.append(f'<rect x="{legend_x}" y="2" width="10" height="10" fill="{color}"/>')
        out.append(f'<text class="legend" x="{legend_x + 14}" y="11">{html.escape(name)}</text>')
        legend_x += 24 + 7 * len(name)


def _span(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


def svg_scatter(
    chart_id: str,
    points: Sequence[Point],
    x_title: str,
    y_title: str,
    front: Sequence[int] = (),
    legend: Sequence[tuple[str, str]] = (),
    height: int = 260,
) -> str:
    """Labelled points on two numeric axes; ``front`` (indices into ``points``, any order) is joined by a
    dashed step line in x order, e.g. a Pareto front. Points are drawn in order, each with its label."""
    out = [
        f'<svg class="chart" id="chart-{chart_id}" data-chart="{chart_id}" viewBox="0 0 {W} {height}" '
        f'role="img" data-points="{len(points)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    if not points:
        out.append(
            f'<text class="axis" x="{W / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">'
            "nothing measured to plot</text></svg>"
        )
        return "".join(out)
    x_lo, x_hi = _span([p.x for p in points])
    y_lo, y_hi = _span([p.y for p in points])
    plot_w, plot_h = W - PAD_L - PAD_R, height - PAD_T - PAD_B - 12

    def x(v: float) -> float:
        return PAD_L + plot_w * (v - x_lo) / (x_hi - x_lo)

    def y(v: float) -> float:
        return PAD_T + 8 + plot_h * (1 - (v - y_lo) / (y_hi - y_lo))

    _y_grid(out, y_lo, y_hi, y, W)
    base = PAD_T + 8 + plot_h
    for k in range(5):
        xv = x_lo + (x_hi - x_lo) * k / 4
        out.append(
            f'<text class="axis" x="{x(xv):.1f}" y="{base + 14:.1f}" text-anchor="middle">'
            f"{fmt_number(xv)}</text>"
        )
    out.append(
        f'<text class="axis" x="{W - PAD_R}" y="{height - 3}" text-anchor="end">{html.escape(x_title)}</text>'
    )
    out.append(
        f'<text class="axis" x="{W - PAD_R}" y="11" text-anchor="end">y: {html.escape(y_title)}</text>'
    )
    ordered = sorted((points[i] for i in front), key=lambda p: (p.x, -p.y))
    if len(ordered) > 1:
        steps = [f"{x(ordered[0].x):.1f},{y(ordered[0].y):.1f}"]
        for prev, p in zip(ordered, ordered[1:], strict=False):
            steps += [f"{x(p.x):.1f},{y(prev.y):.1f}", f"{x(p.x):.1f},{y(p.y):.1f}"]
        out.append(
            f'<path class="front" d="M{" L".join(steps)}" stroke="#64748b" fill="none" stroke-width="1.5" '
            'stroke-dasharray="5 4"/>'
        )
    for p in points:
        cls = " ".join(("point", *p.classes))
        r = 6 if "chosen" in p.classes else 4.5
        ring = ' stroke="#0f172a" stroke-width="2"' if "chosen" in p.classes else ""
        title = f"{p.label}: {fmt_number(p.x)}, {fmt_number(p.y)}" + (f" ({p.note})" if p.note else "")
        out.append(
            f'<circle class="{cls}" data-label="{html.escape(p.label)}" data-x="{p.x:g}" data-y="{p.y:g}" '
            f'cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="{r}" fill="{p.color}"{ring}>'
            f"<title>{html.escape(title)}</title></circle>"
        )
        anchor = "end" if x(p.x) > W - 120 else "start"
        dx = -8 if anchor == "end" else 8
        out.append(
            f'<text class="label" x="{x(p.x) + dx:.1f}" y="{y(p.y) - 6:.1f}" text-anchor="{anchor}">'
            f"{html.escape(p.label)}</text>"
        )
    _legend(out, legend)
    out.append("</svg>")
    return "".join(out)
