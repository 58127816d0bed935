"""The monitor report: terminal tables, the self-contained HTML page, and where `kiln monitor` reads from."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from rich.console import Console  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from kiln.cli import main  # noqa: E402
from kiln.errors import KilnError  # noqa: E402
from kiln.monitor.cbpe import AccuracyEstimate  # noqa: E402
from kiln.monitor.drift import DriftReport, DriftTest  # noqa: E402
from kiln.monitor.report import MonitorReport, SignalView, load_report, render_html, render_terminal  # noqa: E402
from kiln.monitor.store import RequestRecord, make_engine, migrate, sqlite_url  # noqa: E402
from kiln.monitor.windows import LatencySummary, WindowStats  # noqa: E402

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def sample_report() -> MonitorReport:
    windows = []
    for i in range(4):
        drift = None
        if i >= 2:
            test = DriftTest(
                group="input", name="n_chars", method="ks", n=40, statistic=0.1 + 0.2 * (i - 2),
                threshold=0.2,
                p_value=0.5 if i == 2 else 1e-6, p_adjusted=1.0 if i == 2 else 1e-5, alarm=i == 3,
            )  # fmt: skip
            drift = DriftReport(
                n=40, alpha=0.01, correction="holm", drift=i == 3, alarms=[test.id] if i == 3 else [],
                tests=[test],
                accuracy_estimate=AccuracyEstimate(kind="estimated", value=0.8, low=0.7, high=0.9, n=40),
                accuracy_realised=AccuracyEstimate(kind="realised", value=0.75, low=0.6, high=0.85, n=12)
                if i == 3 else None,
            )  # fmt: skip
        windows.append(
            WindowStats(
                start=T0 + i * HOUR,
                end=T0 + (i + 1) * HOUR,
                complete=i < 3,
                requests=10 * (i + 1),
                errors=i,
                rejected=1,
                latency_ms=LatencySummary(p50=5.0 + i, p95=9.0 + i, p99=12.0 + i, mean=6.0),
                samples=40 if i >= 2 else 3,
                drift=drift,
                drift_note=None if drift else "3 sampled inputs; drift is tested from 20",
            )  # fmt: skip
        )
    return MonitorReport(
        source="sqlite:////tmp/log.db", model="tiny", task="classify", window="1h",
        generated_at=T0 + 4 * HOUR,
        reference_profile=True, reference_accuracy=0.82, quality_line=0.77,
        stats={"enabled": True, "committed": 100, "dropped": {"queue_full": 2}, "queued": 0},
        windows=windows, signals=[SignalView(signal="drift", firing=True, since=T0 + 4 * HOUR)],
    )  # fmt: skip


def test_html_is_self_contained_and_draws_every_chart() -> None:
    page = render_html(sample_report(), refresh_s=30)
    assert '<meta http-equiv="refresh" content="30">' in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for chart in ("traffic", "latency", "errors", "drift", "quality"):
        match = re.search(rf'id="chart-{chart}"[^>]*data-points="(\d+)"', page)
        assert match, chart
        assert int(match.group(1)) > 0, chart
    assert page.count('<rect class="bar"') >= 4 + 8 + 2  # traffic, errors (two series), drift
    assert 'id="total-requests">100<' in page and 'id="total-errors">6<' in page
    assert 'id="stat-committed">100<' in page and 'id="stat-dropped">2<' in page
    assert 'id="drift-verdict" >' not in page and ">DRIFT<" in page
    assert 'id="signal-drift">firing<' in page
    assert "input:n_chars:ks" in page  # the newest tested window's tests
    assert render_html(sample_report()).count("http-equiv") == 0  # no refresh unless asked


def test_terminal_tables_show_the_numbers() -> None:
    console = Console(record=True, width=200)
    render_terminal(sample_report(), console)
    text = console.export_text()
    assert "2024-05-01 03:00 (open)" in text
    assert "DRIFT" in text and "input:n_chars:ks" in text
    assert "0.800 [0.700, 0.900]" in text and "0.750" in text
    assert "drift is tested from 20" in text
    assert "firing" in text


def make_log(path: Path) -> str:
    url = sqlite_url(path)
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(RequestRecord),
            [
                {"id": uuid.uuid4(), "ts": T0 + timedelta(minutes=i), "model": "tiny", "version": "1",
                 "route": "/v1/embeddings", "status": 500 if i == 0 else 200, "latency_ms": 3.0 + i,
                 "key_id": None, "n_inputs": 1, "n_tokens": 3, "sampled": False, "request_id": f"r{i}"}
                for i in range(5)
            ],
        )  # fmt: skip
    engine.dispose()
    return url


def test_load_report_from_a_database_file_or_url(tmp_path: Path) -> None:
    url = make_log(tmp_path / "log.db")
    for target in (str(tmp_path / "log.db"), url):
        report = load_report(target, "1h", 3)
        assert report.windows[-1].start == T0  # an old log: read where its data is
        assert report.total_requests == 5 and report.total_errors == 1
        assert not report.reference_profile


def test_load_report_explains_a_bad_target(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="neither a server URL"):
        load_report(str(tmp_path / "missing"))
    with pytest.raises(KilnError, match="window length"):
        load_report(str(tmp_path), window="soon")
    with pytest.raises(KilnError, match="cannot reach"):
        load_report("http://127.0.0.1:9", count=2)


def test_kiln_monitor_prints_and_writes_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log.db")
    out = tmp_path / "report.html"
    assert (
        main(["monitor", str(tmp_path / "log.db"), "--window", "30m", "--count", "2", "--html", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "2024-05-01 00:00" in printed and "requests" in printed
    assert 'id="chart-traffic"' in out.read_text()
    assert main(["monitor", str(tmp_path / "nope.db")]) == 2
