"""``inference.GRPCInferenceService`` (Open Inference Protocol v2 over gRPC) over the dataplane.

Runs on ``grpc.aio``: inference awaits ``DataPlane.ainfer``, so the event loop, and with it the health
RPCs, stays responsive while a batch is computed. kiln errors map to gRPC status codes:

UnknownModelError       NOT_FOUND
PayloadTooLargeError    RESOURCE_EXHAUSTED  (too many texts; a message over the size limit gets the same
                                             code from gRPC itself)
OverloadedError         RESOURCE_EXHAUSTED  (queue full; trailing metadata ``retry-after: <seconds>``)
RateLimitedError        RESOURCE_EXHAUSTED  (the API key's rate; trailing metadata ``retry-after``)
AuthError               UNAUTHENTICATED     (no API key in the metadata, or an unknown one)
ForbiddenError          PERMISSION_DENIED   (the key's scopes do not cover the method or model)
other RequestError      INVALID_ARGUMENT
anything else           INTERNAL, generic message; the traceback goes to the server log only

Every call gets a request id (trailing metadata ``x-request-id``), an access-log line, Prometheus metrics
and, for ModelInfer with a request log kept, a request-log row: see ``calls.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from kiln import __version__
from kiln.errors import (
    AuthError,
    ForbiddenError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestError,
    UnknownModelError,
)
from kiln.serve.auth import GRPC_ROUTES, Guard, key_from_metadata
from kiln.serve.dataplane import DataPlane
from kiln.serve.grpc import codec
from kiln.serve.grpc import grpc_predict_v2_pb2 as pb
from kiln.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kiln.serve.grpc.calls import CallObserver, note_key, note_model
from kiln.serve.keys import ADMIN_ROUTES
from kiln.serve.models import output_arrays
from kiln.serve.v2_codec import InferRequest
from kiln.serve.v2_images import ImageInferRequest
from kiln.tasks.image_classify_config import TASK_NAME as IMAGE_CLASSIFY

log = logging.getLogger("kiln.serve")

SERVER_NAME = "kiln"
EXTENSIONS: tuple[str, ...] = ()
"""gRPC extensions served (``binary_tensor_data`` is REST's; raw contents are core gRPC)."""
INTERNAL_MESSAGE = "internal server error; the server log has the details"
REQUEST_ID_METADATA = "x-request-id"
GRACE_SECONDS = 10.0

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Handler = Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message a failed RPC answers with."""
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, (PayloadTooLargeError, OverloadedError, RateLimitedError)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, ForbiddenError):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, RequestError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _mapped_errors(handler: _Handler[_Request, _Response]) -> _Handler[_Request, _Response]:
    """Turn an exception raised by ``handler`` into the RPC's status (``status_for``)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: _Request, context: grpc.aio.ServicerContext) -> _Response:
        observer: CallObserver = self.observer
        call = observer.begin(handler.__name__, context.invocation_metadata(), request)
        trailing: list[tuple[str, str]] = [(REQUEST_ID_METADATA, call.request_id)]
        failure: BaseException | None = None
        try:
            await self.authorize(handler.__name__, request, context)
            response = await handler(self, request, context)
            context.set_trailing_metadata(tuple(trailing))
            return response
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError as exc:  # the client cancelled or went away
            failure = exc
            raise
        except Exception as exc:
            failure = exc
            code, message = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.error("gRPC %s failed", handler.__name__, exc_info=exc)
            if isinstance(exc, (OverloadedError, RateLimitedError)):
                trailing.append(("retry-after", str(exc.retry_after)))
            context.set_trailing_metadata(tuple(trailing))
            await context.abort(code, message)
            raise AssertionError("unreachable: context.abort raises") from None
        finally:
            observer.end(call, failure)

    return wrapper


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the Open Inference Protocol's gRPC API, over one dataplane."""

    def __init__(
        self, dataplane: DataPlane, guard: Guard | None = None, observer: CallObserver | None = None
    ) -> None:
        self.dataplane = dataplane
        self.guard = guard
        self.observer = observer or CallObserver()

    async def authorize(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        """With API keys configured: the metadata's key must cover ``method`` (and its model), within rate."""
        group = GRPC_ROUTES.get(method, ADMIN_ROUTES)
        if self.guard is None or group is None:
            return
        key = await self.guard.authenticate(key_from_metadata(context.invocation_metadata()))
        note_key(key.id)
        self.guard.authorize_route(key, group)
        self.guard.admit(key)
        name = getattr(request, "model_name", None) or getattr(request, "name", None)
        if isinstance(name, str) and method.startswith("Model"):
            self.guard.authorize_model(key, self.dataplane.resolve(name).name)

    @_mapped_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.is_live())

    @_mapped_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.is_ready())

    @_mapped_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        info = self.dataplane.resolve(request.name, request.version or None)
        note_model(info.name, info.version)
        return pb.ModelReadyResponse(ready=self.dataplane.is_ready(info.name, request.version or None))

    @_mapped_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS))

    @_mapped_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        info = self.dataplane.resolve(request.name, request.version or None)
        note_model(info.name, info.version)
        return codec.model_metadata(info)

    @_mapped_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        info = self.dataplane.route(request.model_name, request.model_version or None)
        note_model(info.name, info.version)
        parsed: InferRequest | ImageInferRequest
        if info.task == IMAGE_CLASSIFY:
            parsed = codec.parse_image_infer_request(request, info)
            result = await self.dataplane.ainfer_images(info.name, parsed.images, version=info.version)
        else:
            parsed = codec.parse_infer_request(request, info)
            result = await self.dataplane.ainfer(info.name, parsed.texts, version=info.version)
        arrays = output_arrays(info, result.embeddings)
        tensors = [(out, arrays[out.name]) for out in parsed.outputs]
        version = result.version
        return codec.encode_infer_response(info.name, version, parsed.id, tensors)


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def create_grpc_server(
    dataplane: DataPlane,
    max_message_bytes: int,
    guard: Guard | None = None,
    observer: CallObserver | None = None,
) -> grpc.aio.Server:
    """A ``grpc.aio`` server (not yet bound or started) serving ``dataplane`` (API keys: ``guard``;
    access log, metrics and request log: ``observer``, default an access log only).

    Call it with an event loop running. A request message over ``max_message_bytes`` is refused by gRPC
    with RESOURCE_EXHAUSTED before it reaches kiln.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port already in use is an error, never silently shared
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(dataplane, guard, observer), server)
    return server


def tls_credentials(certfile: Path, keyfile: Path) -> grpc.ServerCredentials:
    """Server TLS credentials from PEM files (the same pair uvicorn gets)."""
    return grpc.ssl_server_credentials([(Path(keyfile).read_bytes(), Path(certfile).read_bytes())])


def bind(
    server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Listen on ``host:port`` (port 0: any free port; TLS with ``credentials``); the port bound, or
    ``OSError`` saying why not."""
    where = address(host, port)
    try:
        if credentials is not None:
            bound = int(server.add_secure_port(where, credentials))
        else:
            bound = int(server.add_insecure_port(where))
    except RuntimeError as exc:  # grpc reports "Failed to bind to address ..." as RuntimeError
        raise OSError(f"cannot listen for gRPC on {where}: {exc} (is the port in use?)") from None
    if bound == 0:  # older grpc versions return 0 instead of raising
        raise OSError(f"cannot listen for gRPC on {where} (is the port in use?)")
    return bound
