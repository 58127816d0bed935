"""Any Hugging Face encoder folder builds the same way as the default model (here a tiny random BERT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.bundle.load import load_bundle
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _fixtures.tiny_bert import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "tiny-bert")


def test_build_a_local_folder(tiny_bert: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from kiln.optimize.build import BuildOptions, build

    out = tmp_path / "bundle"
    console = Console(record=True, width=200)
    result = build(
        BuildOptions(
            model=str(tiny_bert),
            out=out,
            eval_samples=300,
            latency_seconds=0.2,
            measure_memory=False,
            techniques=("quantize", "precision"),
        ),
        console=console,
    )
    m = load_bundle(out).manifest
    assert result.bundle_dir == out
    assert m.model_name == "tiny-bert" and m.license == "mit"
    assert m.source.kind == "local" and m.source.path == str(tiny_bert)
    assert m.task_config["dimension"] == 32 and m.task_config["max_length"] == 128
    fp32 = next(v for v in m.variants if v.name == "onnx-fp32")
    assert fp32.status == "ok", fp32.reason
    assert "variants (measured on this machine" in console.export_text()

    # the served artifact reproduces the PyTorch model it came from
    from kiln.tasks.embed_torch import TorchEmbedder

    tok = TextTokenizer(out / "tokenizer.json", 128)
    texts = ["a short one", "a somewhat longer sentence about a film that nobody saw"]
    ref = TorchEmbedder(tiny_bert, tok).embed(texts)
    got = OnnxEmbedder(OnnxBackend(out / "model.onnx"), tok).embed(texts)
    cos = (ref * got).sum(axis=1)
    assert cos.min() > (0.9999 if m.chosen == "onnx-fp32" else 0.95)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
