"""kiln errors -> HTTP status codes and each protocol's JSON error shape (the only such mapping in kiln).

AuthError               401, with ``WWW-Authenticate: Bearer``
ForbiddenError          403
UnknownModelError       404
PayloadTooLargeError    413
OverloadedError         429, with ``Retry-After: <seconds>``
RateLimitedError        429, with ``Retry-After: <seconds>``
other RequestError      400
anything else           500, generic message; the traceback goes to the server log only

/v1/... (OpenAI)        {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
everything else (v2)    {"error": "..."}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.errors import (
    AuthError,
    ForbiddenError,
    KilnError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestError,
    UnknownModelError,
)

log = logging.getLogger("kiln.serve")

INTERNAL_MESSAGE = "internal server error; the server log has the details"
OPENAI_PREFIX = "/v1/"


class ParamError(Exception):
    """A request error tagged with the request field it concerns (OpenAI's ``param``)."""

    def __init__(self, error: KilnError, param: str | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.param = param


def status_for(exc: BaseException) -> int:
    if isinstance(exc, UnknownModelError):
        return 404
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, (OverloadedError, RateLimitedError)):
        return 429
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, RequestError):
        return 400
    return 500


def headers_for(exc: BaseException) -> dict[str, str] | None:
    """Response headers an error needs: ``Retry-After`` for 429s, ``WWW-Authenticate`` for 401s."""
    if isinstance(exc, (OverloadedError, RateLimitedError)):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, AuthError):
        return {"WWW-Authenticate": "Bearer"}
    return None


def _openai_code(status: int) -> str | None:
    return {
        401: "invalid_api_key",
        403: "permission_denied",
        404: "model_not_found",
        413: "request_too_large",
        429: "rate_limit_exceeded",
    }.get(status)


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    if not path.startswith(OPENAI_PREFIX):
        return {"error": message}
    return {
        "error": {
            "message": message,
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": param,
            "code": _openai_code(status),
        }
    }


def error_response(
    path: str,
    status: int,
    message: str,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param), status_code=status, headers=headers)


def _kiln_response(request: Request, exc: BaseException, param: str | None = None) -> JSONResponse:
    status = status_for(exc)
    if status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(request.url.path, status, INTERNAL_MESSAGE)
    headers = headers_for(exc)
    if headers is not None:  # overloaded, rate-limited, no key: no field of the request is at fault
        return error_response(request.url.path, status, str(exc), None, headers)
    return error_response(request.url.path, status, str(exc), param)


async def _on_kiln_error(request: Request, exc: Exception) -> Response:
    return _kiln_response(request, exc)


async def _on_param_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ParamError)
    return _kiln_response(request, exc.error, exc.param)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        message = f"no route for {method} {path}: see GET /v2 (Open Inference Protocol) or GET /v1/models"
    elif exc.status_code == 405:
        message = f"{method} is not allowed on {path}"
    else:
        message = str(exc.detail)
    return error_response(path, exc.status_code, message, headers=exc.headers)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    KilnError: _on_kiln_error,
    ParamError: _on_param_error,
    HTTPException: _on_http_exception,
}


class ErrorBoundary:
    """ASGI middleware: an unexpected exception becomes a 500 JSON error; the traceback is only logged.

    A client that goes away mid-request is not an error: nothing is sent and nothing is raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except ClientDisconnect:
            log.info("client disconnected during %s %s", scope.get("method"), scope.get("path", ""))
        except Exception:
            path = scope.get("path", "")
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if started:
                raise
            await error_response(path, 500, INTERNAL_MESSAGE)(scope, receive, send)
