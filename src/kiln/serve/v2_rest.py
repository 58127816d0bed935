"""Open Inference Protocol v2 REST (KServe v2 / Triton): a thin adapter over the dataplane."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln import __version__
from kiln.serve.body import read_body
from kiln.serve.dataplane import DEFAULT_VERSION, DataPlane, ModelInfo, TensorSpec
from kiln.serve.metrics import set_model_label
from kiln.serve.v2_codec import HEADER_LENGTH, encode_infer_response, parse_infer_request

SERVER_NAME = "kiln"
EXTENSIONS = ("binary_tensor_data",)


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
    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes

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
        ]

    def _resolve(self, request: Request) -> tuple[ModelInfo, str]:
        version = request.path_params.get("model_version")
        info = self.dataplane.resolve(request.path_params["model_name"], version)
        set_model_label(request, info.name)
        return info, version or DEFAULT_VERSION

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})

    async def live(self, request: Request) -> Response:
        live = self.dataplane.is_live()
        return JSONResponse({"live": live}, status_code=200 if live else 503)

    async def ready(self, request: Request) -> Response:
        ready = self.dataplane.is_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def metadata(self, request: Request) -> Response:
        info, _ = self._resolve(request)
        return JSONResponse(model_metadata(info))

    async def model_ready(self, request: Request) -> Response:
        info, version = self._resolve(request)
        ready = self.dataplane.is_ready(info.name, version)
        return JSONResponse({"name": info.name, "ready": ready}, status_code=200 if ready else 503)

    async def infer(self, request: Request) -> Response:
        info, version = self._resolve(request)
        body = await read_body(request, self.max_request_bytes)
        parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), info)
        result = await self.dataplane.ainfer(info.name, parsed.texts)
        arrays = {info.outputs[0].name: result.embeddings}
        tensors = [(out, arrays[out.name]) for out in parsed.outputs]
        content, header_length = encode_infer_response(info.name, version, parsed.id, tensors)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(
            content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
        )
