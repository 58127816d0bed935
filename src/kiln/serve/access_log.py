"""Request ids and the structured access log: one JSON line per request on the ``kiln.access`` logger.

    {"time": "2024-01-02T03:04:05.678Z", "request_id": "…", "method": "POST",
     "route": "/v2/models/{model_name}/infer", "model": "tiny-embed", "status": 200,
     "latency_ms": 3.21, "key_id": "alice"}

``route`` is the route template, never the raw path; ``model`` the served model's canonical name (null when
the request named none); ``key_id`` the id of the API key used (null without one). The key itself, query
strings, headers and payloads are never logged.

gRPC calls get the same line (``kiln.serve.grpc.calls``): ``method`` ``"GRPC"``, ``route`` the RPC's full
name, ``status`` the HTTP status REST would answer for the same outcome, plus ``grpc_code``.

Request ids: a client's ``X-Request-ID`` is kept when it is 1-128 printable ASCII characters without spaces,
else the server makes one (32 hex digits: a random per-process prefix and a counter, unique without
asking the OS for randomness per request); either way the response carries it in ``X-Request-ID``.

The HTTP middleware logs an :class:`AccessLine`, which becomes its JSON text only when a handler formats
it: with ``kiln serve``'s own logging that happens on a writer thread (``kiln.serve.server``), so the
event loop neither formats nor writes access lines.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.serve.metrics import CLIENT_CLOSED, MODEL_KEY, UNMATCHED, route_template

ACCESS_LOGGER = "kiln.access"
REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_KEY = "kiln_request_id"
"""``request.state`` attribute holding the request id."""
KEY_ID_KEY = "kiln_key_id"
"""``request.state`` attribute holding the API key id (set by the auth middleware)."""
_VALID_ID = re.compile(r"^[\x21-\x7e]{1,128}$")

access_log = logging.getLogger(ACCESS_LOGGER)
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def request_id(header: str | None) -> str:
    """The client's request id if it is acceptable, else a fresh one (32 hex digits)."""
    if header is not None and _VALID_ID.match(header):
        return header
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def access_line(
    *,
    request_id: str,
    method: str,
    route: str,
    model: str | None,
    status: int | str,
    latency_ms: float,
    key_id: str | None,
    at: float | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """One access-log line (JSON, no spaces); ``at`` is the Unix time (default: now); ``extra``: more
    fields after the standard ones (a gRPC call's ``grpc_code``)."""
    when = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    record: dict[str, Any] = {
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "request_id": request_id,
        "method": method,
        "route": route,
        "model": model or None,
        "status": status,
        "latency_ms": round(latency_ms, 3),
        "key_id": key_id,
        **(extra or {}),
    }
    return json.dumps(record, separators=(",", ":"))


class AccessLine:
    """An access-log line whose JSON text (:func:`access_line`) is made when a handler formats the record
    (``str()``), not when the request ends; the time is taken when it is made."""

    __slots__ = ("fields", "at")

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self.at = time.time()

    def __str__(self) -> str:
        return access_line(at=self.at, **self.fields)


def template_of(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The route template of a request, also of one refused before routing (auth): matched on ``routes``."""
    template = route_template(scope)
    if template != UNMATCHED:
        return template
    for route in routes:  # refused before routing (auth): match here
        match, _ = route.matches(scope)
        path = getattr(route, "path", None)
        if match is not Match.NONE and isinstance(path, str):
            return path
    return UNMATCHED


class AccessLogMiddleware:
    """ASGI middleware: gives each HTTP request an id, echoes it, and logs one access line when done.

    ``routes`` (the app's) name the route template of requests refused before routing; ``enabled=False``
    keeps the request ids and skips the log line.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = (), enabled: bool = True) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(Headers(scope=scope).get(REQUEST_ID_HEADER))
        state: dict[str, Any] = scope.setdefault("state", {})
        state[REQUEST_ID_KEY] = rid
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = status or 500
            raise
        finally:
            if self.enabled:
                access_log.info(
                    AccessLine(
                        request_id=rid,
                        method=str(scope.get("method", "")),
                        route=template_of(scope, self.routes),
                        model=state.get(MODEL_KEY),
                        status=status or CLIENT_CLOSED,
                        latency_ms=(time.perf_counter() - start) * 1000.0,
                        key_id=state.get(KEY_ID_KEY),
                    )
                )
