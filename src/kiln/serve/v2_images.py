"""Open Inference Protocol v2 requests for image models (``image-classify``): REST bodies here, gRPC
messages in ``grpc/codec.py``; the tensor rules both follow are here.

An image model's metadata lists two inputs; a request sends exactly one of them:

``image``  BYTES ``[n]`` (or ``[n, 1]``): one image file (JPEG, PNG, WebP, GIF, BMP, TIFF) per element.
           Binary tensor extension (tritonclient's ``binary_data=True``) and gRPC: the file's raw bytes.
           JSON ``"data"``: JSON strings cannot carry raw bytes, so each element is the **base64** text of
           the file (standard or URL-safe alphabet; a ``data:image/...;base64,`` prefix is allowed). The
           input's ``"parameters": {"content_type": "base64"}`` (MLServer's convention) may say so and is
           then also honoured for binary and gRPC elements; any other ``content_type`` is refused.
the graph's input name (``ImageClassifyConfig.input_name``; ``pixel_values`` for the default)
           FP32 ``[n, 3, H, W]``: images already preprocessed as the bundle's ``task_config`` says (``H`` and
           ``W`` the crop size). JSON ``"data"`` flat or nested numbers; binary: little-endian float32.

Outputs, as for ``classify`` models: ``scores`` FP32 ``[n, classes]`` (softmax) and ``label`` BYTES ``[n]``
(the top-1 class name); ``outputs`` and per-output ``binary_data`` are honoured as for any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.errors import InvalidInputError
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.image_inputs import EncodedImages, ImageInputs, ImageTensor, decode_base64
from kiln.serve.v2_codec import (
    RequestedOutput,
    binary_part,
    flatten_strings,
    parse_envelope,
    parse_outputs,
    shape_of,
    split_bytes_tensor,
    tensor_parameters,
    text_count,
)

BASE64 = "base64"


@dataclass(frozen=True)
class ImageInferRequest:
    id: str | None
    images: ImageInputs
    outputs: tuple[RequestedOutput, ...]


def image_specs(info: ModelInfo) -> tuple[TensorSpec, TensorSpec]:
    """(the BYTES input of image files, the FP32 input of preprocessed tensors) of an image model."""
    files = next(s for s in info.inputs if s.datatype == "BYTES")
    tensor = next(s for s in info.inputs if s.datatype == "FP32")
    return files, tensor


def input_spec(info: ModelInfo, name: object) -> TensorSpec:
    """The spec of the input a tensor names, or ``InvalidInputError`` listing the model's inputs."""
    for spec in info.inputs:
        if spec.name == name:
            return spec
    files, tensor = image_specs(info)
    raise InvalidInputError(
        f"unknown input {name!r}: model {info.name!r} takes image files as {files.name!r} (BYTES) or "
        f"preprocessed images as {tensor.name!r} (FP32 {list(tensor.shape)}), one of them per request"
    )


def check_datatype(spec: TensorSpec, datatype: object) -> None:
    if datatype != spec.datatype:
        what = "image files" if spec.datatype == "BYTES" else "preprocessed images"
        raise InvalidInputError(
            f"input {spec.name!r} ({what}) has datatype {datatype!r}; it must be {spec.datatype!r}"
        )


def image_count(shape: Sequence[int], spec: TensorSpec) -> int:
    """How many image files a BYTES input of ``shape`` holds; it must be ``[n]`` or ``[n, 1]``."""
    return text_count(shape, spec.name, "image files")


def tensor_shape(shape: Sequence[int], spec: TensorSpec) -> tuple[int, ...]:
    """``shape`` of a preprocessed-image input, checked against the model's (``-1``: any size >= 1)."""
    expected = "[" + ", ".join("n" if d < 0 else str(d) for d in spec.shape) + "]"
    fits = len(shape) == len(spec.shape) and all(
        (want < 0 and got >= 1) or got == want for got, want in zip(shape, spec.shape, strict=True)
    )
    if not fits:
        raise InvalidInputError(
            f"input {spec.name!r} has shape {list(shape)}; this model takes preprocessed images of shape "
            f"{expected} (FP32, as the bundle's preprocessing makes them)"
        )
    return tuple(int(d) for d in shape)


def tensor_from_bytes(raw: bytes, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A float32 tensor of ``shape`` from its little-endian contents."""
    expected = math.prod(shape) * 4
    if len(raw) != expected:
        raise InvalidInputError(
            f"input {name!r} carries {len(raw)} bytes; FP32 {list(shape)} is {expected} bytes"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def tensor_from_numbers(data: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A float32 tensor of ``shape`` from JSON numbers (a flat list, or nested as the shape)."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, RecursionError):  # ragged nesting
        raise InvalidInputError(f'input {name!r}: "data" is not a regular list of numbers') from None
    if array.dtype.kind not in "iuf":
        raise InvalidInputError(f'input {name!r} is FP32: its "data" must be numbers')
    if array.size != math.prod(shape):
        raise InvalidInputError(
            f"input {name!r} holds {array.size} numbers, but its shape {list(shape)} says {math.prod(shape)}"
        )
    return array.astype(np.float32).reshape(shape)


def decode_files(items: Sequence[bytes], base64_encoded: bool, name: str) -> EncodedImages:
    if not base64_encoded:
        return EncodedImages(list(items))
    out: list[bytes] = []
    for i, item in enumerate(items):
        try:
            text = item.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInputError(f"input {name!r}: element {i} is not base64 text") from None
        out.append(decode_base64(text, f"input {name!r} element {i}"))
    return EncodedImages(out)


def content_is_base64(content_type: object, name: str) -> bool:
    """Whether an input's ``content_type`` parameter says base64 (absent: ``False``)."""
    if content_type is None or content_type == "":
        return False
    if content_type != BASE64:
        raise InvalidInputError(
            f"content_type {content_type!r} of input {name!r} is not supported: image files are sent as "
            f"raw bytes or as base64 ({BASE64!r})"
        )
    return True


def _parse_input(tensor: Any, info: ModelInfo, binary: bytes) -> ImageInputs:
    if not isinstance(tensor, dict):
        raise InvalidInputError('each entry of "inputs" must be a JSON object (a tensor)')
    spec = input_spec(info, tensor.get("name"))
    check_datatype(spec, tensor.get("datatype"))
    shape = shape_of(tensor, spec.name)
    params = tensor_parameters(tensor, spec.name)
    raw, _ = binary_part(params, tensor, spec.name, binary, exact=True)
    if spec.datatype == "FP32":
        dims = tensor_shape(shape, spec)
        if raw is not None:
            return ImageTensor(tensor_from_bytes(raw, dims, spec.name))
        return ImageTensor(tensor_from_numbers(tensor["data"], dims, spec.name))
    count = image_count(shape, spec)
    base64_encoded = content_is_base64(params.get("content_type"), spec.name)
    if raw is not None:
        return decode_files(split_bytes_tensor(raw, count, spec.name), base64_encoded, spec.name)
    texts = flatten_strings(tensor["data"], spec.name)
    if len(texts) != count:
        raise InvalidInputError(f"input {spec.name!r} holds {len(texts)} images, but its shape says {count}")
    return EncodedImages([decode_base64(t, f"input {spec.name!r} element {i}") for i, t in enumerate(texts)])


def parse_image_infer_request(body: bytes, header_length: str | None, info: ModelInfo) -> ImageInferRequest:
    """Validate a v2 inference request (JSON, or JSON + binary tensor data) for an image model."""
    env = parse_envelope(body, header_length)
    inputs = env.inputs
    if len(inputs) != 1:
        files, tensor = image_specs(info)
        raise InvalidInputError(
            f"model {info.name!r} takes one input per request: image files as {files.name!r} or "
            f"preprocessed images as {tensor.name!r}; got {len(inputs)}"
        )
    images = _parse_input(inputs[0], info, env.binary)
    return ImageInferRequest(env.request_id, images, parse_outputs(env.doc, info, env.binary_default))
