"""A classify bundle served in-process: ``/v1/classify`` and v2 infer (``label`` BYTES + ``scores`` FP32)
agree with the PyTorch model the bundle was built from."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from _fixtures.classify_bundle import CLASSIFY_LABELS, ClassifyBuild
from kiln.bundle.load import load_bundle
from kiln.runtime.tokenizer import TextTokenizer
from kiln.serve.app import create_app
from kiln.settings import Settings

pytestmark = pytest.mark.slow

TEXTS = ["a gripping, beautifully acted drama", "dull and far too long", "ok"]


@pytest.fixture(scope="module")
def atol(classify_build: ClassifyBuild) -> float:
    """Scores match the PyTorch model exactly for the fp32 export, loosely for a chosen INT8 variant
    (which passed the lossy parity gate: top-1 agreement and probability shift)."""
    return 1e-4 if load_bundle(classify_build.bundle).manifest.chosen == "onnx-fp32" else 0.05


@pytest.fixture(scope="module")
def client(classify_build: ClassifyBuild) -> Iterator[TestClient]:
    app = create_app(load_bundle(classify_build.bundle), Settings())
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def expected(classify_build: ClassifyBuild) -> np.ndarray:
    """Softmax of the PyTorch reference's logits."""
    from kiln.bench.quality_classify import softmax
    from kiln.tasks.classify_torch import TorchClassifier

    tok = TextTokenizer(classify_build.bundle / "tokenizer.json", 128)
    return softmax(TorchClassifier(classify_build.model_dir, tok).embed(TEXTS))


def test_v1_classify_returns_labels_and_scores(client: TestClient, expected: np.ndarray, atol: float) -> None:
    r = client.post("/v1/classify", json={"model": "tiny-classifier", "input": TEXTS})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == "tiny-classifier"
    assert doc["usage"]["prompt_tokens"] > 0
    for i, item in enumerate(doc["data"]):
        assert item["index"] == i
        assert item["label"] == CLASSIFY_LABELS[int(expected[i].argmax())]
        by_label = {s["label"]: s["score"] for s in item["scores"]}
        assert set(by_label) == set(CLASSIFY_LABELS)
        np.testing.assert_allclose([by_label[n] for n in CLASSIFY_LABELS], expected[i], atol=atol)
        assert item["score"] == max(by_label.values())


def test_v1_classify_single_text_and_top_k(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"model": "tiny-classifier", "input": "fine", "top_k": 1})
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert len(item["scores"]) == 1 and item["scores"][0]["label"] == item["label"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny-classifier"}, "input"),
        ({"model": "tiny-classifier", "input": [1, 2]}, "input"),
        ({"model": "tiny-classifier", "input": ""}, "input"),
        ({"model": "tiny-classifier", "input": "x", "top_k": 0}, "top_k"),
        ({"model": "nope", "input": "x"}, "model"),
    ],
)
def test_v1_classify_rejects_bad_requests(client: TestClient, body: dict[str, object], param: str) -> None:
    r = client.post("/v1/classify", json=body)
    assert r.status_code in (400, 404), r.text
    assert param in r.text


def test_embeddings_route_refuses_a_classifier(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "tiny-classifier", "input": "x"})
    assert r.status_code == 400 and "/v1/classify" in r.text


def test_v2_metadata_names_label_and_scores(client: TestClient) -> None:
    meta = client.get("/v2/models/tiny-classifier").json()
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["scores"]["datatype"] == "FP32"
    assert outputs["scores"]["shape"] == [-1, 2]


def test_v2_infer_json(client: TestClient, expected: np.ndarray, atol: float) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS}]}
    r = client.post("/v2/models/tiny-classifier/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [3]
    assert out["label"]["data"] == [CLASSIFY_LABELS[int(k)] for k in expected.argmax(axis=1)]
    assert out["scores"]["shape"] == [3, 2]
    np.testing.assert_allclose(np.asarray(out["scores"]["data"]).reshape(3, 2), expected, atol=atol)


def test_v2_infer_binary_label(client: TestClient, expected: np.ndarray) -> None:
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS}],
        "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
    }
    r = client.post("/v2/models/tiny-classifier/infer", json=body)
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:n])
    (out,) = header["outputs"]
    assert out["name"] == "label" and out["datatype"] == "BYTES"
    raw, labels, pos = r.content[n:], [], 0
    assert len(raw) == out["parameters"]["binary_data_size"]
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        labels.append(raw[pos + 4 : pos + 4 + size].decode())
        pos += 4 + size
    assert labels == [CLASSIFY_LABELS[int(k)] for k in expected.argmax(axis=1)]
