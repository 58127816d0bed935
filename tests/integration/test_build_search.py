"""The recipe search on a tiny random BERT: budget bounds, trial limits, the trace, Ctrl-C."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln.bundle.load import load_bundle
from kiln.sources.default import default_model_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-search") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(folder)
    shutil.copy(default_model_path() / "tokenizer.json", folder / "tokenizer.json")
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny random bert\n")
    return folder


def _opts(model: Path, out: Path, **kw: object):  # type: ignore[no-untyped-def]
    from kiln.optimize.build import BuildOptions

    kw.setdefault("techniques", ("quantize", "precision"))
    return BuildOptions(
        model=str(model), out=out, eval_samples=300, latency_seconds=0.2, measure_memory=False, **kw
    )


def test_size_bound_and_trial_limit(tiny_bert: Path, tmp_path: Path) -> None:
    from rich.console import Console

    from kiln.optimize.build import build

    out = tmp_path / "bundle"
    build(_opts(tiny_bert, out, max_size_mb=2.5, max_trials=3), console=Console(record=True, width=200))
    m = load_bundle(out).manifest
    names = [v.name for v in m.variants]
    assert names[:3] == ["pytorch-fp32", "onnx-fp32", "onnx-int8-dynamic"]
    assert m.budget["max_size_mb"] == 2.5 and m.budget["max_trials"] == 3

    trace = {e["candidate"]: e for e in m.search_trace}
    assert list(trace)[:2] == ["pytorch-fp32", "onnx-fp32"]
    for entry in m.search_trace:
        assert set(entry) == {"candidate", "recipe", "stage", "outcome", "reason", "seconds"}
    tried = [e for e in m.search_trace if e["candidate"] not in ("pytorch-fp32", "onnx-fp32")]
    assert sum(e["outcome"] != "skipped" for e in tried) == 3
    skipped = [e for e in tried if e["outcome"] == "skipped"]
    assert skipped and all("--max-trials 3" in e["reason"] for e in skipped)
    assert trace["onnx-int8-static"]["recipe"].startswith("export-onnx → int8-static")

    chosen = m.chosen_variant()
    assert chosen.name != "onnx-fp32"  # 4 MB fp32 graph breaks the 2.5 MB bound
    assert chosen.scores.file_bytes is not None and chosen.scores.file_bytes / 1e6 <= 2.5
    assert "onnx-fp32 (file" in m.chosen_reason and "--max-size-mb 2.5" in m.chosen_reason
    static = next(v for v in m.variants if v.name == "onnx-int8-static")
    assert "calibration split" in static.recipe[-1]["calibration_note"]


def test_interrupt_keeps_what_was_measured(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from kiln.optimize import build as build_mod

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod._BuildRun, "search", interrupted)
    out = tmp_path / "bundle"
    console = Console(record=True, width=200)
    build_mod.build(_opts(tiny_bert, out), console=console)
    m = load_bundle(out).manifest
    assert m.chosen == "onnx-fp32"
    assert "interrupted (Ctrl-C) during search" in m.chosen_reason
    assert "writing the bundle with the candidates measured so far" in console.export_text()
