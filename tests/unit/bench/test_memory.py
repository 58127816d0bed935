"""Peak RSS of a variant measured in a fresh subprocess, on tiny models built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.bench import memory_probe
from kiln.bench.memory import peak_rss_mb
from kiln.errors import BuildError

VOCAB, DIM = 2048, 16


def _tiny_onnx(path: Path) -> Path:
    """Mean of embedding rows: Gather(table, (ids + types) * mask) then ReduceMean over tokens."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(0).standard_normal((VOCAB, DIM)).astype(np.float32)
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    nodes = [
        helper.make_node("Add", ["input_ids", "token_type_ids"], ["ids_typed"]),
        helper.make_node("Mul", ["ids_typed", "attention_mask"], ["ids_masked"]),
        helper.make_node("Gather", ["table", "ids_masked"], ["tokens"], axis=0),
        helper.make_node("ReduceMean", ["tokens"], ["embedding"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_embed",
        inputs,
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tiny_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "memory": 2, "probe": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_onnx_probe_reports_plausible_peak(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    tokenizer = _tiny_tokenizer(tmp_path / "tokenizer.json")
    mb = peak_rss_mb("onnx", str(model), str(tokenizer), batch_size=4, seq_len=16, threads=1)
    assert 10.0 < mb < 2000.0


def test_torch_embed_probe_reports_plausible_peak(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    mb = peak_rss_mb("torch-embed", str(tmp_path / "bert"), None, batch_size=2, seq_len=8, threads=1)
    assert 10.0 < mb < 4000.0


def test_missing_path_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="does not exist"):
        peak_rss_mb("onnx", str(tmp_path / "nope.onnx"), None)


def test_unreadable_model_reports_child_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(BuildError, match="stderr tail") as info:
        peak_rss_mb("onnx", str(bad), None, batch_size=1, seq_len=4)
    assert "bad.onnx" in str(info.value)
    assert "memory probe failed" in str(info.value)


def test_unknown_kind_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="kind"):
        peak_rss_mb("gguf", str(tmp_path), None)  # type: ignore[arg-type]


def test_probe_main_in_process_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    args = ["--kind", "onnx", "--path", str(model), "--batch-size", "2", "--seq-len", "8"]
    assert memory_probe.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["peak_rss_mb"] > 0 and result["batch_size"] == 2 and result["seq_len"] == 8


def test_probe_main_reports_missing_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert memory_probe.main(["--kind", "onnx", "--path", str(tmp_path / "missing.onnx")]) == 1
    assert "memory probe failed" in capsys.readouterr().err


def test_synthetic_batch_shape_and_range() -> None:
    feed = memory_probe.synthetic_batch(3, 5)
    assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(a.shape == (3, 5) and a.dtype == np.int64 for a in feed.values())
    assert feed["input_ids"].min() >= 1000 and feed["input_ids"].max() < 2000
    assert (feed["attention_mask"] == 1).all() and (feed["token_type_ids"] == 0).all()
