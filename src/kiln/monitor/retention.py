"""Retention: delete request-log rows older than N days (the writer thread calls this periodically)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, delete, select

from kiln.monitor.store import FeedbackRecord, RequestRecord, SampleRecord


def cutoff(days: int, now: datetime | None = None) -> datetime:
    """The oldest time kept when rows are kept for ``days`` days."""
    return (now or datetime.now(timezone.utc)) - timedelta(days=days)


def delete_older_than(engine: Engine, days: int, now: datetime | None = None) -> int:
    """Delete requests (and their samples) logged, and feedback given, before ``now - days``, in one
    transaction.

    Returns the number of requests deleted. ``days <= 0`` keeps everything.
    """
    if days <= 0:
        return 0
    limit = cutoff(days, now)
    old = select(RequestRecord.id).where(RequestRecord.ts < limit)
    with engine.begin() as connection:
        connection.execute(delete(SampleRecord).where(SampleRecord.request_id.in_(old)))
        result = connection.execute(delete(RequestRecord).where(RequestRecord.ts < limit))
        connection.execute(delete(FeedbackRecord).where(FeedbackRecord.ts < limit))
    return int(result.rowcount or 0)
