"""`kiln keys ...`, and how `kiln serve` wires keys, TLS and the exposure warning (uvicorn not started)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kiln import cli
from kiln.errors import ServeConfigError
from kiln.serve import server
from kiln.serve.keys import KeyStore, load_keys


def _flat(text: str) -> str:
    """rich wraps long lines: compare with the line breaks gone."""
    return " ".join(text.split())


def test_keys_add_prints_the_key_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    argv = [
        "keys",
        "add",
        str(path),
        "--id",
        "app",
        "--models",
        "m1,m2",
        "--routes",
        "infer",
        "--rate",
        "600/m",
    ]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    key, err = out.strip(), _flat(err)
    assert key.startswith("kiln-") and "shown this once" in err and "10/s, burst 10" in err
    (record,) = load_keys(path)
    assert (record.id, record.models, record.routes, record.rate, record.burst) == (
        "app", ("m1", "m2"), ("infer",), 10.0, 10,
    )  # fmt: skip
    assert key not in path.read_text() and KeyStore((record,)).verify(key) == record
    assert cli.main(["keys", "list", str(path)]) == 0
    listed, _ = capsys.readouterr()
    assert "app" in listed and "m1,m2" in listed and key not in listed
    assert cli.main(["keys", "revoke", str(path), "app"]) == 0
    assert json.loads(path.read_text())["keys"] == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--routes", "infer,everything"], "--routes: unknown 'everything'"),
        (["--rate", "fast"], "rate 'fast'"),
        (["--burst", "5"], "--burst needs --rate"),
        (["--id", "bad id"], "key id 'bad id'"),
    ],
)
def test_keys_add_says_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert cli.main(["keys", "add", str(tmp_path / "k.json"), "--id", "x", *extra]) == 2
    assert message in _flat(capsys.readouterr().err)
    assert not (tmp_path / "k.json").exists()


def test_keys_list_of_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    path.write_text("{")
    assert cli.main(["keys", "list", str(path)]) == 2
    assert "is not valid JSON" in _flat(capsys.readouterr().err)


def test_serve_flags_parse() -> None:
    args = cli.build_parser().parse_args(
        ["serve", "b", "--api-keys", "k.json", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"]
    )
    assert (args.api_keys, args.ssl_certfile, args.ssl_keyfile) == ("k.json", "c.pem", "k.pem")


def test_check_tls(tmp_path: Path) -> None:
    assert server.check_tls(None, None) is None
    with pytest.raises(ServeConfigError, match="both --ssl-certfile and --ssl-keyfile"):
        server.check_tls(tmp_path / "c.pem", None)
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(ServeConfigError, match="cannot use TLS certificate .*c.pem with key .*k.pem"):
        server.check_tls(tmp_path / "c.pem", tmp_path / "k.pem")


def _run(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("KILN_MONITOR", "0")
    server.run_server(tiny_bundle, port=8123, **kwargs)
    return calls


def test_a_public_address_without_keys_gets_a_loud_warning(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("KILN_API_KEYS", raising=False)
    with caplog.at_level(logging.INFO, logger="kiln.serve"):
        ((app, kwargs),) = _run(tiny_bundle, monkeypatch, host="0.0.0.0")
    assert "WITHOUT API KEYS" in caplog.text
    assert app.state.guard is None
    assert kwargs["access_log"] is False and "ssl_certfile" not in kwargs  # kiln's JSON access log instead


def test_keys_from_the_flag_or_the_environment(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    assert cli.main(["keys", "add", str(path), "--id", "a"]) == 0
    with caplog.at_level(logging.INFO, logger="kiln.serve"):
        ((app, _),) = _run(tiny_bundle, monkeypatch, host="0.0.0.0", api_keys=path)
    assert [k.id for k in app.state.guard.store.keys] == ["a"]
    assert "WITHOUT API KEYS" not in caplog.text and "API keys: 1 from" in caplog.text
    monkeypatch.setenv("KILN_API_KEYS", str(path))
    ((app, _),) = _run(tiny_bundle, monkeypatch, host="127.0.0.1")
    assert app.state.guard is not None
    monkeypatch.setenv("KILN_ACCESS_LOG", "0")
    ((_, kwargs),) = _run(tiny_bundle, monkeypatch, host="127.0.0.1")
    assert kwargs["access_log"] is True  # uvicorn's own when kiln's is off
