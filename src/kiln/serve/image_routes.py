"""``POST /v1/images/classify``: image files in, labels and class probabilities out (``image-classify``
bundles).

Two request forms:

* ``multipart/form-data`` (``curl -F model=NAME -F file=@cat.jpg -F file=@dog.png -F top_k=3``): one or
  more ``file`` parts (the image files, raw), a ``model`` field and optionally ``top_k``;
* JSON ``{"model": NAME, "images": [BASE64, ...], "top_k": K}``: each image the base64 text of its file
  (one string also works; a ``data:image/...;base64,`` prefix is allowed).

``top_k`` (how many classes to list per image, best first) defaults to the bundle's ``top_k`` (5). The
answer mirrors ``/v1/classify``'s, without ``usage`` (images cost no tokens)::

    {"object": "list", "model": NAME, "data": [
        {"object": "classification", "index": 0, "label": "tabby", "score": 0.93,
         "scores": [{"label": "tabby", "score": 0.93}, {"label": "tiger cat", "score": 0.05}, ...]}]}

Images are decoded and checked as for v2 infer (``image_inputs``: formats, pixel limit, truncated or
corrupt files); errors are OpenAI-shaped, ``param`` naming the field at fault (``file``, ``images``,
``model``, ``top_k``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from kiln.errors import InvalidInputError, RequestError
from kiln.serve.body import read_body
from kiln.serve.classify_routes import classifications
from kiln.serve.dataplane import ModelInfo
from kiln.serve.errors import ParamError
from kiln.serve.fast_json import FastJSONResponse
from kiln.serve.image_inputs import EncodedImages, decode_base64
from kiln.serve.metrics import set_model_label
from kiln.serve.multipart import Part, parse_multipart
from kiln.serve.route_models import TaskRouteAdapter, resolve_model
from kiln.serve.v2_codec import parse_json_object
from kiln.tasks.classify_config import TASK_NAME as CLASSIFY
from kiln.tasks.image_classify_config import TASK_NAME as IMAGE_CLASSIFY

PATH = "/v1/images/classify"
FILE_FIELD = "file"
FORM_FIELDS = ("model", "top_k")
EXTRA_PARTS = 8
"""Parts a multipart body may hold beyond one per image (the form fields)."""


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: StrictStr | list[StrictStr]
    model: StrictStr
    top_k: int | None = Field(default=None, ge=1, strict=True)


def parse_images_json(body: bytes) -> tuple[str, list[bytes], int | None]:
    """(model, image files, top_k) of a JSON request."""
    doc = parse_json_object(body)
    try:
        req = ImagesRequest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "missing":
            message = f"'{param}' is required"
        elif param == "images":
            message = "'images' must be a base64 string or a list of them (one per image file)"
        elif first["type"] == "extra_forbidden":
            message = f"unknown field '{param}': {PATH} takes 'model', 'images' and 'top_k'"
        else:
            message = f"'{param}': {first['msg']}"
        raise ParamError(InvalidInputError(message), param) from None
    texts = [req.images] if isinstance(req.images, str) else req.images
    try:
        files = [decode_base64(t, f"image {i}") for i, t in enumerate(texts)]
    except RequestError as exc:
        raise ParamError(exc, "images") from None
    return req.model, files, req.top_k


def _field_text(part: Part) -> str:
    try:
        return part.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ParamError(
            InvalidInputError(f"form field {part.name!r} is not UTF-8 text"), part.name
        ) from None


def parse_images_form(body: bytes, content_type: str, max_images: int) -> tuple[str, list[bytes], int | None]:
    """(model, image files, top_k) of a ``multipart/form-data`` request."""
    try:
        parts = parse_multipart(body, content_type, max_images + EXTRA_PARTS)
    except RequestError as exc:
        raise ParamError(exc, FILE_FIELD) from None
    files: list[bytes] = []
    fields: dict[str, str] = {}
    for part in parts:
        if part.name == FILE_FIELD:
            files.append(part.data)
        elif part.name in FORM_FIELDS:
            if part.name in fields:
                raise ParamError(InvalidInputError(f"form field {part.name!r} is given twice"), part.name)
            fields[part.name] = _field_text(part)
        else:
            raise ParamError(
                InvalidInputError(
                    f"unknown form field {part.name!r}: {PATH} takes {FILE_FIELD!r} parts (the image files), "
                    "'model' and 'top_k'"
                ),
                part.name,
            )
    model = fields.get("model")
    if not model:
        raise ParamError(InvalidInputError("form field 'model' is required"), "model")
    top_k = None
    if "top_k" in fields:
        raw = fields["top_k"]
        if not raw.isdigit() or int(raw) < 1:
            raise ParamError(InvalidInputError(f"'top_k' must be a whole number >= 1, not {raw!r}"), "top_k")
        top_k = int(raw)
    if not files:
        raise ParamError(
            InvalidInputError(
                f"no {FILE_FIELD!r} part: send each image as a file part (curl -F file=@cat.jpg)"
            ),
            FILE_FIELD,
        )
    return model, files, top_k


def images_response(info: ModelInfo, scores: Any, top_k: int | None) -> dict[str, Any]:
    return {
        "object": "list",
        "model": info.name,
        "data": classifications(info.labels, scores, top_k if top_k is not None else info.top_k),
    }


class ImageAdapter(TaskRouteAdapter):
    path = PATH

    async def classify(self, request: Request) -> Response:
        body = await read_body(request, self.max_request_bytes)
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == "multipart/form-data":
            param = FILE_FIELD
            name, files, top_k = parse_images_form(body, content_type, self.dataplane.limits.max_batch_items)
        elif kind in ("", "application/json") or kind.endswith("+json"):
            param = "images"
            name, files, top_k = parse_images_json(body)
        else:
            raise InvalidInputError(
                f"Content-Type {kind!r} is not supported: send multipart/form-data (the image files as "
                '\'file\' parts) or application/json ({"model": ..., "images": [base64, ...]})'
            )
        info = resolve_model(self.dataplane, request, name, IMAGE_CLASSIFY, PATH, {CLASSIFY: "/v1/classify"})
        try:
            result = await self.dataplane.ainfer_images(info.name, EncodedImages(files))
        except RequestError as exc:
            raise ParamError(exc, param) from None
        set_model_label(request, info.name, result.version)
        return FastJSONResponse(images_response(info, result.embeddings, top_k))
