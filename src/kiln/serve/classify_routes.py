"""``POST /v1/classify``: texts in, labels and class probabilities out (``classify`` bundles).

Request: ``{"model": NAME, "input": TEXT | [TEXT, ...], "top_k": K}`` (``top_k`` optional: how many
classes to list per text, best first; default all). Response::

    {"object": "list", "model": NAME, "data": [
        {"object": "classification", "index": 0, "label": "fresh", "score": 0.93,
         "scores": [{"label": "fresh", "score": 0.93}, {"label": "rotten", "score": 0.07}]}],
     "usage": {"prompt_tokens": N, "total_tokens": N}}

Scores are the softmax of the exported graph's logits; ``label`` is the highest-scoring class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from kiln.errors import InvalidInputError, RequestError
from kiln.serve.body import read_body
from kiln.serve.errors import ParamError
from kiln.serve.fast_json import FastJSONResponse
from kiln.serve.metrics import set_model_label
from kiln.serve.route_models import TaskRouteAdapter, resolve_model
from kiln.serve.v2_codec import parse_json_object
from kiln.tasks.classify_config import TASK_NAME as CLASSIFY
from kiln.tasks.image_classify_config import TASK_NAME as IMAGE_CLASSIFY

PATH = "/v1/classify"


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr]
    model: StrictStr
    top_k: int | None = Field(default=None, ge=1, strict=True)


def parse_classify_request(body: bytes) -> ClassifyRequest:
    doc = parse_json_object(body)
    try:
        return ClassifyRequest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        if param == "input":
            message = "'input' must be a string or a list of strings"
        elif first["type"] == "missing":
            message = f"'{param}' is required"
        elif first["type"] == "extra_forbidden":
            message = f"unknown field '{param}': /v1/classify takes 'model', 'input' and 'top_k'"
        else:
            message = f"'{param}': {first['msg']}"
        raise ParamError(InvalidInputError(message), param) from None


def classifications(labels: tuple[str, ...], scores: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    """One ``classification`` object per row of ``scores``: its top label and score, and the ``top_k``
    best classes (all when ``None``), best first."""
    k = len(labels) if top_k is None else min(top_k, len(labels))
    data = []
    for i, row in enumerate(np.asarray(scores, dtype=np.float32)):
        order = np.argsort(-row, kind="stable")[:k]
        ranked = [{"label": labels[int(j)], "score": float(row[j])} for j in order]
        data.append(
            {
                "object": "classification",
                "index": i,
                "label": ranked[0]["label"],
                "score": ranked[0]["score"],
                "scores": ranked,
            }
        )
    return data


def classify_response(
    model: str, labels: tuple[str, ...], scores: np.ndarray, top_k: int | None, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": classifications(labels, scores, top_k),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


class ClassifyAdapter(TaskRouteAdapter):
    path = PATH

    async def classify(self, request: Request) -> Response:
        body = await read_body(request, self.max_request_bytes)
        req = parse_classify_request(body)
        info = resolve_model(
            self.dataplane, request, req.model, CLASSIFY, PATH, {IMAGE_CLASSIFY: "/v1/images/classify"}
        )
        texts = [req.input] if isinstance(req.input, str) else req.input
        try:
            result = await self.dataplane.ainfer(info.name, texts, with_tokens=True)
        except RequestError as exc:
            raise ParamError(exc, "input") from None
        set_model_label(request, info.name, result.version)
        return FastJSONResponse(
            classify_response(info.name, info.labels, result.embeddings, req.top_k, result.prompt_tokens or 0)
        )
