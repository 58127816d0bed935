"""A lean closed-loop HTTP/1.1 load client for the serving benchmarks (asyncio streams, no HTTP library).

On a 2-core machine the load generator shares the CPU with the server it measures. httpx spends more
CPU per request than the server's own Python does, so an httpx-driven benchmark measures the client as
much as the server. This client sends pre-encoded requests over keep-alive connections (one per
simulated user) and reads each answer's status line, headers and body — Content-Length or chunked —
without parsing the JSON: what ``wrk`` or ``hey`` do, in about a tenth of httpx's CPU per request.
``check`` is called on one answer body per connection so that the benchmark can still verify answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import numpy as np

Phase = tuple[float, float, float, int]
"""texts/s, p50 ms, p99 ms, non-200 answers"""


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return status, b"".join(chunks)
            chunks.append(chunk[:-2])
    raise RuntimeError(f"response without Content-Length or chunked body: {lines[0]!r}")


async def drive_lean(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    concurrency: int,
    seconds: float,
    max_requests: int,
    texts_per_request: int = 1,
    check: Callable[[bytes], None] | None = None,
) -> Phase:
    """``concurrency`` users in a closed loop, each on its own keep-alive connection, sending
    ``bodies`` in turn for ``seconds`` (at most ``max_requests`` in all)."""
    requests = [request_bytes(host, port, path, b) for b in bodies]
    latencies: list[float] = []
    errors = 0
    sent = 0
    conns = [await asyncio.open_connection(host, port) for _ in range(concurrency)]

    async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], i: int) -> tuple[float, bytes]:
        nonlocal errors
        reader, writer = conn
        t0 = time.perf_counter()
        writer.write(requests[i % len(requests)])
        status, body = await read_response(reader)
        if status != 200:
            errors += 1
        return time.perf_counter() - t0, body

    try:
        for i, conn in enumerate(conns):  # warm each connection; check one answer on each
            _, body = await one(conn, i)
            if check is not None:
                check(body)
        end = time.perf_counter() + seconds

        async def user(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < max_requests:
                sent += 1
                latencies.append((await one(conn, sent))[0])

        t0 = time.perf_counter()
        await asyncio.gather(*(user(c) for c in conns))
        elapsed = time.perf_counter() - t0
    finally:
        for _, writer in conns:
            writer.close()
    return summary(latencies, texts_per_request, elapsed, errors)


def summary(latencies: Sequence[float], texts_per_request: int, elapsed: float, errors: int) -> Phase:
    """A closed-loop phase's texts/s, p50 and p99 (ms) and error count from its request latencies (s)."""
    lat = np.asarray(latencies) * 1000
    return (
        len(latencies) * texts_per_request / elapsed,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        errors,
    )
