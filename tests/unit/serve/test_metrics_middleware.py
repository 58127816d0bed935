from __future__ import annotations

import anyio
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kiln.serve.errors import ErrorBoundary
from kiln.serve.metrics import (
    CLIENT_CLOSED,
    UNMATCHED,
    Metrics,
    MetricsMiddleware,
    route_template,
    set_model_label,
)


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()  # the same names twice would raise on a shared registry
    a.observe_inference("m", "2", 5, 0.01)
    assert a.registry is not b.registry and a.registry is not REGISTRY
    assert samples(a, "kiln_inference_items_total") == {(("model", "m"), ("version", "2")): 5.0}
    assert samples(b, "kiln_inference_items_total") == {}


def test_observe_request_counts_and_times() -> None:
    m = Metrics()
    m.observe_request("POST", "/v2/models/{model_name}/infer", "m", "1", 200, 0.003)
    m.observe_request("POST", "/v2/models/{model_name}/infer", "m", "1", 200, 0.004)
    m.observe_request("POST", "/v2/models/{model_name}/infer", "m", "2", 200, 0.005)
    key = (
        ("method", "POST"),
        ("model", "m"),
        ("route", "/v2/models/{model_name}/infer"),
        ("status", "200"),
        ("version", "1"),
    )
    other = (*key[:4], ("version", "2"))
    assert samples(m, "kiln_http_requests_total") == {key: 2.0, other: 1.0}
    assert samples(m, "kiln_http_request_duration_seconds_count") == {key: 2.0, other: 1.0}
    assert abs(samples(m, "kiln_http_request_duration_seconds_sum")[key] - 0.007) < 1e-9


def test_route_template_falls_back_to_matching_the_router() -> None:
    route = Route("/items/{item_id}", lambda r: None)

    class Router:
        routes = [route]

    scope = {"type": "http", "path": "/items/42", "method": "GET"}
    assert route_template(scope) == UNMATCHED
    assert route_template({**scope, "router": Router()}) == "/items/{item_id}"
    assert route_template({**scope, "route": route}) == "/items/{item_id}"


async def item(request: Request) -> Response:
    set_model_label(request, "m", "3")
    if request.path_params["item_id"] == "boom":
        raise RuntimeError("boom")
    return PlainTextResponse("ok", status_code=201)


def test_middleware_labels_by_template_model_and_status() -> None:
    metrics = Metrics()
    app = Starlette(
        routes=[Route("/items/{item_id}", item)],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics), Middleware(ErrorBoundary)],
    )

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/items/1", "/items/2", "/nowhere/3", "/items/boom"):
                await client.get(path)
            await client.request("BREW", "/items/1")

    anyio.run(main)
    counts = samples(metrics, "kiln_http_requests_total")
    V3, NO_V = ("version", "3"), ("version", "")  # noqa: N806
    assert counts == {
        (("method", "GET"), ("model", "m"), ("route", "/items/{item_id}"), ("status", "201"), V3): 2.0,
        (("method", "GET"), ("model", ""), ("route", UNMATCHED), ("status", "404"), NO_V): 1.0,
        (("method", "GET"), ("model", "m"), ("route", "/items/{item_id}"), ("status", "500"), V3): 1.0,
        (("method", "other"), ("model", ""), ("route", "/items/{item_id}"), ("status", "405"), NO_V): 1.0,
    }


def test_unanswered_requests_count_as_client_closed_and_crashes_as_500() -> None:
    metrics = Metrics()

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None  # what ErrorBoundary does when the client went away

    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("escaped")

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "http", "method": "POST", "path": "/x"}
    anyio.run(MetricsMiddleware(silent, metrics), scope, receive, send)
    with pytest.raises(RuntimeError, match="escaped"):
        anyio.run(MetricsMiddleware(crash, metrics), scope, receive, send)
    key = (("method", "POST"), ("model", ""), ("route", UNMATCHED))
    assert samples(metrics, "kiln_http_requests_total") == {
        (*key, ("status", str(CLIENT_CLOSED)), ("version", "")): 1.0,
        (*key, ("status", "500"), ("version", "")): 1.0,
    }
