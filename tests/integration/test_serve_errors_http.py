"""Every request error a client can cause: the right 4xx, a clear message, each protocol's error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.serve.v2_codec import HEADER_LENGTH, encode_bytes_tensor
from kiln.settings import Settings

INFER = "/v2/models/tiny-embed/infer"
LIMITS = Settings(max_batch_items=4, max_request_bytes=2000, max_text_chars=50)


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_bundle(tiny_bundle), LIMITS), raise_server_exceptions=False) as c:
        yield c


def tensor(data: object, shape: list[int] | None = None, **over: object) -> dict[str, object]:
    n = len(data) if isinstance(data, list) else 1
    return {"name": "text", "datatype": "BYTES", "shape": shape or [n], "data": data, **over}


def v2_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    doc = response.json()
    assert set(doc) == {"error"} and isinstance(doc["error"], str)
    return doc["error"]


def openai_error(response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    return err


@pytest.mark.parametrize(
    ("doc", "status", "match"),
    [
        ({"inputs": [tensor(["a"], name="txt")]}, 400, "unknown input 'txt'"),
        ({"inputs": [tensor(["a"], datatype="INT64")]}, 400, "must be 'BYTES'"),
        ({"inputs": [tensor(["a", "b"], shape=[3])]}, 400, "shape says 3"),
        ({"inputs": [tensor([1, 2])]}, 400, "must be strings"),
        ({"inputs": []}, 400, "non-empty list"),
        ({"inputs": [tensor([])]}, 400, "no texts"),
        ({"inputs": [tensor(["a", ""])]}, 400, "text 1 is empty"),
        ({"inputs": [tensor(["x" * 51])]}, 400, "51 characters; the limit is 50"),
        ({"inputs": [tensor(["a"] * 5)]}, 413, "5 texts in one request; the limit is 4"),
        ({"inputs": [tensor(["a"])], "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
    ],
)
def test_v2_request_errors(client: TestClient, doc: dict[str, object], status: int, match: str) -> None:
    assert match in v2_error(client.post(INFER, json=doc), status)


def test_v2_malformed_json(client: TestClient) -> None:
    assert "not valid JSON" in v2_error(client.post(INFER, content=b'{"inputs": ['), 400)


def test_lone_surrogates_are_a_client_error(client: TestClient) -> None:
    t = b'{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a\\ud800"]}'
    assert "not valid Unicode" in v2_error(client.post(INFER, content=b'{"inputs": [' + t + b"]}"), 400)
    r = client.post("/v1/embeddings", content=b'{"model": "tiny-embed", "input": "\\udfff"}')
    assert openai_error(r, 400)["param"] == "input"


def test_v2_unknown_model_and_version(client: TestClient) -> None:
    assert "unknown model 'nope'" in v2_error(client.get("/v2/models/nope"), 404)
    assert "unknown model 'nope'" in v2_error(client.post("/v2/models/nope/infer", json={}), 404)
    assert "no version '3'" in v2_error(client.post("/v2/models/tiny-embed/versions/3/infer", json={}), 404)


def test_body_over_the_limit_by_content_length(client: TestClient) -> None:
    doc = {"inputs": [tensor(["a" * 40] * 4)], "pad": "x" * 2000}
    assert "over the limit of 2000 bytes" in v2_error(client.post(INFER, json=doc), 413)


def test_body_over_the_limit_when_streamed_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": [], "pad": "'
        for _ in range(30):
            yield b"x" * 100
        yield b'"}'

    r = client.post(INFER, content=chunks())
    assert "content-length" not in r.request.headers
    assert "over the limit of 2000 bytes" in v2_error(r, 413)


def test_binary_errors(client: TestClient) -> None:
    raw = encode_bytes_tensor(["a", "b"])
    t = {"name": "text", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [t]}).encode()
    r = client.post(INFER, content=header + raw[:-1], headers={HEADER_LENGTH: str(len(header))})
    assert "binary data" in v2_error(r, 400)
    r = client.post(INFER, content=header + raw, headers={HEADER_LENGTH: "nope"})
    assert HEADER_LENGTH in v2_error(r, 400)
    bad = encode_bytes_tensor([b"\xff", b"b"])
    r = client.post(INFER, content=header + bad, headers={HEADER_LENGTH: str(len(header))})
    assert "not UTF-8" in v2_error(r, 400)


def test_unknown_route_and_method(client: TestClient) -> None:
    assert "no route for GET /v3" in v2_error(client.get("/v3"), 404)
    assert "GET is not allowed" in v2_error(client.get(INFER), 405)
    err = openai_error(client.get("/v1/nothing"), 404)
    assert "no route" in str(err["message"])


@pytest.mark.parametrize(
    ("doc", "status", "param", "match"),
    [
        ({"model": "nope", "input": "a"}, 404, "model", "unknown model 'nope'"),
        ({"input": "a"}, 400, "model", "'model' is required"),
        ({"model": "tiny-embed", "input": []}, 400, "input", "no texts"),
        ({"model": "tiny-embed", "input": ""}, 400, "input", "text 0 is empty"),
        ({"model": "tiny-embed", "input": [[1, 2, 3]]}, 400, "input", "token-id arrays"),
        ({"model": "tiny-embed", "input": ["ok", 5]}, 400, "input", "list of strings"),
        ({"model": "tiny-embed", "input": "y" * 51}, 400, "input", "the limit is 50"),
        ({"model": "tiny-embed", "input": ["a"] * 5}, 413, "input", "the limit is 4"),
        ({"model": "tiny-embed", "input": "a", "encoding_format": "hex"}, 400, "encoding_format", ""),
        ({"model": "tiny-embed", "input": "a", "dimensions": 3}, 400, "dimensions", "dimensions=3"),
    ],
)
def test_openai_request_errors(
    client: TestClient, doc: dict[str, object], status: int, param: str, match: str
) -> None:
    err = openai_error(client.post("/v1/embeddings", json=doc), status)
    assert err["param"] == param
    assert match in str(err["message"])
    assert err["code"] == {404: "model_not_found", 413: "request_too_large"}.get(status)


def test_openai_malformed_json_and_oversized_body(client: TestClient) -> None:
    err = openai_error(client.post("/v1/embeddings", content=b"{nope"), 400)
    assert "not valid JSON" in str(err["message"])
    big = {"model": "tiny-embed", "input": "a", "pad": "p" * 3000}
    assert openai_error(client.post("/v1/embeddings", json=big), 413)["code"] == "request_too_large"


def test_unexpected_errors_are_500_json_without_traceback(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataplane = client.app.state.dataplane  # type: ignore[attr-defined]
    served = dataplane._models["tiny-embed"].stable()

    def explode(texts: object) -> object:
        raise RuntimeError("secret internals at /srv/model.onnx")

    monkeypatch.setattr(served.model.embedder.backend, "run", explode)  # ONNX Runtime fails
    r = client.post(INFER, json={"inputs": [tensor(["a"])]})
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "internal server error" in r.json()["error"]
    r = client.post("/v1/embeddings", json={"model": "tiny-embed", "input": "a"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text
    monkeypatch.undo()
    assert client.post(INFER, json={"inputs": [tensor(["a"])]}).status_code == 200  # still serving
