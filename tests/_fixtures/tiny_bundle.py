"""A real but tiny embed bundle, built in a temporary folder in well under a second.

The ONNX graph does what an exported sentence embedder does, at toy size: look up word and token-type
embeddings, mean-pool over the attention mask, L2-normalise. It takes the three int64 inputs
(``input_ids``, ``attention_mask``, ``token_type_ids``) and has one output, ``embedding`` [batch, dim].
The tokenizer is a ``tokenizers`` WordLevel model (lower-cased, whitespace pre-tokenizer) that wraps every
text in [CLS] ... [SEP], so a text of ``w`` words costs ``w + 2`` tokens.

``tiny_bundle`` is the bundle directory (a ``Path``); ``tiny_bundle_factory(...)`` builds more of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

TINY_MODEL_NAME = "tiny-embed"
TINY_DIM = 8
TINY_MAX_LENGTH = 16
TINY_WORDS = (  # noqa: SIM905 (a word list reads best as one string)
    "the a an is are was of to in on and or not with for from by at "
    "quick brown fox jumps over lazy dog cat sat mat hello world kiln serves embeddings fast small "
    "good bad movie film great terrible love hate"
).split()
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")

TinyBundleFactory = Callable[..., Path]


def tiny_vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *TINY_WORDS))}


def write_tiny_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = tiny_vocab()
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.enable_padding(pad_id=vocab["[PAD]"], pad_token="[PAD]")
    tok.save(str(path))
    return path


def tiny_tables(vocab_size: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The word and token-type embedding tables the graph is built from."""
    rng = np.random.default_rng(seed)
    words = rng.standard_normal((vocab_size, dim)).astype(np.float32)
    types = (0.1 * rng.standard_normal((2, dim))).astype(np.float32)
    return words, types


def tiny_reference_embeddings(
    texts: list[str], dim: int = TINY_DIM, max_length: int = TINY_MAX_LENGTH, seed: int = 0
) -> np.ndarray:
    """What the tiny model must return, computed in numpy (no ONNX Runtime, no kiln tokenizer wrapper)."""
    vocab = tiny_vocab()
    words, types = tiny_tables(len(vocab), dim, seed)
    rows = []
    for text in texts:
        ids = [vocab.get(w, vocab["[UNK]"]) for w in re.findall(r"\w+|[^\w\s]+", text.lower())]
        ids = [vocab["[CLS]"], *ids[: max_length - 2], vocab["[SEP]"]]
        mean = (words[ids] + types[0]).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.asarray(rows, dtype=np.float32)


def write_tiny_onnx(path: Path, vocab_size: int, dim: int, seed: int = 0) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    words, types = tiny_tables(vocab_size, dim, seed)
    dyn = ["batch", "seq"]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, dyn)
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])
    inits = [
        numpy_helper.from_array(words, "word_table"),
        numpy_helper.from_array(types, "type_table"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["word_table", "input_ids"], ["word_emb"]),
        helper.make_node("Gather", ["type_table", "token_type_ids"], ["type_emb"]),
        helper.make_node("Add", ["word_emb", "type_emb"], ["hidden"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
        helper.make_node("ReduceL2", ["mean", "axis1"], ["norm"], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
        helper.make_node("Div", ["mean", "norm_safe"], ["embedding"]),
    ]
    graph = helper.make_graph(nodes, "tiny_embed", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def fixture_manifest(
    model_name: str,
    task: str,
    task_config: dict[str, Any],
    source: Any,
    license: str = "apache-2.0",
    tokenizer: str = "tokenizer.json",
) -> Any:
    """The manifest of a one-variant test bundle (``model.onnx``, written without a build)."""
    from kiln import __version__
    from kiln.bench.scores import VariantRecord
    from kiln.bundle.manifest import Manifest

    return Manifest(
        kiln_version=__version__,
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).isoformat(),
        model_name=model_name,
        task=task,
        task_config=task_config,
        license=license,
        source=source,
        variants=[
            VariantRecord(name="onnx-fp32", format="onnx", recipe=[{"kind": "export"}], file="model.onnx")
        ],
        chosen="onnx-fp32",
        chosen_reason="the only variant (test fixture)",
        artifact="model.onnx",
        tokenizer=tokenizer,
    )


def build_tiny_bundle(
    out: Path,
    *,
    model_name: str = TINY_MODEL_NAME,
    dim: int = TINY_DIM,
    max_length: int = TINY_MAX_LENGTH,
    seed: int = 0,
    source_kind: Literal["local", "hub", "package"] = "local",
    source_spec: str | None = None,
) -> Path:
    """Write a complete, verifiable bundle to ``out`` (which must not exist or be empty)."""
    from kiln.bundle.manifest import SourceRecord
    from kiln.bundle.write import write_bundle
    from kiln.tasks.embed_config import EmbedConfig

    work = out.parent / f".{out.name}-src"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tiny_tokenizer(work / "tokenizer.json")
    artifact = write_tiny_onnx(work / "model.onnx", len(tiny_vocab()), dim, seed)
    manifest = fixture_manifest(
        model_name,
        "embed",
        EmbedConfig(max_length=max_length, dimension=dim).model_dump(),
        SourceRecord(kind=source_kind, spec=source_spec or str(work), path=str(work)),
    )
    return write_bundle(out, manifest, {"model.onnx": artifact, "tokenizer.json": tokenizer})


@pytest.fixture(scope="session")
def tiny_bundle_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyBundleFactory:
    """``factory(name="tiny", **options) -> Path``: a fresh tiny bundle in its own temporary folder.

    Options are those of :func:`build_tiny_bundle` (model_name, dim, max_length, seed, source_kind,
    source_spec).
    """

    def make(name: str = "tiny-bundle", **options: Any) -> Path:
        return build_tiny_bundle(tmp_path_factory.mktemp("tiny") / name, **options)

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tiny_bundle_factory: TinyBundleFactory) -> Path:
    """One tiny embed bundle for the whole session (treat it as read-only)."""
    return tiny_bundle_factory("tiny-embed-bundle")
