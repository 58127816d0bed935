"""`kill -HUP` makes a real `kiln serve` process read its API keys file again: no restart needed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from _fixtures.server_process import running_server
from kiln.serve.keys import add_key, revoke_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform"),
]


def embeddings(url: str, key: str) -> int:
    r = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "tiny-embed", "input": "hello"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return r.status_code


def test_sighup_reloads_the_keys_file(tiny_bundle: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    alice, _ = add_key(keys, "alice", iterations=1000)
    args = ["--api-keys", str(keys), "--api-keys-reload", "0"]  # SIGHUP only
    with running_server(tiny_bundle, tmp_path, extra_args=args) as server:
        assert embeddings(server.url, alice) == 200
        bob, _ = add_key(keys, "bob", iterations=1000)
        revoke_key(keys, "alice")
        time.sleep(0.5)
        assert (embeddings(server.url, bob), embeddings(server.url, alice)) == (401, 200)  # not yet read
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while embeddings(server.url, bob) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (embeddings(server.url, bob), embeddings(server.url, alice)) == (200, 401)
        assert server.proc.poll() is None  # SIGHUP did not stop it
        log = server.log.read_text()
        assert "reloaded on SIGHUP" in log and "API keys reloaded from" in log
