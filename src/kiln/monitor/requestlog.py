"""The request log's writer: a bounded in-memory queue and one background thread that commits batches.

The request's path only builds a :class:`RequestEvent` (raw references, no hashing) and calls
:meth:`RequestLog.submit`, which never blocks and never raises: when the queue is full the event is
dropped and counted (``kiln_monitor_dropped_total{reason="queue_full"}``). The writer thread takes up to
``batch_size`` events (waiting at most ``flush_interval_s`` after the first), summarises them (sha256 and
length of each text, or the text itself with ``keep_text``; embedding norm, mean and an 8-dimensional
fixed random projection; label and score) and inserts them in ONE transaction: a batch is in the
database entirely or not at all, and a committed batch survives the process being killed. A batch that
cannot be written is dropped and counted (``reason="write_failed"``); the server goes on. The same
thread deletes rows older than ``retention_days`` at start and every ``retention_every_s``.

Prometheus (on the app's registry):

    kiln_monitor_committed_total        requests written to the log
    kiln_monitor_dropped_total{reason}  requests not logged: queue_full, write_failed, stopped
    kiln_monitor_queue_depth            requests waiting for the writer
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Engine, insert
from sqlalchemy.exc import OperationalError

from kiln.errors import MonitorError
from kiln.monitor.retention import delete_older_than
from kiln.monitor.store import (
    KEY_ID_CHARS,
    LABEL_CHARS,
    MODEL_CHARS,
    REQUEST_ID_CHARS,
    ROUTE_CHARS,
    RequestRecord,
    SampleRecord,
    default_db_path,
    make_engine,
    migrate,
    parse_url,
    redact,
    sqlite_url,
)
from kiln.settings import Settings

log = logging.getLogger("kiln.monitor")

PROJECTION_DIMS = 8
PROJECTION_SEED = 20240601  # fixed: the same projection on every server and run, so drift compares
DROP_REASONS = ("queue_full", "write_failed", "stopped")
ERROR_LOG_EVERY_S = 60.0


@dataclass
class RequestEvent:
    """One request as the middleware saw it; inputs and outputs only when sampled."""

    ts: datetime
    route: str
    status: int
    latency_ms: float
    model: str | None = None
    version: str | None = None
    key_id: str | None = None
    n_inputs: int = 0
    n_tokens: int | None = None
    sampled: bool = False
    texts: Sequence[str] = ()
    tokens: Sequence[int | None] = ()
    embeddings: np.ndarray | None = None
    labels: Sequence[str | None] = ()
    scores: Sequence[float | None] = ()
    request_id: str | None = None
    """The request's ``X-Request-ID`` (what ``POST /v1/feedback`` refers to)."""
    id: uuid.UUID | None = None
    """Given by the writer (off the request's path) when not set."""

    def row_id(self) -> uuid.UUID:
        if self.id is None:
            self.id = uuid.uuid4()
        return self.id


@lru_cache(maxsize=16)
def projection(dim: int) -> np.ndarray:
    """The fixed ``[dim, 8]`` Gaussian random projection for ``dim``-dimensional embeddings."""
    rng = np.random.default_rng(PROJECTION_SEED + dim)
    matrix = rng.standard_normal((dim, PROJECTION_DIMS)) / np.sqrt(PROJECTION_DIMS)
    matrix.setflags(write=False)
    return matrix


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _clip(value: str | None, chars: int) -> str | None:
    return None if value is None else value[:chars]


def request_row(event: RequestEvent) -> dict[str, Any]:
    return {
        "id": event.row_id(),
        "ts": event.ts,
        "model": _clip(event.model, MODEL_CHARS),
        "version": _clip(event.version, 64),
        "route": _clip(event.route, ROUTE_CHARS),
        "status": int(event.status),
        "latency_ms": float(event.latency_ms),
        "key_id": _clip(event.key_id, KEY_ID_CHARS),
        "n_inputs": int(event.n_inputs),
        "n_tokens": event.n_tokens,
        "sampled": bool(event.sampled),
        "request_id": _clip(event.request_id, REQUEST_ID_CHARS),
    }


def sample_rows(event: RequestEvent, keep_text: bool) -> list[dict[str, Any]]:
    """One row per input of a sampled request: the text hashed (or kept), its output summarised."""
    if not event.sampled:
        return []
    n = len(event.texts)
    norms = means = projected = None
    if event.embeddings is not None and len(event.embeddings) == n and n:
        emb = np.asarray(event.embeddings, dtype=np.float64).reshape(n, -1)
        norms = np.linalg.norm(emb, axis=1)
        means = emb.mean(axis=1)
        projected = np.round(emb @ projection(emb.shape[1]), 6)
    rows = []
    for i, text in enumerate(event.texts):
        label = event.labels[i] if i < len(event.labels) else None
        score = event.scores[i] if i < len(event.scores) else None
        tokens = event.tokens[i] if i < len(event.tokens) else None
        rows.append(
            {
                "request_id": event.row_id(),
                "position": i,
                "text_sha256": text_digest(text),
                "text_chars": len(text),
                "text_tokens": None if tokens is None else int(tokens),
                "text": text if keep_text else None,
                "emb_norm": None if norms is None else float(norms[i]),
                "emb_mean": None if means is None else float(means[i]),
                "emb_proj": None if projected is None else [float(v) for v in projected[i]],
                "label": _clip(label, LABEL_CHARS),
                "score": None if score is None else float(score),
            }
        )
    return rows


class RequestLog:
    """Queue of request events and the thread that writes them to ``engine`` in batches."""

    def __init__(
        self,
        engine: Engine,
        *,
        keep_text: bool = False,
        sample: float = 1.0,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.5,
        retention_days: int = 0,
        retention_every_s: float = 3600.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self.engine = engine
        self.keep_text = keep_text
        self.sample = sample
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retention_days = retention_days
        self.retention_every_s = retention_every_s
        self._queue: queue.Queue[RequestEvent | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._accepted = 0
        self._committed = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._failed_batches = 0
        self._deleted = 0
        self._last_commit: datetime | None = None
        self._next_retention = 0.0
        self._last_error_log = float("-inf")
        registry = registry or CollectorRegistry(auto_describe=True)
        self._m_committed = Counter(
            "kiln_monitor_committed_total", "requests written to the request log", registry=registry
        )
        self._m_dropped = Counter(
            "kiln_monitor_dropped_total",
            "requests not written to the request log (queue_full, write_failed, stopped)",
            ("reason",),
            registry=registry,
        )
        for reason in DROP_REASONS:
            self._m_dropped.labels(reason=reason)
        depth = Gauge(
            "kiln_monitor_queue_depth", "requests waiting for the request log writer", registry=registry
        )
        depth.set_function(self._queue.qsize)

    # -- the request's side -------------------------------------------------------------------------
    def submit(self, event: RequestEvent) -> bool:
        """Queue ``event`` for writing; ``False`` (and counted) when it had to be dropped. Never blocks.

        Events submitted before :meth:`start` wait in the queue (the app's lifespan starts the writer).
        """
        if self._closed:
            self._drop("stopped", 1)
            return False
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop("queue_full", 1)
            return False
        with self._lock:
            self._accepted += 1
        return True

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="kiln-request-log", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the writer (blocks up to ``timeout``: call it off the loop)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # full: the writer is busy anyway
            self._queue.put_nowait(None)  # wake the writer
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the request log writer did not finish within %.0f s", timeout)
                return
        self._drop("stopped", self._discard_queue())
        self.engine.dispose()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every accepted event is committed or dropped; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._settled:
            while self._committed + self._dropped["write_failed"] < self._accepted:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._settled.wait(left)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": True,
                "store": redact(self.engine.url),
                "sample": self.sample,
                "keep_text": self.keep_text,
                "accepted": self._accepted,
                "committed": self._committed,
                "dropped": dict(self._dropped),
                "failed_batches": self._failed_batches,
                "queued": self._queue.qsize(),
                "retention_days": self.retention_days,
                "deleted_by_retention": self._deleted,
                "last_commit": self._last_commit.isoformat() if self._last_commit else None,
            }

    # -- the writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._maybe_retain()
            try:
                first = self._queue.get(timeout=self.flush_interval_s)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            batch = [] if first is None else [first]
            deadline = time.monotonic() + self.flush_interval_s
            while len(batch) < self.batch_size and not self._stopping.is_set():
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(item)
            if batch:
                self._write(batch)
            if self._stopping.is_set():
                break
        while True:  # stopping: write what is left, in batches
            rest = self._take(self.batch_size)
            if not rest:
                break
            self._write(rest)

    def _take(self, n: int) -> list[RequestEvent]:
        items: list[RequestEvent] = []
        while len(items) < n:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                items.append(item)
        return items

    def _discard_queue(self) -> int:
        return len(self._take(self._queue.maxsize + 1))

    def _write(self, batch: list[RequestEvent]) -> None:
        try:
            requests = [request_row(e) for e in batch]
            samples = [row for e in batch for row in sample_rows(e, self.keep_text)]
        except Exception:  # a malformed event must not stop the writer
            log.exception("could not summarise %d request(s) for the request log", len(batch))
            self._settle(0, len(batch))
            return
        for attempt in (1, 2):
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(RequestRecord), requests)
                    if samples:
                        connection.execute(insert(SampleRecord), samples)
            except OperationalError as exc:  # connection lost, database locked: try once more
                if attempt == 1 and not self._stopping.is_set():
                    time.sleep(0.5)
                    continue
                self._report_error(exc, len(batch))
            except Exception as exc:
                self._report_error(exc, len(batch))
            else:
                self._settle(len(batch), 0)
            return

    def _report_error(self, exc: BaseException, n: int) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.error(
                "request log: %d request(s) could not be written to %s: %s", n, redact(self.engine.url), exc
            )
        with self._lock:
            self._failed_batches += 1
        self._settle(0, n)

    def _settle(self, committed: int, failed: int) -> None:
        with self._settled:
            self._committed += committed
            self._dropped["write_failed"] += failed
            if committed:
                self._last_commit = datetime.now(timezone.utc)
            self._settled.notify_all()
        if committed:
            self._m_committed.inc(committed)
        if failed:
            self._m_dropped.labels(reason="write_failed").inc(failed)

    def _drop(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._dropped[reason] += n
        self._m_dropped.labels(reason=reason).inc(n)

    def _maybe_retain(self) -> None:
        if self.retention_days <= 0 or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + self.retention_every_s
        self.run_retention()

    def run_retention(self) -> int:
        """Delete requests older than ``retention_days`` now (the writer does this at start and every
        ``retention_every_s``); the number deleted, 0 when retention is off or failed (logged)."""
        if self.retention_days <= 0:
            return 0
        try:
            deleted = delete_older_than(self.engine, self.retention_days)
        except Exception as exc:
            log.error("request log: retention (older than %d days) failed: %s", self.retention_days, exc)
            return 0
        with self._lock:
            self._deleted += deleted
        if deleted:
            log.info("request log: deleted %d request(s) older than %d days", deleted, self.retention_days)
        return deleted


def store_url(settings: Settings, model: str) -> str:
    """The request log's database: ``settings.monitor_db``, else SQLite in ``KILN_HOME/monitor/``."""
    return settings.monitor_db or sqlite_url(default_db_path(settings.home, model))


def open_request_log(settings: Settings, model: str, registry: CollectorRegistry | None = None) -> RequestLog:
    """Open (creating or migrating as needed) the request log for a server whose main model is ``model``.

    Raises ``MonitorError`` saying what to do when the database cannot be opened or migrated.
    """
    url = store_url(settings, model)
    if not 0.0 <= settings.monitor_sample <= 1.0:
        raise MonitorError(f"the monitor sample must be between 0 and 1, not {settings.monitor_sample}")
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise MonitorError(f"{exc} (--monitor-db / KILN_MONITOR_DB)") from None
    shown = redact(parsed)
    try:
        engine = make_engine(parsed)
        migrate(engine)
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc  # the driver's own message, without SQLAlchemy's wrap
        raise MonitorError(
            f"cannot open the request log at {shown}: {str(reason).strip()}. "
            "Check --monitor-db / KILN_MONITOR_DB (is the server up, does the database exist, "
            "is the driver installed?), or serve without the log (--no-monitor)"
        ) from exc
    return RequestLog(
        engine,
        keep_text=settings.monitor_keep_text,
        sample=settings.monitor_sample,
        queue_size=settings.monitor_queue,
        retention_days=settings.monitor_retention_days,
        registry=registry,
    )
