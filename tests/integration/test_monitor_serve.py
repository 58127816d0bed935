"""The server keeps a request log: real app over the tiny bundle, real SQLite and PostgreSQL databases."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

from starlette.testclient import TestClient  # noqa: E402
from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402

from _fixtures.monitor_db import monitor_db_url, postgres_url, query  # noqa: E402, F401
from kiln.bundle.load import load_bundle  # noqa: E402
from kiln.serve.access_log import KEY_ID_KEY  # noqa: E402
from kiln.serve.app import create_app  # noqa: E402
from kiln.settings import Settings  # noqa: E402

MODEL = "tiny-embed"
TEXTS = ["the quick brown fox", "hello world", "kiln serves fast small embeddings"]


class WithKeyId:
    """Stands in for the auth middleware: puts a key id on ``request.state`` (the key never)."""

    def __init__(self, app: ASGIApp, key_id: str) -> None:
        self.app = app
        self.key_id = key_id
        self.state = getattr(app, "state", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[KEY_ID_KEY] = self.key_id
        await self.app(scope, receive, send)


def v2_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


@pytest.fixture
def serve(tiny_bundle: Path, tmp_path: Path) -> Iterator[Any]:
    """``serve(**settings) -> (client, app)``: the app with a request log, run with its lifespan."""
    clients: list[TestClient] = []

    def make(**options: Any) -> tuple[TestClient, Any]:
        settings = Settings(home=tmp_path, threads=1, **options)
        app = create_app(load_bundle(tiny_bundle), settings)
        client = TestClient(WithKeyId(app, "key-A"))
        client.__enter__()
        clients.append(client)
        return client, app

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def test_inference_requests_are_logged_with_their_outcome(serve: Any, monitor_db_url: str) -> None:  # noqa: F811 (a fixture)
    client, app = serve(monitor=True, monitor_db=monitor_db_url, monitor_sample=1.0)
    assert client.post(f"/v2/models/{MODEL}/infer", json=v2_body(TEXTS)).status_code == 200
    assert client.post(f"/v2/models/{MODEL}/versions/1/infer", json=v2_body(TEXTS[:1])).status_code == 200
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[1:]}).status_code == 200
    assert client.post("/v2/models/nope/infer", json=v2_body(TEXTS)).status_code == 404
    assert client.post(f"/v2/models/{MODEL}/infer", content=b"{").status_code == 400
    for path in ("/v2/health/ready", f"/v2/models/{MODEL}", "/metrics"):  # not inference: not logged
        assert client.get(path).status_code == 200
    assert app.state.request_log.flush(timeout=60)

    stats = client.get("/v2/monitor/stats").json()
    assert stats["enabled"] is True and stats["committed"] == 5 and stats["queued"] == 0
    assert stats["dropped"] == {"queue_full": 0, "write_failed": 0, "stopped": 0}

    rows = query(
        monitor_db_url,
        "SELECT route, status, model, version, key_id, n_inputs, n_tokens, sampled, latency_ms "
        "FROM kiln_requests ORDER BY ts",
    )
    got = [tuple(r[:8]) for r in rows]
    infer = "/v2/models/{model_name}/infer"
    assert got == [
        (infer, 200, MODEL, "1", "key-A", 3, (4 + 2) + (2 + 2) + (5 + 2), True),
        ("/v2/models/{model_name}/versions/{model_version}/infer", 200, MODEL, "1", "key-A", 1, 6, True),
        ("/v1/embeddings", 200, MODEL, "1", "key-A", 2, 4 + 7, True),
        (infer, 404, None, None, "key-A", 0, None, False),
        (infer, 400, MODEL, None, "key-A", 0, None, False),
    ]
    assert all(r[8] > 0 for r in rows)

    samples = query(
        monitor_db_url,
        "SELECT text_sha256, text_chars, text_tokens, text, emb_norm, emb_proj FROM kiln_samples",
    )
    assert len(samples) == 3 + 1 + 2
    digests = {hashlib.sha256(t.encode()).hexdigest() for t in TEXTS}
    assert {s[0] for s in samples} == digests
    assert all(s[3] is None for s in samples)  # texts are not kept by default
    assert all(s[4] == pytest.approx(1.0, abs=1e-5) for s in samples)  # the tiny model L2-normalises
    by_digest = {s[0]: s for s in samples}
    fox = by_digest[hashlib.sha256(TEXTS[0].encode()).hexdigest()]
    assert (fox[1], fox[2]) == (len(TEXTS[0]), 4 + 2)


def test_keep_text_stores_the_texts(serve: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keep.db'}"
    client, app = serve(monitor=True, monitor_db=url, monitor_sample=1.0, monitor_keep_text=True)
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS}).status_code == 200
    assert app.state.request_log.flush(timeout=60)
    assert sorted(r[0] for r in query(url, "SELECT text FROM kiln_samples")) == sorted(TEXTS)


def test_unsampled_requests_keep_no_inputs_and_the_default_store_is_under_kiln_home(
    serve: Any, tmp_path: Path
) -> None:
    client, app = serve(monitor=True, monitor_sample=0.0)
    for _ in range(3):
        assert client.post(f"/v2/models/{MODEL}/infer", json=v2_body(TEXTS)).status_code == 200
    assert app.state.request_log.flush(timeout=60)
    url = f"sqlite:///{tmp_path / 'monitor' / (MODEL + '.db')}"
    assert client.get("/v2/monitor/stats").json()["store"] == url
    assert query(url, "SELECT count(*), sum(n_inputs) FROM kiln_requests WHERE sampled = 0") == [(3, 9)]
    assert query(url, "SELECT count(*) FROM kiln_samples") == [(0,)]
    metrics = client.get("/metrics").text
    assert "kiln_monitor_committed_total 3.0" in metrics
    assert 'kiln_monitor_dropped_total{reason="queue_full"} 0.0' in metrics


def test_a_broken_request_log_never_fails_a_request(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = serve(monitor=True, monitor_db=f"sqlite:///{tmp_path / 'x.db'}")

    def explode(event: object) -> bool:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(app.state.request_log, "submit", explode)
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_without_monitoring_there_is_no_log(serve: Any) -> None:
    client, app = serve()  # Settings() built in code: monitor=False
    assert app.state.request_log is None
    assert client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"}).status_code == 200
    assert client.get("/v2/monitor/stats").json() == {"enabled": False}
    assert "kiln_monitor_" not in client.get("/metrics").text
