"""Attention fusion: each exported BERT self-attention block becomes one ``Attention`` node, outputs
unchanged; dynamic INT8 then quantizes it as ``QAttention``."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from _fixtures.tiny_bert import REVIEWS, one_thread, tiny_bert_config, tiny_encoder  # noqa: F401
from kiln.errors import BuildError
from kiln.optimize.export import eager_attention, export_onnx
from kiln.optimize.fusion import FuseTransformer, check_same_outputs, transformer_shape
from kiln.optimize.recipes import ExportOnnx, QuantizeDynamic
from kiln.runtime.tokenizer import TextTokenizer
from kiln.sources.default import default_model_path
from kiln.tasks.embed_torch import GRAPH_OUTPUT, INPUT_NAMES


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(default_model_path() / "tokenizer.json", 64)


def ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tokenizer: TextTokenizer) -> tuple[Path, Any]:
    module = tiny_encoder(layers=3, seed=1)
    path = tmp_path_factory.mktemp("fusion") / "fp32.onnx"
    export_onnx(module, tokenizer.encode(REVIEWS[:2]), path, ExportOnnx(), GRAPH_OUTPUT)
    return path, module


def test_every_block_becomes_one_attention_node(exported: tuple[Path, Any], tmp_path: Path) -> None:
    src, _ = exported
    dst = FuseTransformer(num_heads=4, hidden_size=32).apply(src, tmp_path / "fused.onnx")
    before, after = ops(src), ops(dst)
    assert after["Attention"] == 3
    assert after["Softmax"] == 0 and after["Transpose"] == 0
    assert sum(after.values()) < sum(before.values()) / 2
    onnx.checker.check_model(onnx.load(str(dst)))


def test_fused_graph_matches_pytorch_on_padded_batches(
    exported: tuple[Path, Any], tokenizer: TextTokenizer, tmp_path: Path
) -> None:
    src, module = exported
    dst = FuseTransformer(num_heads=4, hidden_size=32).apply(src, tmp_path / "fused.onnx")
    feed = tokenizer.encode(REVIEWS)  # mixed lengths: padded rows exercise the mask
    assert feed["attention_mask"].min() == 0
    with torch.no_grad():
        want = module(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES)).numpy()
    np.testing.assert_allclose(run(dst, feed), want, atol=1e-4)
    single = tokenizer.encode(REVIEWS[3:4])  # batch 1, a few tokens
    with torch.no_grad():
        want1 = module(*(torch.from_numpy(single[n]) for n in INPUT_NAMES)).numpy()
    np.testing.assert_allclose(run(dst, single), want1, atol=1e-4)


def test_dynamic_int8_quantizes_the_fused_attention(exported: tuple[Path, Any], tmp_path: Path) -> None:
    src, _ = exported
    fused = FuseTransformer(num_heads=4, hidden_size=32).apply(src, tmp_path / "fused.onnx")
    q = QuantizeDynamic().apply(fused, tmp_path / "q.onnx")
    assert ops(q)["QAttention"] == 3


def test_a_classifier_fuses_too(tmp_path: Path, tokenizer: TextTokenizer) -> None:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(2, labels=["neg", "pos"])).eval()
    assert model.config._attn_implementation == "sdpa"  # the default the exporter switches away from

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits

    src = export_onnx(Logits(), tokenizer.encode(REVIEWS[:2]), tmp_path / "c.onnx", ExportOnnx(), "logits")
    assert model.config._attn_implementation == "sdpa"  # restored after the export
    dst = FuseTransformer(num_heads=4, hidden_size=32).apply(src, tmp_path / "cf.onnx")
    assert ops(dst)["Attention"] == 2
    feed = tokenizer.encode(REVIEWS)
    np.testing.assert_allclose(run(dst, feed), run(src, feed), atol=1e-4)


def test_eager_attention_is_restored_when_the_export_fails() -> None:
    from transformers import BertModel

    model = BertModel(tiny_bert_config(1))
    with pytest.raises(RuntimeError), eager_attention(model):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("export failed")
    assert model.config._attn_implementation == "sdpa"


def test_a_graph_without_attention_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["b", "s"])
    graph = helper.make_graph([helper.make_node("Identity", ["attention_mask"], ["y"])], "g", [x], [y])
    src = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    with pytest.raises(BuildError, match="no self-attention block"):
        FuseTransformer(num_heads=4, hidden_size=32).apply(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_wrong_head_count_is_caught_by_the_output_check(exported: tuple[Path, Any], tmp_path: Path) -> None:
    src, _ = exported
    with pytest.raises(BuildError, match="differs"):
        FuseTransformer(num_heads=2, hidden_size=32).apply(src, tmp_path / "bad.onnx")


def test_check_same_outputs_passes_on_identical_graphs(exported: tuple[Path, Any]) -> None:
    src, _ = exported
    check_same_outputs(src, src)


def test_transformer_shape_reads_the_config() -> None:
    assert transformer_shape(tiny_encoder(layers=1)) == (4, 32)
    assert transformer_shape(torch.nn.Linear(2, 2)) is None
    assert transformer_shape(object()) is None


def test_layers_with_pruned_heads_fuse_with_their_own_head_count(
    tmp_path: Path, tokenizer: TextTokenizer
) -> None:
    from kiln.optimize.prune import PruneStructured

    module = tiny_encoder(layers=2, seed=3)
    pruned = PruneStructured(heads=0.25, ffn=0.0).apply(module, _batches(tokenizer))
    src = export_onnx(pruned, tokenizer.encode(REVIEWS[:2]), tmp_path / "p.onnx", ExportOnnx(), GRAPH_OUTPUT)
    dst = FuseTransformer(num_heads=4, hidden_size=32).apply(src, tmp_path / "pf.onnx")
    heads = [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in onnx.load(str(dst)).graph.node
        if n.op_type == "Attention"
    ]
    assert len(heads) == 2 and min(heads) < 4  # a pruned layer keeps its own count
    feed = tokenizer.encode(REVIEWS)
    np.testing.assert_allclose(run(dst, feed), run(src, feed), atol=1e-4)


def _batches(tokenizer: TextTokenizer) -> list[Any]:
    from kiln.optimize.torch_recipes import text_batches

    return text_batches(tokenizer, REVIEWS * 2, batch_size=4)
