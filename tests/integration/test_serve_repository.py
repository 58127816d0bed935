"""Model repository and version routes in process, over real tiny bundles (ONNX Runtime sessions)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from _fixtures.tiny_bundle import TinyBundleFactory, tiny_reference_embeddings
from kiln.serve.app import create_repository_app
from kiln.serve.repository import parse_canary
from kiln.serve.v2_rest import ADMIN_PATH_PREFIX, ADMIN_ROUTE_NAMES
from kiln.settings import Settings

TEXTS = ["the quick brown fox", "hello world"]


@pytest.fixture(scope="module")
def seeds(tiny_bundle_factory: TinyBundleFactory) -> dict[int, Path]:
    """Tiny bundles that give different embeddings: one per seed."""
    return {seed: tiny_bundle_factory(f"seed{seed}", seed=seed) for seed in (0, 1, 2)}


def put(seeds: dict[int, Path], seed: int, dst: Path) -> Path:
    shutil.copytree(seeds[seed], dst)
    return dst


def infer(client: TestClient, path: str) -> tuple[int, dict[str, object]]:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    r = client.post(path, json=body)
    return r.status_code, r.json()


def embeddings(doc: dict[str, object]) -> np.ndarray:
    (out,) = doc["outputs"]  # type: ignore[misc]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.fixture
def repo(seeds: dict[int, Path], tmp_path: Path) -> Path:
    put(seeds, 0, tmp_path / "repo" / "embed" / "1")
    return tmp_path / "repo"


@pytest.fixture
def client(repo: Path) -> Iterator[TestClient]:
    with TestClient(create_repository_app([repo], Settings())) as c:
        yield c


def test_admin_routes_are_named_for_auth(client: TestClient) -> None:
    routes = {getattr(r, "name", None): getattr(r, "path", "") for r in client.app.routes}  # type: ignore[attr-defined]
    assert set(routes) >= ADMIN_ROUTE_NAMES
    assert all(routes[name].startswith(ADMIN_PATH_PREFIX) for name in ADMIN_ROUTE_NAMES)
    assert "model_repository" in client.get("/v2").json()["extensions"]


def test_index_lists_versions_with_their_state(client: TestClient) -> None:
    ready = {"name": "embed", "version": "1", "state": "READY", "reason": ""}
    assert client.post("/v2/repository/index").json() == [ready]
    assert client.get("/v2/repository/index").json() == [ready]
    assert client.post("/v2/repository/index", json={"ready": True}).json() == [ready]
    r = client.post("/v2/repository/index", content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_version_routes(client: TestClient) -> None:
    assert client.get("/v2/models/embed/versions/1/ready").json() == {"name": "embed", "ready": True}
    assert client.get("/v2/models/embed/versions/1").json()["versions"] == ["1"]
    status, doc = infer(client, "/v2/models/embed/versions/1/infer")
    assert status == 200 and doc["model_version"] == "1"
    np.testing.assert_allclose(embeddings(doc), tiny_reference_embeddings(TEXTS, seed=0), atol=1e-5)
    for path in ("/v2/models/embed/versions/2/ready", "/v2/models/embed/versions/2"):
        r = client.get(path)
        assert r.status_code == 404 and "has no version '2' loaded; versions: 1" in r.json()["error"]
    status, doc = infer(client, "/v2/models/embed/versions/2/infer")
    assert status == 404 and "no version '2'" in str(doc["error"])
    status, doc = infer(client, "/v2/models/nope/versions/1/infer")
    assert status == 404 and "unknown model 'nope'" in str(doc["error"])


def test_hot_swap_to_a_new_version(client: TestClient, repo: Path, seeds: dict[int, Path]) -> None:
    put(seeds, 1, repo / "embed" / "2")
    assert [r["state"] for r in client.post("/v2/repository/index").json()] == ["READY", "UNAVAILABLE"]
    r = client.post("/v2/repository/models/embed/load", content=b"")
    assert r.status_code == 200 and r.json() == {"name": "embed", "versions": ["2"]}
    status, doc = infer(client, "/v2/models/embed/infer")
    assert status == 200 and doc["model_version"] == "2"
    np.testing.assert_allclose(embeddings(doc), tiny_reference_embeddings(TEXTS, seed=1), atol=1e-5)
    assert client.get("/v2/models/embed").json()["versions"] == ["2"]
    assert client.get("/v2/models/embed/versions/1/ready").status_code == 404  # the old one is unloaded
    openai = client.post("/v1/embeddings", json={"model": "tiny-embed", "input": TEXTS[0]})  # an alias
    assert openai.status_code == 200 and openai.json()["model"] == "embed"


def test_a_tampered_bundle_is_refused_and_the_old_version_keeps_serving(
    client: TestClient, repo: Path, seeds: dict[int, Path]
) -> None:
    bad = put(seeds, 2, repo / "embed" / "2")
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:-1] + b"\0")
    r = client.post("/v2/repository/models/embed/load", json={})
    assert r.status_code == 400
    message = r.json()["error"]
    assert message.startswith("failed to load model 'embed': bundle") and "modified: model.onnx" in message
    assert "keep serving" in message
    status, doc = infer(client, "/v2/models/embed/infer")
    assert status == 200 and doc["model_version"] == "1"
    index = client.post("/v2/repository/index").json()
    assert index[1]["state"] == "UNAVAILABLE" and index[1]["reason"].startswith("load failed:")


def test_unload_then_infer_says_so_and_load_brings_it_back(client: TestClient) -> None:
    r = client.post("/v2/repository/models/embed/unload", json={"parameters": {"unload_dependents": False}})
    assert r.status_code == 200
    status, doc = infer(client, "/v2/models/embed/infer")
    assert status == 404
    assert "model 'embed' is unloaded; load it again" in str(doc["error"])
    assert "POST /v2/repository/models/embed/load" in str(doc["error"])
    assert client.get("/v2/models/embed/ready").status_code == 404
    openai = client.post("/v1/embeddings", json={"model": "embed", "input": "hi"})
    assert openai.status_code == 404 and openai.json()["error"]["code"] == "model_not_found"
    assert client.post("/v2/repository/index").json()[0]["reason"] == "unloaded"
    assert client.get("/v2/health/ready").status_code == 503  # nothing is loaded
    assert client.post("/v2/repository/models/embed/load").status_code == 200
    assert infer(client, "/v2/models/embed/infer")[0] == 200


def test_repository_errors(client: TestClient) -> None:
    for action in ("load", "unload"):
        r = client.post(f"/v2/repository/models/nope/{action}")
        assert r.status_code == 404 and "the model repository has no model 'nope'" in r.json()["error"]
    r = client.post("/v2/repository/models/embed/load", json={"parameters": {"config": "{}"}})
    assert r.status_code == 400 and "config are not supported" in r.json()["error"]
    assert client.get("/v2/repository/models/embed/load").status_code == 405


def test_canary_splits_unversioned_requests(seeds: dict[int, Path], tmp_path: Path) -> None:
    put(seeds, 0, tmp_path / "embed" / "1")
    put(seeds, 1, tmp_path / "embed" / "2")
    app = create_repository_app([tmp_path / "embed"], Settings(), [parse_canary("embed=2:50")])
    with TestClient(app) as client:
        assert client.get("/v2/models/embed").json()["versions"] == ["1", "2"]
        assert client.get("/v2/models/embed/versions/1/ready").status_code == 200
        assert client.get("/v2/models/embed/versions/2/ready").status_code == 200
        answered = Counter(infer(client, "/v2/models/embed/infer")[1]["model_version"] for _ in range(60))
        assert set(answered) == {"1", "2"}  # both get traffic (a 50 % split; the weights: unit tests)
        assert infer(client, "/v2/models/embed/versions/1/infer")[1]["model_version"] == "1"
