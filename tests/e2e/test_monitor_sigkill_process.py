"""A real `kiln serve` keeps its request log in SQLite; SIGKILL loses no committed row and corrupts nothing.

1. Send N requests, wait until /v2/monitor/stats reports N committed, SIGKILL the server: the database
   opens, passes ``PRAGMA integrity_check`` and holds exactly those N requests and all their samples.
2. Start a server on the same file again (the migration finds the schema at head), keep requests coming
   from a second thread, and SIGKILL it in the middle of the traffic: every request the log reported
   committed is there, and every logged request has all of its samples (a batch is all or nothing).
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from _fixtures.server_process import Server, free_port, start_server, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "tiny-embed"
N = 40


def body(i: int) -> dict[str, Any]:
    texts = [f"hello world {i}", "the quick brown fox"][: 1 + i % 2]
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def start(bundle: Path, db: Path, log: Path) -> Server:
    port = free_port()
    args = ["--monitor-db", f"sqlite:///{db}", "--monitor-sample", "1", "--monitor-retention-days", "0"]
    proc = start_server(bundle, log, port, {"KILN_THREADS": "1", "KILN_ACCESS_LOG": "0"}, args)
    server = Server(proc=proc, port=port, log=log)
    try:
        wait_ready(server)
    except BaseException:
        kill(server)
        raise
    return server


def kill(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)


def committed(server: Server) -> int:
    return int(httpx.get(f"{server.url}/v2/monitor/stats", timeout=10).json()["committed"])


def wait_committed(server: Server, n: int, seconds: float = 60) -> int:
    """Poll the stats route until at least ``n`` requests are committed (fails after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done = committed(server)
        if done >= n:
            return done
        time.sleep(0.05)
    pytest.fail(f"the request log committed {committed(server)} of {n} requests:\n{server.log.read_text()}")


def check_database(db: Path) -> tuple[int, int]:
    """(requests, samples) after checking integrity and that no request lost any of its samples."""
    with sqlite3.connect(db) as conn:  # opening recovers the WAL as SQLite does after any crash
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        incomplete = conn.execute(
            "SELECT r.id FROM kiln_requests r LEFT JOIN kiln_samples s ON s.request_id = r.id "
            "WHERE r.sampled GROUP BY r.id, r.n_inputs HAVING count(s.id) != r.n_inputs"
        ).fetchall()
        assert incomplete == []
        orphans = conn.execute(
            "SELECT count(*) FROM kiln_samples WHERE request_id NOT IN (SELECT id FROM kiln_requests)"
        ).fetchone()
        assert orphans == (0,)
        requests = conn.execute("SELECT count(*) FROM kiln_requests").fetchone()[0]
        samples = conn.execute("SELECT count(*) FROM kiln_samples").fetchone()[0]
    return int(requests), int(samples)


def test_sigkill_loses_no_committed_row(tiny_bundle: Path, tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    server = start(tiny_bundle, db, tmp_path / "first.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(N):
                assert client.post(f"/v2/models/{MODEL}/infer", json=body(i)).status_code == 200
        assert wait_committed(server, N) == N
    finally:
        kill(server)
    assert server.proc.returncode == -signal.SIGKILL
    texts = sum(1 + i % 2 for i in range(N))
    assert check_database(db) == (N, texts)

    # again on the same file, killed while requests are still coming in
    server = start(tiny_bundle, db, tmp_path / "second.log")
    stop = threading.Event()
    sent = 0

    def traffic() -> None:
        nonlocal sent
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    client.post(f"/v2/models/{MODEL}/infer", json=body(sent))
                except httpx.HTTPError:
                    return  # the server is gone
                sent += 1

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        reported = wait_committed(server, 20)
        kill(server)  # mid-traffic: a batch may be half built, never half written
    finally:
        stop.set()
        kill(server)
        sender.join(timeout=60)
    requests, _ = check_database(db)
    assert requests >= N + reported
