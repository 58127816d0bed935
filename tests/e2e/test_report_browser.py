"""The build report in a real browser: `kiln report` on a bundle manifest, then the page in headless Chromium
(Debian's, via Playwright). Skips when either is missing, except under CI=true, where it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kiln.bench.scores import LatencyStats, Quality, Scores, VariantRecord
from kiln.bundle.manifest import MANIFEST_NAME, Manifest, SourceRecord
from kiln.cli import main

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("KILN_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser test cannot run: {reason}")
    pytest.skip(reason)


def _variant(name: str, kind: str, acc: float, p50: float | None, mb: int, **kw: object) -> VariantRecord:
    lat = {}
    if p50 is not None:
        lat["batch1"] = LatencyStats(
            batch_size=1, runs=20, p50_ms=p50, p95_ms=p50 * 1.1, p99_ms=p50 * 1.3, mean_ms=p50,
            throughput_per_s=1000 / p50,
        )  # fmt: skip
    extra = {"accuracy[length=short]": acc + 0.01, "accuracy[length=long]": acc - 0.02}
    drop = 0.9 - acc
    quality = Quality(
        metric="accuracy", value=acc, drop=drop, drop_ci95=(drop - 0.01, drop + 0.01), extra=extra
    )
    scores = Scores(quality=quality, latency=lat, file_bytes=mb * 1_000_000, peak_rss_mb=300.0)
    fmt = "pytorch" if kind == "reference" else "onnx"
    return VariantRecord.model_validate(
        dict(name=name, format=fmt, recipe=[{"kind": kind}], scores=scores, **kw)
    )


def _bundle(root: Path) -> Path:
    manifest = Manifest(
        kiln_version="0.0.0", created_at="2024-05-01T00:00:00+00:00", model_name="tiny-clf", task="classify",
        task_config={}, license="apache-2.0", source=SourceRecord(kind="local", spec="./tiny", path="/tmp/t"),
        variants=[
            _variant("pytorch-fp32", "reference", 0.90, 12.0, 90),
            _variant("onnx-fp32", "export_onnx", 0.90, 8.0, 90),
            _variant("onnx-int8", "quantize_dynamic", 0.895, 4.0, 23),
            _variant("onnx-int4", "quantize_weights", 0.80, None, 12, status="rejected",
                     reason="quality drop 0.1000 is over the budget 0.01"),
        ],
        chosen="onnx-int8", chosen_reason="fastest variant within the quality budget", artifact="model.onnx",
    )  # fmt: skip
    root.mkdir()
    (root / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return root


def test_report_renders_charts_table_and_trace(tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (.venv/bin/pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    bundle = _bundle(tmp_path / "bundle")
    assert main(["report", str(bundle)]) == 0
    page_path = bundle / "report.html"
    assert page_path.is_file()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            assert page.title() == "kiln report · tiny-clf"
            # int4 has no latency: 3 points on the latency plot, 4 on the size plot
            for chart, n in (("pareto-latency", 3), ("pareto-size", 4), ("slices", 8), ("latency", 9)):
                svg = page.locator(f"#chart-{chart}")
                assert svg.is_visible(), chart
                assert svg.locator("circle.point, rect.bar").count() == n, chart
                box = svg.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 30, chart
            chosen = page.locator("#chart-pareto-latency circle.point.chosen")
            assert chosen.count() == 1 and chosen.get_attribute("data-label") == "onnx-int8"
            labels = page.locator("#chart-pareto-size text.label").all_text_contents()
            assert sorted(labels) == ["onnx-fp32", "onnx-int4", "onnx-int8", "pytorch-fp32"]
            rows = page.locator("#variants tbody tr")
            assert rows.count() == 4
            assert page.locator("#variants tr.chosen td").first.inner_text() == "★ onnx-int8"
            rejected = page.locator("#trace tr[data-variant='onnx-int4']")
            assert "over the budget" in rejected.locator("td[data-field=reason]").inner_text()
            text = page.locator("#recommendation").inner_text()
            assert (
                text.startswith("Serve onnx-int8") and "3.00x faster than the PyTorch fp32 reference" in text
            )
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert (tmp_path / "report.png").stat().st_size > 10_000
            assert requested == [page_path.as_uri()]  # nothing fetched from elsewhere
        finally:
            browser.close()
