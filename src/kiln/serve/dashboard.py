"""The monitor on the server: ``GET /dashboard``, ``GET /v2/monitor/windows`` and the alert watcher.

``/dashboard`` is the HTML report (:func:`kiln.monitor.report.render_html`: traffic, latency, errors, drift
per window, estimated vs realised accuracy, drawn as inline SVG; no script, nothing fetched from elsewhere)
and reloads itself every ``refresh`` seconds (query ``?refresh=N``, 0 = never; default 30).
``/v2/monitor/windows`` is the same report as JSON (what ``kiln monitor URL`` reads). Both take ``window``
(``15m``, ``1h`` ...; default the server's ``KILN_MONITOR_WINDOW``), ``count`` (windows, default 24) and
``model`` (default: the first served model). Both need a key allowed the ``metrics`` routes, like /metrics.

:class:`MonitorService` also runs the alert watcher: a thread that judges each window as it completes
(:class:`kiln.monitor.alerts.AlertManager`), updates the Prometheus gauges on the app's registry and sends
alerts to the log and the webhook. Drift needs the bundle's reference profile (``profile.json`` in the
bundle); without one the dashboard still shows traffic, latency and errors.

Nothing here imports SQLAlchemy at import time: a server without a request log never loads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln.errors import InvalidInputError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine

    from kiln.monitor.alerts import AlertManager
    from kiln.monitor.drift_adapter import ProfileChecker
    from kiln.monitor.report import MonitorReport
    from kiln.monitor.requestlog import RequestLog
    from kiln.serve.dataplane import DataPlane
    from kiln.serve.repository import ModelRepository
    from kiln.settings import Settings

log = logging.getLogger("kiln.monitor")

DASHBOARD_PATH = "/dashboard"
WINDOWS_PATH = "/v2/monitor/windows"
DEFAULT_REFRESH_S = 30
MAX_COUNT = 500


class MonitorService:
    """Windowed reports of one server's request log, and the alert watcher of its main model."""

    def __init__(
        self,
        engine: Engine,
        length: timedelta,
        model: str | None,
        checkers: Callable[[str], ProfileChecker | None],
        tasks: Callable[[str], str | None],
        manager: AlertManager | None = None,
        stats: Callable[[], dict[str, Any]] | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.length = length
        self.model = model
        self._checker_for = checkers
        self._task_for = tasks
        self._checkers: dict[str, ProfileChecker | None] = {}
        self.manager = manager
        self.stats = stats
        self.poll_s = poll_s if poll_s is not None else min(60.0, max(1.0, length.total_seconds() / 10))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.owns_engine = False
        """Dispose ``engine`` on :meth:`stop` (it was opened for this service)."""

    def checker(self, model: str | None) -> ProfileChecker | None:
        if model is None:
            return None
        with self._lock:
            if model not in self._checkers:
                try:
                    self._checkers[model] = self._checker_for(model)
                except Exception as exc:  # a broken profile: say so, serve the rest of the dashboard
                    log.error("the reference profile of %s cannot be used: %s", model, exc)
                    self._checkers[model] = None
            return self._checkers[model]

    def report(
        self, length: timedelta | None = None, count: int = 24, model: str | None = None
    ) -> MonitorReport:
        """The report of the ``count`` newest windows (blocking: call it off the event loop)."""
        from kiln.monitor.report import EventView, MonitorReport, SignalView
        from kiln.monitor.store import redact
        from kiln.monitor.windows import WindowReader, format_duration

        length = length or self.length
        model = model or self.model
        checker = self.checker(model)
        windows = WindowReader(self.engine, checker, model).read(length, count)
        main = model == self.model and self.manager is not None
        signals, events = [], []
        if main and self.manager is not None:
            signals = [
                SignalView(signal=s.signal, firing=s.firing, since=s.since) for s in self.manager.status()
            ]
            events = [
                EventView(
                    signal=e.signal,
                    state=e.state,
                    window_start=e.window_start,
                    window_end=e.window_end,
                    detail=e.detail,
                )
                for e in self.manager.events
            ]
        return MonitorReport(
            source=redact(self.engine.url),
            model=model,
            task=self._task_for(model) if model else None,
            window=format_duration(length),
            generated_at=datetime.now(timezone.utc),
            reference_profile=checker is not None,
            reference_accuracy=checker.reference_accuracy if checker else None,
            quality_line=self.manager.quality_line if main and self.manager is not None else None,
            stats=self.stats() if self.stats else None,
            windows=windows,
            signals=signals,
            events=events,
        )

    # -- the alert watcher ---------------------------------------------------------------------------
    def judge(self, now: datetime | None = None) -> int:
        """Judge the windows completed since the last call; the number of alert events sent."""
        if self.manager is None:
            return 0
        from kiln.monitor.windows import WindowReader, utc, window_start

        policy = self.manager.policy
        now = utc(now or datetime.now(timezone.utc))
        newest = window_start(now, self.length) - self.length  # the newest complete window
        count = policy.fire_after + policy.clear_after + 1
        if self.manager.last_judged is not None:  # only windows completed since: a poll is mostly free
            count = min(count, round((newest - self.manager.last_judged) / self.length))
            if count < 1:
                return 0
        reader = WindowReader(self.engine, self.checker(self.model), self.model)
        windows = reader.read(self.length, count, until=newest, now=now)
        return len(self.manager.observe_all(w for w in windows if w.complete))

    def start(self) -> None:
        if self.manager is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kiln-monitor-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.owns_engine:
            self.engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.judge()
            except Exception:
                log.exception("the monitor could not judge the latest windows")
            self._stop.wait(self.poll_s)


def _bundle_root(repository: ModelRepository | None, model: str) -> Path | None:
    if repository is None:
        return None
    source = repository.sources().get(model)
    if source is None:
        return None
    versions = source.versions()
    if not versions:
        return None
    return versions[max(versions, key=lambda v: int(v) if v.isdigit() else -1)]


def open_monitor_service(
    settings: Settings,
    request_log: RequestLog,
    registry: CollectorRegistry,
    dataplane: DataPlane,
    repository: ModelRepository | None = None,
) -> MonitorService:
    """The monitor of a server that keeps ``request_log``: its main model is the first served model."""
    from kiln.errors import MonitorError
    from kiln.monitor.alerts import AlertManager, AlertPolicy, LogSink, MonitorGauges, Sink, WebhookSink
    from kiln.monitor.drift_adapter import ProfileChecker, find_profile
    from kiln.monitor.windows import parse_duration

    try:
        length = parse_duration(settings.monitor_window)
        policy = AlertPolicy(
            fire_after=settings.monitor_alert_after,
            clear_after=settings.monitor_alert_clear_after,
            max_accuracy_drop=settings.monitor_max_accuracy_drop,
        )
        sinks: list[Sink] = [LogSink()]
        if settings.monitor_alert_webhook:
            sinks.append(WebhookSink(settings.monitor_alert_webhook))
    except ValueError as exc:
        raise MonitorError(f"monitor settings: {exc} (KILN_MONITOR_WINDOW, KILN_MONITOR_ALERT_*)") from None
    names = sorted(dataplane.model_names)
    model = names[0] if names else None

    def checker_for(name: str) -> ProfileChecker | None:
        root = _bundle_root(repository, name)
        profile = find_profile(root) if root is not None else None
        if profile is None:
            return None
        info = dataplane.resolve(name)
        return ProfileChecker(profile, info.task, info.labels)

    def task_for(name: str) -> str | None:
        try:
            return dataplane.resolve(name).task
        except Exception:
            return None

    engine = request_log.engine
    if engine.dialect.name == "sqlite":
        # reads on their own engine, without the log's BEGIN IMMEDIATE: WAL readers never wait for the writer
        from sqlalchemy import create_engine

        engine = create_engine(engine.url)
    service = MonitorService(engine, length, model, checker_for, task_for, stats=request_log.stats)
    service.owns_engine = engine is not request_log.engine
    checker = service.checker(model)
    service.manager = AlertManager(
        policy,
        sinks,
        MonitorGauges(registry),
        reference_accuracy=checker.reference_accuracy if checker is not None else None,
        model=model,
    )
    return service


def _query(request: Request, service: MonitorService) -> tuple[timedelta, int, str | None]:
    from kiln.monitor.windows import parse_duration

    params = request.query_params
    try:
        length = parse_duration(params["window"]) if "window" in params else service.length
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    raw = params.get("count", "24")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_COUNT:
        raise InvalidInputError(f"count must be a whole number from 1 to {MAX_COUNT}, not {raw!r}")
    return length, int(raw), params.get("model") or None


def dashboard_routes(service: MonitorService | None) -> list[BaseRoute]:
    """``/dashboard`` and ``/v2/monitor/windows`` (404 with a reason when the server keeps no log)."""

    def unavailable(path: str) -> Response:
        from kiln.serve.errors import error_response

        return error_response(path, 404, "this server keeps no request log (--no-monitor): nothing to show")

    async def dashboard(request: Request) -> Response:
        if service is None:
            return unavailable(DASHBOARD_PATH)
        from kiln.monitor.report import render_html

        length, count, model = _query(request, service)
        raw = request.query_params.get("refresh", str(DEFAULT_REFRESH_S))
        refresh = int(raw) if raw.isdigit() else DEFAULT_REFRESH_S
        report = await anyio.to_thread.run_sync(lambda: service.report(length, count, model))
        return HTMLResponse(render_html(report, refresh_s=refresh or None))

    async def windows(request: Request) -> Response:
        if service is None:
            return unavailable(WINDOWS_PATH)
        length, count, model = _query(request, service)
        report = await anyio.to_thread.run_sync(lambda: service.report(length, count, model))
        return JSONResponse(report.model_dump(mode="json"))

    return [
        Route(DASHBOARD_PATH, dashboard, methods=["GET"]),
        Route(WINDOWS_PATH, windows, methods=["GET"]),
    ]
