"""Per-node sensitivity ranking and the exclude-until-it-passes loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_quant_static import cnn_feeds, mean_cosine, minilm, minilm_feeds, review_split, tiny_cnn

from kiln.errors import BuildError
from kiln.optimize.calibration import CalibrationReader
from kiln.optimize.quant_int4 import QuantizeInt4
from kiln.optimize.quant_static import QuantizeStatic
from kiln.optimize.recipes import QuantizeDynamic
from kiln.optimize.sensitivity import (
    NodeSensitivity,
    exclude_until_passes,
    rank_sensitivity,
    recipe_sensitivity,
)

CNN_NODES = {"node_Conv_22", "node_Conv_23", "node_linear"}


def _reader() -> CalibrationReader:
    return CalibrationReader.for_model(tiny_cnn(), cnn_feeds(2, seed=1))


def test_static_ranks_every_quantized_node() -> None:
    ranking = recipe_sensitivity(
        QuantizeStatic(calibration_method="MinMax"), tiny_cnn(), cnn_feeds(1, seed=6), calibration=_reader()
    )
    assert {s.node for s in ranking} == CNN_NODES
    assert all(s.quantized and 0 < s.rel_error < 0.1 for s in ranking)
    errors = [s.rel_error for s in ranking]
    assert errors == sorted(errors, reverse=True)
    assert all(np.isfinite(s.sqnr_db) and s.sqnr_db > 20 for s in ranking)


def test_untouched_nodes_are_listed_last_with_zero_error() -> None:
    ranking = recipe_sensitivity(QuantizeDynamic(), tiny_cnn(), cnn_feeds(1, seed=6))
    assert ranking[0].node == "node_linear" and ranking[0].quantized  # dynamic: MatMul/Gemm only
    assert {s.node for s in ranking[1:]} == {"node_Conv_22", "node_Conv_23"}
    assert all(not s.quantized and s.rel_error == 0.0 for s in ranking[1:])


def test_int4_node_is_ranked() -> None:
    ranking = recipe_sensitivity(QuantizeInt4(block_size=16), tiny_cnn(), cnn_feeds(1, seed=6))
    assert ranking[0].node == "node_linear" and ranking[0].rel_error > 0


def test_rank_needs_feeds(tmp_path: Path) -> None:
    with pytest.raises(BuildError):
        rank_sensitivity(tiny_cnn(), tiny_cnn(), [])


def test_exclusion_grows_until_it_passes(tmp_path: Path) -> None:
    ranking = [
        NodeSensitivity("node_Conv_23", "Conv", 0.3, True),
        NodeSensitivity("node_linear", "Gemm", 0.2, True),
        NodeSensitivity("node_Conv_22", "Conv", 0.1, True),
    ]
    seen: list[int] = []

    def passes(path: Path) -> bool:
        import onnx

        quantized = {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "DequantizeLinear"}
        seen.append(len(quantized))
        return len(seen) == 2  # the second attempt passes

    recipe = QuantizeStatic(calibration_method="MinMax")
    result = exclude_until_passes(
        recipe, tiny_cnn(), tmp_path / "q.onnx", ranking, passes, calibration=_reader()
    )
    assert result.passed and result.attempts == [(1, False), (2, True)]
    assert result.excluded == ("node_Conv_23", "node_linear")
    assert result.recipe.nodes_to_exclude == result.excluded
    assert seen[0] > seen[1]  # fewer quantized tensors once more nodes stay float
    assert result.path is not None and mean_cosine(tiny_cnn(), result.path, cnn_feeds(1, seed=7)) > 0.999


def test_exclusion_gives_up_after_all_groups(tmp_path: Path) -> None:
    ranking = recipe_sensitivity(QuantizeDynamic(), tiny_cnn(), cnn_feeds(1, seed=6))
    result = exclude_until_passes(
        QuantizeDynamic(op_types=("MatMul", "Gemm", "Conv")),
        tiny_cnn(),
        tmp_path / "q.onnx",
        ranking,
        lambda _: False,
        group_size=2,
    )
    assert not result.passed and result.attempts == [(1, False)]  # one quantized node: one group
    with pytest.raises(ValueError):
        exclude_until_passes(QuantizeDynamic(), tiny_cnn(), tmp_path / "x.onnx", ranking, bool, group_size=0)


@pytest.mark.slow
def test_minilm_dynamic_sensitivity_and_exclusion(tmp_path: Path) -> None:
    src, tokenizer = minilm()
    _, held_out = review_split()
    feeds = minilm_feeds(tokenizer, held_out[:16], batch=8)
    recipe = QuantizeDynamic(per_channel=False)  # per-tensor: the lossy setting worth repairing
    ranking = recipe_sensitivity(recipe, src, feeds)
    quantized = [s for s in ranking if s.quantized]
    assert len(quantized) >= 36  # six layers × (Q, K, V, out, FFN in, FFN out) at least
    assert quantized[0].rel_error > 2 * quantized[-1].rel_error
    base = mean_cosine(src, recipe.apply(src, tmp_path / "base.onnx"), feeds)
    scores: list[float] = []

    def passes(path: Path) -> bool:
        scores.append(mean_cosine(src, path, feeds))
        return scores[-1] > base

    result = exclude_until_passes(
        recipe, src, tmp_path / "q.onnx", ranking, passes, group_size=4, max_excluded=8
    )
    assert result.passed and len(result.excluded) in (4, 8)


FOLDING = QuantizeStatic(calibration_method="MinMax", op_types=("Conv", "Gemm", "Relu"))
"""ReLUs quantized too: ORT folds each into its convolution, which then writes the ReLU's output."""


@pytest.mark.parametrize("scope", ["node", "output"])
def test_convolutions_with_folded_relus_are_ranked(scope: str) -> None:
    ranking = recipe_sensitivity(
        FOLDING,
        tiny_cnn(),
        cnn_feeds(1, seed=6),
        calibration=_reader(),
        scope=scope,  # type: ignore[arg-type]
    )
    assert {s.node for s in ranking} == CNN_NODES
    assert all(s.quantized and 0 < s.rel_error < 0.2 for s in ranking)


def test_output_scope_measures_the_models_answer(tmp_path: Path) -> None:
    """A node's output-scope error is what the model's answer loses when that node alone is quantized."""
    import onnxruntime as ort

    src, feeds = tiny_cnn(), cnn_feeds(1, seed=6)
    quantized = FOLDING.apply(src, tmp_path / "q.onnx", _reader())
    ranking = {s.node: s for s in rank_sensitivity(src, quantized, feeds, scope="output")}
    only_head = FOLDING.model_copy(update={"nodes_to_exclude": ("node_Conv_22", "node_Conv_23")})
    alone = only_head.apply(src, tmp_path / "head.onnx", _reader())

    def run(path: Path) -> np.ndarray:
        return np.asarray(
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
        )

    want = run(src)
    head_alone = float(np.linalg.norm(run(alone) - want) / np.linalg.norm(want))
    assert ranking["node_linear"].rel_error == pytest.approx(head_alone, rel=0.05)
    # float bytes: the head's 64x512 float weights (less their int8 copy) dwarf the first conv's
    assert ranking["node_linear"].float_bytes > 64 * 512 * 2.5  # 3 bytes a weight, less its scales
    assert 0 < ranking["node_Conv_22"].float_bytes < ranking["node_linear"].float_bytes


def test_exclusion_keeps_within_the_float_byte_budget(tmp_path: Path) -> None:
    ranking = [
        NodeSensitivity("node_linear", "Gemm", 0.3, True, float_bytes=100_000),
        NodeSensitivity("node_Conv_23", "Conv", 0.2, True, float_bytes=60_000),
        NodeSensitivity("node_Conv_22", "Conv", 0.1, True, float_bytes=2_000),
    ]
    result = exclude_until_passes(
        QuantizeStatic(calibration_method="MinMax"),
        tiny_cnn(),
        tmp_path / "q.onnx",
        ranking,
        lambda _: False,
        max_float_bytes=65_000,
        calibration=_reader(),
    )
    # the head does not fit; the next two do, in ranking order
    assert result.excluded == ("node_Conv_23", "node_Conv_22")
    assert result.attempts == [(1, False), (2, False)]
