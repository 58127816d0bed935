from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from _fixtures.v2_requests import binary_request
from kiln.errors import InvalidInputError
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.v2_codec import (
    RequestedOutput,
    decode_bytes_tensor,
    encode_bytes_tensor,
    encode_infer_response,
    parse_infer_request,
    parse_json_object,
    split_body,
)

INFO = ModelInfo(
    name="m",
    inputs=(TensorSpec("text", "BYTES", (-1,)),),
    outputs=(TensorSpec("embedding", "FP32", (-1, 4)),),
)


def text_input(data: object, shape: list[int] | None = None, **extra: object) -> dict[str, object]:
    n = len(data) if isinstance(data, list) else 1
    return {"name": "text", "datatype": "BYTES", "shape": shape or [n], "data": data, **extra}


def body_of(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_bytes_tensor_round_trip_is_length_prefixed_little_endian() -> None:
    raw = encode_bytes_tensor(["hé", "", b"\x00z"])
    assert raw[:4] == struct.pack("<I", 3) and raw[4:7] == "hé".encode()
    assert decode_bytes_tensor(raw, 3, "text") == ["hé", "", "\x00z"]


@pytest.mark.parametrize(
    ("raw", "count", "match"),
    [
        (b"\x01\x00", 1, "inside an element's length prefix"),
        (struct.pack("<I", 10) + b"abc", 1, "past the end"),
        (struct.pack("<I", 1) + b"\xff", 1, "not UTF-8"),
        (encode_bytes_tensor(["a", "b"]), 1, "more than the 1 elements"),
        (encode_bytes_tensor(["a"]), 2, "holds 1 elements, but its shape says 2"),
    ],
)
def test_decode_bytes_tensor_rejects_bad_data(raw: bytes, count: int, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        decode_bytes_tensor(raw, count, "text")


def test_split_body() -> None:
    assert split_body(b"{}xyz", None) == (b"{}xyz", b"")
    assert split_body(b"{}xyz", "2") == (b"{}", b"xyz")
    for bad in ("abc", "-1", "6"):
        with pytest.raises(InvalidInputError, match="Inference-Header-Content-Length"):
            split_body(b"{}xyz", bad)


@pytest.mark.parametrize("raw", [b"{nope", b"\xff\xfe", b"[" * 100_000])
def test_parse_json_object_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        parse_json_object(raw)


def test_parse_json_object_needs_an_object() -> None:
    with pytest.raises(InvalidInputError, match="must be a JSON object, not list"):
        parse_json_object(b"[1]")


def test_parse_json_tensor_request() -> None:
    req = parse_infer_request(body_of({"id": "r1", "inputs": [text_input(["a b", "c"])]}), None, INFO)
    assert req.id == "r1"
    assert req.texts == ["a b", "c"]
    assert req.outputs == (RequestedOutput("embedding", binary=False),)


def test_nested_data_and_n_by_1_shape_are_accepted() -> None:
    req = parse_infer_request(body_of({"inputs": [text_input([["a"], ["b"]], shape=[2, 1])]}), None, INFO)
    assert req.texts == ["a", "b"] and req.id is None


def test_parse_binary_request_and_binary_data_output() -> None:
    body, header = binary_request(["héllo", "world"], parameters={"binary_data_output": True}, id="7")
    req = parse_infer_request(body, header, INFO)
    assert req.texts == ["héllo", "world"]
    assert req.id == "7"
    assert req.outputs == (RequestedOutput("embedding", binary=True),)


def test_per_output_binary_flag_overrides_the_request_default() -> None:
    doc = {
        "inputs": [text_input(["a"])],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "embedding", "parameters": {"binary_data": False}}],
    }
    assert parse_infer_request(body_of(doc), None, INFO).outputs == (RequestedOutput("embedding", False),)
    doc["outputs"] = [{"name": "embedding"}]
    assert parse_infer_request(body_of(doc), None, INFO).outputs == (RequestedOutput("embedding", True),)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({}, "non-empty list"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [text_input(["a"]), text_input(["b"])]}, "takes 1 input"),
        ({"inputs": ["text"]}, "must be a JSON object"),
        ({"inputs": [{**text_input(["a"]), "name": "txt"}]}, "unknown input 'txt'"),
        ({"inputs": [{**text_input(["a"]), "datatype": "FP32"}]}, "datatype 'FP32'; it must be 'BYTES'"),
        ({"inputs": [text_input(["a", "b"], shape=[3])]}, "holds 2 texts, but its shape says 3"),
        ({"inputs": [text_input(["a", "b"], shape=[1, 2])]}, r"shape \[1, 2\]"),
        ({"inputs": [text_input(["a"], shape=[-1])]}, r"shape \[-1\]"),
        ({"inputs": [{**text_input(["a"]), "shape": "1"}]}, "list of integers"),
        ({"inputs": [text_input([1, 2])]}, "must be strings, found int"),
        ({"inputs": [text_input([None])]}, "must be strings, found NoneType"),
        ({"inputs": [{k: v for k, v in text_input(["a"]).items() if k != "data"}]}, 'no "data"'),
        ({"inputs": [text_input(["a"], parameters=[1])]}, "must be a JSON object"),
        ({"inputs": [text_input(["a"])], "id": 5}, '"id" must be a string'),
        ({"inputs": [text_input(["a"])], "parameters": 3}, "must be a JSON object"),
        ({"inputs": [text_input(["a"])], "parameters": {"binary_data_output": "yes"}}, "true or false"),
        ({"inputs": [text_input(["a"])], "outputs": {"name": "embedding"}}, "must be a list"),
        ({"inputs": [text_input(["a"])], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({"inputs": [text_input(["a"])], "outputs": [{"name": "embedding"}] * 2}, "requested twice"),
        (
            {
                "inputs": [text_input(["a"])],
                "outputs": [{"name": "embedding", "parameters": {"classification": 2}}],
            },
            "classification",
        ),
    ],
)
def test_parse_infer_request_rejects(doc: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        parse_infer_request(body_of(doc), None, INFO)


def test_binary_request_errors() -> None:
    body, header = binary_request(["a", "b"])
    with pytest.raises(InvalidInputError, match="only 5 follow"):
        parse_infer_request(body[:-5], header, INFO)
    with pytest.raises(InvalidInputError, match="3 bytes of binary data follow the inputs"):
        parse_infer_request(body + b"xyz", header, INFO)
    doc = json.loads(body[: int(header)])
    doc["inputs"][0]["data"] = ["a", "b"]
    with pytest.raises(InvalidInputError, match='both "data" and binary_data_size'):
        parse_infer_request(body_of(doc), None, INFO)
    doc["inputs"][0].pop("data")
    doc["inputs"][0]["parameters"]["binary_data_size"] = -1
    with pytest.raises(InvalidInputError, match="non-negative integer"):
        parse_infer_request(body_of(doc), None, INFO)


def test_encode_json_response_is_row_major_and_echoes_id() -> None:
    arr = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    body, header_length = encode_infer_response("m", "1", "abc", [(RequestedOutput("embedding"), arr)])
    assert header_length is None
    doc = json.loads(body)
    assert doc == {
        "model_name": "m",
        "model_version": "1",
        "id": "abc",
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [2, 4], "data": (arr.ravel()).tolist()}
        ],
    }


def test_encode_binary_response_appends_little_endian_floats() -> None:
    arr = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    body, header_length = encode_infer_response("m", "1", None, [(RequestedOutput("embedding", True), arr)])
    assert header_length is not None
    doc = json.loads(body[:header_length])
    assert "id" not in doc
    (out,) = doc["outputs"]
    assert out["shape"] == [3, 4] and out["datatype"] == "FP32" and "data" not in out
    assert out["parameters"] == {"binary_data_size": 48}
    np.testing.assert_array_equal(np.frombuffer(body[header_length:], dtype="<f4").reshape(3, 4), arr)
