"""The search's structural candidates (distil, prune, low-rank → export → INT8 children) and accuracy
control triggered by the parity gate, on a tiny random classifier: real training runs, real exports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from _fixtures.classify_bundle import write_classify_csv
from kiln.bundle.load import load_bundle

pytestmark = pytest.mark.slow


def _build(model: Path, data: Path, out: Path, **kw: object):  # type: ignore[no-untyped-def]
    from rich.console import Console

    from kiln.optimize.build import BuildOptions, build

    opts = BuildOptions(
        model=str(model),
        task="classify",
        data=data,
        out=out,
        eval_samples=0,
        latency_seconds=0.1,
        measure_memory=False,
        **kw,
    )
    return build(opts, console=Console(width=200, force_terminal=False))


def test_structural_pipelines_train_export_and_quantize(tiny_classifier: Path, tmp_path: Path) -> None:
    data = write_classify_csv(tmp_path / "reviews.csv", n=160)
    frame = pd.read_csv(data)
    new = [f"an unlabelled sentence about film number {i}" for i in range(40)]
    # every labelled text is offered as unlabelled too: the build must drop the held-out and ranking ones
    unlabelled = tmp_path / "extra.csv"
    pd.DataFrame({"text": [*frame["text"], *new]}).to_csv(unlabelled, index=False)
    result = _build(
        tiny_classifier,
        data,
        tmp_path / "bundle",
        techniques=("distill", "prune", "low-rank"),
        unlabelled=unlabelled,
        train_seconds=2.0,
    )
    manifest = load_bundle(result.bundle_dir).manifest
    trace = {e["candidate"]: e for e in manifest.search_trace}
    variants = {v.name: v for v in manifest.variants}
    for name in ("distill-L1", "prune-30", "lowrank-0.9"):
        assert name in trace, trace.keys()
        assert trace[name]["outcome"] in ("kept", "rejected"), trace[name]
    distilled = variants["distill-L1"]
    step = distilled.recipe[0]
    assert step["kind"] == "distill" and step["num_layers"] == 1
    assert step["loss"]["kind"] == "kl"  # softened logits for a classifier
    before, after = (int(x.replace(",", "")) for x in step["parameters"].split(" → "))
    assert after < before
    # 16 calibration texts of 160 (10%) keep their labels; of the unlabelled file only the 40 new lines
    # are left once held-out, ranking and calibration texts are removed
    assert "16 calibration texts with labels + 40 unlabelled texts" in step["training_data"]
    assert [r["kind"] for r in distilled.recipe] == ["distill", "export-onnx"]
    pruned = variants["prune-30"]
    assert pruned.scores.file_bytes is not None
    assert pruned.scores.file_bytes < variants["onnx-fp32"].scores.file_bytes  # heads and neurons are gone
    child = trace["distill-L1-int8-dynamic"]
    if child["outcome"] == "skipped":  # only when the student was over budget on the ranking screen
        assert "distill-L1" in child["reason"], child
    else:
        kinds = [r["kind"] for r in variants["distill-L1-int8-dynamic"].recipe]
        assert kinds == ["distill", "export-onnx", "int8-dynamic"]
    assert "onnx-int8-dynamic" not in trace  # quantize was not among the techniques


def test_parity_failure_goes_to_accuracy_control(
    tiny_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.tasks.classify import ClassifyTask

    original = ClassifyTask.judge_lossy
    calls = {"n": 0}

    def first_lossy_fails(self, checks, reference, variant, split):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            return "parity gate (lossy): forced failure for the test"
        return original(self, checks, reference, variant, split)

    monkeypatch.setattr(ClassifyTask, "judge_lossy", first_lossy_fails)
    data = write_classify_csv(tmp_path / "reviews.csv", n=160)
    result = _build(tiny_classifier, data, tmp_path / "bundle", techniques=("quantize",), max_trials=2)
    manifest = load_bundle(result.bundle_dir).manifest
    trace = {e["candidate"]: e for e in manifest.search_trace}
    assert trace["onnx-int8-dynamic"]["outcome"] == "rejected"
    assert "forced failure" in trace["onnx-int8-dynamic"]["reason"]
    repaired = trace["onnx-int8-dynamic-ac"]
    assert repaired["outcome"] == "kept", repaired
    assert "nodes kept float" in repaired["recipe"]
    assert "accuracy control follows" in trace["onnx-int8-dynamic"]["reason"]
    variant = next(v for v in manifest.variants if v.name == "onnx-int8-dynamic-ac")
    assert variant.recipe[-1]["nodes_to_exclude"], variant.recipe[-1]
    assert variant.scores.quality is not None  # evaluated on the held-out split like any other
