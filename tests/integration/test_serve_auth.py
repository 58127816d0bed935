"""API keys, scopes, rate limits, request ids and the access log, in process (REST over ASGI, gRPC on a port).

The models are fakes (fast numpy), so these tests are about the HTTP / gRPC layers only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from starlette.testclient import TestClient

from kiln.errors import KeysFileError
from kiln.serve.app import build_app
from kiln.serve.auth import Guard
from kiln.serve.dataplane import DataPlane, ModelInfo, TensorSpec
from kiln.serve.grpc import grpc_predict_v2_pb2 as pb
from kiln.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kiln.serve.grpc.service import bind, create_grpc_server
from kiln.serve.keys import KeyStore, add_key, new_key
from kiln.serve.ratelimit import RateLimiter
from kiln.settings import Settings

FAST = 1000


def _info(name: str, aliases: frozenset[str] = frozenset()) -> ModelInfo:
    return ModelInfo(
        name=name,
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 2)),),
        aliases=aliases,
    )


class Ones:
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), 2), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1 for _ in texts]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KEYS = {
    "all": {},
    "a-infer": {"models": ("a",), "routes": ("infer",)},
    "meta": {"routes": ("metadata",)},
    "metrics": {"routes": ("metrics",)},
    "admin": {"admin": True, "models": ("nothing",), "routes": ("infer",)},
    "slow": {"rate": 1.0, "burst": 2},
}


@pytest.fixture(scope="module")
def keyring() -> tuple[dict[str, str], KeyStore]:
    secrets, records = {}, []
    for key_id, options in KEYS.items():
        secret, record = new_key(key_id, iterations=FAST, **options)  # type: ignore[arg-type]
        secrets[key_id] = secret
        records.append(record)
    return secrets, KeyStore(tuple(records))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dataplane() -> Iterator[DataPlane]:
    dp = DataPlane()
    dp.add(_info("a", frozenset({"alias-of-a"})), Ones())
    dp.add(_info("b"), Ones())
    yield dp
    dp.stop()


@pytest.fixture
def client(
    dataplane: DataPlane, keyring: tuple[dict[str, str], KeyStore], clock: FakeClock
) -> Iterator[TestClient]:
    guard = Guard(keyring[1], RateLimiter(clock))
    with TestClient(build_app(dataplane, Settings(), guard=guard)) as c:
        yield c


@pytest.fixture
def keys(keyring: tuple[dict[str, str], KeyStore]) -> dict[str, str]:
    return keyring[0]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}


def test_health_needs_no_key(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v2"), ("GET", "/v2/models/a"), ("GET", "/v2/models/a/ready"), ("POST", "/v2/models/a/infer"),
     ("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("GET", "/metrics"), ("GET", "/no/such/route")],
)  # fmt: skip
def test_every_other_route_needs_a_key(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path, json=INFER)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "requires an API key" in r.text


def test_a_wrong_key_is_401_in_each_protocol_shape(client: TestClient, keys: dict[str, str]) -> None:
    r = client.post("/v2/models/a/infer", json=INFER, headers=bearer(keys["all"] + "x"))
    assert r.status_code == 401 and r.json() == {"error": r.json()["error"]}
    assert "invalid API key" in r.json()["error"]
    r = client.post("/v1/embeddings", json={"model": "a", "input": "x"}, headers=bearer("sk-wrong"))
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"


def test_a_good_key_works_as_bearer_or_x_api_key(client: TestClient, keys: dict[str, str]) -> None:
    assert client.post("/v2/models/a/infer", json=INFER, headers=bearer(keys["all"])).status_code == 200
    assert (
        client.post("/v2/models/b/infer", json=INFER, headers={"X-API-Key": keys["all"]}).status_code == 200
    )
    r = client.post("/v1/embeddings", json={"model": "b", "input": "x"}, headers=bearer(keys["all"]))
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_model_scope(client: TestClient, keys: dict[str, str]) -> None:
    key = bearer(keys["a-infer"])
    assert client.post("/v2/models/a/infer", json=INFER, headers=key).status_code == 200
    assert client.post("/v2/models/alias-of-a/infer", json=INFER, headers=key).status_code == 200
    r = client.post("/v2/models/b/infer", json=INFER, headers=key)
    assert r.status_code == 403 and "may not use model 'b'" in r.json()["error"]
    r = client.post("/v1/embeddings", json={"model": "b", "input": "x"}, headers=key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert client.post("/v2/models/missing/infer", json=INFER, headers=key).status_code == 404


def test_route_scope(client: TestClient, keys: dict[str, str]) -> None:
    r = client.get("/v2/models/a", headers=bearer(keys["a-infer"]))
    assert r.status_code == 403 and "may not call metadata routes" in r.json()["error"]
    assert client.get("/v2/models/a", headers=bearer(keys["meta"])).status_code == 200
    assert client.get("/v1/models", headers=bearer(keys["meta"])).status_code == 200
    assert client.post("/v2/models/a/infer", json=INFER, headers=bearer(keys["meta"])).status_code == 403


def test_metrics_needs_a_key_scoped_for_metrics_or_admin(client: TestClient, keys: dict[str, str]) -> None:
    assert client.get("/metrics", headers=bearer(keys["meta"])).status_code == 403
    assert client.get("/metrics", headers=bearer(keys["metrics"])).status_code == 200
    assert client.get("/metrics", headers=bearer(keys["all"])).status_code == 200
    r = client.get("/metrics", headers=bearer(keys["admin"]))
    assert r.status_code == 200 and "kiln_http_requests_total" in r.text


def test_admin_passes_every_scope(client: TestClient, keys: dict[str, str]) -> None:
    key = bearer(keys["admin"])
    assert client.get("/v2/models/b", headers=key).status_code == 200
    assert client.post("/v2/models/b/infer", json=INFER, headers=key).status_code == 200


def test_rate_limit_is_429_with_retry_after(
    client: TestClient, keys: dict[str, str], clock: FakeClock
) -> None:
    key = bearer(keys["slow"])
    assert [client.get("/v2", headers=key).status_code for _ in range(2)] == [200, 200]
    r = client.get("/v2", headers=key)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert "over its rate limit" in r.json()["error"]
    r = client.post("/v1/embeddings", json={"model": "a", "input": "x"}, headers=key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert client.get("/v2", headers=bearer(keys["all"])).status_code == 200  # other keys are not limited
    assert client.get("/v2/health/ready").status_code == 200
    clock.now += 1.0
    assert client.get("/v2", headers=key).status_code == 200


def test_request_id_is_echoed_or_made(client: TestClient, keys: dict[str, str]) -> None:
    r = client.get("/v2", headers={**bearer(keys["all"]), "X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    made = client.get("/v2/health/live").headers["x-request-id"]
    assert len(made) == 32
    assert (
        client.get("/v2", headers={"X-Request-ID": "bad id"}).headers["x-request-id"] != "bad id"
    )  # 401 too


def test_access_log_has_one_line_per_request_and_never_the_key_or_payload(
    client: TestClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    secret_text = "a very private sentence"
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [secret_text]}]}
    with caplog.at_level(logging.INFO, logger="kiln.access"):
        client.post(
            "/v2/models/alias-of-a/infer", json=body, headers={**bearer(keys["all"]), "X-Request-ID": "r-1"}
        )
        client.post("/v2/models/b/infer", json=body, headers=bearer(keys["a-infer"]))
        client.get("/v2/models/a", headers=bearer(keys["all"] + "wrong"))
    records = [r for r in caplog.records if r.name == "kiln.access"]
    assert len(records) == 3
    lines = [json.loads(r.getMessage()) for r in records]
    ok, forbidden, unauthorized = lines
    assert ok["request_id"] == "r-1" and ok["method"] == "POST"
    assert ok["route"] == "/v2/models/{model_name}/infer" and ok["model"] == "a"
    assert ok["status"] == 200 and ok["key_id"] == "all" and ok["latency_ms"] >= 0
    assert ok["time"].endswith("Z")
    assert (forbidden["status"], forbidden["model"], forbidden["key_id"]) == (403, "b", "a-infer")
    assert unauthorized["status"] == 401 and unauthorized["key_id"] is None
    assert unauthorized["route"] == "/v2/models/{model_name}"
    text = caplog.text
    assert secret_text not in text and all(k not in text for k in keys.values())


def test_without_keys_everything_is_open(dataplane: DataPlane) -> None:
    with TestClient(build_app(dataplane, Settings())) as c:
        assert c.post("/v2/models/a/infer", json=INFER).status_code == 200
        assert c.get("/metrics").status_code == 200


def test_create_app_reads_the_keys_file_from_settings(tiny_bundle: Path, tmp_path: Path) -> None:
    from kiln.bundle.load import load_bundle
    from kiln.serve.app import create_app

    key, _ = add_key(tmp_path / "keys.toml", "k", iterations=FAST)
    app = create_app(load_bundle(tiny_bundle), Settings(api_keys=tmp_path / "keys.toml"))
    with TestClient(app) as c:
        assert c.get("/v2/models/tiny-embed").status_code == 401
        assert c.get("/v2/models/tiny-embed", headers=bearer(key)).status_code == 200
    with pytest.raises(KeysFileError, match="missing.json does not exist"):
        create_app(load_bundle(tiny_bundle), Settings(api_keys=tmp_path / "missing.json"))


# --- gRPC ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def grpc_stub(dataplane: DataPlane, guard: Guard) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    server = create_grpc_server(dataplane, 1 << 20, guard)
    port = bind(server, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        await server.stop(None)


def _infer_request(model: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"hello")
    return pb.ModelInferRequest(model_name=model, inputs=[tensor])


def test_grpc_metadata_auth(
    dataplane: DataPlane, keyring: tuple[dict[str, str], KeyStore], clock: FakeClock
) -> None:
    import asyncio

    keys, store = keyring
    guard = Guard(store, RateLimiter(clock))

    async def code_of(call: object) -> grpc.StatusCode:
        try:
            await call  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def main() -> None:
        async with grpc_stub(dataplane, guard) as stub:
            live = await stub.ServerLive(pb.ServerLiveRequest())  # health: no key
            assert live.live
            assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
            no_key = await code_of(stub.ServerMetadata(pb.ServerMetadataRequest()))
            assert no_key is grpc.StatusCode.UNAUTHENTICATED
            wrong = [("authorization", "Bearer nope")]
            assert (
                await code_of(stub.ModelInfer(_infer_request("a"), metadata=wrong))
                is grpc.StatusCode.UNAUTHENTICATED
            )
            good = [("authorization", f"Bearer {keys['a-infer']}")]
            response = await stub.ModelInfer(_infer_request("alias-of-a"), metadata=good)
            assert response.model_name == "a"
            assert (
                await code_of(stub.ModelInfer(_infer_request("b"), metadata=good))
                is grpc.StatusCode.PERMISSION_DENIED
            )
            meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="a"), metadata=good)
            assert await code_of(meta) is grpc.StatusCode.PERMISSION_DENIED
            x_api_key = [("x-api-key", keys["meta"])]
            assert (
                await stub.ModelMetadata(pb.ModelMetadataRequest(name="b"), metadata=x_api_key)
            ).name == "b"
            slow = [("x-api-key", keys["slow"])]
            for _ in range(2):
                await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=slow)
            try:
                await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=slow)
                pytest.fail("the third call should be rate limited")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert ("retry-after", "1") in tuple(exc.trailing_metadata() or ())

    asyncio.run(main())
