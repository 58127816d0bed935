"""Token buckets with a fake clock: no sleeping, no timing."""

from __future__ import annotations

import pytest

from kiln.serve.ratelimit import RateLimiter, TokenBucket, default_burst, format_rate, parse_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_waits_for_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token takes 1/rate seconds
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_bucket_never_holds_more_than_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    clock.now += 3600
    assert [bucket.take() for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take() > 0


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


def test_limiter_keeps_one_bucket_per_key() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.take("a", 1.0, 1) == 0.0
    assert limiter.take("a", 1.0, 1) == pytest.approx(1.0)
    assert limiter.take("b", 1.0, 1) == 0.0  # b has its own bucket
    clock.now += 1.0
    assert limiter.take("a", 1.0, 1) == 0.0


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("10", 10.0), ("600/m", 10.0), ("60/min", 1.0), ("3600/h", 1.0), (" 5 / S ", 5.0)],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "fast", "10/d", "0/s", "-1/s", "1/s/s"])
def test_parse_rate_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_format_rate_and_default_burst() -> None:
    assert format_rate(10.0) == "10/s"
    assert format_rate(0.5) == "30/m"
    assert format_rate(1 / 3600) == "1/h"
    assert default_burst(0.1) == 1 and default_burst(10.0) == 10 and default_burst(2.5) == 3
