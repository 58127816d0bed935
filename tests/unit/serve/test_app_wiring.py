"""The app over a fake dataplane: wiring, lifespan, and inference kept off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import httpx
import numpy as np
from starlette.testclient import TestClient

from kiln.serve.app import build_app
from kiln.serve.dataplane import DataPlane, ModelInfo, TensorSpec
from kiln.settings import Settings

INFO = ModelInfo(
    name="slow",
    inputs=(TensorSpec("text", "BYTES", (-1,)),),
    outputs=(TensorSpec("embedding", "FP32", (-1, 2)),),
)


class BlockingModel:
    """``embed`` blocks until ``release`` is set, like a long batch."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.started.set()
        assert self.release.wait(10), "never released"
        return np.ones((len(texts), 2), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1 for _ in texts]


def test_health_probes_answer_while_a_batch_runs() -> None:
    model = BlockingModel()
    dataplane = DataPlane()
    dataplane.add(INFO, model)
    app = build_app(dataplane, Settings())
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    statuses: dict[str, int] = {}

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def run_infer() -> None:
                r = await client.post("/v2/models/slow/infer", json=infer)
                statuses["infer"] = r.status_code

            async with anyio.create_task_group() as tg:
                tg.start_soon(run_infer)
                with anyio.fail_after(5):
                    while not model.started.is_set():
                        await anyio.sleep(0.005)
                    # the batch is still running: if it held the event loop, this would time out
                    statuses["ready"] = (await client.get("/v2/health/ready")).status_code
                    statuses["live"] = (await client.get("/v2/health/live")).status_code
                assert "infer" not in statuses
                model.release.set()

    anyio.run(main)
    assert statuses == {"ready": 200, "live": 200, "infer": 200}


def test_shutdown_drains_readiness() -> None:
    dataplane = DataPlane()
    dataplane.add(INFO, BlockingModel())
    app = build_app(dataplane, Settings())
    with TestClient(app) as client:
        assert client.get("/v2/health/ready").status_code == 200
    assert not dataplane.is_ready()
    assert TestClient(app).get("/v2/health/ready").status_code == 503
