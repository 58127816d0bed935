"""/dashboard and /v2/monitor/windows on the real app: tiny bundle with a reference profile, SQLite log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from starlette.testclient import TestClient  # noqa: E402

from _fixtures.monitor_profile import embed_bundle_with_profile, reference_texts  # noqa: E402
from kiln.bundle.load import load_bundle  # noqa: E402
from kiln.serve.app import create_app  # noqa: E402
from kiln.serve.auth import http_route_group  # noqa: E402
from kiln.settings import Settings  # noqa: E402

MODEL = "tiny-embed"


@pytest.fixture
def client(tiny_bundle: Path, tmp_path: Path) -> Iterator[TestClient]:
    bundle = embed_bundle_with_profile(tiny_bundle, tmp_path / "bundle")
    settings = Settings(home=tmp_path / "home", threads=1, monitor=True, monitor_sample=1.0, access_log=False)
    with TestClient(create_app(load_bundle(bundle), settings)) as c:
        yield c


def send_traffic(client: TestClient, n: int = 40) -> None:
    texts = reference_texts(n, seed=3)
    for i in range(0, n, 8):
        assert (
            client.post("/v1/embeddings", json={"model": MODEL, "input": texts[i : i + 8]}).status_code == 200
        )
    assert client.post(f"/v2/models/{MODEL}/infer", content=b"{").status_code == 400
    assert client.app.state.request_log.flush(30)  # type: ignore[attr-defined]


def points(page: str, chart: str) -> int:
    match = re.search(rf'id="chart-{chart}"[^>]*data-points="(\d+)"', page)
    assert match, f"no {chart} chart"
    return int(match.group(1))


def test_dashboard_draws_traffic_latency_and_drift(client: TestClient) -> None:
    send_traffic(client)
    response = client.get("/dashboard?window=1h&count=6")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert '<meta http-equiv="refresh" content="30">' in page
    assert "<script" not in page
    for chart in ("traffic", "latency", "errors", "drift"):
        assert points(page, chart) > 0, chart
    stats = client.get("/v2/monitor/stats").json()
    assert f'id="stat-committed">{stats["committed"]}<' in page
    assert 'id="total-requests">6<' in page  # 5 embeddings requests + 1 refused
    assert "embedding:embedding:mmd" in page  # drift tested on the logged projections


def test_windows_json_matches_the_log(client: TestClient) -> None:
    send_traffic(client)
    report: dict[str, Any] = client.get("/v2/monitor/windows", params={"window": "15m", "count": 4}).json()
    assert report["window"] == "15m" and len(report["windows"]) == 4
    assert report["model"] == MODEL and report["reference_profile"] is True
    newest = report["windows"][-1]
    assert newest["requests"] == 6 and newest["rejected"] == 1 and newest["samples"] == 40
    assert newest["drift"] is not None and newest["drift"]["drift"] in (True, False)
    assert {s["signal"] for s in report["signals"]} == {"drift", "quality", "retraining_suggested"}
    assert client.get("/v2/monitor/windows?count=0").status_code == 400
    assert client.get("/v2/monitor/windows?window=soon").status_code == 400


def test_alert_watcher_sets_gauges_once_a_window_completes(client: TestClient) -> None:
    send_traffic(client)
    monitor = client.app.state.monitor  # type: ignore[attr-defined]
    monitor.judge(now=datetime.now(timezone.utc) + timedelta(hours=1))
    metrics = client.get("/metrics").text
    assert 'kiln_drift_statistic{test="embedding:embedding:mmd"}' in metrics
    assert "kiln_monitor_window_samples 40.0" in metrics
    assert 'kiln_alert_firing{signal="retraining_suggested"} 0.0' in metrics


def test_the_watcher_reads_only_windows_completed_since_its_last_poll(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.monitor import windows as windows_module

    send_traffic(client)
    monitor = client.app.state.monitor  # type: ignore[attr-defined]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    monitor.judge(now=later)
    reads: list[int] = []
    real_read = windows_module.WindowReader.read

    def counting_read(self: Any, length: timedelta, count: int = 24, **kw: Any) -> Any:
        reads.append(count)
        return real_read(self, length, count, **kw)

    monkeypatch.setattr(windows_module.WindowReader, "read", counting_read)
    assert monitor.judge(now=later) == 0
    assert reads == []  # nothing completed since: the poll reads nothing
    monitor.judge(now=later + monitor.length)
    assert reads == [1]  # one more window completed: only it is read


def test_dashboard_needs_the_metrics_scope_and_a_log(tiny_bundle: Path, tmp_path: Path) -> None:
    assert http_route_group("/dashboard") == "metrics"
    assert http_route_group("/v2/monitor/windows") == "metrics"
    assert http_route_group("/v1/feedback") == "infer"
    settings = Settings(home=tmp_path, threads=1, monitor=False)
    with TestClient(create_app(load_bundle(tiny_bundle), settings)) as c:
        response = c.get("/dashboard")
        assert response.status_code == 404
        assert "no request log" in response.text
