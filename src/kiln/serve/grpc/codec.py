"""Open Inference Protocol v2 gRPC messages <-> Python values.

A BYTES input arrives either as ``raw_input_contents`` (one entry per input, elements each a 4-byte
little-endian length then the bytes; what ``tritonclient.grpc`` sends) or as ``contents.bytes_contents``.
Outputs answer in kind: raw ``raw_output_contents`` (flattened, row-major, little-endian) when the request
used raw inputs, typed ``contents`` (``fp32_contents``) otherwise. Tensor rules (shapes, element counts,
BYTES decoding, output datatypes) are shared with the REST adapter through ``v2_codec``.

Image models (``v2_images``): the ``image`` input's files as ``raw_input_contents`` (length-prefixed
elements, what tritonclient sends) or ``contents.bytes_contents`` (raw file bytes; base64 only with the
input parameter ``content_type: "base64"``); the preprocessed-image input as raw little-endian float32 or
``contents.fp32_contents``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kiln.errors import InvalidInputError
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.grpc import grpc_predict_v2_pb2 as pb
from kiln.serve.image_inputs import ImageInputs, ImageTensor
from kiln.serve.v2_codec import (
    InferRequest,
    RequestedOutput,
    decode_bytes_tensor,
    output_datatype,
    split_bytes_tensor,
    tensor_bytes,
    text_count,
)
from kiln.serve.v2_images import (
    ImageInferRequest,
    check_datatype,
    content_is_base64,
    decode_files,
    image_count,
    image_specs,
    input_spec,
    tensor_from_bytes,
    tensor_shape,
)

_TYPED_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
)


def model_metadata(info: ModelInfo) -> pb.ModelMetadataResponse:
    def tensor(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
        )

    return pb.ModelMetadataResponse(
        name=info.name,
        versions=list(info.versions),
        platform=info.platform,
        inputs=[tensor(t) for t in info.inputs],
        outputs=[tensor(t) for t in info.outputs],
    )


def _typed_texts(contents: pb.InferTensorContents, count: int, name: str) -> list[str]:
    wrong = [f for f in _TYPED_FIELDS if len(getattr(contents, f))]
    if wrong:
        raise InvalidInputError(f"input {name!r} is BYTES: send its texts in bytes_contents, not {wrong[0]}")
    items = contents.bytes_contents
    if len(items) != count:
        raise InvalidInputError(f"input {name!r} holds {len(items)} texts, but its shape says {count}")
    texts: list[str] = []
    for i, item in enumerate(items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInputError(f"input {name!r}: element {i} is not UTF-8 text") from None
    return texts


def _parse_input(
    tensor: pb.ModelInferRequest.InferInputTensor, spec: TensorSpec, raw: bytes | None
) -> list[str]:
    if tensor.name != spec.name:
        raise InvalidInputError(f"unknown input {tensor.name!r}: this model takes one input, {spec.name!r}")
    if tensor.datatype != spec.datatype:
        raise InvalidInputError(
            f"input {spec.name!r} has datatype {tensor.datatype!r}; it must be {spec.datatype!r}"
        )
    count = text_count(tensor.shape, spec.name)
    if raw is None:
        return _typed_texts(tensor.contents, count, spec.name)
    if tensor.HasField("contents"):
        raise InvalidInputError(
            f"input {spec.name!r} has both contents and raw_input_contents: send one (raw is faster)"
        )
    return decode_bytes_tensor(raw, count, spec.name)


def _parse_outputs(request: pb.ModelInferRequest, info: ModelInfo, raw: bool) -> tuple[RequestedOutput, ...]:
    if not request.outputs:
        return tuple(RequestedOutput(o.name, raw) for o in info.outputs)
    known = {o.name for o in info.outputs}
    out: list[RequestedOutput] = []
    for item in request.outputs:
        if item.name not in known:
            raise InvalidInputError(f"unknown output {item.name!r}: this model's outputs are {sorted(known)}")
        if any(o.name == item.name for o in out):
            raise InvalidInputError(f"output {item.name!r} is requested twice")
        if "classification" in item.parameters:
            raise InvalidInputError("the classification extension is not supported by this model")
        out.append(RequestedOutput(item.name, raw))
    return tuple(out)


def parse_infer_request(request: pb.ModelInferRequest, info: ModelInfo) -> InferRequest:
    """Validate a ModelInfer request for ``info`` (a model with one BYTES input).

    ``RequestedOutput.binary`` of the result says whether to answer with raw output contents.
    """
    inputs = request.inputs
    if len(inputs) != len(info.inputs):
        names = ", ".join(repr(i.name) for i in info.inputs)
        raise InvalidInputError(
            f"model {info.name!r} takes {len(info.inputs)} input ({names}); got {len(inputs)}"
        )
    raw_contents = request.raw_input_contents
    use_raw = len(raw_contents) > 0
    if use_raw and len(raw_contents) != len(inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw_contents)} entries for {len(inputs)} inputs: "
            "send one per input, in input order"
        )
    texts = _parse_input(inputs[0], info.inputs[0], raw_contents[0] if use_raw else None)
    return InferRequest(request.id or None, texts, _parse_outputs(request, info, use_raw))


def _parse_image_input(
    tensor: pb.ModelInferRequest.InferInputTensor, info: ModelInfo, raw: bytes | None
) -> ImageInputs:
    spec = input_spec(info, tensor.name)
    check_datatype(spec, tensor.datatype)
    if raw is not None and tensor.HasField("contents"):
        raise InvalidInputError(
            f"input {spec.name!r} has both contents and raw_input_contents: send one (raw is faster)"
        )
    contents = tensor.contents
    if spec.datatype == "FP32":
        dims = tensor_shape(tensor.shape, spec)
        if raw is not None:
            return ImageTensor(tensor_from_bytes(raw, dims, spec.name))
        wrong = [f for f in _TYPED_FIELDS if f != "fp32_contents" and len(getattr(contents, f))]
        if wrong or len(contents.bytes_contents):
            field = wrong[0] if wrong else "bytes_contents"
            raise InvalidInputError(f"input {spec.name!r} is FP32: send it in fp32_contents, not {field}")
        values = np.asarray(contents.fp32_contents, dtype=np.float32)
        if values.size != int(np.prod(dims)):
            raise InvalidInputError(
                f"input {spec.name!r} holds {values.size} numbers, but its shape {list(dims)} says "
                f"{int(np.prod(dims))}"
            )
        return ImageTensor(values.reshape(dims))
    count = image_count(tensor.shape, spec)
    param = tensor.parameters.get("content_type")
    base64_encoded = content_is_base64(param.string_param if param is not None else None, spec.name)
    if raw is not None:
        return decode_files(split_bytes_tensor(raw, count, spec.name), base64_encoded, spec.name)
    wrong = [f for f in _TYPED_FIELDS if len(getattr(contents, f))]
    if wrong:
        raise InvalidInputError(
            f"input {spec.name!r} takes image files: send them in bytes_contents, not {wrong[0]}"
        )
    items = list(contents.bytes_contents)
    if len(items) != count:
        raise InvalidInputError(f"input {spec.name!r} holds {len(items)} images, but its shape says {count}")
    return decode_files(items, base64_encoded, spec.name)


def parse_image_infer_request(request: pb.ModelInferRequest, info: ModelInfo) -> ImageInferRequest:
    """Validate a ModelInfer request for an image model (one input: image files, or preprocessed images).

    ``RequestedOutput.binary`` of the result says whether to answer with raw output contents.
    """
    if len(request.inputs) != 1:
        files, tensor = image_specs(info)
        raise InvalidInputError(
            f"model {info.name!r} takes one input per request: image files as {files.name!r} or "
            f"preprocessed images as {tensor.name!r}; got {len(request.inputs)}"
        )
    raw_contents = request.raw_input_contents
    if len(raw_contents) > 1:
        raise InvalidInputError(
            f"raw_input_contents has {len(raw_contents)} entries for 1 input: send one per input"
        )
    use_raw = len(raw_contents) == 1
    images = _parse_image_input(request.inputs[0], info, raw_contents[0] if use_raw else None)
    return ImageInferRequest(request.id or None, images, _parse_outputs(request, info, use_raw))


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    tensors: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> pb.ModelInferResponse:
    """A ModelInfer response; outputs asked for as binary go in ``raw_output_contents``."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request_id or "")
    if any(r.binary for r, _ in tensors) and not all(r.binary for r, _ in tensors):
        raise ValueError("raw and typed outputs cannot be mixed in one gRPC response")
    for requested, array in tensors:
        datatype = output_datatype(array)
        output = response.outputs.add(name=requested.name, datatype=datatype, shape=list(array.shape))
        if requested.binary:
            response.raw_output_contents.append(tensor_bytes(array))
        elif datatype == "BYTES":
            output.contents.bytes_contents.extend(str(x).encode("utf-8") for x in array.ravel().tolist())
        elif datatype == "FP32":
            output.contents.fp32_contents.extend(array.ravel().tolist())
        elif datatype == "FP64":
            output.contents.fp64_contents.extend(array.ravel().tolist())
        else:  # INT64
            output.contents.int64_contents.extend(array.ravel().tolist())
    return response
