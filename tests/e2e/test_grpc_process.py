"""`kiln serve --grpc-port` as a real process on free ports, called with tritonclient.grpc (raw contents)."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from _fixtures.embeddings import bundle_embeddings
from _fixtures.server_process import Server, free_port, running_server, start_server
from _fixtures.tiny_bundle import TINY_DIM, TINY_MAX_LENGTH
from kiln import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

grpcclient = pytest.importorskip("tritonclient.grpc")

MODEL = "tiny-embed"
TEXTS = ["The quick brown fox jumps over the lazy dog", "hello world", "kiln serves fast small embeddings"]
ENV = {"KILN_THREADS": "1"}


@dataclass
class GrpcServer:
    http: Server
    grpc_port: int


@contextmanager
def running(bundle: Path, log_dir: Path) -> Iterator[GrpcServer]:
    """``kiln serve BUNDLE --grpc-port G`` on free ports (gRPC starts before HTTP: ready means it listens)."""
    grpc_port = free_port()
    with running_server(bundle, log_dir, ENV, ["--grpc-port", str(grpc_port)]) as http:
        yield GrpcServer(http, grpc_port)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    with running(tiny_bundle, tmp_path_factory.mktemp("grpc")) as srv:
        yield srv


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path) -> np.ndarray:
    return bundle_embeddings(tiny_bundle, TEXTS, TINY_MAX_LENGTH)


@pytest.fixture
def triton(server: GrpcServer) -> Iterator[object]:
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")
    try:
        yield client
    finally:
        client.close()


def test_startup_log_names_the_grpc_address(server: GrpcServer) -> None:
    assert f"127.0.0.1:{server.grpc_port} (inference.GRPCInferenceService)" in server.http.log.read_text()


def test_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL) and triton.is_model_ready(MODEL, "1")
    meta = triton.get_server_metadata()
    assert (meta.name, meta.version) == ("kiln", __version__)
    model = triton.get_model_metadata(MODEL, as_json=True)
    assert model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert model["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", str(TINY_DIM)]}]


def test_infer_raw_contents(triton, expected: np.ndarray) -> None:
    inp = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))  # raw_input_contents
    out = grpcclient.InferRequestedOutput("embedding")
    result = triton.infer(MODEL, [inp], outputs=[out], request_id="e2e-grpc", model_version="1")
    response = result.get_response()
    assert response.id == "e2e-grpc" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1  # answered raw, as asked
    got = result.as_numpy("embedding")
    assert got.shape == (len(TEXTS), TINY_DIM)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_grpc_and_http_share_one_dataplane(server: GrpcServer, triton, expected: np.ndarray) -> None:
    inp = grpcclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXTS[1]], dtype=object))
    np.testing.assert_allclose(triton.infer(MODEL, [inp]).as_numpy("embedding"), expected[1:2], atol=1e-6)
    result = triton.infer(MODEL, [inp], request_id="e2e-shared", headers={"x-request-id": "e2e-shared-rid"})
    assert result.get_response().id == "e2e-shared"
    metrics = httpx.get(f"{server.http.url}/metrics", timeout=5).text
    assert 'kiln_inference_items_total{model="tiny-embed",version="1"}' in metrics  # gRPC inference counted
    assert 'kiln_grpc_requests_total{code="OK",method="ModelInfer",model="tiny-embed",version="1"}' in metrics
    # its access-log line (JSON on stdout, like REST's) and its request-log row
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in server.http.log.read_text().splitlines() if x.startswith("{")]
        mine = [x for x in lines if x.get("request_id") == "e2e-shared-rid"]
        committed = httpx.get(f"{server.http.url}/v2/monitor/stats", timeout=5).json()["committed"]
        if mine and committed >= 2:
            break
        time.sleep(0.2)
    assert [(x["method"], x["route"], x["status"], x["grpc_code"]) for x in mine] == [
        ("GRPC", "/inference.GRPCInferenceService/ModelInfer", 200, "OK")
    ]
    assert committed >= 2  # both ModelInfer calls are in the request log


def test_errors(triton) -> None:
    from tritonclient.utils import InferenceServerException

    inp = grpcclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array(["hi"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as unknown:
        triton.infer("nope", [inp])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("txt", [1], "BYTES")
    bad.set_data_from_numpy(np.array(["hi"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown input 'txt'") as invalid:
        triton.infer(MODEL, [bad])
    assert invalid.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown model 'missing'"):
        triton.is_model_ready("missing")


def test_sigterm_stops_both_protocols(tiny_bundle: Path, tmp_path: Path) -> None:
    with running(tiny_bundle, tmp_path) as srv:
        proc = srv.http.proc
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        with socket.socket() as s:  # the gRPC port is free again
            s.bind(("127.0.0.1", srv.grpc_port))
    assert "Finished server process" in srv.http.log.read_text()


def test_grpc_port_in_use_fails_startup(tiny_bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_server(tiny_bundle, log, free_port(), ENV, ["--grpc-port", str(port)])
        assert proc.wait(timeout=60) == 3
    text = log.read_text()
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in text
    assert "is the port in use?" in text and "Traceback" not in text


def test_server_process_has_not_loaded_torch(server: GrpcServer) -> None:
    maps = Path(f"/proc/{server.http.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    loaded = maps.read_text()
    assert "onnxruntime" in loaded and "cygrpc" in loaded  # the check sees shared libraries, gRPC's too
    assert "libtorch" not in loaded and "/torch/" not in loaded
