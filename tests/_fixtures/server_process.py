"""Start ``kiln serve`` as a real process on a free port, wait until it is ready, always stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(server: Server, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"kiln serve exited with {server.proc.returncode}:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"kiln serve was not ready after {seconds}s:\n{server.log.read_text()}")


def start_server(
    bundle: Path,
    log: Path,
    port: int,
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start ``python -m kiln.cli serve BUNDLE --host 127.0.0.1 --port PORT [EXTRA_ARGS]``.

    Output goes to ``log``; the caller waits for it (:func:`wait_ready`), stops it (:func:`stop_server`).
    """
    # KILN_HOME beside the log: a test server's request log never lands in the user's cache
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "KILN_HOME": str(log.parent / "kiln-home"),
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-m", "kiln.cli", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        return subprocess.Popen([*cmd, *extra_args], stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@contextmanager
def running_server(
    bundle: Path,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Server]:
    """``kiln serve BUNDLE`` on a free port; yields once /v2/health/ready answers 200, always stops it.

    ``extra_args`` go after the standard ones, e.g. ``["--grpc-port", str(free_port())]``.
    """
    log = log_dir / "server.log"
    port = free_port()
    proc = start_server(bundle, log, port, extra_env, extra_args)
    server = Server(proc=proc, port=port, log=log)
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(proc)
