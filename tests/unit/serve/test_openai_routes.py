from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from kiln.errors import InvalidInputError
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.errors import ParamError
from kiln.serve.openai_routes import (
    EmbeddingsRequest,
    embeddings_response,
    encode_embedding,
    model_card,
    parse_embeddings_request,
)


def parse(doc: object) -> EmbeddingsRequest:
    return parse_embeddings_request(json.dumps(doc).encode())


def test_parse_accepts_a_string_or_a_list() -> None:
    req = parse({"model": "m", "input": "hi"})
    assert req.input == "hi" and req.encoding_format is None
    req = parse({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "user": "u", "extra": 1})
    assert req.input == ["a", "b"] and req.encoding_format == "base64"


@pytest.mark.parametrize(
    ("doc", "param", "match"),
    [
        ({"model": "m", "input": [1, 2]}, "input", "token-id arrays are not supported"),
        ({"model": "m", "input": 3}, "input", "string or a list of strings"),
        ({"model": "m"}, "input", "string or a list of strings"),
        ({"input": "x"}, "model", "'model' is required"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format", "'encoding_format'"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions", "'dimensions'"),
    ],
)
def test_parse_rejects_with_the_param_named(doc: object, param: str, match: str) -> None:
    with pytest.raises(ParamError, match=match) as info:
        parse(doc)
    assert info.value.param == param
    assert isinstance(info.value.error, InvalidInputError)


def test_parse_rejects_malformed_json() -> None:
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        parse_embeddings_request(b"{")


def test_base64_is_little_endian_float32() -> None:
    vec = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    encoded = encode_embedding(vec, "base64")
    assert isinstance(encoded, str)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), vec)
    assert encode_embedding(vec, "float") == [0.5, -1.25, 3.0]
    assert encode_embedding(vec, None) == [0.5, -1.25, 3.0]


def test_embeddings_response_shape() -> None:
    arr = np.eye(2, dtype=np.float32)
    assert embeddings_response("m", arr, "float", 7) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
        ],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_model_card() -> None:
    info = ModelInfo(
        name="m",
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 2)),),
        created=123,
    )
    assert model_card(info) == {"id": "m", "object": "model", "created": 123, "owned_by": "kiln"}
