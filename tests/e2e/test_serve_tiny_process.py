"""`kiln serve` as a real process on a free port, called with tritonclient.http and the openai client."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from _fixtures.embeddings import bundle_embeddings
from _fixtures.server_process import Server, running_server
from _fixtures.tiny_bundle import TINY_DIM, TINY_MAX_LENGTH

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODEL = "tiny-embed"
TEXTS = ["The quick brown fox jumps over the lazy dog", "hello world", "kiln serves fast small embeddings"]


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tiny_bundle, tmp_path_factory.mktemp("serve"), {"KILN_THREADS": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path) -> np.ndarray:
    return bundle_embeddings(tiny_bundle, TEXTS, TINY_MAX_LENGTH)


@pytest.fixture
def triton(server: Server) -> Iterator[object]:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        yield client
    finally:
        client.close()


def test_startup_log_names_the_url(server: Server) -> None:
    text = server.log.read_text()
    assert f"serving model '{MODEL}'" in text and server.url in text


def test_tritonclient_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    assert not triton.is_model_ready("missing")
    meta = triton.get_server_metadata()
    assert meta["name"] == "kiln" and "binary_tensor_data" in meta["extensions"]
    model = triton.get_model_metadata(MODEL)
    assert model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert model["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, TINY_DIM]}]


def test_tritonclient_json_tensors(triton, expected: np.ndarray) -> None:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=False)
    out = httpclient.InferRequestedOutput("embedding", binary_data=False)
    result = triton.infer(MODEL, [inp], outputs=[out], request_id="e2e-json")
    response = result.get_response()
    assert response["id"] == "e2e-json"
    assert "data" in response["outputs"][0]  # really JSON, not binary
    got = result.as_numpy("embedding")
    assert got.shape == (len(TEXTS), TINY_DIM)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tritonclient_binary_defaults(triton, expected: np.ndarray) -> None:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))  # binary by default
    result = triton.infer(MODEL, [inp], model_version="1")  # no outputs: binary_data_output
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == len(TEXTS) * TINY_DIM * 4
    np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-6)


def test_tritonclient_gzip_request(triton, expected: np.ndarray) -> None:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXTS[1]], dtype=object))
    result = triton.infer(MODEL, [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("embedding"), expected[1:2], atol=1e-6)


def test_tritonclient_sees_server_errors(triton) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array(["hi"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.infer("nope", [inp])
    bad = httpclient.InferInput("txt", [1], "BYTES")
    bad.set_data_from_numpy(np.array(["hi"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown input 'txt'"):
        triton.infer(MODEL, [bad])


def test_openai_client_float_and_base64(server: Server, expected: np.ndarray) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    try:
        res = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
        got = np.asarray([d.embedding for d in res.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert res.model == MODEL
        assert res.usage.prompt_tokens == res.usage.total_tokens == (9 + 2) + (2 + 2) + (5 + 2)

        raw = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
        rows = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data]
        np.testing.assert_allclose(np.stack(rows), expected, atol=1e-6)

        # without encoding_format the client asks for base64 and decodes it to floats itself
        default = client.embeddings.create(model=MODEL, input=TEXTS[0])
        np.testing.assert_allclose(default.data[0].embedding, expected[0], atol=1e-6)

        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.NotFoundError, match="unknown model"):
            client.embeddings.create(model="gpt-nope", input="x")
        with pytest.raises(openai.BadRequestError, match="no texts"):
            client.embeddings.create(model=MODEL, input=[])
    finally:
        client.close()


def test_metrics_endpoint(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "kiln_http_requests_total{" in text and "kiln_inference_items_total" in text


def test_server_process_has_not_loaded_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    loaded = maps.read_text()
    assert "onnxruntime" in loaded  # the check can see shared libraries at all
    assert "libtorch" not in loaded and "/torch/" not in loaded
