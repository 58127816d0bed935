"""Every protocol lands in the request log: v2 REST on a classifier, /v1/classify, gRPC ModelInfer.

Real apps over the tiny bundles, real API keys, a real SQLite request log, a real grpc.aio server beside the
app on the same dataplane (what ``kiln serve --grpc-port`` runs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from _fixtures.monitor_db import query  # noqa: E402
from _fixtures.monitor_profile import CLASSES, classify_bundle_with_profile  # noqa: E402
from kiln.bundle.load import load_bundle  # noqa: E402
from kiln.serve.app import create_app  # noqa: E402
from kiln.serve.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402
from kiln.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402
from kiln.serve.grpc.calls import CallObserver  # noqa: E402
from kiln.serve.grpc.service import bind, create_grpc_server  # noqa: E402
from kiln.serve.keys import add_key  # noqa: E402
from kiln.serve.v2_codec import encode_bytes_tensor  # noqa: E402
from kiln.settings import Settings  # noqa: E402

EMBED = "tiny-embed"
CLASSIFY = "tiny-classify"
TEXTS = ["the quick brown fox", "hello world", "good movie great film"]
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def digest(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "keys.json"
    alice, _ = add_key(path, "alice", iterations=1000)
    bob, _ = add_key(path, "bob", iterations=1000, models=(EMBED,))
    return {"path": str(path), "alice": alice, "bob": bob}


@pytest.fixture
def served(tmp_path: Path, keys: dict[str, str]) -> Iterator[Any]:
    """``served(bundle) -> (client, app, db_url)``: an app with API keys and a request log (sample 1)."""
    clients: list[TestClient] = []

    def make(bundle: Path) -> tuple[TestClient, Any, str]:
        url = f"sqlite:///{tmp_path / f'{bundle.name}.db'}"
        settings = Settings(
            home=tmp_path,
            threads=1,
            monitor=True,
            monitor_db=url,
            monitor_sample=1.0,
            api_keys=Path(keys["path"]),
        )
        app = create_app(load_bundle(bundle), settings)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client, app, url

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def v2_body(texts: Sequence[str], binary: bool = False) -> dict[str, Any]:
    outputs = [{"name": "label", "parameters": {"binary_data": binary}}, {"name": "scores"}]
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]
    return {"inputs": inputs, "outputs": outputs}


# -- REST --------------------------------------------------------------------------------------------
def test_v2_infer_on_a_classifier_logs_labels_and_scores(
    served: Any, keys: dict[str, str], tmp_path: Path
) -> None:
    client, app, url = served(classify_bundle_with_profile(tmp_path / "classify"))
    r = client.post(
        f"/v2/models/{CLASSIFY}/infer",
        json=v2_body(TEXTS),
        headers={**bearer(keys["alice"]), "X-Request-ID": "v2-classify-1"},
    )
    assert r.status_code == 200
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    answered = dict(zip(TEXTS, outputs["label"], strict=True))
    scores = np.asarray(outputs["scores"], dtype=np.float64).reshape(len(TEXTS), len(CLASSES))
    top = dict(zip(TEXTS, scores.max(axis=1), strict=True))
    r = client.post(
        f"/v2/models/{CLASSIFY}/versions/1/infer", json=v2_body(TEXTS[:1]), headers=bearer(keys["alice"])
    )
    assert r.status_code == 200
    r = client.post(
        "/v1/classify", json={"model": CLASSIFY, "input": TEXTS[1:]}, headers=bearer(keys["alice"])
    )
    assert r.status_code == 200
    refused = client.post(
        "/v1/classify", json={"model": CLASSIFY, "input": []}, headers=bearer(keys["alice"])
    )
    assert refused.status_code == 400
    assert app.state.request_log.flush(timeout=60)

    rows = query(url, "SELECT route, status, model, version, key_id, request_id, n_inputs FROM kiln_requests")
    by_route = {(r[0], r[1]): r for r in rows}
    assert len(rows) == 4
    infer = by_route[("/v2/models/{model_name}/infer", 200)]
    assert infer[2:] == (CLASSIFY, "1", "alice", "v2-classify-1", 3)
    assert by_route[("/v2/models/{model_name}/versions/{model_version}/infer", 200)][2:5] == (
        CLASSIFY,
        "1",
        "alice",
    )
    assert by_route[("/v1/classify", 200)][2:5] == (CLASSIFY, "1", "alice")
    assert by_route[("/v1/classify", 400)][2] == CLASSIFY  # a refused request is logged too, without samples

    samples = query(url, "SELECT text_sha256, label, score, text FROM kiln_samples")
    assert len(samples) == 3 + 1 + 2
    assert all(s[3] is None for s in samples)  # texts are hashed, not kept
    for sha, label, score, _ in samples:
        (text_,) = [t for t in TEXTS if digest(t) == sha]
        assert label == answered[text_]  # the label the client got
        assert score == pytest.approx(top[text_], abs=1e-6)  # and its probability


def test_the_key_id_of_a_real_api_key_is_logged_never_the_key(
    served: Any, keys: dict[str, str], tiny_bundle: Path
) -> None:
    client, app, url = served(tiny_bundle)
    assert client.post(
        "/v1/embeddings", json={"model": EMBED, "input": "hi"}, headers=bearer(keys["bob"])
    ).is_success
    assert client.post("/v1/embeddings", json={"model": EMBED, "input": "hi"}).status_code == 401
    assert app.state.request_log.flush(timeout=60)
    rows = query(url, "SELECT status, key_id FROM kiln_requests ORDER BY ts")
    assert rows == [(200, "bob"), (401, None)]
    dump = json.dumps([list(r) for r in query(url, "SELECT * FROM kiln_requests")], default=str)
    assert keys["bob"] not in dump and keys["bob"].split("-", 2)[2] not in dump


# -- gRPC --------------------------------------------------------------------------------------------
def infer_request(texts: Sequence[str], model: str, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(encode_bytes_tensor(list(texts)))
    return request


async def _grpc_calls(app: Any, calls: Any) -> Any:
    """Serve ``app``'s dataplane over gRPC as ``kiln serve`` does, and run ``calls(stub)``."""
    settings: Settings = app.state.settings
    observer = CallObserver(
        metrics=app.state.metrics,
        request_log=app.state.request_log,
        sample=settings.monitor_sample,
        access_log_enabled=True,
    )
    server = create_grpc_server(app.state.dataplane, 1 << 20, app.state.guard, observer)
    port = bind(server, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await calls(pb_grpc.GRPCInferenceServiceStub(channel))
    finally:
        await server.stop(None)


def grpc_run(app: Any, calls: Any) -> Any:
    return asyncio.run(_grpc_calls(app, calls))


def test_grpc_model_infer_is_logged_like_rest(
    served: Any, keys: dict[str, str], tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client, app, url = served(tiny_bundle)
    alice = (("authorization", f"Bearer {keys['alice']}"),)

    async def calls(stub: pb_grpc.GRPCInferenceServiceStub) -> list[Any]:
        ok = stub.ModelInfer(infer_request(TEXTS, EMBED, "grpc-req-1"), metadata=alice)
        response = await ok
        trailing = dict(await ok.trailing_metadata())
        by_header = stub.ModelInfer(
            infer_request(TEXTS[:1], EMBED, "ignored"), metadata=(*alice, ("x-request-id", "from-metadata"))
        )
        await by_header
        codes = []
        for request, metadata in (
            (infer_request(["hi"], "nope"), alice),  # unknown model
            (infer_request(["hi", ""], EMBED), alice),  # an empty text
            (infer_request(["hi"], EMBED), ()),  # no key
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request, metadata=metadata)
            codes.append(info.value.code())
        await stub.ServerLive(pb.ServerLiveRequest())  # not an inference: not in the request log
        return [response, trailing, codes]

    with caplog.at_level(logging.INFO, logger="kiln.access"):
        response, trailing, codes = grpc_run(app, calls)
    assert response.model_name == EMBED and trailing["x-request-id"] == "grpc-req-1"
    assert codes == [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
    ]
    assert app.state.request_log.flush(timeout=60)

    rows = query(
        url,
        "SELECT route, status, model, version, key_id, request_id, n_inputs, n_tokens, sampled, latency_ms "
        "FROM kiln_requests ORDER BY ts",
    )
    assert [tuple(r[:9]) for r in rows] == [
        (GRPC_INFER, 200, EMBED, "1", "alice", "grpc-req-1", 3, (4 + 2) + (2 + 2) + (4 + 2), True),
        (GRPC_INFER, 200, EMBED, "1", "alice", "from-metadata", 1, 6, True),
        (GRPC_INFER, 404, None, None, "alice", rows[2][5], 0, None, False),
        (GRPC_INFER, 400, EMBED, "1", "alice", rows[3][5], 0, None, False),
        (GRPC_INFER, 401, None, None, None, rows[4][5], 0, None, False),
    ]
    assert all(r[9] > 0 for r in rows) and len({r[5] for r in rows}) == 5
    samples = query(url, "SELECT text_sha256, text, emb_norm, emb_proj, label FROM kiln_samples")
    assert sorted(s[0] for s in samples) == sorted(digest(t) for t in [*TEXTS, TEXTS[0]])
    assert all(s[1] is None and s[4] is None for s in samples)  # hashed texts; an embedder has no label
    assert all(s[2] == pytest.approx(1.0, abs=1e-5) and s[3] is not None for s in samples)

    # the access log: one JSON line per call, like REST's, with the gRPC code; never the key
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "kiln.access"]
    grpc_lines = [line for line in lines if line["method"] == "GRPC"]
    assert [(line["route"], line["status"], line["grpc_code"]) for line in grpc_lines] == [
        (GRPC_INFER, 200, "OK"),
        (GRPC_INFER, 200, "OK"),
        (GRPC_INFER, 404, "NOT_FOUND"),
        (GRPC_INFER, 400, "INVALID_ARGUMENT"),
        (GRPC_INFER, 401, "UNAUTHENTICATED"),
        ("/inference.GRPCInferenceService/ServerLive", 200, "OK"),
    ]
    assert grpc_lines[0]["request_id"] == "grpc-req-1" and grpc_lines[0]["key_id"] == "alice"
    assert grpc_lines[0]["model"] == EMBED and grpc_lines[0]["latency_ms"] > 0
    assert set(grpc_lines[0]) == {
        "time", "request_id", "method", "route", "model", "status", "latency_ms", "key_id", "grpc_code"
    }  # fmt: skip
    assert keys["alice"] not in caplog.text and TEXTS[0] not in caplog.text

    # Prometheus: gRPC calls per method, model, version and code; the inference per version
    metrics = client.get("/metrics", headers=bearer(keys["alice"])).text
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }

    def grpc_key(code: str, model: str = EMBED, version: str = "1") -> tuple[tuple[str, str], ...]:
        return (("code", code), ("method", "ModelInfer"), ("model", model), ("version", version))

    assert got[("kiln_grpc_requests_total", grpc_key("OK"))] == 2
    assert got[("kiln_grpc_requests_total", grpc_key("NOT_FOUND", "", ""))] == 1
    assert got[("kiln_grpc_requests_total", grpc_key("INVALID_ARGUMENT"))] == 1
    assert got[("kiln_grpc_request_duration_seconds_count", grpc_key("OK"))] == 2
    assert got[("kiln_inference_items_total", (("model", EMBED), ("version", "1")))] == 4


def test_grpc_model_infer_on_a_classifier_logs_labels_and_scores(served: Any, tmp_path: Path) -> None:
    client, app, url = served(classify_bundle_with_profile(tmp_path / "classify"))
    app.state.guard = None  # no keys for this one

    async def calls(stub: pb_grpc.GRPCInferenceServiceStub) -> Any:
        return await stub.ModelInfer(infer_request(TEXTS, CLASSIFY, "grpc-classify"))

    response = grpc_run(app, calls)
    names = [o.name for o in response.outputs]
    labels_raw = response.raw_output_contents[names.index("label")]
    scores = np.frombuffer(response.raw_output_contents[names.index("scores")], dtype="<f4").reshape(3, 2)
    labels = []
    offset = 0
    while offset < len(labels_raw):
        n = int.from_bytes(labels_raw[offset : offset + 4], "little")
        labels.append(labels_raw[offset + 4 : offset + 4 + n].decode())
        offset += 4 + n
    assert app.state.request_log.flush(timeout=60)
    assert query(url, "SELECT route, status, model, key_id, request_id FROM kiln_requests") == [
        (GRPC_INFER, 200, CLASSIFY, None, "grpc-classify")
    ]
    samples = {s[0]: s[1:] for s in query(url, "SELECT text_sha256, label, score FROM kiln_samples")}
    for i, t in enumerate(TEXTS):
        assert samples[digest(t)][0] == labels[i]
        assert samples[digest(t)][1] == pytest.approx(float(scores[i].max()), abs=1e-6)
