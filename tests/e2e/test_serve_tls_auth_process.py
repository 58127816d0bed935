"""`kiln serve --api-keys F --ssl-certfile C --ssl-keyfile K` as a real process: HTTPS and gRPC over TLS,
called with the openai client, tritonclient.http and a gRPC stub, each sending an API key."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from _fixtures.server_process import free_port, start_server, stop_server
from _fixtures.tiny_bundle import TINY_DIM
from kiln.serve.keys import add_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODEL = "tiny-embed"


@dataclass
class TlsServer:
    url: str
    port: int
    grpc_port: int
    cert: Path
    log: Path
    keys: dict[str, str]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _trust(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def _wait_ready(proc: subprocess.Popen[bytes], url: str, cert: Path, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kiln serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", verify=_trust(cert), timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"kiln serve was not ready after {seconds}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(folder)
    keys_file = folder / "keys.json"
    keys = {
        "app": add_key(keys_file, "app", models=(MODEL,), routes=("infer", "metadata"))[0],
        "ops": add_key(keys_file, "ops", routes=("metrics",))[0],
    }
    port, grpc_port, log = free_port(), free_port(), folder / "server.log"
    args = ["--api-keys", str(keys_file), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    proc = start_server(
        tiny_bundle,
        log,
        port,
        {"KILN_THREADS": "1", "KILN_HOME": str(folder / "home")},
        [*args, "--grpc-port", str(grpc_port)],
    )
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, cert, log)
        yield TlsServer(url, port, grpc_port, cert, log, keys)
    finally:
        stop_server(proc)


def test_openai_client_over_https_with_a_key(server: TlsServer) -> None:
    openai = pytest.importorskip("openai")
    with httpx.Client(verify=_trust(server.cert)) as http:
        client = openai.OpenAI(api_key=server.keys["app"], base_url=f"{server.url}/v1", http_client=http)
        result = client.embeddings.create(model=MODEL, input=["hello world", "the quick brown fox"])
        assert len(result.data) == 2 and len(result.data[0].embedding) == TINY_DIM
        bad = openai.OpenAI(api_key="sk-not-a-kiln-key", base_url=f"{server.url}/v1", http_client=http)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model=MODEL, input="hello")
        ops = openai.OpenAI(api_key=server.keys["ops"], base_url=f"{server.url}/v1", http_client=http)
        with pytest.raises(openai.PermissionDeniedError):
            ops.embeddings.create(model=MODEL, input="hello")


def test_tritonclient_over_https_with_headers(server: TlsServer) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(
        url=f"127.0.0.1:{server.port}", ssl=True, ssl_options={"ca_certs": str(server.cert)}
    )
    try:
        assert client.is_server_ready()  # health needs no key
        headers = {"Authorization": f"Bearer {server.keys['app']}"}
        assert client.get_model_metadata(MODEL, headers=headers)["name"] == MODEL
        text = httpclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"hello world", b"kiln"], dtype=np.object_))
        result = client.infer(MODEL, [text], headers={"X-API-Key": server.keys["app"]})
        assert result.as_numpy("embedding").shape == (2, TINY_DIM)
        with pytest.raises(InferenceServerException, match="requires an API key"):
            client.infer(MODEL, [text])
    finally:
        client.close()


def test_plain_http_is_refused_and_metrics_need_their_scope(server: TlsServer) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/v2/health/ready", timeout=5)
    with httpx.Client(verify=_trust(server.cert), base_url=server.url) as http:
        assert http.get("/metrics", headers={"X-API-Key": server.keys["app"]}).status_code == 403
        r = http.get("/metrics", headers={"X-API-Key": server.keys["ops"], "X-Request-ID": "e2e-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"


def test_grpc_over_tls_with_metadata_key(server: TlsServer) -> None:
    grpc = pytest.importorskip("grpc")
    from kiln.serve.grpc import grpc_predict_v2_pb2 as pb
    from kiln.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=server.cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{server.grpc_port}", credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        meta = [("authorization", f"Bearer {server.keys['app']}")]
        assert (
            stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), metadata=meta, timeout=10).name == MODEL
        )


def test_log_has_json_access_lines_without_keys(server: TlsServer) -> None:
    with httpx.Client(verify=_trust(server.cert), base_url=server.url) as http:
        http.get("/v2", headers={"X-API-Key": server.keys["app"], "X-Request-ID": "find-me"})
    deadline = time.monotonic() + 10
    while "find-me" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = server.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"time"')]
    (mine,) = [line for line in lines if line["request_id"] == "find-me"]
    assert mine["route"] == "/v2" and mine["status"] == 200 and mine["key_id"] == "app"
    assert all(key not in text for key in server.keys.values())
    assert "https://127.0.0.1" in text and "API keys: 2" in text
