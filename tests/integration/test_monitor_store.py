"""The request log against real databases: SQLite and PostgreSQL (a fresh database per session).

PostgreSQL tests skip with the reason when no server answers, except under CI=true (see
``_fixtures/monitor_db.py``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import func, inspect, select  # noqa: E402

from _fixtures.monitor_db import migrate_concurrently, monitor_db_url, postgres_url  # noqa: E402, F401
from kiln.monitor.requestlog import RequestEvent, RequestLog  # noqa: E402
from kiln.monitor.store import (  # noqa: E402
    HEAD_REVISION,
    RequestRecord,
    SampleRecord,
    current_revision,
    make_engine,
    migrate,
)


def event(i: int, ts: datetime, sampled: bool = True) -> RequestEvent:
    texts = [f"request {i} text {k}" for k in range(3)] if sampled else []
    return RequestEvent(
        ts=ts,
        route="/v1/embeddings",
        status=200 if i % 5 else 429,
        latency_ms=2.5 + i,
        model="tiny-embed",
        version="1",
        key_id=f"key-{i % 2}",
        n_inputs=3,
        n_tokens=12,
        sampled=sampled,
        texts=texts,
        tokens=[4, 4, 4] if sampled else [],
        embeddings=np.full((3, 8), i, dtype=np.float32) if sampled else None,
    )


def test_migrations_run_once_even_when_servers_start_together(monitor_db_url: str) -> None:  # noqa: F811 (a fixture)
    assert migrate_concurrently(monitor_db_url, 3) == []
    engine = make_engine(monitor_db_url)
    assert current_revision(engine) == HEAD_REVISION
    assert {"kiln_requests", "kiln_samples"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_batches_round_trip_with_samples_and_retention(monitor_db_url: str) -> None:  # noqa: F811 (a fixture)
    engine = make_engine(monitor_db_url)
    migrate(engine)
    log = RequestLog(engine, batch_size=8, flush_interval_s=0.05, keep_text=False)
    now = datetime.now(timezone.utc)
    log.start()
    for i in range(20):
        assert log.submit(event(i, now - timedelta(days=40 if i < 4 else 0), sampled=i % 2 == 0))
    assert log.flush(timeout=60)
    stats = log.stats()
    assert stats["committed"] == 20 and stats["dropped"]["write_failed"] == 0

    reader = make_engine(monitor_db_url)
    with reader.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(RequestRecord)) == 20
        assert conn.scalar(select(func.count()).select_from(SampleRecord)) == 10 * 3
        row = conn.execute(select(RequestRecord).where(RequestRecord.latency_ms == 2.5 + 7)).one()
        assert (row.model, row.version, row.key_id, row.status, row.sampled) == (
            "tiny-embed",
            "1",
            "key-1",
            200,
            False,
        )
        sample = conn.execute(
            select(SampleRecord).join(RequestRecord).where(RequestRecord.latency_ms == 2.5 + 6)
        ).first()
        assert sample is not None
        assert sample.text is None and len(sample.text_sha256) == 64 and sample.text_tokens == 4
        assert sample.emb_norm == pytest.approx(6 * np.sqrt(8), rel=1e-6)
        assert len(sample.emb_proj) == 8

    log.retention_days = 30
    assert log.run_retention() == 4  # the four 40-day-old requests and their samples
    log.stop()
    with reader.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(RequestRecord)) == 16
        assert conn.scalar(select(func.count()).select_from(SampleRecord)) == 8 * 3
    reader.dispose()
