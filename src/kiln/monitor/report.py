"""The monitor report: traffic, latency, errors, drift and quality per window, in the terminal and as HTML.

One model (:class:`MonitorReport`, JSON on ``GET /v2/monitor/windows``) and two views of it: rich tables
(:func:`render_terminal`) and a self-contained HTML page (:func:`render_html`: inline CSS, charts drawn as
inline SVG on the server, no script and nothing fetched from elsewhere, so it works offline; with
``refresh_s`` it reloads itself). The server's ``/dashboard`` and ``kiln monitor --html`` are this page.

:func:`load_report` is what ``kiln monitor`` calls: from a server URL (its JSON), a bundle (its request log
under ``KILN_HOME`` or ``--monitor-db``, and its reference profile) or a database URL/path.
"""

from __future__ import annotations

import html
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from rich.console import Console, Group
from rich.table import Table

from kiln.errors import KilnError, MonitorError
from kiln.monitor.windows import WindowStats, format_duration, parse_duration
from kiln.report.svg import COLORS, Series, svg_chart

WINDOWS_PATH = "/v2/monitor/windows"
DEFAULT_COUNT = 24


class SignalView(BaseModel):
    signal: str
    firing: bool
    since: datetime | None = None


class EventView(BaseModel):
    signal: str
    state: str
    window_start: datetime
    window_end: datetime
    detail: dict[str, Any] = Field(default_factory=dict)


class MonitorReport(BaseModel):
    source: str = Field(description="where the data came from: a database (password hidden) or a server")
    model: str | None = None
    task: str | None = None
    window: str = Field(description="window length, e.g. 1h")
    generated_at: datetime
    reference_profile: bool = False
    reference_accuracy: float | None = None
    quality_line: float | None = None
    stats: dict[str, Any] | None = Field(default=None, description="the request log's counters")
    windows: list[WindowStats]
    signals: list[SignalView] = Field(default_factory=list)
    events: list[EventView] = Field(default_factory=list)

    @property
    def total_requests(self) -> int:
        return sum(w.requests for w in self.windows)

    @property
    def total_errors(self) -> int:
        return sum(w.errors for w in self.windows)


# -- terminal ---------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _acc(window: WindowStats, realised: bool) -> str:
    a = window.accuracy_realised if realised else window.accuracy_estimate
    return "-" if a is None else f"{a.value:.3f} [{a.low:.3f}, {a.high:.3f}]"


def _when(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")


def terminal_view(report: MonitorReport) -> Group:
    """The report as rich renderables: traffic per window, drift per window, signals."""
    title = f"{report.model or 'all models'} · {report.source} · windows of {report.window}"
    traffic = Table(
        "window (UTC)", "requests", "errors", "rejected", "p50 ms", "p95 ms", "p99 ms", title=title
    )
    drift = Table("window (UTC)", "samples", "drift", "alarms", "est. accuracy", "realised accuracy")
    for w in report.windows:
        when = _when(w.start) + ("" if w.complete else " (open)")
        lat = w.latency_ms
        traffic.add_row(
            when,
            str(w.requests),
            str(w.errors),
            str(w.rejected),
            _ms(lat.p50 if lat else None),
            _ms(lat.p95 if lat else None),
            _ms(lat.p99 if lat else None),
        )
        if w.drift is None:
            verdict, alarms = "-", w.drift_note or ""
        else:
            verdict = "[bold red]DRIFT[/]" if w.drift.drift else "[green]ok[/]"
            alarms = ", ".join(w.drift.alarms[:3]) + (" ..." if len(w.drift.alarms) > 3 else "")
        drift.add_row(when, str(w.samples), verdict, alarms, _acc(w, False), _acc(w, True))
    parts: list[Any] = [traffic, drift]
    if report.signals:
        signals = Table("signal", "state", "since")
        for s in report.signals:
            state = "[bold red]firing[/]" if s.firing else "[green]ok[/]"
            signals.add_row(s.signal, state, _when(s.since) if s.since else "-")
        parts.append(signals)
    if not report.reference_profile:
        parts.append("[yellow]no reference profile: drift and quality are not tested[/]")
    return Group(*parts)


def render_terminal(report: MonitorReport, console: Console) -> None:
    console.print(terminal_view(report))


# -- HTML -------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
header{background:#0f172a;color:#f8fafc;padding:12px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}main{padding:16px 24px;max-width:1400px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 14px;min-width:130px}
.card .v{font-size:22px;font-weight:600}.card .k{font-size:12px;color:#64748b}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 14px}
section h2{font-size:15px;margin:0 0 6px}svg.chart{width:100%;height:auto}
svg .grid{stroke:#e2e8f0}svg .axis,svg .legend{font-size:11px;fill:#475569}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #e2e8f0;text-align:right}
th:first-child,td:first-child{text-align:left}.bad{color:#dc2626;font-weight:600}
.ok{color:#16a34a}.note{color:#64748b;font-size:12px}
"""


def _card(key: str, label: str, value: str, css: str = "") -> str:
    cls = f' class="v {css}"' if css else ' class="v"'
    return (
        f'<div class="card"><div{cls} id="{key}">{html.escape(value)}</div><div class="k">{label}</div></div>'
    )


def _label(ts: datetime, length: timedelta) -> str:
    ts = ts.astimezone(timezone.utc)
    return ts.strftime("%m-%d") if length >= timedelta(days=1) else ts.strftime("%H:%M")


def _drift_score(w: WindowStats) -> float | None:
    """Largest statistic/threshold among the tests that count (over 1: that test alarms before correction)."""
    if w.drift is None:
        return None
    ratios = [
        t.statistic / t.threshold
        for t in w.drift.tests
        if t.counts_toward_verdict and t.threshold > 0 and math.isfinite(t.statistic / t.threshold)
    ]
    return max(ratios) if ratios else None


def render_html(report: MonitorReport, refresh_s: float | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no script, no external fetch)."""
    length = parse_duration(report.window)
    ws = report.windows
    labels = [_label(w.start, length) for w in ws]
    stats = report.stats or {}
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"]
    if refresh_s:
        parts.append(f'<meta http-equiv="refresh" content="{int(refresh_s)}">')
    parts.append("<meta name='viewport' content='width=device-width,initial-scale=1'>")
    parts.append(
        f"<title>kiln monitor · {e(report.model or 'all models')}</title><style>{_CSS}</style></head>"
    )
    parts.append(
        f"<body><header><h1>kiln monitor · {e(report.model or 'all models')}</h1><p>{e(report.source)} · "
        f"windows of {e(report.window)} · generated {e(report.generated_at.isoformat(timespec='seconds'))}"
        + (f" · refreshes every {int(refresh_s)} s" if refresh_s else "")
        + "</p></header><main>"
    )
    latest = next((w for w in reversed(ws) if w.drift is not None), None)
    cards = [
        _card("total-requests", f"requests ({len(ws)} windows)", str(report.total_requests)),
        _card(
            "total-errors",
            "errors (5xx, 499)",
            str(report.total_errors),
            "bad" if report.total_errors else "",
        ),
    ]
    if stats.get("enabled"):
        dropped = sum(int(v) for v in (stats.get("dropped") or {}).values())
        cards += [
            _card("stat-committed", "logged (committed)", str(stats.get("committed", 0))),
            _card("stat-dropped", "not logged (dropped)", str(dropped), "bad" if dropped else ""),
            _card("stat-queued", "waiting for the writer", str(stats.get("queued", 0))),
        ]
    if latest is not None and latest.drift is not None:
        verdict = "DRIFT" if latest.drift.drift else "no drift"
        cards.append(
            _card("drift-verdict", "newest tested window", verdict, "bad" if latest.drift.drift else "ok")
        )
    for s in report.signals:
        cards.append(
            _card(f"signal-{s.signal}", s.signal.replace("_", " "), "firing" if s.firing else "ok",
                  "bad" if s.firing else "ok")
        )  # fmt: skip
    parts.append(f'<div class="cards">{"".join(cards)}</div><div class="grid2">')

    def section(title: str, body: str, note: str = "") -> None:
        extra = f'<p class="note">{e(note)}</p>' if note else ""
        parts.append(f"<section><h2>{e(title)}</h2>{body}{extra}</section>")

    section(
        "Traffic",
        svg_chart("traffic", labels, [Series("requests", [float(w.requests) for w in ws], COLORS[0])], "bar"),
    )

    def lat(attr: str) -> list[float | None]:
        return [getattr(w.latency_ms, attr) if w.latency_ms else None for w in ws]

    section(
        "Latency (ms)",
        svg_chart(
            "latency",
            labels,
            [
                Series("p50", lat("p50"), COLORS[0]),
                Series("p95", lat("p95"), COLORS[4]),
                Series("p99", lat("p99"), COLORS[1]),
            ],
        ),  # fmt: skip
    )
    section(
        "Errors",
        svg_chart(
            "errors",
            labels,
            [
                Series("errors", [float(w.errors) for w in ws], COLORS[1]),
                Series("rejected (4xx)", [float(w.rejected) for w in ws], COLORS[4]),
            ],
            "bar",
        ),  # fmt: skip
    )
    scores = [_drift_score(w) for w in ws]
    section(
        "Drift",
        svg_chart(
            "drift",
            labels,
            [Series("statistic / threshold (largest)", scores, COLORS[3])],
            "bar",
            bar_colors=[COLORS[1] if w.drift is not None and w.drift.drift else None for w in ws],
        ),
        "Bars over 1: a test is over its calibrated threshold; red: the window drifts (after correction)."
        if report.reference_profile
        else "No reference profile: drift is not tested.",
    )
    if report.task in ("classify", "image-classify") or any(w.accuracy_estimate for w in ws):
        est = [w.accuracy_estimate for w in ws]
        real = [w.accuracy_realised for w in ws]
        series = [
            Series(
                "estimated (CBPE)",
                [a.value if a else None for a in est],
                COLORS[0],
                low=[a.low if a else None for a in est],
                high=[a.high if a else None for a in est],
            ),
            Series("realised (feedback)", [a.value if a else None for a in real], COLORS[2]),
        ]
        if report.reference_accuracy is not None:
            series.append(Series("reference", [report.reference_accuracy] * len(ws), "#64748b", dashed=True))
        if report.quality_line is not None:
            series.append(Series("alert line", [report.quality_line] * len(ws), COLORS[1], dashed=True))
        section(
            "Quality: estimated vs realised accuracy",
            svg_chart("quality", labels, series, y_min=0.0, y_max=1.0),
        )
    parts.append("</div>")
    rows = []
    for w in reversed(ws):
        lat_ms = w.latency_ms
        verdict = "-" if w.drift is None else ("<span class='bad'>drift</span>" if w.drift.drift else "ok")
        w_est, w_real = w.accuracy_estimate, w.accuracy_realised
        rows.append(
            f"<tr data-start='{e(w.start.isoformat())}'>"
            f"<td>{e(_when(w.start))}{'' if w.complete else ' (open)'}</td>"
            f"<td data-field='requests'>{w.requests}</td><td data-field='errors'>{w.errors}</td>"
            f"<td>{w.rejected}</td><td>{_ms(lat_ms.p50 if lat_ms else None)}</td>"
            f"<td>{_ms(lat_ms.p95 if lat_ms else None)}</td><td>{_ms(lat_ms.p99 if lat_ms else None)}</td>"
            f"<td data-field='samples'>{w.samples}</td><td>{verdict}</td>"
            f"<td>{'-' if w_est is None else f'{w_est.value:.3f}'}</td>"
            f"<td>{'-' if w_real is None else f'{w_real.value:.3f} (n={w_real.n})'}</td></tr>"
        )
    parts.append(
        "<section style='margin-top:16px'><h2>Windows</h2><table id='windows'><thead><tr>"
        "<th>window (UTC)</th><th>requests</th><th>errors</th><th>rejected</th>"
        "<th>p50 ms</th><th>p95 ms</th><th>p99 ms</th>"
        "<th>samples</th><th>drift</th><th>est. acc.</th><th>realised acc.</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></section>"
    )
    if latest is not None and latest.drift is not None:
        trs = "".join(
            f"<tr><td>{e(t.id)}</td><td>{t.n}</td><td>{t.statistic:.4g}</td><td>{t.threshold:.4g}</td>"
            f"<td>{'-' if t.p_adjusted is None else f'{t.p_adjusted:.3g}'}</td>"
            f"<td>{'<span class=bad>alarm</span>' if t.alarm else 'ok'}</td></tr>"
            for t in latest.drift.tests
            if t.counts_toward_verdict
        )
        parts.append(
            f"<section style='margin-top:16px'><h2>Drift tests, window {e(_when(latest.start))}</h2>"
            "<table id='tests'><thead><tr><th>test</th><th>n</th><th>statistic</th><th>threshold</th>"
            f"<th>p (corrected)</th><th>verdict</th></tr></thead><tbody>{trs}</tbody></table></section>"
        )
    if report.events:
        trs = "".join(
            f"<tr><td>{e(_when(ev.window_end))}</td><td>{e(ev.signal)}</td><td>{e(ev.state)}</td>"
            f"<td>{e(json.dumps(ev.detail)[:200])}</td></tr>"
            for ev in reversed(report.events[-20:])
        )
        parts.append(
            "<section style='margin-top:16px'><h2>Alerts</h2><table id='alerts'><thead><tr><th>at</th>"
            f"<th>signal</th><th>state</th><th>detail</th></tr></thead><tbody>{trs}</tbody></table></section>"
        )
    parts.append("</main></body></html>")
    return "".join(parts)


# -- loading (kiln monitor) -------------------------------------------------------------------------------


def fetch_report(
    url: str, window: str, count: int, api_key: str | None = None, timeout_s: float = 30
) -> MonitorReport:
    """The report a running server computes (``GET URL/v2/monitor/windows``)."""
    query = f"?window={urllib.parse.quote(window)}&count={count}"
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    target = url.rstrip("/") + WINDOWS_PATH + query
    try:
        with urllib.request.urlopen(urllib.request.Request(target, headers=headers), timeout=timeout_s) as r:  # noqa: S310
            body = r.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        hint = " (pass --api-key with a key scoped for metrics)" if exc.code in (401, 403) else ""
        raise KilnError(f"{target} answered {exc.code}: {detail}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise KilnError(f"cannot reach {url}: {exc}; is `kiln serve` running there?") from None
    try:
        return MonitorReport.model_validate_json(body)
    except ValidationError as exc:
        raise KilnError(f"{target} did not answer with a kiln monitor report: {exc}") from None


def load_report(
    target: str,
    window: str = "1h",
    count: int = DEFAULT_COUNT,
    *,
    bundle: Path | None = None,
    model: str | None = None,
    api_key: str | None = None,
    home: Path | None = None,
    monitor_db: str | None = None,
) -> MonitorReport:
    """What ``kiln monitor TARGET`` shows. ``target``: a server URL (``http(s)://``), a bundle folder (its
    request log: ``monitor_db`` or ``home/monitor/<model>.db``), or a request-log database URL or SQLite
    file; ``bundle`` gives the reference profile for a database."""
    try:
        length = parse_duration(window)
    except ValueError as exc:
        raise KilnError(str(exc)) from None
    if count < 1:
        raise KilnError("--count must be at least 1")
    if target.startswith(("http://", "https://")):
        return fetch_report(target, format_duration(length), count, api_key)
    from kiln.monitor.store import default_db_path, make_engine, parse_url, redact, sqlite_url

    path = Path(target).expanduser()
    if (path / "kiln.json").is_file():
        bundle = path
        from kiln.bundle.load import read_manifest

        name = read_manifest(path).model_name
        model = model or name
        if monitor_db:
            url = monitor_db
        else:
            db = default_db_path(home or Path.home() / ".cache" / "kiln", name)
            if not db.is_file():
                raise KilnError(
                    f"no request log for {name} at {db}: serve the bundle first (`kiln serve {target}`), "
                    "or give the database (kiln monitor DB_URL --bundle BUNDLE)"
                )
            url = sqlite_url(db)
    elif "://" in target:
        url = target
    elif path.is_file():
        url = sqlite_url(path)
    else:
        raise KilnError(
            f"{target!r} is neither a server URL, a bundle folder nor a request-log database "
            "(e.g. http://127.0.0.1:8000, ./bundle, sqlite:////path/log.db or postgresql+psycopg://...)"
        )
    try:
        engine = make_engine(parse_url(url))
    except ValueError as exc:
        raise KilnError(str(exc)) from None
    try:
        return report_from_engine(
            engine, length, count, bundle=bundle, model=model, source=redact(engine.url)
        )
    except KilnError:
        raise
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc
        raise MonitorError(f"cannot read the request log at {redact(engine.url)}: {reason}") from exc
    finally:
        engine.dispose()


def report_from_engine(
    engine: Any,
    length: timedelta,
    count: int,
    *,
    bundle: Path | None = None,
    model: str | None = None,
    source: str = "",
) -> MonitorReport:
    """Read the log at ``engine`` offline: windows end at the newest logged request when it is old."""
    from kiln.monitor.drift_adapter import bundle_checker
    from kiln.monitor.windows import WindowReader

    checker = bundle_checker(bundle) if bundle is not None else None
    task = None
    if bundle is not None:
        from kiln.bundle.load import read_manifest

        task = read_manifest(bundle).task
    reader = WindowReader(engine, checker, model)
    windows = reader.read(length, count, follow_data=True)
    return MonitorReport(
        source=source,
        model=model,
        task=task,
        window=format_duration(length),
        generated_at=datetime.now(timezone.utc),
        reference_profile=checker is not None,
        reference_accuracy=checker.reference_accuracy if checker else None,
        windows=windows,
    )
