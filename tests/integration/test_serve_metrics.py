"""/metrics after real traffic: Prometheus text, labelled by route template, model, version and status."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.settings import Settings


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def key(
    route: str, status: int, model: str = "tiny-embed", method: str = "POST", version: str | None = None
) -> tuple[tuple[str, str], ...]:
    version = ("1" if model else "") if version is None else version
    return (
        ("method", method),
        ("model", model),
        ("route", route),
        ("status", str(status)),
        ("version", version),
    )


PER_VERSION = (("model", "tiny-embed"), ("version", "1"))


def test_metrics_count_requests_latency_and_items(tiny_bundle: Path) -> None:
    client = TestClient(create_app(load_bundle(tiny_bundle), Settings()))  # a fresh app: fresh counters
    tensor = {"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b c", "d"]}
    for _ in range(2):
        assert client.post("/v2/models/tiny-embed/infer", json={"inputs": [tensor]}).status_code == 200
    assert (
        client.post(f"/v2/models/{tiny_bundle.name}/versions/1/infer", json={"inputs": [tensor]}).status_code
        == 200
    )
    assert client.post("/v1/embeddings", json={"model": "tiny-embed", "input": ["x", "y"]}).status_code == 200
    assert client.post("/v1/embeddings", json={"model": "unknown", "input": "x"}).status_code == 404
    assert client.post("/v2/models/tiny-embed/infer", content=b"{").status_code == 400
    assert client.get("/v2/models/some-random-name").status_code == 404
    assert client.get("/no/such/path").status_code == 404

    m = scrape(client)
    infer = "/v2/models/{model_name}/infer"
    assert m[("kiln_http_requests_total", key(infer, 200))] == 2
    assert (
        m[("kiln_http_requests_total", key("/v2/models/{model_name}/versions/{model_version}/infer", 200))]
        == 1
    )
    assert m[("kiln_http_requests_total", key("/v1/embeddings", 200))] == 1
    assert m[("kiln_http_requests_total", key("/v1/embeddings", 404, model=""))] == 1
    assert m[("kiln_http_requests_total", key(infer, 400))] == 1
    assert m[("kiln_http_requests_total", key("/v2/models/{model_name}", 404, model="", method="GET"))] == 1
    assert m[("kiln_http_requests_total", key("<unmatched>", 404, model="", method="GET"))] == 1
    assert m[("kiln_http_request_duration_seconds_count", key(infer, 200))] == 2
    assert m[("kiln_http_request_duration_seconds_sum", key(infer, 200))] > 0
    assert m[("kiln_inference_items_total", PER_VERSION)] == 3 * 3 + 2
    # tokens: [CLS] + words + [SEP]; "a" 3, "b c" 4 (two unknown words), "d" 3; "x" 3, "y" 3
    assert m[("kiln_inference_tokens_total", PER_VERSION)] == 3 * (3 + 4 + 3) + (3 + 3)
    assert m[("kiln_inference_duration_seconds_count", PER_VERSION)] == 4
    assert m[("kiln_batch_size_count", PER_VERSION)] == 4
    assert m[("kiln_queue_depth", PER_VERSION)] == 0
    # raw paths and unknown model names never become label values
    labels = {v for (_, lab) in m for (_, v) in lab}
    assert not {"/no/such/path", "some-random-name", "unknown", tiny_bundle.name} & labels
