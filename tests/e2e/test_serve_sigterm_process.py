"""SIGTERM under load: a real `kiln serve` process stops accepting, answers every request it has, exits 0."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from _fixtures.server_process import Server, free_port, start_server, stop_server, wait_ready
from _fixtures.tiny_bundle import tiny_reference_embeddings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INFER = "/v2/models/tiny-embed/infer"
TEXTS = ["the quick brown fox", "hello world"]
BODY = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
).encode()
LOAD_THREADS = 4
HELD_REQUESTS = 3


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.lost: list[str] = []

    def record(self, response: httpx.Response | None, error: BaseException | None = None) -> None:
        with self.lock:
            if response is not None and response.status_code == 200:
                rows = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
                if np.allclose(rows, tiny_reference_embeddings(TEXTS), atol=1e-5):
                    self.ok += 1
                    return
            self.lost.append(repr(error) if error is not None else f"{response.status_code}: {response.text}")  # type: ignore[union-attr]


def held_body(sent: threading.Event, release: threading.Event) -> Iterator[bytes]:
    """A request body sent in two parts: the request is in flight, unfinished, until ``release``."""
    yield BODY[:10]
    sent.set()
    assert release.wait(60), "never released"
    yield BODY[10:]


def test_sigterm_under_load_loses_no_request(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(tiny_bundle, tmp_path / "server.log", port, {"KILN_THREADS": "1"})
    server = Server(proc=proc, port=port, log=tmp_path / "server.log")
    try:
        wait_ready(server)
        outcomes = Outcomes()
        stop = threading.Event()
        release = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    try:
                        outcomes.record(client.post(INFER, content=BODY))
                    except httpx.HTTPError as exc:
                        outcomes.record(None, exc)

        def held(sent: threading.Event) -> None:
            try:
                outcomes.record(httpx.post(server.url + INFER, content=held_body(sent, release), timeout=60))
            except httpx.HTTPError as exc:
                outcomes.record(None, exc)

        loaders = [threading.Thread(target=load) for _ in range(LOAD_THREADS)]
        sent = [threading.Event() for _ in range(HELD_REQUESTS)]
        holders = [threading.Thread(target=held, args=(s,)) for s in sent]
        for t in [*loaders, *holders]:
            t.start()
        for s in sent:
            assert s.wait(30), "a held request was never sent"
        while outcomes.ok < 50 and not outcomes.lost:  # under load
            threading.Event().wait(0.01)
        stop.set()  # no new requests from here on: every one sent so far must be answered
        proc.terminate()
        # the server stops accepting connections while it still holds the unfinished requests ...
        while True:
            try:
                httpx.get(server.url + "/v2/health/live", timeout=5)
            except httpx.ConnectError:
                break
            threading.Event().wait(0.01)
        assert proc.poll() is None  # ... and does not exit before they are answered
        release.set()
        for t in [*loaders, *holders]:
            t.join(60)
        # uvicorn re-raises the SIGTERM it handled once the shutdown is complete
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert outcomes.lost == []
        assert outcomes.ok >= 50 + HELD_REQUESTS
        log = server.log.read_text()
        assert "Waiting for connections to close" in log or "Shutting down" in log
    finally:
        release_all = locals().get("release")
        if isinstance(release_all, threading.Event):
            release_all.set()
        stop_server(proc)
