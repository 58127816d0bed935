"""OpenAI-compatible routes against the tiny bundle, in process."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from _fixtures.tiny_bundle import TINY_DIM, tiny_reference_embeddings
from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.settings import Settings

TEXTS = ["The quick brown fox", "hello world", "a movie i love"]
TOKENS = (4 + 2) + (2 + 2) + (4 + 2)  # words + [CLS] + [SEP]; padding is not counted


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_bundle(tiny_bundle), Settings())) as c:
        yield c


def test_float_embeddings(client: TestClient) -> None:
    r = client.post(
        "/v1/embeddings", json={"model": "tiny-embed", "input": TEXTS, "encoding_format": "float"}
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == "tiny-embed"
    assert doc["usage"] == {"prompt_tokens": TOKENS, "total_tokens": TOKENS}
    assert [d["index"] for d in doc["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in doc["data"])
    got = np.asarray([d["embedding"] for d in doc["data"]], dtype=np.float32)
    assert got.shape == (3, TINY_DIM)
    np.testing.assert_allclose(got, tiny_reference_embeddings(TEXTS), atol=1e-5)


def test_default_format_is_float(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "tiny-embed", "input": "hello world"})
    (item,) = r.json()["data"]
    np.testing.assert_allclose(item["embedding"], tiny_reference_embeddings(["hello world"])[0], atol=1e-5)
    assert r.json()["usage"]["prompt_tokens"] == 4


def test_base64_embeddings_are_little_endian_float32(client: TestClient) -> None:
    r = client.post(
        "/v1/embeddings", json={"model": "tiny-embed", "input": TEXTS, "encoding_format": "base64"}
    )
    assert r.status_code == 200, r.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
    np.testing.assert_allclose(np.stack(rows), tiny_reference_embeddings(TEXTS), atol=1e-5)


def test_the_bundle_name_is_accepted_as_model(client: TestClient, tiny_bundle: Path) -> None:
    r = client.post("/v1/embeddings", json={"model": tiny_bundle.name, "input": "hello"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "tiny-embed"


def test_dimensions_equal_to_the_model_are_accepted(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "tiny-embed", "input": "hello", "dimensions": TINY_DIM})
    assert r.status_code == 200, r.text


def test_models(client: TestClient) -> None:
    doc = client.get("/v1/models").json()
    assert doc == {
        "object": "list",
        "data": [{"id": "tiny-embed", "object": "model", "created": 1704164645, "owned_by": "kiln"}],
    }
    assert client.get("/v1/models/tiny-embed").json()["id"] == "tiny-embed"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
