from kiln.bench.scores import LatencyStats, Quality, Scores, VariantRecord
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
