"""Prometheus metrics on a registry owned by one app (never the process-global one).

    kiln_http_requests_total{method, route, model, version, status}            HTTP requests answered
    kiln_http_request_duration_seconds{method, route, model, version, status}  wall time per request
    kiln_grpc_requests_total{method, model, version, code}                     gRPC calls answered
    kiln_grpc_request_duration_seconds{method, model, version, code}           wall time per call
    kiln_inference_items_total{model, version}                                 texts run through the model
    kiln_inference_tokens_total{model, version}                                their tokens (after truncation)
    kiln_inference_duration_seconds{model, version}                            model time per batch
    kiln_batch_size{model, version}                                            texts per call (histogram)
    kiln_queue_depth{model, version}                                           texts queued (gauge)

``route`` is the route template (``/v2/models/{model_name}/infer``), never the raw path; ``method`` of a gRPC
call is the RPC's name (``ModelInfer``) and ``code`` its status code name (``OK``, ``INVALID_ARGUMENT`` ...).
``model`` is the served model's canonical name and ``version`` the version that answered (both empty when a
request names no served model, or fails before one is chosen), so label sets stay small. Errors are the
series with ``status`` >= 400 (HTTP) or ``code`` other than ``OK`` (gRPC).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MODEL_KEY = "kiln_model"
VERSION_KEY = "kiln_model_version"
UNMATCHED = "<unmatched>"
CLIENT_CLOSED = 499  # no response was sent: the client went away (nginx's convention)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "model", "version", "status")
        self.requests = Counter(
            "kiln_http_requests_total", "HTTP requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "kiln_http_request_duration_seconds",
            "HTTP request wall time, from the first byte received to the last byte sent",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        grpc_labels = ("method", "model", "version", "code")
        self.grpc_requests = Counter(
            "kiln_grpc_requests_total", "gRPC calls answered", grpc_labels, registry=self.registry
        )
        self.grpc_latency = Histogram(
            "kiln_grpc_request_duration_seconds",
            "gRPC call wall time in the server, from the request decoded to the answer ready",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        per_version = ("model", "version")
        self.items = Counter(
            "kiln_inference_items_total", "texts run through the model", per_version, registry=self.registry
        )
        self.tokens = Counter(
            "kiln_inference_tokens_total",
            "tokens of the texts run through the model (after truncation, no padding)",
            per_version,
            registry=self.registry,
        )
        self.inference = Histogram(
            "kiln_inference_duration_seconds",
            "model time per inference batch",
            per_version,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kiln_batch_size",
            "texts per model call (one batch may hold texts from several requests)",
            per_version,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "kiln_queue_depth", "texts waiting for a batch", per_version, registry=self.registry
        )

    def observe_request(
        self, method: str, route: str, model: str, version: str, status: int, seconds: float
    ) -> None:
        labels = {"method": method, "route": route, "model": model, "version": version, "status": str(status)}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)

    def observe_grpc(self, method: str, model: str, version: str, code: str, seconds: float) -> None:
        labels = {"method": method, "model": model, "version": version, "code": code}
        self.grpc_requests.labels(**labels).inc()
        self.grpc_latency.labels(**labels).observe(seconds)

    def observe_inference(self, model: str, version: str, items: int, seconds: float) -> None:
        self.items.labels(model=model, version=version).inc(items)
        self.inference.labels(model=model, version=version).observe(seconds)
        self.batch_size.labels(model=model, version=version).observe(items)

    def observe_tokens(self, model: str, version: str, tokens: int) -> None:
        self.tokens.labels(model=model, version=version).inc(tokens)

    def observe_queue(self, model: str, version: str, depth: int) -> None:
        self.queue_depth.labels(model=model, version=version).set(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        return Response(self.render(), media_type=CONTENT_TYPE_LATEST)


def set_model_label(request: Request, model: str, version: str | None = None) -> None:
    """Record which served model (and version, once known) a request was for; adapters call this once the
    name is resolved, and again with the version that answered."""
    state = request.scope.setdefault("state", {})
    state[MODEL_KEY] = model
    if version is not None:
        state[VERSION_KEY] = version


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    if route is None:  # older Starlette does not record the matched route: match again
        router = scope.get("router")
        for candidate in getattr(router, "routes", ()):
            if candidate.matches(scope)[0] is Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """ASGI middleware: counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def send_tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            status = status or 500
            raise
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            method = scope.get("method", "")
            self.metrics.observe_request(
                method if method in METHODS else "other",
                route_template(scope),
                str(state.get(MODEL_KEY, "")),
                str(state.get(VERSION_KEY, "")),
                status or CLIENT_CLOSED,
                time.perf_counter() - start,
            )
