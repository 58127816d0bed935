"""The request log's HTTP side: a middleware that records each inference request, and the stats route.

``RequestLogMiddleware`` (pure ASGI, outside the error boundary so it sees the final status) opens a
capture for the request (``kiln.monitor.capture``), lets the dataplane fill it in, and after the response
hands one ``RequestEvent`` to the ``RequestLog`` queue: time, model and version, route template, status,
latency, key id (``request.state.key_id``, set by the auth middleware; never the key), request id (set by
the access-log middleware, echoed in ``X-Request-ID``), inputs and tokens,
and, for a sampled request, its texts and outputs. Recording never fails nor delays a request: the
writer thread does the hashing and the I/O.

Logged: every request that ran an inference, and every request to an inference route (``LOGGED_ROUTES``)
whatever its outcome (400, 404, 413, 429 ...). Health probes, metadata and /metrics are not logged.

``GET /v2/monitor/stats``: the log's counters as JSON (committed, dropped by reason, queued ...), or
``{"enabled": false}`` when the server keeps no log.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.monitor.capture import Capture, close_capture, open_capture
from kiln.serve.access_log import REQUEST_ID_KEY
from kiln.serve.metrics import CLIENT_CLOSED, MODEL_KEY, route_template

if TYPE_CHECKING:
    from kiln.monitor.requestlog import RequestEvent, RequestLog

log = logging.getLogger("kiln.serve")

STATS_PATH = "/v2/monitor/stats"
LOGGED_ROUTES = frozenset(
    {
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v1/embeddings",
    }
)


def _key_id(state: dict[str, Any]) -> str | None:
    key_id = state.get("key_id")
    return None if key_id is None else str(key_id)


class RequestLogMiddleware:
    """ASGI middleware: one ``RequestEvent`` per inference request, queued on ``request_log``."""

    def __init__(
        self,
        app: ASGIApp,
        request_log: RequestLog,
        sample: float,
        draw: Callable[[], float] = random.random,
    ) -> None:
        from kiln.monitor.requestlog import RequestEvent  # here, not at import: SQLAlchemy only when logging

        self.app = app
        self.request_log = request_log
        self.sample = sample
        self.draw = draw
        self._event = RequestEvent
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
        route = route_template(scope)
        if capture.model is None and route not in LOGGED_ROUTES:
            return None
        state: dict[str, Any] = scope.get("state") or {}
        model = capture.model or state.get(MODEL_KEY) or None
        path_params: dict[str, Any] = scope.get("path_params") or {}
        version = capture.version or path_params.get("model_version")
        sampled = capture.sampled and bool(capture.texts)
        embeddings = None
        if sampled and capture.embeddings:
            embeddings = (
                capture.embeddings[0] if len(capture.embeddings) == 1 else np.concatenate(capture.embeddings)
            )
        return self._event(
            ts=ts,
            route=route,
            status=status,
            latency_ms=latency_ms,
            model=None if model is None else str(model),
            version=None if version is None else str(version),
            key_id=_key_id(state),
            request_id=None if state.get(REQUEST_ID_KEY) is None else str(state[REQUEST_ID_KEY]),
            n_inputs=capture.n_inputs,
            n_tokens=capture.n_tokens,
            sampled=sampled,
            texts=capture.texts if sampled else (),
            tokens=capture.tokens if sampled else (),
            embeddings=embeddings,
            labels=capture.labels if sampled else (),
            scores=capture.scores if sampled else (),
        )


def monitor_routes(request_log: RequestLog | None) -> list[BaseRoute]:
    async def stats(request: Request) -> Response:
        if request_log is None:
            return JSONResponse({"enabled": False})
        return JSONResponse(request_log.stats())

    return [Route(STATS_PATH, stats, methods=["GET"])]
