"""A tiny random ``BertForSequenceClassification`` (rotten/fresh, MiniLM tokenizer), its labelled CSV, and
the classify bundle ``kiln build --task classify`` makes of them (built once per session: slow)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CLASSIFY_LABELS = ("rotten", "fresh")


@dataclass(frozen=True)
class ClassifyBuild:
    model_dir: Path
    data: Path
    bundle: Path
    console_text: str


def make_tiny_classifier(folder: Path, labels: tuple[str, ...] = CLASSIFY_LABELS, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from kiln.sources.default import default_model_path

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # spread the logits so that top-1 is not a coin toss under quantization
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(folder)
    shutil.copy(default_model_path() / "tokenizer.json", folder / "tokenizer.json")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny random classifier\n")
    return folder


def write_classify_csv(path: Path, n: int = 160, seed: int = 0) -> Path:
    import pandas as pd

    from kiln.tasks.datasets import rotten_tomatoes

    data = rotten_tomatoes(max_samples=n, seed=seed)
    pd.DataFrame(
        {
            "text": data.texts,
            "label": [data.label_names[k] for k in data.labels],
            "genre": ["drama" if i % 3 else "comedy" for i in range(len(data))],
        }
    ).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier") / "tiny-classifier")


@pytest.fixture(scope="session")
def classify_build(tiny_classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> ClassifyBuild:
    from rich.console import Console

    from kiln.optimize.build import BuildOptions, build

    root = tmp_path_factory.mktemp("classify-build")
    data = write_classify_csv(root / "reviews.csv")
    console = Console(record=True, width=200)
    result = build(
        BuildOptions(
            model=str(tiny_classifier),
            task="classify",
            data=data,
            slice_by=("genre",),
            out=root / "bundle",
            eval_samples=0,
            latency_seconds=0.2,
            measure_memory=True,
        ),
        console=console,
    )
    return ClassifyBuild(tiny_classifier, data, result.bundle_dir, console.export_text())
