"""The dashboard in a real browser: `kiln serve` on the tiny bundle, traffic, then /dashboard in headless
Chromium (Debian's, via Playwright). Skips when either is missing, except under CI=true, where it fails."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from _fixtures.monitor_profile import embed_bundle_with_profile, reference_texts
from _fixtures.server_process import running_server

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("KILN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser test cannot run: {reason}")
    pytest.skip(reason)


def test_dashboard_renders_charts_with_the_servers_numbers(tiny_bundle: Path, tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (.venv/bin/pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    bundle = embed_bundle_with_profile(tiny_bundle, tmp_path / "bundle")
    env = {"KILN_MONITOR_SAMPLE": "1", "KILN_ACCESS_LOG": "0"}
    with running_server(bundle, tmp_path, extra_env=env) as server:
        texts = reference_texts(40, seed=4)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(0, len(texts), 5):
                body = {"model": "tiny-embed", "input": texts[i : i + 5]}
                assert http.post("/v1/embeddings", json=body).status_code == 200
            for _ in range(300):  # the log writer commits within a second; no timing is asserted
                stats = http.get("/v2/monitor/stats").json()
                if stats["committed"] == 8:
                    break
                time.sleep(0.1)
            assert stats["committed"] == 8, stats
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                failed: list[str] = []
                page.on("requestfailed", lambda r: failed.append(r.url))
                response = page.goto(f"{server.url}/dashboard?refresh=0", wait_until="load")
                assert response is not None and response.status == 200
                assert page.title().startswith("kiln monitor")
                for chart in ("traffic", "latency", "errors", "drift"):
                    svg = page.locator(f"#chart-{chart}")
                    assert svg.is_visible(), chart
                    marks = svg.locator("rect.bar, circle.point").count()
                    assert marks > 0, chart
                    box = svg.bounding_box()
                    assert box is not None and box["width"] > 100 and box["height"] > 30, chart
                assert page.locator("#chart-traffic path.line, #chart-latency path.line").count() > 0
                assert page.locator("#stat-committed").inner_text() == str(stats["committed"])
                assert page.locator("#total-requests").inner_text() == "8"
                rows = page.locator("#windows tbody tr")
                assert rows.count() == 24
                assert rows.first.locator("td[data-field=requests]").inner_text() == "8"
                assert failed == []  # nothing fetched from elsewhere
            finally:
                browser.close()
