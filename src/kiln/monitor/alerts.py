"""Alerts on complete windows: Prometheus gauges per drift test, and log/webhook alerts with hysteresis.

Signals, judged once per complete window (:class:`AlertManager`):

    drift                  the window's drift verdict (any test alarms after the multiple-testing correction)
    quality                a classifier's accuracy is under the line: the label-free estimate (CBPE), or the
                           realised accuracy where labels arrived, below ``reference accuracy - max_drop``
    retraining_suggested   drift or quality is firing: the model no longer sees what it was built for

A signal fires after ``fire_after`` consecutive windows over its line and clears after ``clear_after``
consecutive windows under it; a window that cannot be judged (too few samples, no profile) changes nothing.
Each transition is one :class:`AlertEvent`, sent to every sink: the ``kiln.monitor.alerts`` logger
(:class:`LogSink`) and, when configured, a webhook (:class:`WebhookSink`: one JSON POST per event).

Gauges (on the app's registry, so ``/metrics`` shows them), from the newest complete window:

    kiln_drift_statistic{test}       a test's statistic          kiln_drift_threshold{test}  its threshold
    kiln_drift_p_value{test}         its p-value (corrected where it counts toward the verdict)
    kiln_drift_alarm{test}           1 when it alarms            kiln_drift_detected         the verdict, 0/1
    kiln_monitor_window_samples      inputs the window's tests used
    kiln_accuracy_estimated          CBPE estimate               kiln_accuracy_realised      from feedback
    kiln_alert_firing{signal}        1 while a signal fires      kiln_retraining_suggested   0/1

``test`` is ``group:name:method`` (``input:n_chars:ks``, ``embedding:embedding:mmd`` ...).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Gauge

from kiln.monitor.windows import WindowStats

alert_log = logging.getLogger("kiln.monitor.alerts")

SIGNALS = ("drift", "quality", "retraining_suggested")
State = Literal["firing", "resolved"]


@dataclass(frozen=True)
class AlertPolicy:
    fire_after: int = 3
    """Consecutive complete windows over the line before a signal fires."""
    clear_after: int = 3
    """Consecutive complete windows under the line before it clears."""
    max_accuracy_drop: float = 0.05
    """Quality line: accuracy below the reference accuracy minus this."""

    def __post_init__(self) -> None:
        if self.fire_after < 1 or self.clear_after < 1:
            raise ValueError("fire_after and clear_after must be at least 1")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ValueError("max_accuracy_drop must be between 0 and 1")


@dataclass
class AlertEvent:
    signal: str
    state: State
    window_start: datetime
    window_end: datetime
    model: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {
            "source": "kiln",
            "signal": self.signal,
            "state": self.state,
            "model": self.model,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "detail": self.detail,
        }


class Hysteresis:
    """One signal's state: fires after ``fire_after`` windows over in a row, clears after ``clear_after``
    under in a row."""

    def __init__(self, fire_after: int, clear_after: int) -> None:
        self.fire_after, self.clear_after = fire_after, clear_after
        self.firing = False
        self.over = 0
        self.under = 0

    def update(self, over: bool | None) -> State | None:
        """Feed one window (``None``: could not be judged, changes nothing); the transition, if any."""
        if over is None:
            return None
        if over:
            self.over, self.under = self.over + 1, 0
            if not self.firing and self.over >= self.fire_after:
                self.firing = True
                return "firing"
        else:
            self.over, self.under = 0, self.under + 1
            if self.firing and self.under >= self.clear_after:
                self.firing = False
                return "resolved"
        return None


class Sink(Protocol):
    def send(self, event: AlertEvent) -> None: ...


class LogSink:
    """Alerts as log records on ``kiln.monitor.alerts`` (WARNING when firing, INFO when resolved)."""

    def send(self, event: AlertEvent) -> None:
        level = logging.WARNING if event.state == "firing" else logging.INFO
        alert_log.log(level, "alert %s", json.dumps(event.payload(), separators=(",", ":")))


class WebhookSink:
    """POSTs each event as JSON to ``url``; a failure is logged (at most once per failure streak), never
    raised: alerts must not stop the monitor."""

    def __init__(self, url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook {url!r} is not an http(s) URL")
        self.url = url
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", "User-Agent": "kiln-monitor", **(headers or {})}
        self.sent = 0
        self.failed = 0
        self._failing = False

    def send(self, event: AlertEvent) -> None:
        body = json.dumps(event.payload()).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failed += 1
            if not self._failing:
                alert_log.error("alert webhook %s failed: %s (alerts go on in the log)", self.url, exc)
            self._failing = True
            return
        self.sent += 1
        self._failing = False


class MonitorGauges:
    """The monitor's Prometheus gauges on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        test = ("test",)
        self.statistic = Gauge("kiln_drift_statistic", "drift test statistic", test, registry=registry)
        self.threshold = Gauge("kiln_drift_threshold", "drift test alarm threshold", test, registry=registry)
        self.p_value = Gauge("kiln_drift_p_value", "drift test p-value (corrected)", test, registry=registry)
        self.alarm = Gauge("kiln_drift_alarm", "1 when the drift test alarms", test, registry=registry)
        self.detected = Gauge("kiln_drift_detected", "drift verdict of the newest window", registry=registry)
        self.samples = Gauge(
            "kiln_monitor_window_samples", "sampled inputs in the newest complete window", registry=registry
        )
        self.estimated = Gauge(
            "kiln_accuracy_estimated", "label-free accuracy estimate (CBPE), newest window", registry=registry
        )
        self.realised = Gauge(
            "kiln_accuracy_realised", "accuracy on labels sent as feedback, newest window", registry=registry
        )
        self.firing = Gauge("kiln_alert_firing", "1 while the signal fires", ("signal",), registry=registry)
        self.retrain = Gauge(
            "kiln_retraining_suggested", "1 while drift or quality has been over the line", registry=registry
        )
        for signal in SIGNALS:
            self.firing.labels(signal=signal).set(0)

    def update(self, window: WindowStats) -> None:
        self.samples.set(window.samples)
        report = window.drift
        if report is None:
            return
        self.detected.set(1 if report.drift else 0)
        for t in report.tests:
            self.statistic.labels(test=t.id).set(t.statistic)
            self.threshold.labels(test=t.id).set(t.threshold)
            p = t.p_adjusted if t.p_adjusted is not None else t.p_value
            self.p_value.labels(test=t.id).set(p)
            self.alarm.labels(test=t.id).set(1 if t.alarm else 0)
        if report.accuracy_estimate is not None:
            self.estimated.set(report.accuracy_estimate.value)
        if report.accuracy_realised is not None:
            self.realised.set(report.accuracy_realised.value)


@dataclass
class SignalStatus:
    signal: str
    firing: bool
    since: datetime | None = None


class AlertManager:
    """Judges complete windows in order, keeps each signal's hysteresis and sends transitions to ``sinks``.

    ``reference_accuracy``: a classifier's accuracy on the reference data (the quality line is this minus
    ``policy.max_accuracy_drop``); ``None`` judges no quality.
    """

    def __init__(
        self,
        policy: AlertPolicy | None = None,
        sinks: Sequence[Sink] = (),
        gauges: MonitorGauges | None = None,
        reference_accuracy: float | None = None,
        model: str | None = None,
    ) -> None:
        self.policy = policy or AlertPolicy()
        self.sinks = list(sinks)
        self.gauges = gauges
        self.reference_accuracy = reference_accuracy
        self.model = model
        self.states = {s: Hysteresis(self.policy.fire_after, self.policy.clear_after) for s in SIGNALS[:2]}
        self.retraining_suggested = False
        self.since: dict[str, datetime] = {}
        self.events: list[AlertEvent] = []
        """Every transition so far, oldest first (the dashboard shows the newest)."""
        self.last_judged: datetime | None = None

    @property
    def quality_line(self) -> float | None:
        if self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.policy.max_accuracy_drop

    def quality_over(self, window: WindowStats) -> bool | None:
        line = self.quality_line
        if line is None or window.drift is None:
            return None
        values = [a.value for a in (window.accuracy_estimate, window.accuracy_realised) if a is not None]
        return None if not values else min(values) < line

    def observe(self, window: WindowStats) -> list[AlertEvent]:
        """Judge one complete window (windows must come oldest first; one already judged is ignored)."""
        if not window.complete or (self.last_judged is not None and window.start <= self.last_judged):
            return []
        self.last_judged = window.start
        if self.gauges is not None:
            self.gauges.update(window)
        drift_over = None if window.drift is None else window.drift.drift
        events: list[AlertEvent] = []
        for signal, over in (("drift", drift_over), ("quality", self.quality_over(window))):
            change = self.states[signal].update(over)
            if change is not None:
                events.append(self._event(signal, change, window))
        suggest = any(h.firing for h in self.states.values())
        if suggest != self.retraining_suggested:
            self.retraining_suggested = suggest
            events.append(self._event("retraining_suggested", "firing" if suggest else "resolved", window))
        if self.gauges is not None:
            for signal, h in self.states.items():
                self.gauges.firing.labels(signal=signal).set(1 if h.firing else 0)
            self.gauges.firing.labels(signal="retraining_suggested").set(1 if suggest else 0)
            self.gauges.retrain.set(1 if suggest else 0)
        for event in events:
            if event.state == "firing":
                self.since[event.signal] = event.window_end
            else:
                self.since.pop(event.signal, None)
            self.events.append(event)
            for sink in self.sinks:
                try:
                    sink.send(event)
                except Exception:  # a broken sink must not stop the others
                    alert_log.exception("alert sink %r failed", sink)
        del self.events[:-100]
        return events

    def observe_all(self, windows: Iterable[WindowStats]) -> list[AlertEvent]:
        return [e for w in windows for e in self.observe(w)]

    def status(self) -> list[SignalStatus]:
        firing = {s: h.firing for s, h in self.states.items()}
        firing["retraining_suggested"] = self.retraining_suggested
        return [SignalStatus(s, firing[s], self.since.get(s)) for s in SIGNALS]

    def _event(self, signal: str, state: State, window: WindowStats) -> AlertEvent:
        detail: dict[str, Any] = {"window_samples": window.samples}
        if window.drift is not None:
            detail["drift"] = window.drift.drift
            detail["alarms"] = list(window.drift.alarms)
            if window.accuracy_estimate is not None:
                detail["accuracy_estimated"] = round(window.accuracy_estimate.value, 4)
            if window.accuracy_realised is not None:
                detail["accuracy_realised"] = round(window.accuracy_realised.value, 4)
        if signal in ("quality", "retraining_suggested") and self.quality_line is not None:
            detail["quality_line"] = round(self.quality_line, 4)
        if signal == "retraining_suggested":
            detail["because"] = [s for s, h in self.states.items() if h.firing]
        detail["policy"] = {"fire_after": self.policy.fire_after, "clear_after": self.policy.clear_after}
        return AlertEvent(signal, state, window.start, window.end, self.model, detail)
