"""KILN_ORT_SPINNING: served sessions spin by default (ORT's own default); the setting reaches the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.bundle.load import load_bundle
from kiln.runtime import onnx_backend
from kiln.serve.models import load_model
from kiln.settings import Settings


def test_the_default_is_to_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_ORT_SPINNING", raising=False)
    assert Settings.from_env().ort_spinning is True
    monkeypatch.setenv("KILN_ORT_SPINNING", "0")
    assert Settings.from_env().ort_spinning is False


@pytest.mark.parametrize("spinning", [True, False])
def test_the_setting_reaches_the_onnx_runtime_session(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, spinning: bool
) -> None:
    seen: list[bool] = []
    real = onnx_backend.session_options

    def options(threads: int = 0, spinning: bool = True) -> Any:
        seen.append(spinning)
        return real(threads, spinning)

    monkeypatch.setattr(onnx_backend, "session_options", options)
    info, model = load_model(load_bundle(tiny_bundle), threads=1, spinning=spinning)
    assert seen == [spinning]
    assert model.embed(["hello"]).shape[0] == 1
