"""The real classifier (scripts/finetune_rt_classifier.py) builds into a bundle that keeps its accuracy.

Runs only where the fine-tuned model is cached (``$KILN_HOME/models/minilm-rt-classifier``): making it
takes about 8 minutes, so the test suite never does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.settings import Settings

pytestmark = pytest.mark.slow

MODEL = Settings.from_env().home / "models" / "minilm-rt-classifier"


@pytest.mark.skipif(
    not (MODEL / "config.json").is_file() or not (MODEL / "heldout.csv").is_file(),
    reason=f"no fine-tuned classifier at {MODEL}: run scripts/finetune_rt_classifier.py to make it",
)
def test_real_classifier_builds_and_keeps_its_accuracy(tmp_path: Path) -> None:
    from rich.console import Console

    from kiln.optimize.build import BuildOptions, build

    result = build(
        BuildOptions(
            model=str(MODEL),
            task="classify",
            data=MODEL / "heldout.csv",
            out=tmp_path / "bundle",
            eval_samples=800,
            latency_seconds=0.5,
            measure_memory=False,
            # the quick search: training runs on the real model take minutes (benchmarks/classify_search.py)
            techniques=("quantize", "precision"),
        ),
        console=Console(record=True, width=200),
    )
    m = result.manifest
    ref = next(v for v in m.variants if v.name == "pytorch-fp32")
    assert ref.scores.quality is not None and ref.scores.quality.value > 0.75
    chosen = m.chosen_variant()
    assert chosen.scores.quality is not None and chosen.scores.quality.drop <= 0.01
