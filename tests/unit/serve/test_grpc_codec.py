"""gRPC messages <-> Python values, the error -> status table, and wire compatibility with Triton's proto."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from kiln.errors import (
    InvalidInputError,
    OverloadedError,
    PayloadTooLargeError,
    UnknownModelError,
)
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.grpc import codec
from kiln.serve.grpc import grpc_predict_v2_pb2 as pb
from kiln.serve.grpc.service import INTERNAL_MESSAGE, address, bind, create_grpc_server, status_for
from kiln.serve.v2_codec import RequestedOutput, encode_bytes_tensor

INFO = ModelInfo(
    name="tiny",
    inputs=(TensorSpec("text", "BYTES", (-1,)),),
    outputs=(TensorSpec("embedding", "FP32", (-1, 3)),),
    versions=("1",),
)
TEXTS = ["hello", "wörld ✓", "a"]


def raw_request(texts: list[str], request_id: str = "") -> pb.ModelInferRequest:
    raw = encode_bytes_tensor(texts)
    request = pb.ModelInferRequest(model_name="tiny", id=request_id, raw_input_contents=[raw])
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    return request


def typed_request(texts: list[str], shape: list[int] | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=shape or [len(texts)])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


# -- requests ---------------------------------------------------------------------------------------
def test_raw_request_gives_texts_and_raw_outputs() -> None:
    parsed = codec.parse_infer_request(raw_request(TEXTS, "r-1"), INFO)
    assert parsed.texts == TEXTS
    assert parsed.id == "r-1"
    assert parsed.outputs == (RequestedOutput("embedding", binary=True),)


def test_typed_request_gives_texts_and_typed_outputs() -> None:
    parsed = codec.parse_infer_request(typed_request(TEXTS, shape=[3, 1]), INFO)
    assert parsed.texts == TEXTS
    assert parsed.id is None  # proto3's empty string means "no id"
    assert parsed.outputs == (RequestedOutput("embedding", binary=False),)


def test_requested_outputs_are_checked() -> None:
    request = raw_request(["x"])
    request.outputs.add(name="embedding")
    assert codec.parse_infer_request(request, INFO).outputs == (RequestedOutput("embedding", True),)
    request.outputs.add(name="embedding")
    with pytest.raises(InvalidInputError, match="requested twice"):
        codec.parse_infer_request(request, INFO)
    unknown = raw_request(["x"])
    unknown.outputs.add(name="logits")
    with pytest.raises(InvalidInputError, match=r"unknown output 'logits'.*\['embedding'\]"):
        codec.parse_infer_request(unknown, INFO)
    classify = raw_request(["x"])
    classify.outputs.add(name="embedding").parameters["classification"].int64_param = 2
    with pytest.raises(InvalidInputError, match="classification extension"):
        codec.parse_infer_request(classify, INFO)


def _request_with(mutate: Callable[[pb.ModelInferRequest], object]) -> pb.ModelInferRequest:
    request = raw_request(["a", "b"])
    mutate(request)
    return request


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ModelInferRequest(model_name="tiny"), r"takes 1 input \('text'\); got 0"),
        (_request_with(lambda r: r.inputs.add(name="more")), "got 2"),
        (_request_with(lambda r: setattr(r.inputs[0], "name", "txt")), "unknown input 'txt'"),
        (_request_with(lambda r: setattr(r.inputs[0], "datatype", "FP32")), "datatype 'FP32'; it must be"),
        (_request_with(lambda r: r.inputs[0].shape.append(2)), r"shape \[2, 2\]; it takes \[n\]"),
        (
            _request_with(lambda r: r.inputs[0].shape.__setitem__(0, 3)),
            "holds 2 elements, but its shape says 3",
        ),
        (_request_with(lambda r: r.raw_input_contents.append(b"")), "2 entries for 1 inputs"),
        (
            _request_with(lambda r: r.inputs[0].contents.bytes_contents.append(b"a")),
            "both contents and raw_input_contents",
        ),
        (
            _request_with(
                lambda r: r.raw_input_contents.__setitem__(0, encode_bytes_tensor([b"\xff", b"b"]))
            ),
            "element 0 is not UTF-8",
        ),
        (
            _request_with(lambda r: r.raw_input_contents.__setitem__(0, b"\x09\x00\x00\x00ab")),
            "claims 9 bytes past the end",
        ),
        (typed_request(["a"], shape=[2]), "holds 1 texts, but its shape says 2"),
    ],
)
def test_malformed_requests_are_invalid_input(request_: pb.ModelInferRequest, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        codec.parse_infer_request(request_, INFO)


def test_typed_bytes_must_be_utf8_and_use_bytes_contents() -> None:
    bad = typed_request([])
    bad.inputs[0].shape[:] = [1]
    bad.inputs[0].contents.bytes_contents.append(b"\xff")
    with pytest.raises(InvalidInputError, match="element 0 is not UTF-8"):
        codec.parse_infer_request(bad, INFO)
    ints = pb.ModelInferRequest(model_name="tiny")
    ints.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.int_contents.append(7)
    with pytest.raises(InvalidInputError, match="bytes_contents, not int_contents"):
        codec.parse_infer_request(ints, INFO)


# -- responses --------------------------------------------------------------------------------------
def test_raw_response_is_little_endian_row_major() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    response = codec.encode_infer_response("tiny", "1", "r-9", [(RequestedOutput("embedding", True), rows)])
    (out,) = response.outputs
    assert (response.model_name, response.model_version, response.id) == ("tiny", "1", "r-9")
    assert (out.name, out.datatype, list(out.shape)) == ("embedding", "FP32", [2, 3])
    assert not out.HasField("contents")
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 3), rows)


def test_typed_response_uses_fp32_contents() -> None:
    rows = np.array([[0.25, -1.5, 3.0]], dtype=np.float32)
    response = codec.encode_infer_response("tiny", "1", None, [(RequestedOutput("embedding", False), rows)])
    assert response.id == "" and not response.raw_output_contents
    assert list(response.outputs[0].contents.fp32_contents) == [0.25, -1.5, 3.0]
    with pytest.raises(ValueError, match="cannot be mixed"):
        codec.encode_infer_response(
            "tiny", "1", None, [(RequestedOutput("a", True), rows), (RequestedOutput("b", False), rows)]
        )


def test_model_metadata() -> None:
    meta = codec.model_metadata(INFO)
    assert (meta.name, list(meta.versions), meta.platform) == ("tiny", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("embedding", "FP32", [-1, 3])]


# -- errors and addresses ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (UnknownModelError("unknown model 'x'"), grpc.StatusCode.NOT_FOUND, "unknown model 'x'"),
        (PayloadTooLargeError("300 texts"), grpc.StatusCode.RESOURCE_EXHAUSTED, "300 texts"),
        (OverloadedError("queue full", retry_after=3), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
        (InvalidInputError("bad shape"), grpc.StatusCode.INVALID_ARGUMENT, "bad shape"),
        (RuntimeError("secret /path/to/thing"), grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE),
    ],
)
def test_status_for(exc: Exception, code: grpc.StatusCode, message: str) -> None:
    assert status_for(exc) == (code, message)


def test_address_brackets_ipv6() -> None:
    assert address("127.0.0.1", 5) == "127.0.0.1:5"
    assert address("::1", 5) == "[::1]:5"
    assert address("[::1]", 5) == "[::1]:5"


def test_bind_reports_a_port_in_use() -> None:
    from kiln.serve.dataplane import DataPlane

    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = create_grpc_server(DataPlane(), 1024)
            with pytest.raises(OSError, match=rf"cannot listen for gRPC on 127.0.0.1:{port}.*in use"):
                bind(server, "127.0.0.1", port)
            await server.stop(None)

    asyncio.run(main())


# -- the proto itself -------------------------------------------------------------------------------
def _fields(descriptor: Any) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else "")
        for f in descriptor.fields
    }


def _all_messages(descriptor: Any) -> Iterator[Any]:
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _all_messages(nested)


def test_wire_compatible_with_tritons_proto() -> None:
    """Every message and RPC kiln serves has the field numbers and types of Triton's grpc_service.proto."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    theirs = service_pb2.DESCRIPTOR
    for top in pb.DESCRIPTOR.message_types_by_name.values():
        for ours in _all_messages(top):
            assert _fields(ours) == _fields(theirs.pool.FindMessageTypeByName(ours.full_name)), ours.full_name
    our_service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their_service = theirs.services_by_name["GRPCInferenceService"]
    for method in our_service.methods:
        other = their_service.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
