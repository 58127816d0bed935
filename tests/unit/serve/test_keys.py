"""API keys: salted hashes, constant-time verification, scopes, and the keys file (JSON and TOML)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kiln.errors import KeysFileError, KilnError
from kiln.serve.keys import (
    ApiKey,
    KeyStore,
    add_key,
    hash_key,
    load_keys,
    lookup_of,
    new_key,
    parse_scope_list,
    revoke_key,
)

FAST = 1000  # PBKDF2 rounds for tests (the default is slow on purpose)


def test_a_new_key_is_random_and_only_its_salted_hash_is_kept() -> None:
    key, record = new_key("alice", iterations=FAST)
    other, other_record = new_key("alice", iterations=FAST)
    assert key != other and record.salt != other_record.salt
    assert key.startswith(f"kiln-{record.lookup}-") and len(key) > 40
    assert record.hash == hash_key(key, record.salt, FAST)
    assert key not in json.dumps(record.to_dict())


def test_verify_finds_the_key_and_refuses_others() -> None:
    a_key, a = new_key("a", iterations=FAST)
    b_key, b = new_key("b", iterations=FAST)
    store = KeyStore((a, b))
    assert store.verify(a_key) == a and store.verify(b_key) == b
    assert store.verify(a_key + "x") is None
    assert store.verify(a_key.replace(a.lookup, b.lookup)) is None  # b's lookup, a's secret
    assert store.verify("kiln-00000000-nope") is None
    assert store.verify("not a kiln key") is None
    assert store.verify("kiln-" + "x" * 1000) is None


def test_verified_keys_are_remembered() -> None:
    key, record = new_key("a", iterations=FAST)
    store = KeyStore((record,))
    assert store.cached(key) is None
    store.verify(key)
    assert store.cached(key) == record
    assert store.cached(key + "x") is None


def test_lookup_of() -> None:
    assert lookup_of("kiln-0123abcd-secret-with-dashes") == "0123abcd"
    assert lookup_of("kiln-0123abcd-") is None
    assert lookup_of("kiln-XYZ-secret") is None
    assert lookup_of("sk-0123abcd-secret") is None


def test_scopes() -> None:
    _, scoped = new_key("s", models=("m1",), routes=("infer",), iterations=FAST)
    assert scoped.allows_model("m1") and not scoped.allows_model("m2")
    assert scoped.allows_route("infer") and not scoped.allows_route("metrics")
    _, everything = new_key("e", iterations=FAST)
    assert everything.allows_model("any") and everything.allows_route("metrics")
    assert not everything.allows_route("admin")  # routes=* is not admin
    _, admin = new_key("x", models=("m1",), routes=("infer",), admin=True, iterations=FAST)
    assert admin.allows_model("m2") and admin.allows_route("metrics") and admin.allows_route("admin")


def test_parse_scope_list() -> None:
    assert parse_scope_list("a, b,a", "--models") == ("a", "b")
    assert parse_scope_list("a,*", "--models") == ("*",)
    with pytest.raises(ValueError, match="--routes: unknown 'nope'"):
        parse_scope_list("infer,nope", "--routes", ("infer", "metadata"))
    with pytest.raises(ValueError, match="--models"):
        parse_scope_list(" , ", "--models")


def test_new_key_refuses_a_bad_id() -> None:
    with pytest.raises(ValueError, match="key id"):
        new_key("has space", iterations=FAST)


@pytest.mark.parametrize("name", ["keys.json", "keys.toml"])
def test_keys_file_round_trip_add_and_revoke(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    key, record = add_key(
        path, "alice", models=("m1", "m2"), routes=("infer",), rate=2.5, burst=5, iterations=FAST
    )
    add_key(path, "bob", admin=True, iterations=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in path.read_text()
    loaded = load_keys(path)
    assert [k.id for k in loaded] == ["alice", "bob"]
    assert loaded[0] == record and loaded[1].admin and loaded[1].rate is None
    assert KeyStore.from_file(path).verify(key) == record
    with pytest.raises(KeysFileError, match="already has a key 'alice'"):
        add_key(path, "alice", iterations=FAST)
    assert revoke_key(path, "alice").id == "alice"
    assert [k.id for k in load_keys(path)] == ["bob"]
    with pytest.raises(KeysFileError, match="no key 'alice'.*ids: bob"):
        revoke_key(path, "alice")


def _entry(**changes: object) -> dict[str, object]:
    _, record = new_key("alice", iterations=FAST)
    return {**record.to_dict(), **changes}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "top level"),
        (
            json.dumps({"keys": [_entry(routes=["infer", "bogus"])]}),
            "keys.0.routes.*unknown route scope 'bogus'",
        ),
        (json.dumps({"keys": [_entry(hash="zz")]}), "keys.0.hash"),
        (json.dumps({"keys": [_entry(rate=-1)]}), "keys.0.rate"),
        (json.dumps({"keys": [_entry(secret="oops")]}), "keys.0.secret"),
        (json.dumps({"version": 2, "keys": []}), "version"),
        (json.dumps({"keys": [_entry(), _entry()]}), "'alice' appears more than once"),
    ],
)
def test_a_malformed_keys_file_says_where_and_what(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeysFileError, match=message) as info:
        load_keys(path)
    assert str(path) in str(info.value)


def test_a_bad_toml_file_and_a_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "keys.toml"
    bad.write_text("[[keys]\n")
    with pytest.raises(KeysFileError, match="is not valid TOML"):
        load_keys(bad)
    with pytest.raises(KilnError, match="does not exist: create it with `kiln keys add"):
        load_keys(tmp_path / "missing.json")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(KeysFileError, match="cannot read API keys file"):
        load_keys(folder)


def test_an_empty_key_list_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"version": 1, "keys": []}')
    assert load_keys(path) == []
    assert KeyStore(()).verify("kiln-0123abcd-x") is None


def test_a_record_repr_never_holds_the_key() -> None:
    key, record = new_key("a", iterations=FAST)
    assert isinstance(record, ApiKey) and key not in repr(record)
