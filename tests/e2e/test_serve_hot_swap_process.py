"""Hot swap in a real `kiln serve` process under bounded concurrent load, driven with tritonclient.http."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from _fixtures.server_process import running_server
from _fixtures.tiny_bundle import TinyBundleFactory, tiny_reference_embeddings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TEXTS = ["the quick brown fox", "hello world"]
BODY = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
).encode()
THREADS = 4
PER_PHASE = 40  # answers wanted before the swap, and again after it


def test_hot_swap_under_load_fails_no_request(tiny_bundle_factory: TinyBundleFactory, tmp_path: Path) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    expected = {v: tiny_reference_embeddings(TEXTS, seed=int(v) - 1) for v in ("1", "2")}
    repo = tmp_path / "repo"
    shutil.copytree(tiny_bundle_factory("v1", seed=0), repo / "embed" / "1")
    lock = threading.Lock()
    answers: list[tuple[bool, str, bool]] = []  # (sent after the swap, version, embeddings match it)
    failures: list[str] = []
    swapped = threading.Event()
    stop = threading.Event()

    with running_server(repo, tmp_path, {"KILN_THREADS": "1"}) as server:

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    after = swapped.is_set()
                    try:
                        r = client.post("/v2/models/embed/infer", content=BODY)
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(repr(exc))
                        continue
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"{r.status_code}: {r.text}")
                            continue
                        doc = r.json()
                        version = doc["model_version"]
                        rows = np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
                        answers.append(
                            (after, version, bool(np.allclose(rows, expected[version], atol=1e-5)))
                        )

        def count(after: bool) -> int:
            with lock:
                return sum(1 for a in answers if a[0] == after)

        triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        threads = [threading.Thread(target=load) for _ in range(THREADS)]
        try:
            for t in threads:
                t.start()
            while count(False) < PER_PHASE and not failures:
                threading.Event().wait(0.01)
            staging = repo / "embed" / ".incoming"  # copied in beside, then renamed: never half a bundle
            shutil.copytree(tiny_bundle_factory("v2", seed=1), staging)
            os.rename(staging, repo / "embed" / "2")
            triton.load_model("embed")  # load, warm, switch, drain and unload version 1, under load
            swapped.set()
            while count(True) < PER_PHASE and not failures:
                threading.Event().wait(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert failures == []
        assert all(match for _, _, match in answers)  # every answer is exactly its version's embeddings
        assert {v for after, v, _ in answers if after} == {"2"}  # after the swap: the new version only
        assert [a[1] for a in answers if not a[0]][0] == "1"
        assert triton.is_model_ready("embed", "2") and not triton.is_model_ready("embed", "1")
        index = triton.get_model_repository_index()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            ("embed", "1", "UNAVAILABLE"),
            ("embed", "2", "READY"),
        ]
        triton.unload_model("embed")
        assert not triton.is_model_ready("embed")
        triton.load_model("embed")
        assert triton.is_model_ready("embed")
        triton.close()
