"""``GET /openapi.json``: an OpenAPI 3.0 document of the HTTP routes, for clients and contract tests.

It is written here, route by route (Starlette generates none), and built on each request from the models
served at that moment: path parameters ``model_name`` and ``model_version`` list the served names, aliases
and versions, so that a generated request names a model that exists; text inputs carry the server's limits
(texts per request, characters per text). Error answers are described in each protocol's shape: v2
``{"error": "..."}``, OpenAI ``{"error": {"message", "type", "param", "code"}}``.

Not described: the binary tensor extension's request bodies (``application/octet-stream`` with
``Inference-Header-Content-Length``; their answers are), ``/dashboard`` (an HTML page) and ``/metrics``'s
text format beyond its media type. When image models are served, v2 infer's input may also be their image
files (BYTES, base64 in JSON) or preprocessed images (FP32 ``[n, 3, H, W]``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln import __version__
from kiln.serve.dataplane import DataPlane, ModelInfo

PATH = "/openapi.json"
JSON = "application/json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


def _answer(description: str, schema: Schema, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **_json(schema), **(extra or {})}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


def _errors(error: str, *codes: int) -> dict[str, Any]:
    """Error answers for ``codes`` in the schema ``error`` (``V2Error`` or ``OpenAIError``)."""
    text = {
        400: "invalid request",
        401: "API key missing or unknown",
        403: "API key not allowed this route or model",
        404: "unknown model, version or route",
        413: "request too large (body size or texts per request)",
        429: "queue full or API key over its rate",
    }
    out: dict[str, Any] = {}
    for code in codes:
        headers = {"headers": RETRY_AFTER} if code == 429 else None
        out[str(code)] = _answer(text[code], _ref(error), headers)
    return out


def _v2_errors(*codes: int) -> dict[str, Any]:
    return _errors("V2Error", 401, 403, *codes)


def _openai_errors(*codes: int) -> dict[str, Any]:
    return _errors("OpenAIError", 401, 403, *codes)


def _image_tensors(images: list[ModelInfo], max_items: int) -> list[Schema]:
    """v2 input tensors of the served image models: their files (BYTES) and preprocessed images (FP32)."""
    files = sorted({s.name for i in images for s in i.inputs if s.datatype == "BYTES"})
    tensors = sorted({s.name for i in images for s in i.inputs if s.datatype == "FP32"})
    count = {"type": "integer", "minimum": 1, "maximum": max_items}
    parameters = {"type": "object", "additionalProperties": True}
    return [
        {
            "type": "object",
            "required": ["name", "datatype", "shape", "data"],
            "properties": {
                "name": {"type": "string", "enum": files},
                "datatype": {"type": "string", "enum": ["BYTES"]},
                "shape": {"type": "array", "items": count, "minItems": 1, "maxItems": 1},
                "data": {
                    "type": "array",
                    "items": {"type": "string", "format": "byte", "description": "base64 of an image file"},
                    "minItems": 1,
                    "maxItems": max_items,
                },
                "parameters": parameters,
            },
        },
        {
            "type": "object",
            "required": ["name", "datatype", "shape", "data"],
            "properties": {
                "name": {"type": "string", "enum": tensors},
                "datatype": {"type": "string", "enum": ["FP32"]},
                "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
                "data": {"type": "array", "description": "n x 3 x H x W numbers, flat or nested"},
                "parameters": parameters,
            },
        },
    ]


def _components(max_items: int, max_chars: int, images: list[ModelInfo] | None = None) -> dict[str, Schema]:
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    texts = {"oneOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": max_items}]}
    usage = {
        "type": "object",
        "required": ["prompt_tokens", "total_tokens"],
        "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
    }
    tensor_meta = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    parameters = {"type": "object", "additionalProperties": True}
    text_tensor: Schema = {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", "enum": ["text"]},
            "datatype": {"type": "string", "enum": ["BYTES"]},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": max_items},
                "minItems": 1,
                "maxItems": 1,
            },
            "data": {"type": "array", "items": text, "minItems": 1, "maxItems": max_items},
            "parameters": parameters,
        },
    }
    input_tensor = {"oneOf": [text_tensor, *_image_tensors(images, max_items)]} if images else text_tensor
    classification = {
        "type": "object",
        "required": ["object", "index", "label", "score", "scores"],
        "properties": {
            "object": {"type": "string", "enum": ["classification"]},
            "index": {"type": "integer"},
            "label": {"type": "string"},
            "score": {"type": "number"},
            "scores": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "score"],
                    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                },
            },
        },
    }
    return {
        "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": "string", "nullable": True},
                        "code": {"type": "string", "nullable": True},
                    },
                }
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": tensor_meta},
                "outputs": {"type": "array", "items": tensor_meta},
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": parameters,
                "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": input_tensor},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "parameters": parameters},
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": parameters,
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape"],
                        "properties": {
                            "name": {"type": "string"},
                            "datatype": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "data": {"type": "array"},
                            "parameters": parameters,
                        },
                    },
                },
            },
        },
        "EmbeddingsRequest": {
            "type": "object",
            "required": ["model", "input"],
            "additionalProperties": False,
            "properties": {
                "model": {"type": "string"},
                "input": texts,
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": {"type": "integer"},
                "user": {"type": "string"},
            },
        },
        "EmbeddingsResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "model": {"type": "string"},
                "usage": usage,
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"type": "string", "enum": ["embedding"]},
                            "index": {"type": "integer"},
                            "embedding": {
                                "oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]
                            },
                        },
                    },
                },
            },
        },
        "ClassifyRequest": {
            "type": "object",
            "required": ["model", "input"],
            "additionalProperties": False,
            "properties": {
                "model": {"type": "string"},
                "input": texts,
                "top_k": {"type": "integer", "minimum": 1},
            },
        },
        "ClassifyResponse": {
            "type": "object",
            "required": ["object", "model", "data", "usage"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "model": {"type": "string"},
                "usage": usage,
                "data": {"type": "array", "items": classification},
            },
        },
        "ImagesClassifyRequest": {
            "type": "object",
            "required": ["model", "images"],
            "additionalProperties": False,
            "properties": {
                "model": {"type": "string"},
                "images": {
                    "oneOf": [
                        {"type": "string", "format": "byte"},
                        {
                            "type": "array",
                            "items": {"type": "string", "format": "byte"},
                            "minItems": 1,
                            "maxItems": max_items,
                        },
                    ],
                    "description": "base64 of each image file",
                },
                "top_k": {"type": "integer", "minimum": 1},
            },
        },
        "ImagesClassifyForm": {
            "type": "object",
            "required": ["model", "file"],
            "properties": {
                "model": {"type": "string"},
                "file": {
                    "type": "array",
                    "items": {"type": "string", "format": "binary"},
                    "minItems": 1,
                    "maxItems": max_items,
                    "description": "the image files (JPEG, PNG, WebP, GIF, BMP, TIFF), one part each",
                },
                "top_k": {"type": "integer", "minimum": 1},
            },
        },
        "ImagesClassifyResponse": {
            "type": "object",
            "required": ["object", "model", "data"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "model": {"type": "string"},
                "data": {"type": "array", "items": classification},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["model"]},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": {"type": "array", "items": _ref("Model")},
            },
        },
        "RepositoryIndex": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string", "nullable": True},
                    "state": {"type": "string"},
                    "reason": {"type": "string", "nullable": True},
                },
            },
        },
    }


def _param(name: str, values: list[str]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "enum": values}}


def openapi_document(dataplane: DataPlane, repository: bool = False) -> dict[str, Any]:
    """The document for the routes the app serves now (``repository``: with the model repository's)."""
    limits = dataplane.limits
    names: set[str] = set()
    versions: set[str] = set()
    images = [i for i in dataplane.models() if i.task == "image-classify"]
    for info in dataplane.models():
        names.add(info.name)
        names.update(info.aliases)
        versions.update(info.versions)
    model = _param("model_name", sorted(names) or ["none"])
    version = _param("model_version", sorted(versions) or ["1"])
    v2_error = _v2_errors(404)
    infer_answers = {
        "200": {
            "description": "the outputs (JSON, or binary tensor data when asked for)",
            "content": {
                JSON: {"schema": _ref("InferResponse")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **_v2_errors(400, 404, 413, 429),
    }
    infer = {
        "post": {
            "summary": "Open Inference Protocol v2 inference",
            "requestBody": {"required": True, **_json(_ref("InferRequest"))},
            "responses": infer_answers,
        }
    }
    readiness = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    ready_answers = {
        "200": _answer("ready", readiness),
        "503": _answer("loaded but not ready (shutting down)", readiness),
        **v2_error,
    }

    def health(key: str) -> dict[str, Any]:
        body = {"type": "object", "required": [key], "properties": {key: {"type": "boolean"}}}
        return {"get": {"responses": {"200": _answer(key, body), "503": _answer(f"not {key}", body)}}}

    paths: dict[str, Any] = {
        "/v2": {
            "get": {"responses": {"200": _answer("server metadata", _ref("ServerMetadata")), **v2_error}}
        },
        "/v2/health/live": health("live"),
        "/v2/health/ready": health("ready"),
        "/v2/models/{model_name}": {
            "parameters": [model],
            "get": {"responses": {"200": _answer("model metadata", _ref("ModelMetadata")), **v2_error}},
        },
        "/v2/models/{model_name}/versions/{model_version}": {
            "parameters": [model, version],
            "get": {"responses": {"200": _answer("version metadata", _ref("ModelMetadata")), **v2_error}},
        },
        "/v2/models/{model_name}/ready": {"parameters": [model], "get": {"responses": ready_answers}},
        "/v2/models/{model_name}/versions/{model_version}/ready": {
            "parameters": [model, version],
            "get": {"responses": ready_answers},
        },
        "/v2/models/{model_name}/infer": {"parameters": [model], **infer},
        "/v2/models/{model_name}/versions/{model_version}/infer": {"parameters": [model, version], **infer},
        "/v1/embeddings": {
            "post": {
                "summary": "OpenAI-compatible embeddings",
                "requestBody": {"required": True, **_json(_ref("EmbeddingsRequest"))},
                "responses": {
                    "200": _answer("embeddings", _ref("EmbeddingsResponse")),
                    **_openai_errors(400, 404, 413, 429),
                },
            }
        },
        "/v1/classify": {
            "post": {
                "summary": "labels and class probabilities (classify models)",
                "requestBody": {"required": True, **_json(_ref("ClassifyRequest"))},
                "responses": {
                    "200": _answer("classifications", _ref("ClassifyResponse")),
                    **_openai_errors(400, 404, 413, 429),
                },
            }
        },
        "/v1/images/classify": {
            "post": {
                "summary": "labels and class probabilities of image files (image-classify models)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": _ref("ImagesClassifyForm")},
                        JSON: {"schema": _ref("ImagesClassifyRequest")},
                    },
                },
                "responses": {
                    "200": _answer("classifications", _ref("ImagesClassifyResponse")),
                    **_openai_errors(400, 404, 413, 429),
                },
            }
        },
        "/v1/models": {
            "get": {"responses": {"200": _answer("served models", _ref("ModelList")), **_openai_errors()}}
        },
        "/v1/models/{model_name}": {
            "parameters": [model],
            "get": {"responses": {"200": _answer("one model", _ref("Model")), **_openai_errors(404)}},
        },
        "/metrics": {
            "get": {
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_v2_errors(),
                }
            }
        },
        "/v2/monitor/stats": {
            "get": {
                "responses": {
                    "200": _answer(
                        "request log counters (or enabled: false)",
                        {"type": "object", "additionalProperties": True},
                    ),
                    **_v2_errors(),
                }
            }
        },
        PATH: {"get": {"responses": {"200": _answer("this document", {"type": "object"}), **_v2_errors()}}},
    }
    if repository:
        repo = "/v2/repository/models/{model_name}"
        body = {
            "required": False,
            **_json({"type": "object", "properties": {"parameters": {"type": "object"}}}),
        }
        changed = {"type": "object", "required": ["name"], "additionalProperties": True}
        paths["/v2/repository/index"] = {
            "get": {"responses": {"200": _answer("models", _ref("RepositoryIndex")), **_v2_errors()}},
            "post": {
                "requestBody": body,
                "responses": {"200": _answer("models", _ref("RepositoryIndex")), **_v2_errors(400)},
            },
        }
        for action in ("load", "unload"):
            paths[f"{repo}/{action}"] = {
                "parameters": [
                    {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "post": {
                    "requestBody": body,
                    "responses": {"200": _answer(f"{action}ed", changed), **_v2_errors(400, 404)},
                },
            }
    # /v1/feedback and /v2/monitor/windows are always routed (404 when the server keeps no request log)
    paths["/v1/feedback"] = {
        "post": {
            "summary": "true labels of an earlier request, by its request id",
            "requestBody": {
                "required": True,
                **_json(
                    {
                        "type": "object",
                        "required": ["request_id"],
                        "properties": {"request_id": {"type": "string"}},
                    }
                ),
            },
            "responses": {
                "200": _answer("stored", {"type": "object", "additionalProperties": True}),
                **_openai_errors(400, 404, 413),
            },
        }
    }
    paths["/v2/monitor/windows"] = {
        "get": {
            "responses": {
                "200": _answer("monitoring windows", {"type": "object", "additionalProperties": True}),
                **_v2_errors(400, 404),
            }
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "kiln", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": _components(limits.max_batch_items, limits.max_text_chars, images),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def openapi_routes(dataplane: DataPlane, repository: bool = False) -> list[BaseRoute]:
    async def document(request: Request) -> Response:
        return JSONResponse(openapi_document(dataplane, repository))

    return [Route(PATH, document, methods=["GET"])]
