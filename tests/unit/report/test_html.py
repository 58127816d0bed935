"""The build report page: table, Pareto plots, slices, search trace, recommendation; `kiln report`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kiln.bench.scores import LatencyStats, ParityCheck, Quality, Scores, VariantRecord
from kiln.bundle.hashing import sha256_file
from kiln.bundle.manifest import MANIFEST_NAME, Manifest, SourceRecord
from kiln.cli import main
from kiln.errors import BundleError
from kiln.report.html import REPORT_NAME, pareto_front, recommendation, render_report, write_report


def _lat(p50: float) -> dict[str, LatencyStats]:
    return {
        "batch1": LatencyStats(
            batch_size=1, runs=50, p50_ms=p50, p95_ms=p50 * 1.2, p99_ms=p50 * 1.4, mean_ms=p50,
            throughput_per_s=1000 / p50,
        ),
        "batch32": LatencyStats(
            batch_size=32, runs=10, p50_ms=p50 * 20, p95_ms=p50 * 22, p99_ms=p50 * 24, mean_ms=p50 * 20,
            throughput_per_s=32_000 / (p50 * 20),
        ),
    }  # fmt: skip


def _q(value: float, drop: float, slices: dict[str, float] | None = None) -> Quality:
    return Quality(
        metric="accuracy", value=value, drop=drop, drop_ci95=(drop - 0.01, drop + 0.01), extra=slices or {}
    )


def _slices(short: float, long: float) -> dict[str, float]:
    return {
        "accuracy[length=short]": short, "n[length=short]": 60.0,
        "accuracy[length=long]": long, "n[length=long]": 40.0, "top1_agreement": 0.99,
    }  # fmt: skip


def _v(
    name: str, recipe: list[dict[str, object]], q: Quality, p50: float, mb: int, **kw: object
) -> VariantRecord:
    scores = Scores(quality=q, latency=_lat(p50), file_bytes=mb * 1_000_000)
    fmt = "pytorch" if recipe[0]["kind"] == "reference" else "onnx"
    return VariantRecord.model_validate(dict(name=name, format=fmt, recipe=recipe, scores=scores, **kw))


def sample_manifest(**changes: object) -> Manifest:
    parity = [ParityCheck(batch_size=1, seq_len=16, max_abs_diff=1e-5, min_cosine=0.99999)]
    export = {"kind": "export_onnx", "opset": 17}
    variants = [
        _v("pytorch-fp32", [{"kind": "reference"}], _q(0.90, 0.0, _slices(0.92, 0.87)), 12.0, 90),
        _v("onnx-fp32", [export], _q(0.90, 0.0, _slices(0.92, 0.87)), 8.0, 90, parity=parity),
        _v(
            "onnx-int8-dynamic", [export, {"kind": "quantize_dynamic", "weight_type": "int8"}],
            _q(0.895, 0.005, _slices(0.91, 0.87)), 4.0, 23, parity=parity,
        ),
        _v(
            "onnx-int4-weights", [export, {"kind": "quantize_weights", "bits": 4}],
            _q(0.84, 0.06, _slices(0.85, 0.82)), 3.5, 12,
            status="rejected", reason="quality drop 0.0600 is over the budget 0.01",
        ),
        VariantRecord(
            name="onnx-pruned", format="onnx", recipe=[{"kind": "prune", "amount": 0.5}], status="failed",
            reason="export raised: unsupported operator",
        ),
    ]  # fmt: skip
    data: dict[str, object] = dict(
        kiln_version="0.0.0", created_at="2024-05-01T00:00:00+00:00", model_name="tiny-clf", task="classify",
        task_config={}, license="apache-2.0",
        source=SourceRecord(kind="local", spec="./tiny", path="/tmp/tiny"),
        variants=variants, chosen="onnx-int8-dynamic",
        chosen_reason="fastest variant within the quality budget", artifact="model.onnx",
    )  # fmt: skip
    data.update(changes)
    return Manifest.model_validate(data)


def _svg(page: str, chart: str) -> str:
    m = re.search(rf'<svg[^>]*id="chart-{chart}".*?</svg>', page, re.S)
    assert m, chart
    return m.group(0)


def test_table_has_a_row_per_variant_and_marks_the_chosen() -> None:
    page = render_report(sample_manifest())
    table = re.search(r"<table id='variants'>.*?</table>", page, re.S)
    assert table
    rows = re.findall(r"<tr data-variant='([^']+)' class='([^']+)'>", table.group(0))
    assert rows == [
        ("pytorch-fp32", "ok"),
        ("onnx-fp32", "ok"),
        ("onnx-int8-dynamic", "chosen"),
        ("onnx-int4-weights", "rejected"),
        ("onnx-pruned", "failed"),
    ]
    assert "4.00/4.80/5.60" in table.group(0)  # batch-1 p50/p95/p99 of the chosen one


def test_pareto_plots_have_one_labelled_point_per_measured_variant() -> None:
    page = render_report(sample_manifest())
    for chart in ("pareto-latency", "pareto-size"):
        svg = _svg(page, chart)
        labels = re.findall(r'<circle class="point[^"]*" data-label="([^"]+)"', svg)
        assert sorted(labels) == sorted(
            ["pytorch-fp32", "onnx-fp32", "onnx-int8-dynamic", "onnx-int4-weights"]
        )
        assert 'data-points="4"' in svg
        assert len(re.findall(r'<text class="label"', svg)) == 4
        assert len(re.findall(r'class="point[^"]*\bchosen\b', svg)) == 1
        assert 'data-label="onnx-int8-dynamic"' in re.search(
            r'<circle class="[^"]*chosen[^"]*"[^>]*>', svg
        ).group(0)  # type: ignore[union-attr]
    lat = _svg(page, "pareto-latency")
    pareto = set(re.findall(r'<circle class="point[^"]*\bpareto\b[^"]*" data-label="([^"]+)"', lat))
    # int4 is faster still, but rejected: not on the front
    assert pareto == {"onnx-int8-dynamic", "onnx-fp32"}  # the reference is as good as onnx-fp32, slower
    assert 'class="front"' in lat


def test_pareto_front() -> None:
    pts = [("a", 1.0, 0.9), ("b", 2.0, 0.95), ("c", 3.0, 0.9), ("d", 1.0, 0.9)]
    assert pareto_front(pts) == {"a", "b", "d"}
    assert pareto_front([]) == set()


def test_slices_are_drawn_and_tabled() -> None:
    page = render_report(sample_manifest())
    svg = _svg(page, "slices")
    assert 'data-points="8"' in svg  # 2 slices x 4 variants with slice accuracy
    assert "<tr data-slice='length=short'><td>length=short</td><td>60</td>" in page


def test_trace_lists_rejected_and_failed_variants_with_their_reason() -> None:
    page = render_report(sample_manifest())
    trace = re.search(r"<table id='trace'>.*?</table>", page, re.S)
    assert trace
    for name, decision, reason in (
        ("onnx-int4-weights", "rejected", "quality drop 0.0600 is over the budget 0.01"),
        ("onnx-pruned", "failed", "export raised: unsupported operator"),
        ("onnx-int8-dynamic", "chosen", "fastest variant within the quality budget"),
    ):
        row = re.search(rf"<tr data-variant='{name}'.*?</tr>", trace.group(0), re.S)
        assert row, name
        assert f"data-field='decision'>{decision}</td>" in row.group(0)
        assert reason in row.group(0)
    assert "quantize_dynamic(weight_type=int8)" in trace.group(0)
    assert "id='no-search-trace'" in page


def test_search_trace_field_is_rendered_when_present() -> None:
    m = sample_manifest()
    object.__setattr__(
        m, "search_trace", [{"step": 1, "tried": "int4", "kept": False, "why": "drop too big"}]
    )
    page = render_report(m)
    table = re.search(r"<table id='search-trace'>.*?</table>", page, re.S)
    assert table and "drop too big" in table.group(0) and "<th class=text>tried</th>" in table.group(0)


def test_recommendation_names_the_choice_and_its_measured_numbers() -> None:
    text = recommendation(sample_manifest())
    assert text.startswith("Serve onnx-int8-dynamic")
    assert "3.00x faster than the PyTorch fp32 reference (12.00 ms)" in text
    assert "2.00x faster than onnx-fp32 (8.00 ms)" in text
    assert "3.91x smaller than the reference's 90.0 MB" in text
    assert "drop of +0.0050" in text and "[-0.0050, +0.0150]" in text
    assert "onnx-int4-weights rejected (quality drop 0.0600 is over the budget 0.01)" in text
    assert "onnx-pruned failed" in text
    page = render_report(sample_manifest())
    assert "id='recommendation'>Serve onnx-int8-dynamic" in page


def test_renders_without_quality_or_latency_for_some_variants() -> None:
    m = sample_manifest()
    m.variants[0].scores = Scores()  # reference: nothing measured
    m.variants[2].scores.latency = {}  # chosen: no latency
    page = render_report(m)
    assert 'data-points="2"' in _svg(page, "pareto-latency")  # onnx-fp32 and int4 remain
    assert "Not plotted (not measured): pytorch-fp32, onnx-int8-dynamic, onnx-pruned" in page
    assert "batch-1 latency was not measured" in recommendation(m)
    bare = sample_manifest(
        variants=[VariantRecord(name="onnx-fp32", format="onnx", recipe=[])], chosen="onnx-fp32"
    )
    page = render_report(bare)
    assert "nothing measured to plot" in page and "id='no-slices'" in page


def test_page_is_self_contained_and_escapes_names() -> None:
    m = sample_manifest(model_name="<script>x</script>")
    page = render_report(m)
    assert "<script" not in page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert render_report(m) == page  # deterministic: refreshing a report gives the same bytes


def _bundle(tmp_path: Path, manifest: Manifest) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return root


def test_write_report_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _bundle(tmp_path, sample_manifest())
    path = write_report(root)
    assert path == root / REPORT_NAME and path.read_text(encoding="utf-8") == render_report(sample_manifest())
    out = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and str(out) in printed
    assert "onnx-int8-dynamic" in printed and "onnx-int4-weights" in printed  # the terminal table


def test_write_report_keeps_a_hashed_report_consistent(tmp_path: Path) -> None:
    m = sample_manifest()
    root = _bundle(tmp_path, m)
    report = write_report(root)
    m.files[REPORT_NAME] = sha256_file(report)
    (root / MANIFEST_NAME).write_text(m.model_dump_json(), encoding="utf-8")
    assert write_report(root) == report and sha256_file(report) == m.files[REPORT_NAME]  # same bytes
    report.write_text("tampered", encoding="utf-8")
    m.model_name = "renamed"  # the new page would no longer match the recorded hash
    (root / MANIFEST_NAME).write_text(m.model_dump_json(), encoding="utf-8")
    with pytest.raises(BundleError, match="--out"):
        write_report(root)
    assert json.loads((root / MANIFEST_NAME).read_text())["files"][REPORT_NAME]
