"""Per-key rate limits: one token bucket per API key.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second; each request takes one.
An empty bucket answers how long until the next token, which the server sends as ``Retry-After``.
The clock is injectable (tests pass a fake one); buckets are created on a key's first request.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:/\s*(?P<unit>[a-z]+))?\s*$")


def parse_rate(text: str) -> float:
    """``"10/s"``, ``"600/m"``, ``"1000/h"`` or a bare number (per second) -> requests per second."""
    match = _RATE.match(text.lower())
    unit = (match.group("unit") or "s") if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"rate {text!r} is not like 10/s, 600/m or 1000/h")
    per_second = float(match.group("n")) / _UNITS[unit]
    if per_second <= 0:
        raise ValueError(f"rate {text!r} must be more than zero")
    return per_second


def format_rate(per_second: float) -> str:
    """The shortest readable form: ``10/s``, ``30/m``, ``5/h``."""
    for unit, seconds in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        n = per_second * seconds
        if n >= 1 and math.isclose(n, round(n), rel_tol=1e-9):
            return f"{round(n)}/{unit}"
    return f"{per_second:g}/s"


def default_burst(per_second: float) -> int:
    """Burst when none is given: one second's worth of requests, at least one."""
    return max(1, math.ceil(per_second))


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second; starts full."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there will be (nothing taken)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """One bucket per key id; safe to call from several threads."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, rate: float, burst: float) -> float:
        """0.0 if the key may go ahead now, else how many seconds it should wait."""
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None or bucket.rate != rate or bucket.burst != float(burst):
                bucket = self._buckets[key_id] = TokenBucket(rate, burst, self._clock)
            return bucket.take()
