"""The request log cut into time windows: traffic, latency and errors per window, and drift per window.

Windows are ``length`` long and aligned on multiples of ``length`` since the Unix epoch (UTC), so every
reader (the server's dashboard, ``kiln monitor``, the alert watcher) cuts the log the same way. The newest
window is usually still open (``complete=False``); alerts look only at complete ones.

Per window: requests logged, errors (status 5xx, or 499: the client went away), rejected (other 4xx),
latency percentiles (p50/p95/p99, from every logged request) and inputs. With a reference profile (the
bundle's, see :mod:`kiln.monitor.drift_adapter`), the window's sampled inputs are tested for drift when there
are at least ``min_samples`` of them, and for a classifier the label-free accuracy estimate (CBPE) and, where
labels arrived (``POST /v1/feedback``), the realised accuracy come with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select

from kiln.monitor.cbpe import AccuracyEstimate
from kiln.monitor.drift import DriftReport
from kiln.monitor.drift_adapter import LoggedSamples, ProfileChecker
from kiln.monitor.store import FeedbackRecord, RequestRecord, SampleRecord

log = logging.getLogger("kiln.monitor")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_MIN_SAMPLES = 20
_CHUNK = 500


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"1d"`` (a bare number is seconds); else ``ValueError``."""
    match = _DURATION.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a window length: use e.g. 30s, 15m, 1h or 1d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()])


def format_duration(length: timedelta) -> str:
    seconds = length.total_seconds()
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC time (SQLite hands back naive times; the log writes UTC)."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def window_start(ts: datetime, length: timedelta) -> datetime:
    """Start of the window holding ``ts``."""
    step = length.total_seconds()
    offset = (utc(ts) - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=(offset // step) * step)


class LatencySummary(BaseModel):
    p50: float
    p95: float
    p99: float
    mean: float


class WindowStats(BaseModel):
    """One window of the request log."""

    start: datetime
    end: datetime
    complete: bool = Field(description="the window has ended (alerts only judge complete windows)")
    requests: int = 0
    errors: int = Field(default=0, description="5xx and 499 (client went away)")
    rejected: int = Field(default=0, description="other 4xx")
    inputs: int = 0
    latency_ms: LatencySummary | None = None
    samples: int = Field(default=0, description="sampled inputs (what drift is tested on)")
    labelled: int = Field(default=0, description="sampled inputs whose true label arrived")
    drift: DriftReport | None = None
    drift_note: str | None = Field(default=None, description="why drift was not tested, when it was not")

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy_estimate(self) -> AccuracyEstimate | None:
        return None if self.drift is None else self.drift.accuracy_estimate

    @property
    def accuracy_realised(self) -> AccuracyEstimate | None:
        return None if self.drift is None else self.drift.accuracy_realised


def latency_summary(latencies: Iterable[float]) -> LatencySummary | None:
    values = np.asarray(list(latencies), dtype=np.float64)
    if values.size == 0:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return LatencySummary(p50=float(p50), p95=float(p95), p99=float(p99), mean=float(values.mean()))


class WindowReader:
    """Reads the request log at ``engine`` window by window (optionally for one ``model`` only) and runs
    ``checker``'s drift tests on each window's samples. Reports of complete windows are cached."""

    def __init__(
        self,
        engine: Engine,
        checker: ProfileChecker | None = None,
        model: str | None = None,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        self.engine = engine
        self.checker = checker
        self.model = model
        self.min_samples = max(min_samples, 8)
        self._cache: dict[tuple[datetime, datetime, int, int], DriftReport] = {}

    def _where(self, start: datetime, end: datetime) -> list[Any]:
        clauses = [RequestRecord.ts >= start, RequestRecord.ts < end]
        if self.model is not None:
            clauses.append(RequestRecord.model == self.model)
        return clauses

    def last_logged(self) -> datetime | None:
        """Time of the newest logged request (for this reader's model)."""
        query = select(func.max(RequestRecord.ts))
        if self.model is not None:
            query = query.where(RequestRecord.model == self.model)
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        return None if value is None else utc(value)

    def read(
        self,
        length: timedelta,
        count: int = 24,
        until: datetime | None = None,
        follow_data: bool = False,
        now: datetime | None = None,
    ) -> list[WindowStats]:
        """The ``count`` windows up to the one holding ``until`` (default: now), oldest first.

        ``follow_data``: when the log's newest request is older than that range (an old database read
        offline), end at the newest request instead.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        now = utc(now or datetime.now(timezone.utc))
        anchor = utc(until) if until is not None else now
        if follow_data:
            last = self.last_logged()
            if last is not None and last < window_start(anchor, length) - length * (count - 1):
                anchor = last
        last_start = window_start(anchor, length)
        starts = [last_start - length * (count - 1 - i) for i in range(count)]
        begin, finish = starts[0], last_start + length
        windows = {s: WindowStats(start=s, end=s + length, complete=s + length <= now) for s in starts}
        latencies: dict[datetime, list[float]] = {s: [] for s in starts}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    RequestRecord.ts, RequestRecord.status, RequestRecord.latency_ms, RequestRecord.n_inputs
                ).where(*self._where(begin, finish))
            ).all()
            for ts, status, latency, n_inputs in rows:
                w = windows.get(window_start(ts, length))
                if w is None:
                    continue
                w.requests += 1
                w.inputs += int(n_inputs or 0)
                if status >= 500 or status == 499:
                    w.errors += 1
                elif status >= 400:
                    w.rejected += 1
                latencies[w.start].append(float(latency))
            samples = self._samples(conn, begin, finish, length) if self.checker is not None else {}
        for start, w in windows.items():
            w.latency_ms = latency_summary(latencies[start])
            batch = samples.get(start)
            w.samples = len(batch) if batch is not None else 0
            w.labelled = batch.labelled if batch is not None else 0
            if self.checker is None:
                w.drift_note = "no reference profile (the bundle carries none, or none was given)"
            elif batch is None or len(batch) < self.min_samples:
                w.drift_note = f"{w.samples} sampled inputs; drift is tested from {self.min_samples}"
            else:
                w.drift = self._check(w, batch)
                if w.drift is None:
                    w.drift_note = "the drift tests failed on this window (see the server log)"
        return [windows[s] for s in starts]

    def _samples(
        self, conn: Any, begin: datetime, finish: datetime, length: timedelta
    ) -> dict[datetime, LoggedSamples]:
        rows = conn.execute(
            select(
                RequestRecord.ts,
                RequestRecord.request_id,
                SampleRecord.position,
                SampleRecord.text_chars,
                SampleRecord.text_tokens,
                SampleRecord.text,
                SampleRecord.emb_proj,
                SampleRecord.label,
                SampleRecord.score,
            )
            .join(SampleRecord, SampleRecord.request_id == RequestRecord.id)
            .where(*self._where(begin, finish))
            .order_by(RequestRecord.ts, SampleRecord.position)
        ).all()
        ids = sorted({r.request_id for r in rows if r.request_id is not None})
        truth: dict[tuple[str, int], str] = {}
        for i in range(0, len(ids), _CHUNK):
            feedback = conn.execute(
                select(FeedbackRecord.request_id, FeedbackRecord.position, FeedbackRecord.label)
                .where(FeedbackRecord.request_id.in_(ids[i : i + _CHUNK]))
                .order_by(FeedbackRecord.id)
            ).all()
            for rid, position, label in feedback:
                truth[(rid, int(position))] = label  # the latest label given wins
        out: dict[datetime, LoggedSamples] = {}
        for r in rows:
            batch = out.setdefault(window_start(r.ts, length), LoggedSamples())
            label = truth.get((r.request_id, int(r.position))) if r.request_id is not None else None
            batch.add(r.text_chars, r.text_tokens, r.text, r.emb_proj, r.label, r.score, label)
        return out

    def _check(self, window: WindowStats, samples: LoggedSamples) -> DriftReport | None:
        assert self.checker is not None
        key = (window.start, window.end, len(samples), samples.labelled)
        if window.complete and key in self._cache:
            return self._cache[key]
        try:
            report = self.checker.check(samples)
        except Exception:
            log.exception("drift tests failed on the window starting %s", window.start.isoformat())
            return None
        if window.complete:
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[key] = report
        return report
