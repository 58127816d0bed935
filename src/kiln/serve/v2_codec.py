"""Open Inference Protocol v2 tensors <-> Python values: JSON tensors and Triton's binary tensor data.

Binary extension: when ``Inference-Header-Content-Length`` is present, the body is that many bytes of JSON
followed by the binary data of every input whose ``parameters.binary_data_size`` is set, in input order.
BYTES elements are a 4-byte little-endian length followed by the bytes. Outputs asked for as binary
(``parameters.binary_data`` per output, or ``parameters.binary_data_output`` for the whole request) are
appended the same way after the response JSON, whose length goes in the same header.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.errors import InvalidInputError
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.fast_json import dumps

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64"}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    texts: list[str]
    outputs: tuple[RequestedOutput, ...]


def parse_json_object(raw: bytes, what: str = "request body") -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInputError(f"{what} must be a JSON object, not {type(doc).__name__}")
    return doc


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON part, binary part) of a request body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidInputError(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
    if not 0 <= n <= len(body):
        raise InvalidInputError(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
    return body[:n], body[n:]


def encode_bytes_tensor(items: Sequence[str | bytes]) -> bytes:
    """BYTES elements in the binary encoding: 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    for item in items:
        raw = item.encode("utf-8") if isinstance(item, str) else item
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def split_bytes_tensor(raw: bytes, count: int, name: str) -> list[bytes]:
    """``count`` elements from the binary BYTES encoding (each its raw bytes), or ``InvalidInputError``."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if len(out) == count:
            raise InvalidInputError(f"input {name!r} holds more than the {count} elements its shape says")
        if pos + 4 > len(raw):
            raise InvalidInputError(f"input {name!r}: binary data ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise InvalidInputError(f"input {name!r}: element {len(out)} claims {length} bytes past the end")
        out.append(raw[pos : pos + length])
        pos += length
    if len(out) != count:
        raise InvalidInputError(f"input {name!r} holds {len(out)} elements, but its shape says {count}")
    return out


def decode_bytes_tensor(raw: bytes, count: int, name: str) -> list[str]:
    """``count`` UTF-8 strings from the binary BYTES encoding, or ``InvalidInputError``."""
    out: list[str] = []
    for i, item in enumerate(split_bytes_tensor(raw, count, name)):
        try:
            out.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInputError(f"input {name!r}: element {i} is not UTF-8 text") from None
    return out


def text_count(shape: Sequence[int], name: str, what: str = "texts") -> int:
    """How many elements (texts, or ``what``) a BYTES input of ``shape`` holds; it must be ``[n]`` or
    ``[n, 1]``."""
    if any(d < 0 for d in shape) or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInputError(f"input {name!r} has shape {list(shape)}; it takes [n] (or [n, 1]) {what}")
    return math.prod(shape)


def little_endian_bytes(array: np.ndarray) -> bytes:
    """A numeric tensor's raw contents: flattened, row-major, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def output_datatype(array: np.ndarray) -> str:
    """The v2 datatype of an output array (an ``object`` array of strings is BYTES)."""
    return "BYTES" if array.dtype == np.dtype(object) else DATATYPES[array.dtype]


def tensor_bytes(array: np.ndarray) -> bytes:
    """An output's binary encoding: BYTES elements length-prefixed, numbers little-endian."""
    if array.dtype == np.dtype(object):
        return encode_bytes_tensor([str(x) for x in array.ravel().tolist()])
    return little_endian_bytes(array)


def flatten_strings(data: Any, name: str) -> list[str]:
    if not isinstance(data, list):
        data = [data]
    out: list[str] = []
    stack: list[Any] = list(reversed(data))
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            out.append(item)
        else:
            raise InvalidInputError(
                f"input {name!r} is BYTES: its data must be strings, found {type(item).__name__} {item!r:.40}"
            )
    return out


def shape_of(tensor: dict[str, Any], name: str) -> list[int]:
    """A JSON tensor's ``shape``: a list of integers, or a request error."""
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInputError(f'input {name!r} needs "shape": a list of integers, e.g. [2]')
    return shape


def binary_part(
    params: dict[str, Any],
    tensor: dict[str, Any],
    name: str,
    binary: bytes,
    offset: int = 0,
    exact: bool = False,
) -> tuple[bytes | None, int]:
    """The binary data a JSON tensor claims (``binary_data_size``) from ``offset`` of the body's binary
    tail, and the offset after it; ``None`` when the tensor carries ``data`` instead. ``exact``: the tensor
    must claim the whole tail (a request of one input)."""
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise InvalidInputError(f'input {name!r} has no "data" (and no binary_data_size)')
        return None, offset
    if "data" in tensor:
        raise InvalidInputError(f'input {name!r} has both "data" and binary_data_size: send one')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInputError(f"binary_data_size of input {name!r} must be a non-negative integer")
    left = len(binary) - offset
    if exact and size != left:
        raise InvalidInputError(
            f"input {name!r} claims {size} bytes of binary data, but {left} follow the JSON header "
            f"(check {HEADER_LENGTH})"
        )
    if size > left:
        raise InvalidInputError(
            f"input {name!r} claims {size} bytes of binary data, but only {left} follow "
            f"the JSON header (check {HEADER_LENGTH})"
        )
    return binary[offset : offset + size], offset + size


def _parse_input(tensor: Any, spec: TensorSpec, binary: bytes, offset: int) -> tuple[list[str], int]:
    """The texts of one input tensor and the offset of the next input's binary data."""
    if not isinstance(tensor, dict):
        raise InvalidInputError('each entry of "inputs" must be a JSON object (a tensor)')
    name = tensor.get("name")
    if name != spec.name:
        raise InvalidInputError(f"unknown input {name!r}: this model takes one input, {spec.name!r}")
    if tensor.get("datatype") != spec.datatype:
        raise InvalidInputError(
            f"input {spec.name!r} has datatype {tensor.get('datatype')!r}; it must be {spec.datatype!r}"
        )
    count = text_count(shape_of(tensor, spec.name), spec.name)
    params = tensor_parameters(tensor, spec.name)
    raw, after = binary_part(params, tensor, spec.name, binary, offset)
    if raw is None:
        texts = flatten_strings(tensor["data"], spec.name)
        if len(texts) != count:
            raise InvalidInputError(
                f"input {spec.name!r} holds {len(texts)} texts, but its shape says {count}"
            )
        return texts, offset
    return decode_bytes_tensor(raw, count, spec.name), after


def tensor_parameters(tensor: dict[str, Any], name: str) -> dict[str, Any]:
    """A JSON tensor's ``parameters`` (``{}`` when absent), or a request error."""
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError(f'"parameters" of input {name!r} must be a JSON object')
    return params


def flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInputError(f"parameter {key!r} of {where} must be true or false")
    return value


def parse_outputs(doc: dict[str, Any], info: ModelInfo, binary_default: bool) -> tuple[RequestedOutput, ...]:
    """The outputs a request asks for (all of the model's when it names none), each binary or not."""
    requested = doc.get("outputs")
    if requested is None or requested == []:
        return tuple(RequestedOutput(o.name, binary_default) for o in info.outputs)
    if not isinstance(requested, list):
        raise InvalidInputError('"outputs" must be a list of {"name": ...} objects')
    known = {o.name for o in info.outputs}
    out: list[RequestedOutput] = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise InvalidInputError(f"unknown output {name!r}: this model's outputs are {sorted(known)}")
        if any(o.name == name for o in out):
            raise InvalidInputError(f"output {name!r} is requested twice")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInputError(f'"parameters" of output {name!r} must be a JSON object')
        if params.get("classification"):
            raise InvalidInputError("the classification extension is not supported by this model")
        binary = flag(params, "binary_data", f"output {name!r}")
        out.append(RequestedOutput(name, binary_default if binary is None else binary))
    return tuple(out)


@dataclass(frozen=True)
class RequestEnvelope:
    """What every v2 inference request has, whatever the model: checked, not yet its inputs."""

    doc: dict[str, Any]
    binary: bytes
    request_id: str | None
    binary_default: bool
    inputs: list[Any]


def parse_envelope(body: bytes, header_length: str | None) -> RequestEnvelope:
    """The request's JSON document (and binary tail), its id, output default and non-empty inputs."""
    json_part, binary = split_body(body, header_length)
    doc = parse_json_object(json_part, "inference request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError('"id" must be a string')
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError('request "parameters" must be a JSON object')
    binary_default = bool(flag(params, "binary_data_output", "the request"))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError('"inputs" must be a non-empty list of tensors')
    return RequestEnvelope(doc, binary, request_id, binary_default, inputs)


def parse_infer_request(body: bytes, header_length: str | None, info: ModelInfo) -> InferRequest:
    """Validate a v2 inference request for a model with one BYTES input."""
    env = parse_envelope(body, header_length)
    inputs, binary = env.inputs, env.binary
    if len(inputs) != len(info.inputs):
        names = ", ".join(repr(i.name) for i in info.inputs)
        raise InvalidInputError(
            f"model {info.name!r} takes {len(info.inputs)} input ({names}); got {len(inputs)}"
        )
    texts, offset = _parse_input(inputs[0], info.inputs[0], binary, 0)
    if offset != len(binary):
        raise InvalidInputError(
            f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims "
            "(check binary_data_size)"
        )
    return InferRequest(env.request_id, texts, parse_outputs(env.doc, info, env.binary_default))


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    tensors: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the length of its JSON part."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for requested, array in tensors:
        entry: dict[str, Any] = {
            "name": requested.name,
            "datatype": output_datatype(array),
            "shape": list(array.shape),
        }
        if requested.binary:
            raw = tensor_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = outputs
    header = dumps(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
