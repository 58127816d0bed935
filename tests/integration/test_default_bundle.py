"""The real default model through the real build: manifest, choice, parity with sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.bundle.load import load_bundle
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.tokenizer import TextTokenizer

pytestmark = pytest.mark.slow

TEXTS = [
    "A quiet triumph of a film.",
    "Two hours I will never get back; the plot collapses under its own weight and the jokes land nowhere.",
    "ok",
    "The cast is superb, the score is lovely, and the ending earns every tear it asks for.",
]


def test_manifest_records_every_variant_and_the_choice(default_bundle: Path) -> None:
    m = load_bundle(default_bundle).manifest
    names = [v.name for v in m.variants]
    assert names[:3] == ["pytorch-fp32", "onnx-fp32", "onnx-int8-dynamic"]
    assert m.task == "embed" and m.license == "apache-2.0"
    assert m.source.kind == "package" and m.source.revision
    chosen = m.chosen_variant()
    assert chosen.status == "ok" and chosen.format == "onnx" and chosen.file == "model.onnx"
    assert m.chosen_reason
    for v in m.variants:
        if v.status != "ok":
            assert v.reason, f"{v.name} rejected without a reason"
            continue
        q = v.scores.quality
        assert q is not None and q.metric == "probe_accuracy"
        assert q.drop_ci95[0] <= q.drop <= q.drop_ci95[1]
        assert 0.6 < q.value <= 1.0
        for key in ("batch1", "batch32"):
            lat = v.scores.latency[key]
            assert 0 < lat.p50_ms <= lat.p95_ms <= lat.p99_ms
        assert v.scores.peak_rss_mb and v.scores.peak_rss_mb > 50
        assert v.scores.file_bytes and v.scores.file_bytes > 1_000_000
    fp32 = next(v for v in m.variants if v.name == "onnx-fp32")
    assert all(c.max_abs_diff < 1e-4 for c in fp32.parity) and len(fp32.parity) >= 3
    # the recipe is recorded as data: export then quantization settings
    int8 = next(v for v in m.variants if v.name == "onnx-int8-dynamic")
    assert [r["kind"] for r in int8.recipe] == ["export-onnx", "int8-dynamic"]
    assert int8.recipe[1]["per_channel"] is True
    assert set(m.files) == {"model.onnx", "tokenizer.json", "README.md", "profile.json", "report.html"}


def test_bundle_report_is_the_rendered_manifest(default_bundle: Path) -> None:
    from kiln.report.html import render_report

    m = load_bundle(default_bundle).manifest
    html = (default_bundle / "report.html").read_text(encoding="utf-8")
    assert html == render_report(m.model_copy(update={"files": {}}))
    assert "<svg" in html and m.chosen in html


def test_model_card_shows_the_measured_table(default_bundle: Path) -> None:
    card = (default_bundle / "README.md").read_text()
    m = load_bundle(default_bundle).manifest
    assert "| variant |" in card and f"**{m.chosen}** (chosen)" in card
    assert m.chosen_reason in card


def test_reference_matches_sentence_transformers(default_bundle: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from kiln.tasks.embed_torch import TorchEmbedder

    m = load_bundle(default_bundle).manifest
    source = Path(m.source.path)
    st = SentenceTransformer(str(source), device="cpu")
    expected = st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    tok = TextTokenizer(default_bundle / "tokenizer.json", int(m.task_config["max_length"]))
    ours = TorchEmbedder(source, tok).embed(TEXTS)
    np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_served_artifact_agrees_with_sentence_transformers(default_bundle: Path) -> None:
    from sentence_transformers import SentenceTransformer

    b = load_bundle(default_bundle)
    st = SentenceTransformer(b.manifest.source.path, device="cpu")
    expected = st.encode(TEXTS, convert_to_numpy=True)
    emb = OnnxEmbedder(b.backend(), TextTokenizer(b.tokenizer_path, 256)).embed(TEXTS)
    assert emb.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = (emb * expected).sum(axis=1)
    # INT8 dynamic quantization scales activations per batch, padding included: very short texts
    # batched with long ones lose most (about 0.94 for "ok" here); the bars are on review-length text.
    assert cos.mean() > 0.97 and cos.min() > 0.9, cos


def test_bundle_carries_a_reference_profile_of_the_shipped_variant(default_bundle: Path) -> None:
    from kiln.monitor.profile import load_profile

    m = load_bundle(default_bundle).manifest
    profile = load_profile(default_bundle / "profile.json")
    assert m.evaluation is not None
    assert profile.embeddings is not None
    sample = profile.embeddings.sample_array()
    assert profile.embeddings.n == m.evaluation.n_test
    assert 0 < sample.shape[0] <= m.evaluation.n_test and sample.shape[1] == 384
    # embeddings of the shipped (normalised) variant
    assert abs(float(np.linalg.norm(sample.astype(np.float32), axis=1).mean()) - 1.0) < 1e-2
