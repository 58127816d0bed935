"""What each gRPC call leaves behind: a request id, an access-log line, metrics, a request-log row.

The servicer (``service.py``) opens a :class:`Call` for every RPC (:meth:`CallObserver.begin`) and closes
it when the answer, or the error, is ready (:meth:`CallObserver.end`); the handlers name the model and
version as soon as they know them (:func:`note_model`).

Request ids: metadata ``x-request-id`` when it is acceptable (the same rule as REST's header), else a
ModelInfer request's own ``id``, else a fresh one; the answer carries it in trailing metadata
``x-request-id``, and ``POST /v1/feedback`` takes it like a REST request's id.

Access log: the same JSON line as REST's (``kiln.serve.access_log``) on the same ``kiln.access`` logger,
with ``method`` ``"GRPC"``, ``route`` the full RPC name (``/inference.GRPCInferenceService/ModelInfer``),
``status`` the HTTP status REST would have answered for the same outcome (200, 400, 404, 429 ...) and
``grpc_code`` the gRPC status code's name. No key, metadata or payload is logged.

Request log: every ModelInfer call, whatever its outcome, like REST's inference routes
(``kiln.serve.monitoring``): a :class:`~kiln.monitor.capture.Capture` is open while it runs, so the
dataplane notes its inputs and outputs (sampled ones only), and the row's status is that HTTP status, so
the monitor's error rates read the same for both protocols. A message refused by gRPC itself (over the
size limit) never reaches kiln and is not logged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import grpc

from kiln.monitor.capture import Capture, close_capture, open_capture
from kiln.serve.access_log import REQUEST_ID_HEADER, access_line, access_log, request_id
from kiln.serve.errors import status_for as http_status_for
from kiln.serve.metrics import CLIENT_CLOSED, Metrics

if TYPE_CHECKING:
    from contextvars import Token

    from kiln.monitor.requestlog import RequestLog

log = logging.getLogger("kiln.serve")

SERVICE = "inference.GRPCInferenceService"
GRPC_METHOD = "GRPC"
"""The access log's ``method`` for a gRPC call."""
LOGGED_METHODS = frozenset({"ModelInfer"})
"""RPCs the request log records (every call, whatever its outcome)."""

_current: ContextVar[Call | None] = ContextVar("kiln_grpc_call", default=None)


def rpc_route(method: str) -> str:
    """``/inference.GRPCInferenceService/<method>``: the RPC's full name, its ``route`` in the logs."""
    return f"/{SERVICE}/{method}"


@dataclass
class Call:
    """One RPC while it runs."""

    method: str
    request_id: str
    ts: datetime
    start: float
    capture: Capture | None = None
    model: str | None = None
    version: str | None = None
    key_id: str | None = None
    _token: Token[Capture | None] | None = field(default=None, repr=False)
    _call_token: Token[Call | None] | None = field(default=None, repr=False)


def note_model(name: str, version: str | None = None) -> None:
    """Name the model (and version) the current call is for; a no-op outside a call."""
    call = _current.get()
    if call is not None:
        call.model = name
        if version is not None:
            call.version = version


def note_key(key_id: str) -> None:
    """Name the API key id the current call authenticated with (never the key)."""
    call = _current.get()
    if call is not None:
        call.key_id = key_id


def _metadata_request_id(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for name, value in metadata or ():
        if name.lower() == REQUEST_ID_HEADER and isinstance(value, str):
            return value
    return None


def outcome(exc: BaseException | None) -> tuple[int, str]:
    """(HTTP-equivalent status, gRPC code name) of a call that ended with ``exc`` (``None``: success).

    ``exc`` may be the kiln error the call failed with, or ``asyncio.CancelledError`` (the client went
    away: 499, ``CANCELLED``)."""
    from kiln.serve.grpc.service import status_for as grpc_status_for

    if exc is None:
        return 200, grpc.StatusCode.OK.name
    if not isinstance(exc, Exception):  # CancelledError: the client cancelled or went away
        return CLIENT_CLOSED, grpc.StatusCode.CANCELLED.name
    return http_status_for(exc), grpc_status_for(exc)[0].name


class CallObserver:
    """Request ids, access log, metrics and request log for the gRPC service (each optional)."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        request_log: RequestLog | None = None,
        sample: float = 0.0,
        access_log_enabled: bool = True,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self.sample = sample
        self.access_log_enabled = access_log_enabled
        self.draw = draw
        self._failures = 0

    def begin(self, method: str, metadata: Iterable[tuple[str, Any]] | None, request: Any) -> Call:
        """Open the call: its request id, its capture (logged RPCs, when a request log is kept)."""
        given = _metadata_request_id(metadata)
        if given is None and method == "ModelInfer":
            given = getattr(request, "id", None) or None
        call = Call(
            method=method,
            request_id=request_id(given),
            ts=datetime.now(timezone.utc),
            start=time.perf_counter(),
        )
        if self.request_log is not None and method in LOGGED_METHODS:
            call.capture = Capture(sampled=self.sample > 0 and self.draw() < self.sample)
            call._token = open_capture(call.capture)
        call._call_token = _current.set(call)
        return call

    def end(self, call: Call, exc: BaseException | None) -> None:
        """Close the call: one access-log line, its metrics and (logged RPCs) a request-log event.
        Never raises: observing a call must not fail it."""
        seconds = time.perf_counter() - call.start
        if call._call_token is not None:
            _current.reset(call._call_token)
            call._call_token = None
        if call._token is not None:
            close_capture(call._token)
            call._token = None
        try:
            self._record(call, exc, seconds)
        except Exception:
            self._failures += 1
            if self._failures == 1:
                log.exception("could not record a gRPC call in the logs or metrics")

    def _record(self, call: Call, exc: BaseException | None, seconds: float) -> None:
        status, code = outcome(exc)
        model = call.capture.model if call.capture is not None and call.capture.model else call.model
        version = call.capture.version if call.capture is not None and call.capture.version else call.version
        if self.metrics is not None:
            self.metrics.observe_grpc(call.method, model or "", version or "", code, seconds)
        if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
            access_log.info(
                access_line(
                    request_id=call.request_id,
                    method=GRPC_METHOD,
                    route=rpc_route(call.method),
                    model=model,
                    status=status,
                    latency_ms=seconds * 1000.0,
                    key_id=call.key_id,
                    extra={"grpc_code": code},
                )
            )
        if self.request_log is not None and call.capture is not None:
            from kiln.serve.monitoring import request_event

            self.request_log.submit(
                request_event(
                    call.capture,
                    ts=call.ts,
                    route=rpc_route(call.method),
                    status=status,
                    latency_ms=seconds * 1000.0,
                    model=model,
                    version=version,
                    key_id=call.key_id,
                    request_id=call.request_id,
                )
            )
