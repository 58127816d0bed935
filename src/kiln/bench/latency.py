"""Wall-clock latency of a callable, alone or interleaved with others for a fair comparison.

Timings use :func:`time.perf_counter` around each call, after warm-up calls that are not recorded.
Runs continue until both a minimum count and a minimum time are reached, so the tail percentiles rest on
enough samples, and stop at a maximum count or time so a slow variant cannot stall a build.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from kiln.bench.scores import LatencyStats
from kiln.bench.stats import percentiles_ms


def stats_from_samples(samples_s: Sequence[float], batch_size: int) -> LatencyStats:
    """Summarise per-call timings (seconds) of calls that each processed ``batch_size`` items."""
    p50, p95, p99, mean = percentiles_ms(samples_s)
    return LatencyStats(
        batch_size=batch_size,
        runs=len(samples_s),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        mean_ms=mean,
        throughput_per_s=batch_size / (mean / 1000.0) if mean > 0 else float("inf"),
    )


def _check(batch_size: int, min_runs: int, max_runs: int, min_time_s: float, max_time_s: float) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got min_runs={min_runs}, max_runs={max_runs}")
    if min_time_s < 0 or max_time_s < min_time_s:
        raise ValueError(f"need 0 <= min_time_s <= max_time_s, got {min_time_s}, {max_time_s}")


def measure_latency(
    fn: Callable[[], object],
    batch_size: int,
    warmup: int = 5,
    min_runs: int = 30,
    max_runs: int = 2000,
    min_time_s: float = 2.0,
    max_time_s: float = 20.0,
) -> LatencyStats:
    """Time ``fn()`` (one batch of ``batch_size`` items per call).

    ``warmup`` untimed calls first; then timed calls until at least ``min_runs`` calls and ``min_time_s``
    seconds are done, stopping early at ``max_runs`` calls or ``max_time_s`` seconds (whichever comes
    first; ``max_time_s`` wins over ``min_runs`` so one very slow call cannot stall the caller).
    """
    _check(batch_size, min_runs, max_runs, min_time_s, max_time_s)
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= max_runs or elapsed >= max_time_s:
            break
        if len(samples) >= min_runs and elapsed >= min_time_s:
            break
    return stats_from_samples(samples, batch_size)


def interleaved_latency(
    fns: Mapping[str, Callable[[], object]],
    batch_size: int,
    rounds: int = 30,
    warmup: int = 3,
    min_time_s: float = 2.0,
    max_rounds: int = 2000,
    max_time_s: float = 60.0,
) -> dict[str, LatencyStats]:
    """Time several callables side by side, one call of each per round, in round-robin order.

    On a shared, noisy machine, slow phases (another process, thermal throttling) then hit every variant
    alike instead of whichever happened to run at that moment. The order inside a round rotates each round
    so no variant always runs first after the others. ``warmup`` untimed rounds first; then at least
    ``rounds`` rounds and ``min_time_s`` seconds, at most ``max_rounds`` rounds or ``max_time_s`` seconds.
    """
    if not fns:
        return {}
    _check(batch_size, rounds, max_rounds, min_time_s, max_time_s)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    done = 0
    while True:
        shift = done % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
        done += 1
        elapsed = time.perf_counter() - start
        if done >= max_rounds or elapsed >= max_time_s:
            break
        if done >= rounds and elapsed >= min_time_s:
            break
    return {name: stats_from_samples(samples[name], batch_size) for name in names}
