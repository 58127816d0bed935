"""Batching and backpressure over HTTP, on the real tiny bundle (ONNX Runtime) in process.

A full queue answers 429 with ``Retry-After`` on both protocols; concurrent requests are batched and
each still gets its own rows (to 1e-5) and its own ``usage``; /metrics shows queue depth and batch sizes.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from _fixtures.held_model import Held
from _fixtures.tiny_bundle import tiny_reference_embeddings
from kiln.bundle.load import load_bundle
from kiln.serve.app import build_app, create_app
from kiln.serve.batching import BatchConfig
from kiln.serve.dataplane import DataPlane
from kiln.serve.metrics import Metrics
from kiln.serve.models import load_embed_model
from kiln.settings import Settings

MODEL = "tiny-embed"


def v2_body(texts: list[str]) -> dict[str, object]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def test_a_full_queue_answers_429_with_retry_after_on_both_protocols(tiny_bundle: Path) -> None:
    settings = Settings(max_queue=3)
    metrics = Metrics()
    dp = DataPlane(
        observer=metrics.observe_inference,
        batching=BatchConfig.from_settings(settings),
        queue_observer=metrics.observe_queue,
    )
    info, model = load_embed_model(load_bundle(tiny_bundle))
    held = Held(model)
    dp.add(info, held)
    app = build_app(dp, settings, metrics)
    seen: dict[str, httpx.Response] = {}

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def post(key: str, path: str, body: dict[str, object]) -> None:
                seen[key] = await client.post(path, json=body)

            async with anyio.create_task_group() as tg:
                tg.start_soon(post, "running", f"/v2/models/{MODEL}/infer", v2_body(["hello"]))
                with anyio.fail_after(10):
                    while not held.started.is_set():
                        await anyio.sleep(0.001)
                three: dict[str, object] = {"model": MODEL, "input": ["a cat", "dog", "x"]}
                tg.start_soon(post, "queued", "/v1/embeddings", three)
                with anyio.fail_after(10):
                    while dp.queue_depth(MODEL) < 3:
                        await anyio.sleep(0.001)
                seen["v2"] = await client.post(f"/v2/models/{MODEL}/infer", json=v2_body(["the fox"]))
                seen["v1"] = await client.post("/v1/embeddings", json={"model": MODEL, "input": "the fox"})
                seen["metrics"] = await client.get("/metrics")
                seen["ready"] = await client.get("/v2/health/ready")
                held.release.set()

    anyio.run(main)
    dp.stop()
    for key in ("v2", "v1"):
        assert seen[key].status_code == 429, seen[key].text
        assert int(seen[key].headers["retry-after"]) >= 1
    assert "overloaded" in seen["v2"].json()["error"]
    error = seen["v1"].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["param"] is None
    assert "KILN_MAX_QUEUE" in error["message"]
    assert seen["ready"].status_code == 200  # overloaded is not unready
    assert seen["running"].status_code == 200 and seen["queued"].status_code == 200
    queued = seen["queued"].json()
    assert queued["usage"]["prompt_tokens"] == 4 + 3 + 3
    got = np.asarray([d["embedding"] for d in queued["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, tiny_reference_embeddings(["a cat", "dog", "x"]), atol=1e-5)
    gauge = {
        s.name: s.value
        for family in text_string_to_metric_families(seen["metrics"].text)
        for s in family.samples
        if s.labels.get("model") == MODEL
    }
    assert gauge["kiln_queue_depth"] == 3


def test_concurrent_http_requests_are_batched_and_each_gets_its_own_answer(tiny_bundle: Path) -> None:
    app = create_app(load_bundle(tiny_bundle), Settings(max_batch_size=16))
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat", "sat", "mat", "hello"]
    requests = [[" ".join(words[j : j + 1 + (i + j) % 9]) for j in range(1 + i % 4)] for i in range(48)]
    answers: dict[int, httpx.Response] = {}

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def send(i: int) -> None:
                answers[i] = await client.post("/v1/embeddings", json={"model": MODEL, "input": requests[i]})

            async with anyio.create_task_group() as tg:
                for i in range(len(requests)):
                    tg.start_soon(send, i)

    with TestClient(app) as client:  # the lifespan starts and, at exit, stops the batching worker
        anyio.run(main)
        metrics = client.get("/metrics").text
    assert not app.state.dataplane.is_ready()
    for i, texts in enumerate(requests):
        body = answers[i].json()
        assert answers[i].status_code == 200, body
        got = np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, tiny_reference_embeddings(texts), atol=1e-5)
        assert body["usage"]["prompt_tokens"] == sum(len(t.split()) + 2 for t in texts)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.labels.get("model") == MODEL
    }
    assert samples[("kiln_batch_size_sum", None)] == sum(len(r) for r in requests)
    assert samples[("kiln_batch_size_bucket", "16.0")] == samples[("kiln_batch_size_count", None)]
    assert samples[("kiln_queue_depth", None)] == 0
