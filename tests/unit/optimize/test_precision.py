"""FP16 / BF16 conversion and the run-or-skip decision (GPU targets run; CPU only where measured faster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError
from test_quant_static import EPYC, cnn_feeds, mean_cosine, minilm, minilm_feeds, review_split, tiny_cnn

from kiln.optimize.precision import ConvertPrecision, PrecisionDecision, measure_on_cpu


def _elem_types(path: Path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_config_validates() -> None:
    with pytest.raises(ValidationError):
        ConvertPrecision(dtype="fp8")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ConvertPrecision(extra=1)  # type: ignore[call-arg]


def test_fp16_cnn_keeps_float32_io(tmp_path: Path) -> None:
    src = tiny_cnn()
    dst = ConvertPrecision(dtype="fp16").apply(src, tmp_path / "h.onnx")
    model = onnx.load(str(dst))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in _elem_types(dst)
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    assert mean_cosine(src, dst, cnn_feeds(2, seed=4)) > 0.9999


def test_bf16_cnn_is_valid_onnx(tmp_path: Path) -> None:
    src = tiny_cnn()
    dst = ConvertPrecision(dtype="bf16").apply(src, tmp_path / "b.onnx")
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)  # Conv (no bf16 before opset 22) kept fp32
    assert onnx.TensorProto.BFLOAT16 in _elem_types(dst)
    assert onnx.TensorProto.FLOAT16 not in _elem_types(dst)


def test_gpu_targets_run_without_measuring() -> None:
    for dtype in ("fp16", "bf16"):
        decision = ConvertPrecision(dtype=dtype).should_run_on("cuda")
        assert decision.run and decision.reason


def test_cpu_skips_when_slower_and_says_why() -> None:
    recipe = ConvertPrecision(dtype="fp16")
    slower = recipe.should_run_on("cpu", EPYC, fp32_ms=5.0, variant_ms=6.2)
    assert not slower.run
    assert "skipped" in slower.reason and "6.20 ms" in slower.reason and "AMD EPYC" in slower.reason
    barely = recipe.should_run_on("cpu", EPYC, fp32_ms=5.0, variant_ms=4.9)
    assert not barely.run  # inside the 5% margin
    faster = recipe.should_run_on("cpu", EPYC, fp32_ms=5.0, variant_ms=3.0)
    assert faster.run and "kept" in faster.reason
    unmeasured = recipe.should_run_on("cpu", EPYC)
    assert not unmeasured.run and "not measured" in unmeasured.reason
    assert PrecisionDecision.model_validate(slower.model_dump()) == slower


def test_measure_on_cpu_records_a_reason(tmp_path: Path) -> None:
    """Which way it goes depends on this CPU; the decision always carries its numbers or ORT's refusal."""
    src = tiny_cnn()
    feeds = cnn_feeds(1, seed=5)
    for dtype in ("fp16", "bf16"):
        recipe = ConvertPrecision(dtype=dtype)
        dst = recipe.apply(src, tmp_path / f"{dtype}.onnx")
        decision = measure_on_cpu(recipe, src, dst, feeds, EPYC, threads=1, seconds=0.2)
        assert decision.dtype == dtype and decision.target == "cpu" and dtype in decision.reason
        if decision.variant_ms is not None:
            assert decision.fp32_ms is not None and np.isfinite(decision.variant_ms)
        else:
            assert not decision.run and "cannot run" in decision.reason


@pytest.mark.slow
def test_minilm_fp16(tmp_path: Path) -> None:
    src, tokenizer = minilm()
    _, held_out = review_split()
    dst = ConvertPrecision(dtype="fp16").apply(src, tmp_path / "h.onnx")
    assert dst.stat().st_size < 0.55 * src.stat().st_size
    assert mean_cosine(src, dst, minilm_feeds(tokenizer, held_out[:32])) > 0.999
    bf16 = ConvertPrecision(dtype="bf16").apply(src, tmp_path / "b.onnx")
    assert bf16.stat().st_size < 0.55 * src.stat().st_size
