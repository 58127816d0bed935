"""Latency measurement with cheap sleeping callables (no absolute timing asserts)."""

from __future__ import annotations

import time

import pytest

from kiln.bench.latency import interleaved_latency, measure_latency, stats_from_samples
from kiln.bench.scores import LatencyStats


class Counter:
    def __init__(self, sleep_s: float = 0.0) -> None:
        self.calls = 0
        self.sleep_s = sleep_s

    def __call__(self) -> None:
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)


def _ordered(stats: LatencyStats) -> bool:
    return 0.0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms


def test_measure_latency_runs_at_least_min_runs_after_warmup() -> None:
    fn = Counter(0.001)
    stats = measure_latency(fn, batch_size=4, warmup=3, min_runs=20, min_time_s=0.0, max_time_s=30.0)
    assert stats.runs >= 20
    assert fn.calls == stats.runs + 3
    assert stats.batch_size == 4
    assert _ordered(stats)
    assert stats.mean_ms > 0
    assert stats.throughput_per_s == pytest.approx(4 / (stats.mean_ms / 1000.0))


def test_measure_latency_keeps_running_until_min_time() -> None:
    fn = Counter()
    stats = measure_latency(fn, batch_size=1, warmup=0, min_runs=1, min_time_s=0.05, max_runs=10**7)
    assert stats.runs > 1  # a no-op takes far less than 50 ms, so more calls were needed
    assert fn.calls == stats.runs


def test_measure_latency_stops_at_max_runs() -> None:
    fn = Counter()
    stats = measure_latency(fn, batch_size=1, warmup=0, min_runs=5, max_runs=7, min_time_s=10.0)
    assert stats.runs == 7


def test_measure_latency_stops_at_max_time_even_below_min_runs() -> None:
    fn = Counter(0.01)
    stats = measure_latency(
        fn, batch_size=1, warmup=0, min_runs=10**6, max_runs=10**6, min_time_s=0.0, max_time_s=0.05
    )
    assert 1 <= stats.runs < 10**6


def test_measure_latency_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        measure_latency(Counter(), batch_size=0)
    with pytest.raises(ValueError):
        measure_latency(Counter(), batch_size=1, min_runs=10, max_runs=5)


def test_interleaved_latency_alternates_and_ranks_variants() -> None:
    order: list[str] = []

    def make(name: str, sleep_s: float):
        def fn() -> None:
            order.append(name)
            time.sleep(sleep_s)

        return fn

    fns = {"fast": make("fast", 0.0005), "slow": make("slow", 0.004)}
    result = interleaved_latency(fns, batch_size=2, rounds=15, warmup=1, min_time_s=0.0)
    assert set(result) == {"fast", "slow"}
    assert result["fast"].runs == result["slow"].runs >= 15
    assert all(_ordered(s) for s in result.values())
    assert result["fast"].p50_ms < result["slow"].p50_ms  # an 8x gap survives any noise
    # round-robin: each round calls every variant once, and who goes first rotates
    rounds = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert all(sorted(r) == ["fast", "slow"] for r in rounds)
    timed_firsts = [r[0] for r in rounds[1:]]  # after the warm-up round
    assert timed_firsts[:4] == ["fast", "slow", "fast", "slow"]
    assert order.count("fast") == order.count("slow") == result["fast"].runs + 1


def test_interleaved_latency_of_nothing_is_empty() -> None:
    assert interleaved_latency({}, batch_size=1) == {}


def test_stats_from_samples() -> None:
    stats = stats_from_samples([0.01, 0.02, 0.03], batch_size=8)
    assert stats.runs == 3
    assert stats.p50_ms == pytest.approx(20.0)
    assert stats.mean_ms == pytest.approx(20.0)
    assert stats.throughput_per_s == pytest.approx(400.0)
