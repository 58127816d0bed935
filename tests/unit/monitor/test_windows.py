"""Windows over the request log: bucketing, traffic numbers, drift per window, realised accuracy."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from sqlalchemy import Engine, insert  # noqa: E402

from _fixtures.monitor_profile import reference_labels, reference_texts, token_counts  # noqa: E402
from kiln.monitor.drift_adapter import ProfileChecker  # noqa: E402
from kiln.monitor.profile import make_reference_profile  # noqa: E402
from kiln.monitor.store import FeedbackRecord, RequestRecord, SampleRecord, make_engine, migrate, sqlite_url  # noqa: E402
from kiln.monitor.windows import (  # noqa: E402
    WindowReader,
    format_duration,
    parse_duration,
    window_start,
)

HOUR = timedelta(hours=1)
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = make_engine(sqlite_url(tmp_path / "log.db"))
    migrate(e)
    yield e
    e.dispose()


def log_request(
    engine: Engine,
    ts: datetime,
    status: int = 200,
    latency_ms: float = 10.0,
    texts: list[str] | None = None,
    labels: list[str] | None = None,
    scores: list[float] | None = None,
    request_id: str | None = None,
    model: str = "m",
) -> str:
    rid = request_id or uuid.uuid4().hex
    row_id = uuid.uuid4()
    texts = texts or []
    with engine.begin() as conn:
        conn.execute(
            insert(RequestRecord),
            [
                {
                    "id": row_id,
                    "ts": ts,
                    "model": model,
                    "version": "1",
                    "route": "/v1/classify",
                    "status": status,
                    "latency_ms": latency_ms,
                    "key_id": None,
                    "n_inputs": max(len(texts), 1),
                    "n_tokens": None,
                    "sampled": bool(texts),
                    "request_id": rid,
                }
            ],
        )
        if texts:
            rows: list[dict[str, Any]] = [
                {
                    "request_id": row_id,
                    "position": i,
                    "text_sha256": "0" * 64,
                    "text_chars": len(t),
                    "text_tokens": len(t.split()) + 2,
                    "text": None,
                    "emb_norm": None,
                    "emb_mean": None,
                    "emb_proj": None,
                    "label": None if labels is None else labels[i],
                    "score": None if scores is None else scores[i],
                }
                for i, t in enumerate(texts)
            ]
            conn.execute(insert(SampleRecord), rows)
    return rid


def test_durations_parse_and_format() -> None:
    assert parse_duration("1h") == HOUR
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("90") == timedelta(seconds=90)
    assert format_duration(timedelta(days=1)) == "1d"
    assert format_duration(timedelta(minutes=90)) == "90m"
    for bad in ("", "0h", "-1m", "1 week", "h"):
        with pytest.raises(ValueError, match="window length"):
            parse_duration(bad)


def test_windows_are_aligned_on_the_epoch() -> None:
    assert window_start(datetime(2024, 5, 1, 10, 59, 59, tzinfo=timezone.utc), HOUR) == T0
    assert window_start(datetime(2024, 5, 1, 10, 59, 59), HOUR) == T0  # naive = UTC (SQLite hands these back)


def test_traffic_latency_and_errors_per_window(engine: Engine) -> None:
    for i, latency in enumerate([10.0, 20.0, 30.0, 40.0]):
        log_request(engine, T0 + timedelta(minutes=5 * i), latency_ms=latency)
    log_request(engine, T0 + timedelta(minutes=30), status=500)
    log_request(engine, T0 + timedelta(minutes=31), status=499)
    log_request(engine, T0 + timedelta(minutes=32), status=429)
    log_request(engine, T0 + HOUR + timedelta(minutes=1), latency_ms=5.0)
    log_request(engine, T0 + HOUR, model="other")  # another model: filtered out
    windows = WindowReader(engine, model="m").read(HOUR, count=3, until=T0 + HOUR, now=T0 + HOUR * 1.5)
    assert [w.start for w in windows] == [T0 - HOUR, T0, T0 + HOUR]
    assert [w.requests for w in windows] == [0, 7, 1]
    first, full, open_ = windows
    assert first.latency_ms is None and first.requests == 0
    assert (full.errors, full.rejected) == (2, 1)
    assert full.complete and not open_.complete
    assert full.latency_ms is not None and full.latency_ms.mean == pytest.approx(130 / 7)
    assert open_.latency_ms is not None and open_.latency_ms.p99 == pytest.approx(5.0)
    assert "no reference profile" in (full.drift_note or "")


def test_an_old_log_is_read_where_its_data_is(engine: Engine) -> None:
    log_request(engine, T0)
    windows = WindowReader(engine).read(HOUR, count=2, follow_data=True, now=T0 + timedelta(days=30))
    assert windows[-1].start == T0 and windows[-1].requests == 1


def classifier_checker() -> ProfileChecker:
    rng = np.random.default_rng(0)
    texts = reference_texts(400)
    p1 = rng.uniform(0.05, 0.95, len(texts))
    scores = np.stack([1 - p1, p1], axis=1)
    profile = make_reference_profile(
        texts, token_counts(texts), None, labels=reference_labels(scores), scores=scores, seed=0
    )
    return ProfileChecker(profile, "classify", ("neg", "pos"), rounds=500)


def test_drift_is_tested_per_window_and_shifted_inputs_alarm(engine: Engine) -> None:
    checker = classifier_checker()
    rng = np.random.default_rng(1)

    def send(start: datetime, texts: list[str]) -> None:
        p1 = rng.uniform(0.05, 0.95, len(texts))
        labels = ["pos" if p > 0.5 else "neg" for p in p1]
        scores = [max(p, 1 - p) for p in p1]
        for i in range(0, len(texts), 10):
            log_request(engine, start + timedelta(seconds=i), texts=texts[i : i + 10],
                        labels=labels[i : i + 10], scores=scores[i : i + 10])  # fmt: skip

    send(T0, reference_texts(120, seed=5))  # like the reference
    send(T0 + HOUR, reference_texts(120, seed=6, min_words=20, max_words=30))  # much longer texts
    send(T0 + 2 * HOUR, reference_texts(5, seed=7))  # too few to test
    reader = WindowReader(engine, checker, "m")
    same, shifted, few = reader.read(HOUR, count=3, until=T0 + 2 * HOUR, now=T0 + 3 * HOUR)
    assert same.samples == 120 and same.drift is not None and not same.drift.drift
    assert shifted.drift is not None and shifted.drift.drift
    assert any(a.startswith("input:n_chars") or a.startswith("input:n_tokens") for a in shifted.drift.alarms)
    assert few.drift is None and "drift is tested from" in (few.drift_note or "")
    assert same.accuracy_estimate is not None and 0.0 < same.accuracy_estimate.value < 1.0
    assert same.accuracy_realised is None  # no feedback yet


def test_feedback_gives_realised_accuracy(engine: Engine) -> None:
    checker = classifier_checker()
    texts = reference_texts(30, seed=9)
    rid = log_request(engine, T0, texts=texts, labels=["pos"] * 30, scores=[0.9] * 30, request_id="req-1")
    truth = ["pos"] * 24 + ["neg"] * 6
    with engine.begin() as conn:
        conn.execute(
            insert(FeedbackRecord),
            [{"request_id": rid, "position": i, "label": "neg", "ts": T0, "key_id": None} for i in range(30)],
        )
        # sent again later: the latest label wins
        conn.execute(
            insert(FeedbackRecord),
            [{"request_id": rid, "position": i, "label": lab, "ts": T0, "key_id": None}
             for i, lab in enumerate(truth)],
        )  # fmt: skip
    (window,) = WindowReader(engine, checker, "m").read(HOUR, count=1, until=T0, now=T0 + HOUR)
    assert window.labelled == 30
    assert window.accuracy_realised is not None
    assert window.accuracy_realised.value == pytest.approx(24 / 30)
    assert window.accuracy_realised.n == 30
