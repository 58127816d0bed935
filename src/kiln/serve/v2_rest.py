"""Open Inference Protocol v2 REST (KServe v2 / Triton): a thin adapter over the dataplane.

Model versions: ``/v2/models/{m}/versions/{v}`` (metadata), ``.../ready`` and ``.../infer`` address one
loaded version; the unversioned routes use the stable version (infer: the stable or, by its weight, the
canary version; the response's ``model_version`` says which). Image models (``image-classify``) take
image files or preprocessed images instead of texts: see ``v2_images``.

Model repository (Triton's extension), when the app has a ``ModelRepository``:
``POST /v2/repository/index`` (``GET`` too), ``POST /v2/repository/models/{m}/load`` and
``POST /v2/repository/models/{m}/unload``. These are admin operations: their routes are named in
``ADMIN_ROUTE_NAMES`` and live under ``ADMIN_PATH_PREFIX``, so that auth can guard them.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kiln import __version__
from kiln.errors import KilnError, RequestError
from kiln.serve.auth import authorize_model
from kiln.serve.body import read_body
from kiln.serve.dataplane import DataPlane, ModelInfo, TensorSpec
from kiln.serve.errors import error_response
from kiln.serve.fast_json import FastJSONResponse
from kiln.serve.metrics import set_model_label
from kiln.serve.models import output_arrays
from kiln.serve.repository import ModelRepository
from kiln.serve.v2_codec import (
    HEADER_LENGTH,
    InferRequest,
    encode_infer_response,
    parse_infer_request,
    parse_json_object,
)
from kiln.serve.v2_images import ImageInferRequest, parse_image_infer_request
from kiln.tasks.image_classify_config import TASK_NAME as IMAGE_CLASSIFY

SERVER_NAME = "kiln"
EXTENSIONS = ("binary_tensor_data",)
REPOSITORY_EXTENSION = "model_repository"
ADMIN_PATH_PREFIX = "/v2/repository/"
ADMIN_ROUTE_NAMES = frozenset({"v2_repository_index", "v2_repository_load", "v2_repository_unload"})
"""Routes that change or reveal what the server loads: the auth layer guards these."""


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": list(info.versions),
        "platform": info.platform,
        "inputs": [_tensor(t) for t in info.inputs],
        "outputs": [_tensor(t) for t in info.outputs],
    }


class V2Adapter:
    def __init__(
        self, dataplane: DataPlane, max_request_bytes: int, repository: ModelRepository | None = None
    ) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self.repository = repository

    def routes(self) -> list[BaseRoute]:
        model = "/v2/models/{model_name}"
        versioned = model + "/versions/{model_version}"
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route(model, self.metadata, methods=["GET"]),
            Route(versioned, self.metadata, methods=["GET"]),
            Route(model + "/ready", self.model_ready, methods=["GET"]),
            Route(versioned + "/ready", self.model_ready, methods=["GET"]),
            Route(model + "/infer", self.infer, methods=["POST"]),
            Route(versioned + "/infer", self.infer, methods=["POST"]),
            *self.repository_routes(),
        ]

    def repository_routes(self) -> list[BaseRoute]:
        if self.repository is None:
            return []
        repo = "/v2/repository/models/{model_name}"
        return [
            Route(
                "/v2/repository/index",
                self.repository_index,
                methods=["GET", "POST"],
                name="v2_repository_index",
            ),
            Route(repo + "/load", self.repository_load, methods=["POST"], name="v2_repository_load"),
            Route(repo + "/unload", self.repository_unload, methods=["POST"], name="v2_repository_unload"),
        ]

    def _resolve(self, request: Request, routed: bool = False) -> tuple[ModelInfo, str]:
        version = request.path_params.get("model_version")
        find = self.dataplane.route if routed else self.dataplane.resolve
        info = find(request.path_params["model_name"], version)
        set_model_label(request, info.name, info.version)
        authorize_model(request, info.name)  # the API key's model scope (no-op without keys)
        return info, info.version

    async def server_metadata(self, request: Request) -> Response:
        extensions = [*EXTENSIONS, *([REPOSITORY_EXTENSION] if self.repository is not None else [])]
        return FastJSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": extensions})

    async def live(self, request: Request) -> Response:
        live = self.dataplane.is_live()
        return FastJSONResponse({"live": live}, status_code=200 if live else 503)

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.is_ready()
        return FastJSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def metadata(self, request: Request) -> Response:
        info, _ = self._resolve(request)
        return FastJSONResponse(model_metadata(info))

    async def model_ready(self, request: Request) -> Response:
        info, version = self._resolve(request)
        ready = self.dataplane.is_ready(info.name, version)
        return FastJSONResponse({"name": info.name, "ready": ready}, status_code=200 if ready else 503)

    async def infer(self, request: Request) -> Response:
        info, version = self._resolve(request, routed=True)
        body = await read_body(request, self.max_request_bytes)
        declared = request.headers.get(HEADER_LENGTH)
        parsed: InferRequest | ImageInferRequest
        if info.task == IMAGE_CLASSIFY:
            parsed = parse_image_infer_request(body, declared, info)
            result = await self.dataplane.ainfer_images(info.name, parsed.images, version=version)
        else:
            parsed = parse_infer_request(body, declared, info)
            result = await self.dataplane.ainfer(info.name, parsed.texts, version=version)
        arrays = output_arrays(info, result.embeddings)
        tensors = [(out, arrays[out.name]) for out in parsed.outputs]
        content, header_length = encode_infer_response(info.name, version, parsed.id, tensors)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
        )

    # -- model repository (admin) ---------------------------------------------------------------------
    def _repository(self) -> ModelRepository:
        assert self.repository is not None
        return self.repository

    async def _parameters(self, request: Request) -> dict[str, Any]:
        """The optional JSON body's ``parameters`` (tritonclient sends an empty body or ``{}``)."""
        body = await read_body(request, self.max_request_bytes)
        if not body.strip():
            return {}
        doc = parse_json_object(body)
        params = doc.get("parameters", {})
        return {**doc, **params} if isinstance(params, dict) else dict(doc)

    async def repository_index(self, request: Request) -> Response:
        ready_only = False
        if request.method == "POST":
            ready_only = (await self._parameters(request)).get("ready") is True
        rows = await anyio.to_thread.run_sync(self._repository().index, ready_only)
        return FastJSONResponse(
            [{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows]
        )

    async def repository_load(self, request: Request) -> Response:
        name = request.path_params["model_name"]
        params = await self._parameters(request)
        unsupported = sorted(k for k in params if k == "config" or k.startswith("file:"))
        if unsupported:
            return error_response(
                request.url.path,
                400,
                f"load parameters {', '.join(unsupported)} are not supported: kiln loads bundles from its "
                "repository folders only (put the bundle there, then load it by name)",
            )
        try:
            versions = await anyio.to_thread.run_sync(self._repository().load, name)
        except RequestError:
            raise
        except KilnError as exc:  # the bundle on disk is at fault, not the request: say why
            return error_response(
                request.url.path,
                400,
                f"failed to load model {name!r}: {exc} (the versions served before, if any, keep serving)",
            )
        return FastJSONResponse({"name": name, "versions": versions})

    async def repository_unload(self, request: Request) -> Response:
        name = request.path_params["model_name"]
        await self._parameters(request)  # a malformed body is still an error
        await anyio.to_thread.run_sync(self._repository().unload, name)
        return FastJSONResponse({"name": name, "unloaded": True})
