"""A tiny random ``BertForSequenceClassification`` (rotten/fresh, MiniLM tokenizer), its labelled CSV, and
the classify bundle ``kiln build --task classify`` makes of them (built once per session: slow)."""

from __future__ import annotations

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
    from _fixtures.tiny_bert import make_tiny_bert

    return make_tiny_bert(folder, seed=seed, labels=labels)


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
            techniques=(
                "quantize",
                "precision",
            ),  # structural ones: tests/integration/test_build_structural.py
        ),
        console=console,
    )
    return ClassifyBuild(tiny_classifier, data, result.bundle_dir, console.export_text())
