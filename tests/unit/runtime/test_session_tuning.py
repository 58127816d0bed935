"""Session tuning: ORT's SkipLayerNormalization fusion is timed on this CPU and switched off where it
loses; the bundle's sessions honour the decision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from kiln.runtime import onnx_backend, session_tuning
from kiln.runtime.onnx_backend import OnnxBackend, SessionSettings
from kiln.runtime.session_tuning import SKIP_LAYER_NORM_FUSION, time_skip_layer_norm, tune_session


def test_both_variants_are_timed() -> None:
    fused, plain = time_skip_layer_norm(64, tokens=8, threads=1, runs=20)
    assert fused > 0 and plain > 0


def test_a_slower_fused_kernel_is_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_tuning, "time_skip_layer_norm", lambda *a, **k: (88.0, 25.0))
    settings = tune_session(384)
    assert settings.disabled_optimizers == (SKIP_LAYER_NORM_FUSION,)
    assert "88" in settings.why and "25" in settings.why


def test_a_faster_or_equal_fused_kernel_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_tuning, "time_skip_layer_norm", lambda *a, **k: (26.0, 25.0))
    assert tune_session(384).disabled_optimizers == ()


def test_models_without_a_transformer_width_get_defaults() -> None:
    assert tune_session(None) == SessionSettings()


def test_unknown_optimizer_names_are_refused() -> None:
    with pytest.raises(ValidationError):
        SessionSettings(disabled_optimizers=("SkipLayerNormFussion",))  # type: ignore[arg-type]


def _optimized_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: SessionSettings) -> list[str]:
    src = tmp_path / "ln.onnx"
    src.write_bytes(session_tuning._residual_layer_norm(16))
    dumped = tmp_path / "optimized.onnx"

    def options(threads: int = 0, spinning: bool = True) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(dumped)
        opts.log_severity_level = 3
        return opts

    monkeypatch.setattr(onnx_backend, "session_options", options)
    backend = OnnxBackend(src, settings=settings)
    x = np.ones((1, 2, 16), dtype=np.float32)
    assert backend.run({"x": x, "residual": x})[0].shape == (1, 2, 16)
    return [n.op_type for n in onnx.load(str(dumped)).graph.node]


def test_the_backend_honours_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    off = SessionSettings(disabled_optimizers=(SKIP_LAYER_NORM_FUSION,))
    assert _optimized_ops(tmp_path, monkeypatch, off) == ["Add", "LayerNormalization"]
    assert _optimized_ops(tmp_path, monkeypatch, SessionSettings()) == ["SkipLayerNormalization"]
