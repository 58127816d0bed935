"""A bounded load test on loopback against a real `kiln serve` process (asyncio + httpx).

Below capacity no request fails; overloaded (a tiny queue) the server answers 429 with Retry-After, never an
error, a dropped connection or a dead process, and serves normally once the burst is over.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from _fixtures.server_process import Server, running_server

pytestmark = pytest.mark.e2e

MODEL = "tiny-embed"
WORDS = "the quick brown fox jumps over the lazy dog hello world kiln serves fast small embeddings".split()  # noqa: SIM905


def body(i: int, n_texts: int) -> dict[str, object]:
    texts = [" ".join(WORDS[(i + k) % len(WORDS) :][: 3 + (i + k) % 9]) or "hello" for k in range(n_texts)]
    return {"model": MODEL, "input": texts}


async def burst(
    server: Server, requests: int, concurrency: int, n_texts: int
) -> tuple[Counter[int], list[str], list[str]]:
    """Send ``requests`` embeddings requests, ``concurrency`` at a time. Returns status counts, the
    Retry-After values of 429s, and transport errors (none expected)."""
    statuses: Counter[int] = Counter()
    retry_after: list[str] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    r = await client.post("/v1/embeddings", json=body(i, n_texts))
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    assert len(r.json()["data"]) == n_texts
                elif r.status_code == 429:
                    retry_after.append(r.headers.get("retry-after", ""))
                    assert "overloaded" in r.json()["error"]["message"]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, retry_after, errors


def test_below_capacity_no_request_fails(tiny_bundle: Path, tmp_path: Path) -> None:
    with running_server(tiny_bundle, tmp_path, extra_env={"KILN_ACCESS_LOG": "0"}) as server:
        statuses, _, errors = asyncio.run(burst(server, requests=600, concurrency=32, n_texts=2))
        assert errors == []
        assert statuses == Counter({200: 600})
        assert server.proc.poll() is None


def test_overload_answers_429_with_retry_after_and_the_server_lives(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    env = {"KILN_ACCESS_LOG": "0", "KILN_MAX_QUEUE": "4", "KILN_MAX_BATCH_SIZE": "1", "KILN_MAX_WAIT_MS": "0"}
    with running_server(tiny_bundle, tmp_path, extra_env=env) as server:
        statuses, retry_after, errors = asyncio.run(burst(server, requests=800, concurrency=64, n_texts=4))
        assert errors == []  # no dropped connections, no timeouts
        assert set(statuses) <= {200, 429}, statuses  # never a 5xx
        assert statuses[429] > 0 and statuses[200] > 0, statuses
        assert all(v.isdigit() and int(v) >= 1 for v in retry_after), set(retry_after)
        # the burst is over: alive, ready, and answering normally
        assert server.proc.poll() is None
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        r = httpx.post(f"{server.url}/v1/embeddings", json=body(0, 4), timeout=10)
        assert r.status_code == 200 and len(r.json()["data"]) == 4
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        assert 'route="/v1/embeddings",status="429"' in metrics
