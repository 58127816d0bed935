"""Reference profiles for the monitor's tests: the tiny embed bundle with a profile, a tiny classify bundle
(the tiny graph at 2 dimensions read as logits) with a labelled profile, and texts to profile them on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from _fixtures.tiny_bundle import (
    TINY_WORDS,
    fixture_manifest,
    tiny_reference_embeddings,
    write_tiny_onnx,
    write_tiny_tokenizer,
)

CLASSES = ("neg", "pos")


def reference_texts(n: int = 300, seed: int = 0, min_words: int = 2, max_words: int = 8) -> list[str]:
    """Texts of ``min_words``..``max_words`` words from the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(TINY_WORDS, size=int(rng.integers(min_words, max_words + 1)))) for _ in range(n)
    ]


def token_counts(texts: list[str]) -> list[int]:
    return [len(t.split()) + 2 for t in texts]  # [CLS] ... [SEP]: what the tiny tokenizer counts


def embed_bundle_with_profile(tiny_bundle: Path, out: Path) -> Path:
    """A copy of the tiny embed bundle carrying ``profile.json`` (drawn from :func:`reference_texts`)."""
    from kiln.monitor.profile import make_reference_profile, save_profile

    root = Path(shutil.copytree(tiny_bundle, out))
    texts = reference_texts()
    profile = make_reference_profile(texts, token_counts(texts), tiny_reference_embeddings(texts), seed=0)
    save_profile(profile, root)
    return root


def classify_bundle_with_profile(out: Path) -> Path:
    """A tiny classify bundle (logits = the tiny graph's 2-d output) carrying a labelled profile."""
    from _fixtures.tiny_bundle import tiny_vocab
    from kiln.bundle.manifest import SourceRecord
    from kiln.bundle.write import write_bundle
    from kiln.monitor.profile import make_reference_profile, save_profile
    from kiln.tasks.classify_config import ClassifyConfig

    work = out.parent / f".{out.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tiny_tokenizer(work / "tokenizer.json")
    artifact = write_tiny_onnx(work / "model.onnx", len(tiny_vocab()), 2, seed=3)
    manifest = fixture_manifest(
        "tiny-classify",
        "classify",
        ClassifyConfig(max_length=16, labels=list(CLASSES)).model_dump(),
        SourceRecord(kind="local", spec=str(work), path=str(work)),
    )
    root = write_bundle(out, manifest, {"model.onnx": artifact, "tokenizer.json": tokenizer})
    texts = reference_texts(seed=1)
    scores = classify_scores(root, texts)
    labels = reference_labels(scores)
    profile = make_reference_profile(texts, token_counts(texts), None, labels=labels, scores=scores, seed=0)
    save_profile(profile, root)
    return root


def classify_scores(bundle: Path, texts: list[str]) -> np.ndarray:
    """The class probabilities the served tiny classifier gives ``texts``."""
    from kiln.bundle.load import load_bundle
    from kiln.serve.models import load_model

    _, model = load_model(load_bundle(bundle))
    return np.asarray(model.embed(texts))


def reference_labels(scores: np.ndarray, seed: int = 0, agree: float = 0.8) -> np.ndarray:
    """True labels that agree with the top class about ``agree`` of the time (and more when confident)."""
    rng = np.random.default_rng(seed)
    predicted = scores.argmax(axis=1)
    flip = rng.random(len(predicted)) > agree
    return np.where(flip, 1 - predicted, predicted)
