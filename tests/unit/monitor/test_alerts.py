"""Alerts: hysteresis, the quality line, retraining suggested, Prometheus gauges and the webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from kiln.monitor.alerts import (  # noqa: E402
    AlertEvent,
    AlertManager,
    AlertPolicy,
    Hysteresis,
    MonitorGauges,
    WebhookSink,
)
from kiln.monitor.cbpe import AccuracyEstimate  # noqa: E402
from kiln.monitor.drift import DriftReport, DriftTest  # noqa: E402
from kiln.monitor.windows import WindowStats  # noqa: E402

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def window(i: int, drift: bool | None, accuracy: float | None = None, complete: bool = True) -> WindowStats:
    report = None
    if drift is not None:
        test = DriftTest(
            group="input", name="n_chars", method="ks", n=50, statistic=0.4 if drift else 0.05,
            threshold=0.2, p_value=1e-6 if drift else 0.5, p_adjusted=1e-5 if drift else 1.0, alarm=drift,
        )  # fmt: skip
        estimate = None
        if accuracy is not None:
            estimate = AccuracyEstimate(kind="estimated", value=accuracy, low=accuracy - 0.05,
                                        high=accuracy + 0.05, n=50)  # fmt: skip
        report = DriftReport(
            n=50, alpha=0.01, correction="holm", drift=drift, alarms=[test.id] if drift else [], tests=[test],
            accuracy_estimate=estimate,
        )  # fmt: skip
    return WindowStats(
        start=T0 + i * HOUR, end=T0 + (i + 1) * HOUR, complete=complete, samples=50, drift=report
    )


def test_hysteresis_fires_after_n_overs_and_clears_after_m_unders() -> None:
    h = Hysteresis(fire_after=3, clear_after=2)
    assert [h.update(v) for v in (True, True, False, True, True)] == [None] * 5  # the streak was broken
    assert h.update(True) == "firing" and h.firing
    assert h.update(True) is None  # fires once
    assert h.update(None) is None and h.firing  # a window that cannot be judged changes nothing
    assert h.update(False) is None
    assert h.update(True) is None  # the under-streak is broken too
    assert [h.update(False), h.update(False)] == [None, "resolved"]
    assert not h.firing


def test_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        AlertPolicy(fire_after=0)
    with pytest.raises(ValueError):
        AlertPolicy(max_accuracy_drop=2.0)


class Collect:
    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)


def test_drift_alert_and_retraining_suggested_with_hysteresis() -> None:
    sink = Collect()
    manager = AlertManager(AlertPolicy(fire_after=2, clear_after=2), [sink], model="m")
    pattern = [False, True, None, True, True, False, True, False, False]
    fired = [[(e.signal, e.state) for e in manager.observe(window(i, d))] for i, d in enumerate(pattern)]
    assert fired[3] == [("drift", "firing"), ("retraining_suggested", "firing")]
    assert fired[8] == [("drift", "resolved"), ("retraining_suggested", "resolved")]
    assert [f for i, f in enumerate(fired) if i not in (3, 8)] == [[]] * 7
    assert [e.signal for e in sink.events] == ["drift", "retraining_suggested"] * 2
    event = sink.events[0]
    assert event.window_start == T0 + 3 * HOUR and event.model == "m"
    assert event.payload()["detail"]["alarms"] == ["input:n_chars:ks"]


def test_open_and_repeated_windows_are_not_judged() -> None:
    manager = AlertManager(AlertPolicy(fire_after=1, clear_after=1))
    assert manager.observe(window(0, True, complete=False)) == []
    assert [e.signal for e in manager.observe(window(0, True))] == ["drift", "retraining_suggested"]
    assert manager.observe(window(0, False)) == []  # already judged


def test_quality_line_is_reference_accuracy_minus_the_drop() -> None:
    manager = AlertManager(
        AlertPolicy(fire_after=2, clear_after=1, max_accuracy_drop=0.1), reference_accuracy=0.9
    )
    assert manager.quality_line == pytest.approx(0.8)
    events = [manager.observe(window(i, False, acc)) for i, acc in enumerate([0.85, 0.7, 0.75, 0.88])]
    assert [(e.signal, e.state) for e in events[2]] == [
        ("quality", "firing"),
        ("retraining_suggested", "firing"),
    ]
    assert events[2][0].detail["quality_line"] == pytest.approx(0.8)
    assert [(e.signal, e.state) for e in events[3]] == [
        ("quality", "resolved"),
        ("retraining_suggested", "resolved"),
    ]
    assert AlertManager().quality_over(window(0, False, 0.1)) is None  # no reference accuracy: not judged


def test_gauges_per_test_on_the_given_registry() -> None:
    registry = CollectorRegistry()
    manager = AlertManager(AlertPolicy(fire_after=1, clear_after=1), gauges=MonitorGauges(registry))
    manager.observe(window(0, True, 0.8))
    text = generate_latest(registry).decode()
    assert 'kiln_drift_statistic{test="input:n_chars:ks"} 0.4' in text
    assert 'kiln_drift_threshold{test="input:n_chars:ks"} 0.2' in text
    assert 'kiln_drift_alarm{test="input:n_chars:ks"} 1.0' in text
    assert "kiln_drift_detected 1.0" in text
    assert "kiln_accuracy_estimated 0.8" in text
    assert 'kiln_alert_firing{signal="drift"} 1.0' in text
    assert "kiln_retraining_suggested 1.0" in text
    manager.observe(window(1, False))
    text = generate_latest(registry).decode()
    assert 'kiln_drift_alarm{test="input:n_chars:ks"} 0.0' in text
    assert "kiln_retraining_suggested 0.0" in text


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server on a free loopback port that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_gets_one_json_post_per_event(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    sink = WebhookSink(url)
    manager = AlertManager(AlertPolicy(fire_after=1, clear_after=1), [sink], model="tiny")
    manager.observe(window(0, True))
    assert sink.sent == 2 and sink.failed == 0
    assert [(r["signal"], r["state"]) for r in received] == [
        ("drift", "firing"),
        ("retraining_suggested", "firing"),
    ]
    assert received[0]["model"] == "tiny" and received[0]["source"] == "kiln"
    assert received[0]["window_start"] == T0.isoformat()


def test_a_dead_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookSink(f"http://127.0.0.1:{port}/hook", timeout_s=2)
    manager = AlertManager(AlertPolicy(fire_after=1, clear_after=1), [sink])
    manager.observe(window(0, True))
    assert sink.failed == 2 and sink.sent == 0
    assert sum("alert webhook" in r.message for r in caplog.records) == 1  # once per failure streak
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://example/hook")
