"""Texts longer than the model reads: truncated by default, refused with a clear 400 when configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from _fixtures.tiny_bundle import TINY_MAX_LENGTH
from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.serve.dataplane import Limits
from kiln.settings import Settings

MODEL = "tiny-embed"
LONG = " ".join(["fox"] * 20)  # 22 tokens with [CLS] and [SEP]; the tiny model reads 16
FITS = " ".join(["fox"] * (TINY_MAX_LENGTH - 2))  # exactly 16 tokens


@pytest.fixture
def serve(tiny_bundle: Path, tmp_path: Path) -> Iterator[Any]:
    clients: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        app = create_app(load_bundle(tiny_bundle), Settings(home=tmp_path, threads=1, **options))
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def v2(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def test_truncate_is_the_default_and_the_model_reads_max_length_tokens(serve: Any) -> None:
    client = serve()
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": [LONG, FITS]})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == TINY_MAX_LENGTH * 2  # both cut to / at 16 tokens
    rows = [d["embedding"] for d in r.json()["data"]]
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-6)  # 20 x "fox" read as 14 x "fox"


def test_reject_refuses_over_long_texts_on_every_protocol_and_names_the_text(serve: Any) -> None:
    client = serve(text_overflow="reject")
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": [FITS, LONG]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "input"
    assert error["message"] == (
        f"text 1 has 22 tokens; model '{MODEL}' reads at most {TINY_MAX_LENGTH} "
        "(shorten it, or serve with --text-overflow truncate to cut it to the model's length)"
    )
    r = client.post(f"/v2/models/{MODEL}/infer", json=v2([LONG]))
    assert r.status_code == 400 and r.json()["error"].startswith("text 0 has 22 tokens")
    ok = client.post("/v1/embeddings", json={"model": MODEL, "input": [FITS, "hello world"]})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == TINY_MAX_LENGTH + 4


def test_the_character_limit_refuses_in_both_modes(serve: Any) -> None:
    for mode in ("truncate", "reject"):
        client = serve(text_overflow=mode, max_text_chars=30)
        r = client.post(f"/v2/models/{MODEL}/infer", json=v2(["x" * 31]))
        assert r.status_code == 400
        assert r.json()["error"] == (
            "text 0 has 31 characters; the limit is 30 (shorten it, or raise KILN_MAX_TEXT_CHARS)"
        )


def test_an_unknown_overflow_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="text_overflow must be one of truncate, reject, not 'cut'"):
        Limits(text_overflow="cut")


def test_overflow_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TEXT_OVERFLOW", "Reject")
    assert Settings.from_env().text_overflow == "reject"
    monkeypatch.setenv("KILN_TEXT_OVERFLOW", "chop")
    with pytest.raises(ValueError, match="KILN_TEXT_OVERFLOW='chop' is not one of truncate, reject"):
        Settings.from_env()
