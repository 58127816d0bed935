"""The real default bundle served by a real ``kiln serve`` process, called with tritonclient and openai."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _fixtures.embeddings import bundle_embeddings
from _fixtures.server_process import Server, running_server
from kiln.bundle.load import load_bundle

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

TEXTS = ["A quiet triumph of a film.", "hello world", "The plot collapses under its own weight."]


@pytest.fixture(scope="module")
def server(default_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(default_bundle, tmp_path_factory.mktemp("serve-default")) as srv:
        yield srv


@pytest.fixture(scope="module")
def expected(default_bundle: Path) -> np.ndarray:
    return bundle_embeddings(default_bundle, TEXTS)


def alone(default_bundle: Path, text: str) -> np.ndarray:
    return bundle_embeddings(default_bundle, [text])[0]


def _model(default_bundle: Path) -> str:
    return load_bundle(default_bundle).manifest.model_name


def test_tritonclient_json_tensors(server: Server, default_bundle: Path, expected: np.ndarray) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    name = _model(default_bundle)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["inputs"][0]["name"] == "text" and meta["outputs"][0]["datatype"] == "FP32"
    text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary_data=False)
    out = httpclient.InferRequestedOutput("embedding", binary_data=False)
    result = client.infer(name, [text], outputs=[out])
    got = result.as_numpy("embedding")
    assert got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_openai_client_float_and_base64(server: Server, default_bundle: Path, expected: np.ndarray) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    name = _model(default_bundle)
    resp = client.embeddings.create(model=name, input=TEXTS)
    got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert resp.usage.prompt_tokens > len(TEXTS)
    raw = client.embeddings.with_raw_response.create(model=name, input=TEXTS[0], encoding_format="base64")
    item = raw.http_response.json()["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(item), dtype="<f4")
    # alone, not in a batch: INT8 dynamic quantization scales activations per batch
    np.testing.assert_allclose(vec, alone(default_bundle, TEXTS[0]), atol=1e-5)
