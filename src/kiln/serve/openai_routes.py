"""OpenAI-compatible ``POST /v1/embeddings`` and ``GET /v1/models``: a thin adapter over the dataplane."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kiln.errors import InvalidInputError, RequestError
from kiln.serve.body import read_body
from kiln.serve.dataplane import DataPlane, ModelInfo
from kiln.serve.errors import ParamError
from kiln.serve.fast_json import FastJSONResponse
from kiln.serve.metrics import set_model_label
from kiln.serve.route_models import resolve_model
from kiln.serve.v2_codec import parse_json_object

OWNER = "kiln"


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: StrictStr | list[StrictStr]
    model: StrictStr
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: StrictInt | None = None
    user: StrictStr | None = None


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    param = str(first["loc"][0]) if first["loc"] else None
    if param == "input":
        return "'input' must be a string or a list of strings (token-id arrays are not supported)", param
    if first["type"] == "missing":
        return f"'{param}' is required", param
    return f"'{param}': {first['msg']}", param


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    doc = parse_json_object(body)
    try:
        return EmbeddingsRequest.model_validate(doc)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise ParamError(InvalidInputError(message), param) from None


def encode_embedding(vector: np.ndarray, encoding_format: str | None) -> list[float] | str:
    """A float list, or (``base64``) the little-endian float32 bytes in base64, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    floats: list[float] = np.asarray(vector, dtype=np.float32).tolist()
    return floats


def embeddings_response(
    model: str, embeddings: np.ndarray, encoding_format: str | None, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_embedding(row, encoding_format)}
            for i, row in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.name, "object": "model", "created": info.created, "owned_by": OWNER}


class OpenAIAdapter:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model_name}", self.get_model, methods=["GET"]),
        ]

    async def list_models(self, request: Request) -> Response:
        return FastJSONResponse({"object": "list", "data": [model_card(i) for i in self.dataplane.models()]})

    async def get_model(self, request: Request) -> Response:
        return FastJSONResponse(
            model_card(resolve_model(self.dataplane, request, request.path_params["model_name"]))
        )

    async def embeddings(self, request: Request) -> Response:
        body = await read_body(request, self.max_request_bytes)
        req = parse_embeddings_request(body)
        info = resolve_model(self.dataplane, request, req.model)
        if info.task != "embed":
            raise ParamError(
                InvalidInputError(
                    f"model {info.name!r} is a {info.task!r} model; /v1/embeddings serves embed models"
                    + (" (use /v1/classify)" if info.task == "classify" else "")
                    + (" (use /v1/images/classify)" if info.task == "image-classify" else "")
                ),
                "model",
            )
        if req.dimensions is not None and req.dimensions != info.dimension:
            raise ParamError(
                InvalidInputError(
                    f"model {info.name!r} returns {info.dimension}-dimensional embeddings; "
                    f"dimensions={req.dimensions} is not supported (leave it out)"
                ),
                "dimensions",
            )
        texts = [req.input] if isinstance(req.input, str) else req.input
        try:
            result = await self.dataplane.ainfer(info.name, texts, with_tokens=True)
        except RequestError as exc:
            raise ParamError(exc, "input") from None
        set_model_label(request, info.name, result.version)
        tokens = result.prompt_tokens or 0
        return FastJSONResponse(
            embeddings_response(info.name, result.embeddings, req.encoding_format, tokens)
        )
