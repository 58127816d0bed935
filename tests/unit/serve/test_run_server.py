from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import BundleError
from kiln.serve import server


def test_base_url() -> None:
    assert server.base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert server.base_url("::1", 9) == "http://[::1]:9"


def test_run_server_loads_the_bundle_logs_the_url_and_runs_uvicorn(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv("KILN_MAX_BATCH_ITEMS", "5")
    with caplog.at_level(logging.INFO, logger="kiln.serve"):
        server.run_server(tiny_bundle, host="127.0.0.1", port=8123)
    ((app, kwargs),) = calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    assert app.state.dataplane.model_names == ["tiny-embed"]
    assert app.state.dataplane.limits.max_batch_items == 5  # settings come from the environment
    assert "serving model 'tiny-embed'" in caplog.text
    assert "http://127.0.0.1:8123/v2/models/tiny-embed/infer" in caplog.text


def test_run_server_refuses_a_missing_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    with pytest.raises(BundleError, match="does not exist"):
        server.run_server(tmp_path / "missing", host="127.0.0.1", port=1)
