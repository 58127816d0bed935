"""A running app picks up a changed API keys file: new keys work, revoked keys get 401, without restart."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.testclient import TestClient

from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.serve.keys import add_key, revoke_key
from kiln.settings import Settings

BODY = {"model": "tiny-embed", "input": "hello"}


def status_within(client: TestClient, key: str, want: int, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while True:
        got = client.post("/v1/embeddings", json=BODY, headers={"Authorization": f"Bearer {key}"}).status_code
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_the_app_reloads_a_changed_keys_file(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    alice, _ = add_key(path, "alice", iterations=1000)
    settings = Settings(home=tmp_path, threads=1, api_keys=path, api_keys_reload_s=0.05)
    with TestClient(create_app(load_bundle(tiny_bundle), settings)) as client:
        assert status_within(client, alice, 200) == 200
        bob, _ = add_key(path, "bob", iterations=1000)
        assert status_within(client, bob, 200) == 200
        revoke_key(path, "alice")
        assert status_within(client, alice, 401) == 401
        path.write_text("this is not TOML [")  # broken: the keys the server has stay
        time.sleep(0.3)
        assert status_within(client, bob, 200, seconds=0) == 200


def test_without_polling_the_file_is_not_reread(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "alice", iterations=1000)
    settings = Settings(home=tmp_path, threads=1, api_keys=path, api_keys_reload_s=0)
    with TestClient(create_app(load_bundle(tiny_bundle), settings)) as client:
        bob, _ = add_key(path, "bob", iterations=1000)
        time.sleep(0.3)
        assert status_within(client, bob, 200, seconds=0) == 401  # only SIGHUP would reload it
        client.app.state.guard.reload()  # type: ignore[attr-defined]  (what SIGHUP runs)
        assert status_within(client, bob, 200, seconds=0) == 200
