"""The request log writer: batching, drop counting, privacy of texts, output summaries, retention."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from prometheus_client import CollectorRegistry  # noqa: E402
from sqlalchemy import Engine, event, insert  # noqa: E402

from kiln.errors import MonitorError  # noqa: E402
from kiln.monitor.requestlog import (  # noqa: E402
    PROJECTION_DIMS,
    RequestEvent,
    RequestLog,
    open_request_log,
    projection,
    request_row,
    sample_rows,
)
from kiln.monitor.retention import delete_older_than  # noqa: E402
from kiln.monitor.store import RequestRecord, SampleRecord, make_engine, migrate, sqlite_url  # noqa: E402
from kiln.settings import Settings  # noqa: E402

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def make_event(i: int = 0, *, sampled: bool = False, ts: datetime = NOW, **kw: object) -> RequestEvent:
    texts = [f"text number {i}", "héllo wörld"]
    fields: dict[str, object] = {
        "ts": ts,
        "route": "/v2/models/{model_name}/infer",
        "status": 200,
        "latency_ms": 1.25,
        "model": "tiny-embed",
        "version": "1",
        "n_inputs": 2,
        "n_tokens": 7,
        "sampled": sampled,
    }
    if sampled:
        fields.update(texts=texts, tokens=[5, 4], embeddings=np.arange(16, dtype=np.float32).reshape(2, 8))
    fields.update(kw)
    return RequestEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "log.db"


def new_log(db: Path, registry: CollectorRegistry | None = None, **kw: object) -> RequestLog:
    engine = make_engine(sqlite_url(db))
    migrate(engine)
    return RequestLog(engine, registry=registry, **kw)  # type: ignore[arg-type]


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_events_are_written_in_batches_one_transaction_each(db: Path) -> None:
    log = new_log(db, batch_size=3, flush_interval_s=0.05)
    commits: list[int] = []
    event.listen(log.engine, "commit", lambda conn: commits.append(1))
    for i in range(7):  # queued before the writer starts: it finds full batches waiting
        assert log.submit(make_event(i))
    log.start()
    assert log.flush(timeout=30)
    log.stop()
    assert len(commits) == 3  # 3 + 3 + 1
    assert rows(db, "SELECT count(*) FROM kiln_requests") == [(7,)]
    stats = log.stats()
    assert stats["accepted"] == stats["committed"] == 7 and stats["queued"] == 0


def test_a_full_queue_drops_and_counts_never_blocks(db: Path) -> None:
    registry = CollectorRegistry()
    log = new_log(db, registry=registry, queue_size=2)
    results = [log.submit(make_event(i)) for i in range(5)]  # writer not started: the queue fills
    assert results == [True, True, False, False, False]
    assert registry.get_sample_value("kiln_monitor_dropped_total", {"reason": "queue_full"}) == 3
    assert registry.get_sample_value("kiln_monitor_queue_depth") == 2
    log.start()
    assert log.flush(timeout=30)
    log.stop()
    assert registry.get_sample_value("kiln_monitor_committed_total") == 2
    assert log.stats()["dropped"] == {"queue_full": 3, "write_failed": 0, "stopped": 0}
    assert not log.submit(make_event())  # after stop: dropped, counted
    assert registry.get_sample_value("kiln_monitor_dropped_total", {"reason": "stopped"}) == 1


def test_stop_writes_what_is_queued(db: Path) -> None:
    log = new_log(db, flush_interval_s=10)  # a long wait for a full batch: stop must not wait for it
    log.start()
    for i in range(5):
        log.submit(make_event(i))
    log.stop()
    assert rows(db, "SELECT count(*) FROM kiln_requests") == [(5,)]


def test_a_failed_write_is_counted_and_the_writer_goes_on(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    engine = make_engine(sqlite_url(tmp_path / "no-tables.db"))  # never migrated: inserts fail
    log = RequestLog(engine, registry=registry, flush_interval_s=0.05)
    log.start()
    log.submit(make_event(1))
    assert log.flush(timeout=30)
    assert registry.get_sample_value("kiln_monitor_dropped_total", {"reason": "write_failed"}) == 1
    migrate(engine)  # the database comes back: later events are written
    log.submit(make_event(2))
    assert log.flush(timeout=30)
    log.stop()
    assert log.stats()["committed"] == 1 and log.stats()["failed_batches"] == 1


def test_texts_are_hashed_by_default() -> None:
    sample = sample_rows(make_event(3, sampled=True), keep_text=False)
    assert [r["position"] for r in sample] == [0, 1]
    first, second = sample
    assert first["text"] is None and second["text"] is None
    assert first["text_sha256"] == hashlib.sha256(b"text number 3").hexdigest()
    assert second["text_chars"] == len("héllo wörld") == 11  # characters, not bytes
    assert [first["text_tokens"], second["text_tokens"]] == [5, 4]


def test_keep_text_keeps_the_raw_text() -> None:
    sample = sample_rows(make_event(3, sampled=True), keep_text=True)
    assert [r["text"] for r in sample] == ["text number 3", "héllo wörld"]


def test_unsampled_requests_keep_no_inputs() -> None:
    assert sample_rows(make_event(1), keep_text=True) == []
    row = request_row(make_event(1, key_id="key-7"))
    assert row["key_id"] == "key-7" and row["sampled"] is False and row["n_tokens"] == 7


def test_embeddings_are_summarised_norm_mean_and_a_fixed_projection() -> None:
    emb = np.arange(16, dtype=np.float32).reshape(2, 8)
    first, second = sample_rows(make_event(0, sampled=True), keep_text=False)
    assert first["emb_norm"] == pytest.approx(float(np.linalg.norm(emb[0])))
    assert second["emb_mean"] == pytest.approx(float(emb[1].mean()))
    assert len(first["emb_proj"]) == PROJECTION_DIMS
    expected = emb.astype(np.float64) @ projection(8)
    np.testing.assert_allclose(second["emb_proj"], expected[1], atol=1e-5)
    # the projection is fixed: the same on every server and every run (drift compares across them)
    np.testing.assert_array_equal(projection(8), projection.__wrapped__(8))
    assert projection(384).shape == (384, PROJECTION_DIMS)


def test_labels_and_scores_are_kept_when_the_task_has_them() -> None:
    ev = make_event(0, sampled=True, embeddings=None, labels=["pos", "neg"], scores=[0.9, 0.6])
    first, second = sample_rows(ev, keep_text=False)
    assert (first["label"], first["score"], first["emb_norm"]) == ("pos", 0.9, None)
    assert (second["label"], second["score"]) == ("neg", 0.6)


def _insert(engine: Engine, ts: datetime, n_samples: int = 1) -> uuid.UUID:
    ev = make_event(0, sampled=n_samples > 0, ts=ts)
    with engine.begin() as conn:
        conn.execute(insert(RequestRecord), [request_row(ev)])
        conn.execute(insert(SampleRecord), sample_rows(ev, keep_text=False))
    return ev.row_id()


def test_retention_deletes_old_requests_and_their_samples(db: Path) -> None:
    engine = make_engine(sqlite_url(db))
    migrate(engine)
    _insert(engine, NOW - timedelta(days=40))
    _insert(engine, NOW - timedelta(days=31))
    kept = _insert(engine, NOW - timedelta(days=2))
    assert delete_older_than(engine, 0, now=NOW) == 0  # 0 days: keep everything
    assert delete_older_than(engine, 30, now=NOW) == 2
    engine.dispose()
    assert rows(db, "SELECT id FROM kiln_requests") == [(kept.hex,)]
    assert rows(db, "SELECT count(*) FROM kiln_samples") == [(2,)]  # the kept request's two


def test_the_writer_applies_retention(db: Path) -> None:
    engine = make_engine(sqlite_url(db))
    migrate(engine)
    _insert(engine, datetime.now(timezone.utc) - timedelta(days=10))
    _insert(engine, datetime.now(timezone.utc))
    log = RequestLog(engine, retention_days=7)
    assert log.run_retention() == 1
    assert log.stats()["deleted_by_retention"] == 1
    log.stop()
    assert rows(db, "SELECT count(*) FROM kiln_requests") == [(1,)]


def test_open_request_log_defaults_to_sqlite_under_kiln_home(tmp_path: Path) -> None:
    log = open_request_log(Settings(home=tmp_path, monitor=True), "org/model")
    try:
        assert log.stats()["store"] == sqlite_url(tmp_path / "monitor" / "org_model.db")
        assert log.sample == 0.1 and log.keep_text is False and log.retention_days == 30
    finally:
        log.stop()


def test_open_request_log_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="not a database URL"):
        open_request_log(Settings(home=tmp_path, monitor_db="nonsense"), "m")
    with pytest.raises(MonitorError, match="between 0 and 1"):
        open_request_log(Settings(home=tmp_path, monitor_sample=1.5), "m")
    bad = "postgresql+psycopg://kiln:pw@127.0.0.1:1/nothing"  # nothing listens on port 1
    with pytest.raises(MonitorError, match="--no-monitor") as err:
        open_request_log(Settings(home=tmp_path, monitor_db=bad), "m")
    assert ":pw@" not in str(err.value) and "kiln:***@" in str(err.value)
