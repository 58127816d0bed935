"""Budget parsing, the ranking-screen verdict and the search trace."""

from __future__ import annotations

import pytest

from kiln.bench.scores import Quality
from kiln.errors import BuildError
from kiln.optimize.search import (
    Budget,
    SearchTrace,
    check_target,
    parse_quality_drop,
    recipe_summary,
    screen_failure,
)


def test_absolute_and_relative_quality_drop() -> None:
    assert parse_quality_drop("0.01") == (0.01, False)
    assert parse_quality_drop(0.02) == (0.02, False)
    value, relative = parse_quality_drop("2%")
    assert relative and value == pytest.approx(0.02)
    budget = Budget(max_quality_drop=value, quality_drop_relative=relative)
    assert budget.absolute_drop(0.8) == pytest.approx(0.016)
    assert "2.00% of the reference" in budget.describe_drop(0.8)
    assert budget.as_manifest(0.8)["max_quality_drop"] == pytest.approx(0.016)
    assert budget.as_manifest(0.8)["max_quality_drop_relative"] == pytest.approx(0.02)


@pytest.mark.parametrize("text", ["two", "150%", "-0.1", "1.5"])
def test_bad_quality_drop_says_what_to_give(text: str) -> None:
    with pytest.raises(BuildError, match="max-quality-drop"):
        parse_quality_drop(text)


def test_cuda_target_without_provider_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    check_target("cpu")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BuildError, match="no GPU backend is available here"):
        check_target("cuda")


def _q(drop: float, low: float, high: float) -> Quality:
    return Quality(metric="probe_accuracy", value=0.8 - drop, drop=drop, drop_ci95=(low, high))


def test_screen_rejects_only_clearly_bad() -> None:
    assert screen_failure(_q(0.005, -0.01, 0.02), 0.01) is None
    assert screen_failure(_q(0.02, -0.005, 0.045), 0.01) is None  # over, but within noise
    why = screen_failure(_q(0.08, 0.05, 0.11), 0.01)
    assert why is not None and "ranking screen" in why and "0.01" in why


def test_trace_records_stage_outcome_and_seconds() -> None:
    trace = SearchTrace()
    steps = [
        {"kind": "export-onnx"},
        {"kind": "int8-static", "per_channel": True, "nodes_to_exclude": ["a", "b"]},
    ]
    summary = recipe_summary(steps)
    assert summary == "export-onnx → int8-static(per_channel=True, 2 nodes kept float)"
    trace.add("onnx-int8-static", summary, "make", "kept")
    with trace.timed("onnx-int8-static"):
        trace.update("onnx-int8-static", stage="ranking screen", outcome="rejected", reason="too lossy")
    trace.add(
        "onnx-int4", "export-onnx → int4", "not started", "skipped", "not tried: --max-trials 1 reached"
    )
    rows = trace.as_manifest()
    assert [r["candidate"] for r in rows] == ["onnx-int8-static", "onnx-int4"]
    assert rows[0]["stage"] == "ranking screen" and rows[0]["outcome"] == "rejected"
    assert rows[0]["reason"] == "too lossy" and rows[0]["seconds"] >= 0
    assert rows[1]["outcome"] == "skipped" and "max-trials" in rows[1]["reason"]
    assert set(rows[0]) == {"candidate", "recipe", "stage", "outcome", "reason", "seconds"}


def test_cli_parses_the_budget_flags() -> None:
    from kiln.cli import build_parser

    args = build_parser().parse_args(
        [
            "build",
            "--max-quality-drop",
            "2%",
            "--max-size-mb",
            "30",
            "--max-latency-ms",
            "5",
            "--max-memory-mb",
            "400",
            "--max-trials",
            "2",
            "--time-budget",
            "60",
            "--target",
            "cpu",
        ]
    )
    assert parse_quality_drop(args.max_quality_drop) == (pytest.approx(0.02), True)
    assert (args.max_size_mb, args.max_latency_ms, args.max_memory_mb) == (30, 5, 400)
    assert (args.max_trials, args.time_budget, args.target) == (2, 60, "cpu")
