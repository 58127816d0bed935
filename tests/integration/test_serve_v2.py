"""Open Inference Protocol v2 REST against the tiny bundle, in process, with real ONNX Runtime sessions."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from _fixtures.embeddings import bundle_embeddings
from _fixtures.tiny_bundle import TINY_DIM, TINY_MAX_LENGTH
from _fixtures.v2_requests import binary_request
from kiln import __version__
from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.serve.v2_codec import HEADER_LENGTH
from kiln.settings import Settings

TEXTS = ["The quick brown fox jumps over the lazy dog", "hello world", "héllo wörld ünknown"]
INFER = "/v2/models/tiny-embed/infer"


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_bundle(tiny_bundle), Settings())) as c:
        yield c


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path) -> np.ndarray:
    return bundle_embeddings(tiny_bundle, TEXTS, TINY_MAX_LENGTH)


def text_tensor(texts: list[str]) -> dict[str, object]:
    return {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}


def binary_body(texts: list[str], **doc: object) -> tuple[bytes, dict[str, str]]:
    body, header_length = binary_request(texts, **doc)
    return body, {HEADER_LENGTH: header_length, "Content-Type": "application/octet-stream"}


def binary_output(response) -> tuple[dict[str, object], np.ndarray]:
    n = int(response.headers[HEADER_LENGTH])
    doc = json.loads(response.content[:n])
    (out,) = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == len(response.content) - n
    return doc, np.frombuffer(response.content[n:], dtype="<f4").reshape(out["shape"])


def test_server_metadata(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "kiln",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


def test_health(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/tiny-embed", "/v2/models/tiny-embed/versions/1"])
def test_model_metadata(client: TestClient, path: str) -> None:
    assert client.get(path).json() == {
        "name": "tiny-embed",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, TINY_DIM]}],
    }


def test_model_ready(client: TestClient, tiny_bundle: Path) -> None:
    assert client.get("/v2/models/tiny-embed/ready").status_code == 200
    assert client.get("/v2/models/tiny-embed/versions/1/ready").status_code == 200
    assert client.get(f"/v2/models/{tiny_bundle.name}/ready").status_code == 200  # the bundle's name
    assert client.get("/v2/models/other/ready").status_code == 404
    assert client.get("/v2/models/tiny-embed/versions/9/ready").status_code == 404


def test_json_infer_returns_the_model_embeddings(client: TestClient, expected: np.ndarray) -> None:
    r = client.post(INFER, json={"id": "req-1", "inputs": [text_tensor(TEXTS)]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert HEADER_LENGTH.lower() not in r.headers
    doc = r.json()
    assert doc["id"] == "req-1" and doc["model_name"] == "tiny-embed" and doc["model_version"] == "1"
    (out,) = doc["outputs"]
    assert out["name"] == "embedding" and out["datatype"] == "FP32" and out["shape"] == [3, TINY_DIM]
    assert len(out["data"]) == 3 * TINY_DIM  # row-major, flattened
    got = np.asarray(out["data"], dtype=np.float32).reshape(3, TINY_DIM)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_versioned_infer_and_requested_outputs(client: TestClient, expected: np.ndarray) -> None:
    doc = {"inputs": [text_tensor(TEXTS[:1])], "outputs": [{"name": "embedding"}]}
    r = client.post("/v2/models/tiny-embed/versions/1/infer", json=doc)
    assert r.status_code == 200, r.text
    assert "id" not in r.json()
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected[0], atol=1e-6)


def test_binary_inputs_and_binary_outputs(client: TestClient, expected: np.ndarray) -> None:
    body, headers = binary_body(TEXTS, parameters={"binary_data_output": True}, id="b1")
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    doc, arr = binary_output(r)
    assert doc["id"] == "b1"
    np.testing.assert_allclose(arr, expected, atol=1e-6)


def test_binary_output_asked_per_output_with_json_input(client: TestClient, expected: np.ndarray) -> None:
    doc = {
        "inputs": [text_tensor(TEXTS)],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
    }
    r = client.post(INFER, json=doc)
    _, arr = binary_output(r)
    np.testing.assert_allclose(arr, expected, atol=1e-6)


def test_binary_input_with_json_output(client: TestClient, expected: np.ndarray) -> None:
    body, headers = binary_body(TEXTS[1:])
    r = client.post(INFER, content=body, headers=headers)
    assert HEADER_LENGTH.lower() not in r.headers
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, TINY_DIM)
    np.testing.assert_allclose(got, expected[1:], atol=1e-6)


def test_gzip_request_body(client: TestClient, expected: np.ndarray) -> None:
    raw = gzip.compress(json.dumps({"inputs": [text_tensor(TEXTS)]}).encode())
    r = client.post(
        INFER, content=raw, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.reshape(r.json()["outputs"][0]["data"], (3, TINY_DIM)), expected, atol=1e-6)


def test_batch_order_is_kept(client: TestClient, expected: np.ndarray) -> None:
    texts = [TEXTS[2], TEXTS[0], TEXTS[1], TEXTS[0]]
    r = client.post(INFER, json={"inputs": [text_tensor(texts)]})
    got = np.reshape(r.json()["outputs"][0]["data"], (4, TINY_DIM))
    np.testing.assert_allclose(got, expected[[2, 0, 1, 0]], atol=1e-6)
