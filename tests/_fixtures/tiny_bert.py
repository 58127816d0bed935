"""Tiny random BERTs (hidden 32, 4 heads, MiniLM vocabulary): modules for the torch recipes' tests,
folders (encoder or sequence classifier) for builds, and the export check those tests share."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.embed_torch import GRAPH_OUTPUT, INPUT_NAMES, MeanPooledEncoder

REVIEWS = [
    "a quiet, moving film",
    "the plot never comes together and the jokes fall flat",
    "one of the best performances of the year",
    "dull",
    "an ambitious mess that is still worth seeing",
    "i laughed, i cried, i checked my watch",
    "beautifully shot but emotionally empty",
    "a triumph",
]
"""Short film reviews to tokenize for the tiny models."""


def tiny_bert_config(
    layers: int = 2, intermediate: int = 64, init: float | None = None, labels: Sequence[str] = ()
) -> Any:
    """A ``BertConfig``; ``init`` overrides the initializer range, ``labels`` names the classes."""
    from transformers import BertConfig

    extra: dict[str, Any] = {}
    if init is not None:
        extra["initializer_range"] = init
    if labels:
        extra.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=intermediate,
        max_position_embeddings=128,
        **extra,
    )


def tiny_encoder(
    layers: int = 2, seed: int = 0, init: float = 0.2, intermediate: int = 64
) -> MeanPooledEncoder:
    """A random BERT in the embed task's module; ``init`` large enough that every head and neuron matters."""
    from transformers import BertModel

    torch.manual_seed(seed)
    return MeanPooledEncoder(BertModel(tiny_bert_config(layers, intermediate, init))).eval()


def make_tiny_bert(folder: Path, layers: int = 2, seed: int = 0, labels: Sequence[str] | None = None) -> Path:
    """Save a random BERT folder with the default model's tokenizer and an MIT model card: an encoder
    (``BertModel``), or with ``labels`` a ``BertForSequenceClassification`` whose logits are spread so
    that top-1 is not a coin toss under quantization."""
    from transformers import BertForSequenceClassification, BertModel

    from kiln.sources.default import default_model_path

    torch.manual_seed(seed)
    if labels is None:
        BertModel(tiny_bert_config(layers)).eval().save_pretrained(folder)
        title = "tiny random bert"
    else:
        model = BertForSequenceClassification(tiny_bert_config(layers, labels=labels)).eval()
        with torch.no_grad():
            model.classifier.weight.mul_(20.0)
        model.save_pretrained(folder)
        title = "tiny random classifier"
    shutil.copy(default_model_path() / "tokenizer.json", folder / "tokenizer.json")
    (folder / "README.md").write_text(f"---\nlicense: mit\n---\n# {title}\n")
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def export_and_check(
    module: torch.nn.Module,
    tokenizer: TextTokenizer,
    dst: Path,
    example: Sequence[str],
    checks: Iterable[Sequence[str]],
) -> Path:
    """Export ``module`` (traced on ``example``) and check ORT reproduces it on each batch of ``checks``."""
    import onnxruntime as ort

    from kiln.optimize.export import export_onnx
    from kiln.optimize.recipes import ExportOnnx

    dst = export_onnx(module, tokenizer.encode(list(example)), dst, ExportOnnx(), GRAPH_OUTPUT)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for texts in checks:
        feed = tokenizer.encode(list(texts))
        (got,) = session.run(None, feed)
        with torch.no_grad():
            ref = module(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES)).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4)
    return dst
