"""Adaptive batching with backpressure: many requests' texts, one model call, answers split back in order.

One ``TextBatcher`` per served model owns one worker thread (the event loop never runs a model):

* ``submit(texts)`` queues one request's texts and awaits their rows; the queue is bounded (``max_queue``
  texts) and a request that does not fit fails at once with ``OverloadedError`` (HTTP 429 + Retry-After).
* The worker prepares each text once (``prepare``): its token count (its sequence length; OpenAI
  ``usage`` reuses the counts) and what the model call takes of it (a text model keeps the text's
  encoding, so the model call does not tokenize it again; ``counted`` only counts, keeping the text).
  Then it forms a batch from the *bucket* of the oldest waiting text (buckets are powers of two, 16 tokens
  and up) in arrival order, at most ``max_batch_size`` texts: short texts are never padded to long ones
  and the oldest text always goes next, so nothing starves.
* Adaptive wait: a batch goes as soon as it is full, or as soon as as many requests wait as the previous
  batch carried (closed-loop clients that were just answered come back; an idle server, or a single
  client, therefore never waits), else when its oldest text has waited ``max_wait_ms``.

Results reach each caller's own event loop with ``call_soon_threadsafe``, so one batcher may serve
several loops (REST, gRPC) at once. A cancelled request's texts that have not run yet are dropped.

The items need not be texts: an image model's batcher queues preprocessed images (``3 x H x W`` arrays)
with a counter that gives every image 0 tokens, so they all share one bucket; everything else is alike
(the batcher never looks inside an item, nor inside what ``prepare`` made of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from kiln.errors import InvalidInputError, OverloadedError
from kiln.settings import Settings

log = logging.getLogger("kiln.serve")

MIN_BUCKET = 16
"""Texts of up to this many tokens share one bucket; above it, buckets double (32, 64, 128, ...)."""
RETRY_AFTER_MAX_S = 60

ItemT = TypeVar("ItemT")
"""What is batched: texts (``str``), or an image model's preprocessed images."""
ReadyT = TypeVar("ReadyT")
"""What the model call takes per item: the item itself, or what ``prepare`` made of it (an encoding)."""
BatchRunner = Callable[[list[ItemT]], np.ndarray]
"""Embeds one batch of texts: ``[n, dim]`` rows in input order (runs in the worker thread)."""
LengthCounter = Callable[[list[ItemT]], list[int]]
"""Tokens per text (runs in the worker thread)."""
QueueObserver = Callable[[int], None]
"""Called with the number of texts waiting whenever it changes."""


@dataclass(frozen=True)
class BatchConfig:
    """The batching knobs (``KILN_MAX_BATCH_SIZE``, ``KILN_MAX_WAIT_MS``, ``KILN_MAX_QUEUE``)."""

    max_batch_size: int = 32
    """Most texts in one model call."""
    max_wait_ms: float = 2.0
    """Longest a text waits for a batch to fill (only when load suggests more requests are coming)."""
    max_queue: int = 1024
    """Most texts waiting per model; a request that does not fit gets 429 (an idle queue takes any)."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, not {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {self.max_queue}")

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchConfig:
        return cls(
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
        )


@dataclass(frozen=True)
class Prepared(Generic[ReadyT]):
    """Some texts made ready for the model call, in order: what the call takes, and tokens, per text."""

    ready: list[ReadyT]
    tokens: list[int]


Preparer = Callable[[list[ItemT]], Prepared[ReadyT]]
"""Prepares texts for the model call and counts their tokens, once per text (runs in the worker thread)."""


def counted(count_tokens: LengthCounter[ItemT]) -> Preparer[ItemT, ItemT]:
    """A preparer that only counts tokens: the model call takes the items as they were queued."""

    def prepare(items: list[ItemT]) -> Prepared[ItemT]:
        return Prepared(ready=items, tokens=count_tokens(items))

    return prepare


def bucket_of(tokens: int) -> int:
    """The bucket a text of ``tokens`` tokens is batched in: 16, 32, 64, ... (its upper bound)."""
    return max(MIN_BUCKET, 1 << max(0, tokens - 1).bit_length())


@dataclass(frozen=True)
class BatchResult:
    """One request's rows (input order) and the tokens of each of its texts."""

    embeddings: np.ndarray
    tokens: list[int]


@dataclass(eq=False)
class _Job(Generic[ItemT, ReadyT]):
    """One request: its texts (and once admitted, what the model call takes of them and their tokens),
    where its answer goes, and how much of it is still to run."""

    texts: list[ItemT]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[BatchResult]
    arrived: float
    ready: list[ReadyT] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    rows: np.ndarray | None = None
    remaining: int = 0
    cancelled: bool = False
    failed: bool = False

    def settle(self, result: BatchResult | BaseException) -> None:
        """Hand ``result`` to the waiting coroutine on its own loop (from any thread)."""

        def deliver() -> None:
            if self.future.done():
                return
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(deliver)


@dataclass(frozen=True, eq=False)
class _Item(Generic[ItemT, ReadyT]):
    job: _Job[ItemT, ReadyT]
    index: int
    bucket: int


class TextBatcher(Generic[ItemT, ReadyT]):
    """Queues texts from concurrent requests and runs them in length-bucketed batches on one thread."""

    def __init__(
        self,
        name: str,
        run: BatchRunner[ReadyT],
        prepare: Preparer[ItemT, ReadyT],
        config: BatchConfig | None = None,
        on_queue: QueueObserver | None = None,
        max_tokens: int | None = None,
    ) -> None:
        """``prepare``: each text's tokens and what ``run`` takes of it (``counted(count_tokens)``: the
        text itself). ``max_tokens``: refuse (``InvalidInputError``) a request holding a text of more
        tokens than this; ``prepare`` must then count before truncation. ``None``: no check."""
        self.name = name
        self.config = config or BatchConfig()
        self._run = run
        self._prepare = prepare
        self._max_tokens = max_tokens
        self._on_queue = on_queue
        self._cond = threading.Condition()
        self._incoming: deque[_Job[ItemT, ReadyT]] = deque()  # guarded by _cond
        self._depth = 0  # texts submitted and not yet taken into a batch; guarded by _cond
        self._stopping = False  # guarded by _cond
        self._thread: threading.Thread | None = None
        self._rate = 0.0  # texts per second, moving average (Retry-After estimate)
        # worker-thread state
        self._items: list[_Item[ItemT, ReadyT]] = []
        self._target = 1  # requests the previous batch carried

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread (``submit`` also starts it when needed)."""
        with self._cond:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=f"kiln-batch-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30) -> None:
        """Run what is queued, then stop the worker thread (blocks; call it off the event loop)."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)

    @property
    def depth(self) -> int:
        """Texts waiting for a batch."""
        return self._depth

    # -- requests -----------------------------------------------------------------------------------
    async def submit(self, texts: list[ItemT]) -> BatchResult:
        """The rows of ``texts`` and their token counts; ``OverloadedError`` at once if the queue is full."""
        loop = asyncio.get_running_loop()
        job: _Job[ItemT, ReadyT] = _Job(
            texts=list(texts), loop=loop, future=loop.create_future(), arrived=time.monotonic()
        )
        with self._cond:
            self._check_room_locked(len(job.texts))
            self._incoming.append(job)
            self._depth += len(job.texts)
            depth = self._depth
            self._start_locked()
            self._cond.notify_all()
        self._observe_queue(depth)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # its texts that have not run are dropped when the next batch is formed
            raise

    def check_room(self, n: int) -> None:
        """``OverloadedError`` at once if ``n`` more items would not fit the queue now (``submit`` checks
        again): lets a caller refuse a request before costly work such as decoding images."""
        with self._cond:
            self._check_room_locked(n)

    def _check_room_locked(self, n: int) -> None:
        if self._depth > 0 and self._depth + n > self.config.max_queue:
            raise OverloadedError(
                f"model {self.name!r} is overloaded: {self._depth} texts are queued and the limit is "
                f"{self.config.max_queue}; retry later, send fewer texts, or raise KILN_MAX_QUEUE",
                retry_after=self._retry_after(),
            )

    def _retry_after(self) -> int:
        if self._rate <= 0:
            return 1
        return min(RETRY_AFTER_MAX_S, max(1, math.ceil(self._depth / self._rate)))

    def _observe_queue(self, depth: int) -> None:
        if self._on_queue is not None:
            self._on_queue(depth)

    # -- worker -------------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while self._next_batch():
                pass
        except BaseException as exc:  # a bug here must not leave requests waiting forever
            log.exception("the batching worker of model %r failed", self.name)
            self._fail_all(exc)

    def _take_incoming(self, wait: float | None) -> bool:
        """Move new requests to the worker's list, waiting up to ``wait`` s for one (``None``: until one
        comes). False when stopping: the caller runs what it holds without waiting, then exits."""
        with self._cond:
            if not self._incoming and not self._stopping:
                self._cond.wait(wait)
            jobs = list(self._incoming)
            self._incoming.clear()
            stopping = self._stopping
            if stopping and not jobs and not self._items:
                self._thread = None  # decided under the lock: a later submit starts a new worker
        if jobs:
            self._admit(jobs)
        return not stopping

    def _admit(self, jobs: list[_Job[ItemT, ReadyT]]) -> None:
        """Prepare the texts of new requests (one ``prepare`` call for all) and queue them by bucket; a
        request with a text over ``max_tokens`` fails, and all fail if ``prepare`` does."""
        try:
            prepared = self._prepare_texts([t for job in jobs for t in job.texts])
        except Exception as exc:
            for job in jobs:
                self._discard(job, len(job.texts), exc)
            return
        start = 0
        for job in jobs:
            job.ready = prepared.ready[start : start + len(job.texts)]
            job.tokens = prepared.tokens[start : start + len(job.texts)]
            job.remaining = len(job.texts)
            start += len(job.texts)
            too_long = self._too_long(job.tokens)
            if too_long is not None:
                self._discard(job, len(job.texts), too_long)
                continue
            self._items.extend(_Item(job, i, bucket_of(n)) for i, n in enumerate(job.tokens))

    def _prepare_texts(self, texts: list[ItemT]) -> Prepared[ReadyT]:
        """``prepare(texts)``, its counts as ints; ``RuntimeError`` if it did not answer for each text."""
        prepared = self._prepare(texts)
        tokens = [int(n) for n in prepared.tokens]
        ready = list(prepared.ready)
        if len(tokens) != len(texts) or len(ready) != len(texts):
            raise RuntimeError(
                f"the token counter returned {len(tokens)} counts and {len(ready)} prepared texts "
                f"for {len(texts)} texts"
            )
        return Prepared(ready=ready, tokens=tokens)

    def _too_long(self, tokens: list[int]) -> InvalidInputError | None:
        limit = self._max_tokens
        if limit is None:
            return None
        for i, n in enumerate(tokens):
            if n > limit:
                return InvalidInputError(
                    f"text {i} has {n} tokens; model {self.name!r} reads at most {limit} "
                    "(shorten it, or serve with --text-overflow truncate to cut it to the model's length)"
                )
        return None

    def _discard(self, job: _Job[ItemT, ReadyT], queued: int, error: BaseException | None) -> None:
        """Forget ``queued`` of ``job``'s waiting texts; tell its caller ``error`` once."""
        with self._cond:
            self._depth -= queued
            depth = self._depth
        self._observe_queue(depth)
        if error is not None and not job.failed:
            job.failed = True
            job.settle(error)

    def _ready(self, now: float) -> bool:
        if not self._items:
            return False
        oldest = self._items[0]
        if now - oldest.job.arrived >= self.config.max_wait_ms / 1000:
            return True
        in_bucket = sum(1 for it in self._items if it.bucket == oldest.bucket)
        if in_bucket >= self.config.max_batch_size:
            return True
        return len({id(it.job) for it in self._items}) >= self._target

    def _next_batch(self) -> bool:
        """Wait for, form and run one batch; False once stopped with nothing left to run."""
        if not self._items:
            alive = self._take_incoming(None)
            self._drop_cancelled()
            if not self._items:
                return alive or self._thread is threading.current_thread()
        now = time.monotonic()
        while not self._ready(now):
            deadline = self._items[0].job.arrived + self.config.max_wait_ms / 1000
            if not self._take_incoming(max(0.0, deadline - now)):
                break  # stopping: run what is queued without waiting
            self._drop_cancelled()
            if not self._items:
                return True
            now = time.monotonic()
        self._execute(self._form_batch())
        return True

    def _drop_cancelled(self) -> None:
        dropped: dict[int, tuple[_Job[ItemT, ReadyT], int]] = {}
        kept: list[_Item[ItemT, ReadyT]] = []
        for it in self._items:
            if it.job.cancelled or it.job.failed:
                job, n = dropped.get(id(it.job), (it.job, 0))
                dropped[id(it.job)] = (job, n + 1)
            else:
                kept.append(it)
        if dropped:
            self._items = kept
            for job, n in dropped.values():
                self._discard(job, n, None)

    def _form_batch(self) -> list[_Item[ItemT, ReadyT]]:
        bucket = self._items[0].bucket
        batch: list[_Item[ItemT, ReadyT]] = []
        rest: list[_Item[ItemT, ReadyT]] = []
        for it in self._items:
            if it.bucket == bucket and len(batch) < self.config.max_batch_size:
                batch.append(it)
            else:
                rest.append(it)
        self._items = rest
        with self._cond:
            self._depth -= len(batch)
            depth = self._depth
        self._observe_queue(depth)
        self._target = min(len({id(it.job) for it in batch}), self.config.max_batch_size)
        return batch

    def _execute(self, batch: list[_Item[ItemT, ReadyT]]) -> None:
        ready = [it.job.ready[it.index] for it in batch]
        start = time.perf_counter()
        try:
            rows = self._run(ready)
            if rows.shape[0] != len(ready):
                raise RuntimeError(f"the model returned {rows.shape[0]} rows for {len(ready)} texts")
        except Exception as exc:
            for it in batch:
                if not it.job.failed:
                    it.job.failed = True
                    it.job.settle(exc)
            return
        seconds = time.perf_counter() - start
        if seconds > 0:
            rate = len(ready) / seconds
            self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        for it, row in zip(batch, rows, strict=True):
            job = it.job
            if job.failed:
                continue
            if job.rows is None:
                job.rows = np.empty((len(job.texts), rows.shape[1]), dtype=rows.dtype)
            job.rows[it.index] = row
            job.remaining -= 1
            if job.remaining == 0:
                job.settle(BatchResult(embeddings=job.rows, tokens=job.tokens))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            jobs = list(self._incoming)
            self._incoming.clear()
            self._depth = 0
        jobs.extend({id(it.job): it.job for it in self._items}.values())
        self._items = []
        self._observe_queue(0)
        error = exc if isinstance(exc, Exception) else RuntimeError(f"the batching worker stopped: {exc!r}")
        for job in jobs:
            if not job.failed:
                job.failed = True
                job.settle(error)
