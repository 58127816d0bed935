import pytest

from kiln.bench.scores import LatencyStats, Quality, Scores, VariantRecord
from kiln.errors import BuildError
from kiln.optimize.search import Budget
from kiln.optimize.select import BASELINE, choose


def _v(
    name: str, p50: float, drop: float | None, size: int, fmt: str = "onnx", status: str = "ok"
) -> VariantRecord:
    q = (
        None
        if drop is None
        else Quality(
            metric="probe_accuracy", value=0.8 - drop, drop=drop, drop_ci95=(drop - 0.01, drop + 0.01)
        )
    )
    lat = LatencyStats(
        batch_size=1,
        runs=50,
        p50_ms=p50,
        p95_ms=p50 * 1.2,
        p99_ms=p50 * 1.5,
        mean_ms=p50,
        throughput_per_s=1000 / p50,
    )
    return VariantRecord(
        name=name,
        format=fmt,
        recipe=[],
        status=status,  # type: ignore[arg-type]
        scores=Scores(quality=q, latency={"batch1": lat}, file_bytes=size),
    )


def test_fastest_within_budget_wins() -> None:
    vs = [
        _v("pytorch-fp32", 15, 0.0, 90, "pytorch"),
        _v(BASELINE, 5, 0.0, 90),
        _v("int8", 3, 0.005, 23),
        _v("int4", 2, 0.05, 15),
    ]
    c = choose(vs, 0.01, "pytorch-fp32")
    assert c.name == "int8"
    assert "5.00x faster than the PyTorch" in c.reason


def test_none_within_budget_ships_baseline() -> None:
    vs = [_v("pytorch-fp32", 15, 0.0, 90, "pytorch"), _v(BASELINE, 5, 0.02, 90), _v("int8", 3, 0.05, 23)]
    c = choose(vs, 0.01, "pytorch-fp32")
    assert c.name == BASELINE
    assert "no optimised variant" in c.reason


def test_rejected_variant_is_never_chosen() -> None:
    vs = [_v(BASELINE, 5, 0.0, 90), _v("int8", 1, 0.0, 23, status="rejected")]
    assert choose(vs, 0.01, "pytorch-fp32").name == BASELINE


def test_barely_faster_and_not_smaller_is_not_chosen() -> None:
    vs = [_v(BASELINE, 5, 0.0, 90), _v("same", 4.8, 0.0, 90)]
    c = choose(vs, 0.01, "pytorch-fp32")
    assert c.name == BASELINE and "only 1.04x" in c.reason


def test_pytorch_reference_is_not_servable() -> None:
    vs = [_v("pytorch-fp32", 1, 0.0, 90, "pytorch"), _v(BASELINE, 5, 0.0, 90)]
    assert choose(vs, 0.01, "pytorch-fp32").name == BASELINE


# -- hard bounds (the search's budget) ---------------------------------------------------------


def _budget(**kw: float) -> Budget:
    return Budget(max_quality_drop=0.01, **kw)  # type: ignore[arg-type]


def _pool() -> list[VariantRecord]:
    return [
        _v("pytorch-fp32", 15, 0.0, 90_000_000, "pytorch"),
        _v(BASELINE, 5, 0.0, 90_000_000),
        _v("int8", 3, 0.005, 23_000_000),
        _v("int8-static", 2, 0.004, 60_000_000),
    ]


def test_size_bound_excludes_the_faster_but_larger_variant() -> None:
    c = choose(_pool(), 0.01, "pytorch-fp32", _budget(max_size_mb=30))
    assert c.name == "int8"
    assert "int8-static (file 60.0 MB > --max-size-mb 30)" in c.reason
    assert "onnx-fp32 (file 90.0 MB" in c.reason


def test_without_bounds_the_fastest_passing_wins() -> None:
    assert choose(_pool(), 0.01, "pytorch-fp32", _budget()).name == "int8-static"


def test_latency_bound_and_memory_bound_are_explained() -> None:
    vs = _pool()
    vs[2].scores.peak_rss_mb = 100
    vs[3].scores.peak_rss_mb = 300
    vs[1].scores.peak_rss_mb = 400
    c = choose(vs, 0.01, "pytorch-fp32", _budget(max_memory_mb=200))
    assert c.name == "int8" and "peak memory 300 MB > --max-memory-mb 200" in c.reason
    c = choose(_pool(), 0.01, "pytorch-fp32", _budget(max_latency_ms=4))
    assert c.name == "int8-static" and "onnx-fp32 (batch-1 p50 5.00 ms > --max-latency-ms 4)" in c.reason


def test_unmeasured_memory_does_not_pass_a_memory_bound() -> None:
    with pytest.raises(BuildError, match="peak memory not measured"):
        choose(_pool(), 0.01, "pytorch-fp32", _budget(max_memory_mb=500))


def test_nothing_fits_names_every_bound() -> None:
    with pytest.raises(BuildError, match="no variant fits the budget") as err:
        choose(_pool(), 0.01, "pytorch-fp32", _budget(max_size_mb=10))
    assert "int8 (file 23.0 MB > --max-size-mb 10)" in str(err.value)


def test_speed_rule_still_holds_when_the_baseline_fits() -> None:
    vs = [_v("pytorch-fp32", 15, 0.0, 90, "pytorch"), _v(BASELINE, 5, 0.0, 90), _v("slow-int8", 4.8, 0.0, 95)]
    assert choose(vs, 0.01, "pytorch-fp32", _budget(max_size_mb=1)).name == BASELINE


def test_baseline_excluded_lifts_the_speed_rule() -> None:
    """Only 1.02x faster and larger, but onnx-fp32 breaks the latency bound: no longer the fallback."""
    vs = [
        _v("pytorch-fp32", 15, 0.0, 90_000_000, "pytorch"),
        _v(BASELINE, 5, 0.0, 90_000_000),
        _v("int4", 4.9, 0.0, 95_000_000),
    ]
    assert choose(vs, 0.01, "pytorch-fp32", _budget()).name == BASELINE
    c = choose(vs, 0.01, "pytorch-fp32", _budget(max_latency_ms=4.95))
    assert c.name == "int4" and "onnx-fp32 (batch-1 p50 5.00 ms > --max-latency-ms 4.95)" in c.reason


def test_a_timing_tie_goes_to_the_smaller_drop_then_the_smaller_file() -> None:
    vs = [
        _v("pytorch-fp32", 15, 0.0, 90, "pytorch"),
        _v(BASELINE, 9, 0.0, 90),
        _v("distilled-fp32", 3.49, 0.0091, 70),
        _v("int8-emb4", 3.66, 0.0013, 18),  # 4.9% slower: inside the tie
        _v("int8", 3.70, 0.0013, 23),  # same drop, larger file
        _v("int4", 3.9, 0.0, 15),  # 11.7% slower: outside the tie, however good
    ]
    c = choose(vs, 0.01, "pytorch-fp32")
    assert c.name == "int8-emb4"
    assert "distilled-fp32 measured 4.9% faster, within the 10% timing tie" in c.reason
    clear = [*vs[:2], _v("distilled-fp32", 3.0, 0.0091, 70), vs[3]]  # 22% faster: a real win
    assert choose(clear, 0.01, "pytorch-fp32").name == "distilled-fp32"
