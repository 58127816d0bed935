from __future__ import annotations

import logging

import anyio
import httpx
import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from kiln.errors import (
    BundleError,
    InvalidInputError,
    KilnError,
    PayloadTooLargeError,
    RequestError,
    UnknownModelError,
)
from kiln.serve.errors import INTERNAL_MESSAGE, ErrorBoundary, error_body, status_for


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidInputError("x"), 400),
        (RequestError("x"), 400),
        (PayloadTooLargeError("x"), 413),
        (UnknownModelError("x"), 404),
        (BundleError("x"), 500),
        (KilnError("x"), 500),
        (ValueError("x"), 500),
    ],
)
def test_status_for(exc: Exception, status: int) -> None:
    assert status_for(exc) == status


def test_v2_error_shape() -> None:
    assert error_body("/v2/models/m/infer", 400, "bad tensor") == {"error": "bad tensor"}
    assert error_body("/metrics", 500, "boom") == {"error": "boom"}


def test_openai_error_shape() -> None:
    assert error_body("/v1/embeddings", 404, "unknown model", "model") == {
        "error": {
            "message": "unknown model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    body = error_body("/v1/embeddings", 500, "oops")
    assert body["error"]["type"] == "server_error" and body["error"]["param"] is None
    assert error_body("/v1/embeddings", 413, "big")["error"]["code"] == "request_too_large"


async def crash_before_response(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("secret detail /home/user/model.onnx")


async def crash_after_response(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("too late")


def call(app: object, path: str) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path)

    return anyio.run(main)


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v1/embeddings"])
def test_boundary_turns_a_crash_into_json_500_without_the_detail(path: str, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="kiln.serve"):
        response = call(ErrorBoundary(crash_before_response), path)
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    message = response.json()["error"]
    assert (message["message"] if isinstance(message, dict) else message) == INTERNAL_MESSAGE
    assert "secret detail" in caplog.text  # the log keeps the details


def test_boundary_swallows_a_client_disconnect() -> None:
    sent: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise ClientDisconnect()

    async def send(message: object) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    anyio.run(ErrorBoundary(app), {"type": "http", "method": "POST", "path": "/v2"}, receive, send)
    assert sent == []


def test_boundary_reraises_when_the_response_already_started() -> None:
    with pytest.raises(RuntimeError, match="too late"):
        call(ErrorBoundary(crash_after_response), "/v2")
