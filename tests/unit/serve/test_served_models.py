from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _fixtures.tiny_bundle import TINY_DIM, TINY_MAX_LENGTH, tiny_reference_embeddings
from kiln.bundle.load import Bundle, load_bundle
from kiln.errors import BundleError, TaskError
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.tokenizer import TextTokenizer
from kiln.serve.models import aliases, created_timestamp, embed_config, load_embed_model

TEXTS = ["The quick brown fox", "hello world", "kiln serves small fast embeddings to the world", "zebra"]


def with_config(bundle: Bundle, **update: object) -> Bundle:
    manifest = bundle.manifest.model_copy(update=update)
    return Bundle(root=bundle.root, manifest=manifest)


def test_load_embed_model_describes_the_model(tiny_bundle: Path) -> None:
    info, _ = load_embed_model(load_bundle(tiny_bundle))
    assert info.name == "tiny-embed"
    assert info.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [("text", "BYTES", (-1,))]
    assert [(t.name, t.datatype, t.shape) for t in info.outputs] == [("embedding", "FP32", (-1, TINY_DIM))]
    assert info.dimension == TINY_DIM and info.max_length == TINY_MAX_LENGTH
    assert info.aliases == frozenset({tiny_bundle.name})
    assert info.variant == "onnx-fp32"
    assert info.created == 1704164645  # 2024-01-02T03:04:05Z


def test_embeddings_match_the_runtime_and_a_numpy_reference(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    _, model = load_embed_model(bundle)
    out = model.embed(TEXTS)
    direct = OnnxEmbedder(bundle.backend(), TextTokenizer(bundle.tokenizer_path, TINY_MAX_LENGTH))
    np.testing.assert_allclose(out, direct.embed(TEXTS), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, tiny_reference_embeddings(TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_token_counts_exclude_padding_and_include_specials(tiny_bundle: Path) -> None:
    _, model = load_embed_model(load_bundle(tiny_bundle))
    assert model.count_tokens(["hello", "the quick brown fox", "a " * 40]) == [3, 6, TINY_MAX_LENGTH]


def test_hub_source_spec_is_an_alias(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    source = bundle.manifest.source.model_copy(update={"kind": "hub", "spec": "org/tiny-embed"})
    assert aliases(with_config(bundle, source=source)) == {"org/tiny-embed", tiny_bundle.name}


def test_other_tasks_are_refused(tiny_bundle: Path) -> None:
    with pytest.raises(TaskError, match="'classify' task"):
        embed_config(with_config(load_bundle(tiny_bundle), task="classify"))


def test_invalid_task_config_is_a_bundle_error(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="invalid embed task_config"):
        embed_config(with_config(load_bundle(tiny_bundle), task_config={"max_length": 8}))


def test_a_dimension_the_graph_does_not_produce_is_refused(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    config = {**bundle.manifest.task_config, "dimension": TINY_DIM * 2}
    with pytest.raises(BundleError, match=f"shape \\(1, {TINY_DIM}\\).*dimension is {TINY_DIM * 2}"):
        load_embed_model(with_config(bundle, task_config=config))


def test_created_timestamp() -> None:
    assert created_timestamp("1970-01-01T00:01:00+00:00") == 60
    assert created_timestamp("yesterday") == 0
