"""Serving overhead of ``kiln serve`` against raw in-process ONNX Runtime, side by side, on this machine.

    .venv/bin/python benchmarks/serve_throughput.py [BUNDLE] [--seconds 8] [--texts-per-request 1]

BUNDLE defaults to the cached default bundle under KILN_HOME (build it with ``kiln run --no-serve``).
Measures, one after the other so they never share the CPU:
  1. raw ORT in this process: single-text p50 latency, and batched throughput (batches of
     KILN_MAX_BATCH_SIZE texts, default 32) — the kiln embedder on the same bundle, no HTTP;
  2. cold start of a real ``kiln serve`` process (spawn -> /v2/health/ready answers 200);
  3. that server driven over loopback (POST /v2/models/{m}/infer, JSON BYTES tensor) at concurrency 1
     and 32, each phase bounded by --seconds and --max-requests, by a closed-loop asyncio client:
     ``--client lean`` (default; benchmarks/lean_client.py: pre-encoded HTTP/1.1 on keep-alive
     connections, like wrk) or ``--client httpx``.
Prints ratios against the bars; asserts nothing. The client runs on the same machine as the server and
takes CPU from it: on a small machine that lowers the served numbers. httpx spends more CPU per request
than the server's own Python does, which is why the lean client is the default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from lean_client import Phase, drive_lean, summary
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from kiln.bundle.load import load_bundle
from kiln.default_job import default_bundle_dir
from kiln.serve.models import load_embed_model
from kiln.settings import Settings

KILN = [sys.executable, "-m", "kiln.cli"]
SENTENCES = [
    "The film is a quiet triumph, funny and sad at once.",
    "A lazy, predictable plot.",
    "I loved every minute of it and would watch it again tomorrow with friends.",
    "Terrible.",
    "The quick brown fox jumps over the lazy dog.",
    "An uneven but often moving portrait of a family that keeps falling apart and coming back together.",
    "Hello world.",
    "Great acting, weak script, beautiful photography, and a soundtrack that stays with you for days.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def texts_pool(n: int) -> list[str]:
    return [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(n)]


def raw_ort(bundle_dir: Path, settings: Settings, seconds: float) -> tuple[float, float]:
    """(single-text p50 ms, batched texts/s) of the bundle's model in this process, each text tokenized
    once (as the server does)."""
    _, model = load_embed_model(load_bundle(bundle_dir), threads=settings.threads)

    def embed(texts: list[str]) -> None:
        model.embed_tokenized(model.tokenize(texts).ready)

    pool = texts_pool(1024)
    one: list[float] = []
    end = time.perf_counter() + seconds / 2
    i = 0
    while time.perf_counter() < end or len(one) < 20:
        t0 = time.perf_counter()
        embed([pool[i % len(pool)]])
        one.append(time.perf_counter() - t0)
        i += 1
    size = settings.max_batch_size
    done = 0
    t0 = time.perf_counter()
    end = t0 + seconds / 2
    while time.perf_counter() < end or done < 4 * size:
        start = (done // size * size) % (len(pool) - size)
        embed(pool[start : start + size])
        done += size
    return float(np.median(one)) * 1000, done / (time.perf_counter() - t0)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"kiln serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"kiln serve was not ready after {timeout:.0f}s")


def batch_counts(url: str) -> tuple[float, float]:
    """(model calls, texts in them) so far, summed over models, from the server's ``kiln_batch_size``."""
    totals = {"kiln_batch_size_count": 0.0, "kiln_batch_size_sum": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["kiln_batch_size_count"], totals["kiln_batch_size_sum"]


def infer_body(texts: list[str]) -> dict[str, object]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def check_infer_answer(body: bytes) -> None:
    outputs = json.loads(body).get("outputs")
    if not outputs or not outputs[0].get("data"):
        raise RuntimeError(f"the server's answer holds no output tensor: {body[:200]!r}")


async def drive(
    url: str,
    model: str,
    concurrency: int,
    per_request: int,
    seconds: float,
    max_requests: int,
    client_kind: str = "lean",
) -> Phase:
    """(texts/s, p50 ms, p99 ms, non-200 answers) with ``concurrency`` clients in a closed loop;
    ``client_kind``: ``lean`` (benchmarks/lean_client.py, little CPU) or ``httpx``."""
    pool = texts_pool(1024)
    if client_kind == "lean":
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        texts = [[pool[(i * per_request + k) % len(pool)] for k in range(per_request)] for i in range(256)]
        bodies = [json.dumps(infer_body(t)).encode() for t in texts]
        return await drive_lean(
            parts.hostname,
            parts.port,
            f"/v2/models/{model}/infer",
            bodies,
            concurrency,
            seconds,
            max_requests,
            per_request,
            check_infer_answer,
        )
    latencies: list[float] = []
    errors = 0
    sent = 0
    path = f"/v2/models/{model}/infer"

    async def one(client: httpx.AsyncClient, i: int) -> float:
        nonlocal errors
        texts = [pool[(i * per_request + k) % len(pool)] for k in range(per_request)]
        t0 = time.perf_counter()
        r = await client.post(path, json=infer_body(texts))
        if r.status_code != 200:
            errors += 1
        return time.perf_counter() - t0

    # one client (one keep-alive connection) per simulated user: a single pool shared by 32 tasks
    # costs httpx more CPU than the server spends per request, and the client shares the machine
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(concurrency)]
    try:
        for i, client in enumerate(clients):  # open the connections, warm the server
            await one(client, i)
        end = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                latencies.append(await one(client, sent))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - t0
    finally:
        for client in clients:
            await client.aclose()
    return summary(latencies, per_request, elapsed, errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?", default=None)
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per phase")
    ap.add_argument("--max-requests", type=int, default=20_000, help="most requests per phase")
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--client",
        choices=("lean", "httpx"),
        default="lean",
        help="load client: lean (pre-encoded HTTP/1.1 on asyncio streams, little CPU) or httpx",
    )
    args = ap.parse_args()
    console = Console(width=max(Console().width, 120))
    settings = Settings.from_env()
    bundle_dir = args.bundle or default_bundle_dir(settings)
    if not (bundle_dir / "kiln.json").is_file():
        sys.exit(f"no bundle at {bundle_dir}: build the default one with `kiln run --no-serve`, or pass one")
    model = load_bundle(bundle_dir).manifest.model_name

    console.print(f"raw ONNX Runtime in process on {bundle_dir} ({args.seconds:.0f} s) ...")
    raw_p50, raw_tput = raw_ort(bundle_dir, settings, args.seconds)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*KILN, "serve", str(bundle_dir), "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(url, proc)
        cold = time.perf_counter() - t0
        per = args.texts_per_request
        console.print(f"kiln serve ready in {cold:.2f} s; driving it at concurrency 1 ...")
        c1 = asyncio.run(drive(url, model, 1, 1, args.seconds, args.max_requests, args.client))
        console.print(f"... and at concurrency {args.concurrency} ({per} text(s) per request) ...")
        before = batch_counts(url)
        cn = asyncio.run(
            drive(url, model, args.concurrency, per, args.seconds, args.max_requests, args.client)
        )
        after = batch_counts(url)
    finally:
        proc.terminate()
        proc.wait(30)

    table = Table(title=f"kiln serve vs raw ONNX Runtime — {model} ({bundle_dir})")
    for col in ("measure", "kiln serve", "raw ORT in process", "ratio / delta", "bar", "met"):
        table.add_column(col)

    def row(name: str, served: str, raw: str, rel: str, bar: str, ok: bool) -> None:
        table.add_row(name, served, raw, rel, bar, "yes" if ok else "[red]NO[/]")

    ratio = cn[0] / raw_tput
    row(
        f"throughput, concurrency {args.concurrency}",
        f"{cn[0]:.0f} texts/s (p50 {cn[1]:.1f} ms, p99 {cn[2]:.1f} ms)",
        f"{raw_tput:.0f} texts/s (batches of {settings.max_batch_size})",
        f"{ratio:.2f}x",
        "≥ 0.9x",
        ratio >= 0.9,
    )
    delta = c1[1] - raw_p50
    row(
        "p50 latency, concurrency 1",
        f"{c1[1]:.2f} ms (p99 {c1[2]:.2f} ms)",
        f"{raw_p50:.2f} ms (one text)",
        f"{delta:+.2f} ms",
        "≤ +2 ms",
        delta <= 2.0,
    )
    row("cold start (spawn → ready)", f"{cold:.2f} s", "", "", "≤ 3 s", cold <= 3.0)
    console.print(table)
    calls, texts = after[0] - before[0], after[1] - before[1]
    if calls > 0:
        console.print(
            f"at concurrency {args.concurrency} the server ran {calls:.0f} model calls of "
            f"{texts / calls:.1f} texts on average (kiln_batch_size)"
        )
    if c1[3] or cn[3]:
        console.print(f"[red]non-200 answers: {c1[3]} at concurrency 1, {cn[3]} at {args.concurrency}[/]")
    console.print(
        f"{os.cpu_count()} cores; the {args.client} client shares them with the server. "
        f"Knobs: KILN_MAX_BATCH_SIZE={settings.max_batch_size} KILN_MAX_WAIT_MS={settings.max_wait_ms:g} "
        f"KILN_MAX_QUEUE={settings.max_queue} KILN_THREADS={settings.threads or 'all'}"
    )


if __name__ == "__main__":
    main()
