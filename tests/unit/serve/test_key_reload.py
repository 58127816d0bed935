"""The API keys file is read again when it changes and on SIGHUP; a broken file keeps the old keys."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import anyio
import pytest

from kiln.errors import AuthError
from kiln.serve.auth import Guard
from kiln.serve.keys import add_key, revoke_key
from kiln.serve.server import reload_keys_on_sighup


def authenticate(guard: Guard, key: str) -> str:
    async def main() -> str:
        return (await guard.authenticate(key)).id

    return anyio.run(main)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys.json"
    alice, _ = add_key(path, "alice", iterations=1000)
    return path, alice


def test_added_and_revoked_keys_take_effect_on_reload(keys: tuple[Path, str]) -> None:
    path, alice = keys
    guard = Guard.from_file(path)
    assert authenticate(guard, alice) == "alice"
    assert guard.reload_if_changed() is False  # nothing changed: not read again
    bob, _ = add_key(path, "bob", iterations=1000)
    with pytest.raises(AuthError):
        authenticate(guard, bob)  # not yet reloaded
    assert guard.reload_if_changed() is True
    assert authenticate(guard, bob) == "bob"
    revoke_key(path, "alice")
    assert guard.reload_if_changed() is True
    with pytest.raises(AuthError, match="invalid API key"):
        authenticate(guard, alice)  # a revoked key stops working, though it was verified (and cached)
    assert authenticate(guard, bob) == "bob"
    assert [k.id for k in guard.store.keys] == ["bob"]


def test_a_broken_or_missing_file_keeps_the_keys_and_says_why_once(
    keys: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    path, alice = keys
    guard = Guard.from_file(path)
    good = path.read_text()
    path.write_text('{"version": 1, "keys": [')  # a half-written file
    with caplog.at_level(logging.ERROR, logger="kiln.serve"):
        assert guard.reload_if_changed() is False
        assert guard.reload_if_changed() is False  # the same broken file: no second error
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "API keys not reloaded, the server keeps its 1 keys" in errors[0] and "not valid JSON" in errors[0]
    assert authenticate(guard, alice) == "alice"
    path.unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="kiln.serve"):
        assert guard.reload_if_changed() is False
    assert "does not exist" in caplog.text
    assert authenticate(guard, alice) == "alice"
    path.write_text(good)  # fixed: used again
    assert guard.reload_if_changed() is True
    assert authenticate(guard, alice) == "alice"


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_an_empty_file_is_a_write_in_progress_not_zero_keys(
    tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Rewriting the file in place empties it first (an empty TOML file is a valid one, with no keys):
    a check at that moment must not drop every key."""
    path = tmp_path / f"keys{suffix}"
    alice, _ = add_key(path, "alice", iterations=1000)
    guard = Guard.from_file(path)
    path.write_text("")
    with caplog.at_level(logging.WARNING, logger="kiln.serve"):
        assert guard.reload_if_changed() is False
        assert guard.reload_if_changed() is False  # said once
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "is empty; the server keeps its 1 keys" in warnings[0]
    assert authenticate(guard, alice) == "alice"
    other = tmp_path / f"other{suffix}"
    bob, _ = add_key(other, "bob", iterations=1000)
    path.write_text(other.read_text())
    assert guard.reload_if_changed() is True  # the finished file is read
    assert authenticate(guard, bob) == "bob"
    with pytest.raises(AuthError):
        authenticate(guard, alice)


def test_a_guard_without_a_file_never_reloads() -> None:
    from kiln.serve.keys import KeyStore

    guard = Guard(KeyStore(()))
    assert guard.reload() is False and guard.reload_if_changed() is False


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_the_keys(keys: tuple[Path, str]) -> None:
    path, _ = keys
    guard = Guard.from_file(path)
    bob, _ = add_key(path, "bob", iterations=1000)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        assert reload_keys_on_sighup(guard) is True
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while len(guard.store.keys) != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert authenticate(guard, bob) == "bob"


def test_sighup_is_only_installed_from_the_main_thread(keys: tuple[Path, str]) -> None:
    guard = Guard.from_file(keys[0])
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(reload_keys_on_sighup(guard)))
    thread.start()
    thread.join()
    assert result == [False]
