"""The request log's HTTP side: a middleware that records each inference request, and the stats route.

``RequestLogMiddleware`` (pure ASGI, outside the error boundary so it sees the final status) opens a
capture for the request (``kiln.monitor.capture``), lets the dataplane fill it in, and after the response
hands one ``RequestEvent`` to the ``RequestLog`` queue: time, model and version, route template, status,
latency, key id (set by the auth middleware; never the key), request id (set by
the access-log middleware, echoed in ``X-Request-ID``), inputs and tokens,
and, for a sampled request, its texts and outputs. An image model's inputs are logged as descriptions
(format, width x height and bytes of each file, or a preprocessed tensor's shape) with the predicted label
and score: never the image. Recording never fails nor delays a request: the writer thread does the
hashing and the I/O.

Logged: every request that ran an inference, and every request to an inference route (``LOGGED_ROUTES``)
whatever its outcome (400, 404, 413, 429 ...). Health probes, metadata and /metrics are not logged.
gRPC ModelInfer calls are logged the same way by ``kiln.serve.grpc.calls`` (:func:`request_event`).

``GET /v2/monitor/stats``: the log's counters as JSON (committed, dropped by reason, queued ...), or
``{"enabled": false}`` when the server keeps no log.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.monitor.capture import Capture, close_capture, open_capture
from kiln.serve.access_log import KEY_ID_KEY, REQUEST_ID_KEY, template_of
from kiln.serve.metrics import CLIENT_CLOSED, MODEL_KEY

if TYPE_CHECKING:
    from kiln.monitor.requestlog import RequestEvent, RequestLog

log = logging.getLogger("kiln.serve")

STATS_PATH = "/v2/monitor/stats"
LOGGED_ROUTES = frozenset(
    {
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v1/embeddings",
        "/v1/classify",
        "/v1/images/classify",
    }
)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def request_event(
    capture: Capture,
    *,
    ts: datetime,
    route: str,
    status: int,
    latency_ms: float,
    model: str | None,
    version: str | None,
    key_id: str | None,
    request_id: str | None,
) -> RequestEvent:
    """The request log's event for one request (any protocol) from what its capture noted; inputs and
    outputs only when it was sampled and ran an inference."""
    from kiln.monitor.requestlog import RequestEvent  # here, not at import: SQLAlchemy only when logging

    sampled = capture.sampled and bool(capture.texts)
    embeddings = None
    if sampled and capture.embeddings:
        embeddings = (
            capture.embeddings[0] if len(capture.embeddings) == 1 else np.concatenate(capture.embeddings)
        )
    return RequestEvent(
        ts=ts,
        route=route,
        status=status,
        latency_ms=latency_ms,
        model=capture.model or model,
        version=capture.version or version,
        key_id=key_id,
        request_id=request_id,
        n_inputs=capture.n_inputs,
        n_tokens=capture.n_tokens,
        sampled=sampled,
        texts=capture.texts if sampled else (),
        tokens=capture.tokens if sampled else (),
        embeddings=embeddings,
        labels=capture.labels if sampled else (),
        scores=capture.scores if sampled else (),
    )


class RequestLogMiddleware:
    """ASGI middleware: one ``RequestEvent`` per inference request, queued on ``request_log``."""

    def __init__(
        self,
        app: ASGIApp,
        request_log: RequestLog,
        sample: float,
        draw: Callable[[], float] = random.random,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        """``routes`` (the app's) name the route of requests refused before routing (auth: 401, 403, 429)."""
        self.app = app
        self.request_log = request_log
        self.sample = sample
        self.draw = draw
        self.routes = tuple(routes)
        self._failures = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ts = datetime.now(timezone.utc)
        start = time.perf_counter()
        capture = Capture(sampled=self.sample > 0 and self.draw() < self.sample)
        status: int | None = None

        async def send_tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        token = open_capture(capture)
        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            status = status or 500
            raise
        finally:
            close_capture(token)
            latency_ms = (time.perf_counter() - start) * 1000
            try:
                event = self.event(scope, capture, status or CLIENT_CLOSED, ts, latency_ms)
                if event is not None:
                    self.request_log.submit(event)
            except Exception:  # never fail a request because of its log
                self._failures += 1
                if self._failures == 1:
                    log.exception("could not record a request in the request log")

    def event(
        self, scope: Scope, capture: Capture, status: int, ts: datetime, latency_ms: float
    ) -> RequestEvent | None:
        """The event to log for this request, or ``None`` when the request is not an inference."""
        route = template_of(scope, self.routes)
        if capture.model is None and route not in LOGGED_ROUTES:
            return None
        state: dict[str, Any] = scope.get("state") or {}
        path_params: dict[str, Any] = scope.get("path_params") or {}
        return request_event(
            capture,
            ts=ts,
            route=route,
            status=status,
            latency_ms=latency_ms,
            model=_str_or_none(state.get(MODEL_KEY) or None),
            version=_str_or_none(path_params.get("model_version")),
            key_id=_str_or_none(state.get(KEY_ID_KEY)),
            request_id=_str_or_none(state.get(REQUEST_ID_KEY)),
        )


def monitor_routes(request_log: RequestLog | None) -> list[BaseRoute]:
    async def stats(request: Request) -> Response:
        if request_log is None:
            return JSONResponse({"enabled": False})
        return JSONResponse(request_log.stats())

    return [Route(STATS_PATH, stats, methods=["GET"])]
