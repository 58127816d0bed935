from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest
from tokenizers import Encoding, Tokenizer

from _fixtures.tiny_bundle import TINY_DIM, TINY_MAX_LENGTH, tiny_reference_embeddings
from kiln.bundle.load import Bundle, load_bundle
from kiln.errors import BundleError, InvalidInputError, TaskError
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.tokenizer import TextTokenizer
from kiln.serve.batching import BatchConfig, Prepared
from kiln.serve.dataplane import DataPlane, Inference, Limits, ModelInfo
from kiln.serve.models import (
    ClassifyModel,
    EmbedModel,
    TokenizedText,
    UntruncatedCounter,
    aliases,
    created_timestamp,
    embed_config,
    load_embed_model,
)

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


# -- served through the batcher: each text is tokenized once, rows as ``model.embed`` gives them ----------
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "a", "cat", "sat", "on", "mat")
TOO_LONG = " ".join(["fox"] * 20)  # 22 tokens; the tiny model reads 16
Served = EmbedModel | ClassifyModel


def mixed_texts(n: int, seed: int) -> list[str]:
    """``n`` texts of 2 to 14 words (4 to 16 tokens): a number (distinct for every ``i`` and ``seed``),
    then random words."""
    rng = np.random.default_rng(seed)
    return [
        " ".join([str(1000 * seed + i), *rng.choice(WORDS, size=int(rng.integers(1, 14)))]) for i in range(n)
    ]


class CountingTokenizer:
    """Wraps a ``tokenizers.Tokenizer``: counts how often each text is encoded."""

    def __init__(self, tok: Tokenizer, seen: Counter[str]) -> None:
        self.tok = tok
        self.seen = seen

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        self.seen.update(texts)
        return self.tok.encode_batch(texts)


def count_encodings(model: Served) -> Counter[str]:
    """From now on, count the texts ``model``'s tokenizers encode (truncating and untruncated)."""
    seen: Counter[str] = Counter()
    tokenizer = model.tokens.tokenizer
    tokenizer._tok = CountingTokenizer(tokenizer._tok, seen)  # type: ignore[assignment]
    untruncated = model.tokens._untruncated
    if untruncated is not None:
        untruncated._tok = CountingTokenizer(untruncated._tok, seen)  # type: ignore[assignment]
    return seen


class RecordingModel:
    """Serves ``model`` (``tokenize`` / ``embed_tokenized`` included); records each batch's texts."""

    def __init__(self, model: Served) -> None:
        self.model = model
        self.batches: list[list[str]] = []

    @property
    def counts_untruncated(self) -> bool:
        return self.model.counts_untruncated

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.model.count_tokens(texts)

    def tokenize(self, texts: Sequence[str]) -> Prepared[TokenizedText]:
        return self.model.tokenize(texts)

    def embed_tokenized(self, items: Sequence[TokenizedText]) -> np.ndarray:
        self.batches.append([item.text for item in items])
        return self.model.embed_tokenized(items)


class Plain:
    """Only ``embed`` and ``count_tokens`` of ``model``, recording which were called."""

    def __init__(self, model: Served) -> None:
        self.model = model
        self.calls: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append("embed")
        return self.model.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        self.calls.append("count_tokens")
        return self.model.count_tokens(texts)


def served_model(bundle: Bundle, kind: str, overflow: str) -> Served:
    """The tiny bundle as an embed model, or as a classifier with one class per dimension."""
    if kind == "embed":
        return load_embed_model(bundle, threads=1, text_overflow=overflow)[1]
    embedder = OnnxEmbedder(bundle.backend(1), TextTokenizer(bundle.tokenizer_path, TINY_MAX_LENGTH))
    untruncated = UntruncatedCounter(bundle.tokenizer_path) if overflow == "reject" else None
    return ClassifyModel(embedder, [f"c{k}" for k in range(TINY_DIM)], untruncated)


def serve(
    info: ModelInfo, model: object, requests: list[list[str]], overflow: str = "truncate"
) -> list[Inference | InvalidInputError]:
    """Send ``requests`` at once through a dataplane (batches of up to 64 texts); each one's answer."""
    dp = DataPlane(Limits(text_overflow=overflow), batching=BatchConfig(max_batch_size=64))
    dp.add(info, model)  # type: ignore[arg-type]
    answers: list[Inference | InvalidInputError] = [InvalidInputError("not answered")] * len(requests)

    async def send(i: int) -> None:
        try:
            answers[i] = await dp.ainfer(info.name, requests[i], with_tokens=True)
        except InvalidInputError as exc:
            answers[i] = exc

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(send, i)

    try:
        anyio.run(main)
    finally:
        dp.stop()
    return answers


def rows_as_embedded(model: Served, batches: list[list[str]]) -> dict[str, np.ndarray]:
    """Each served text's row as ``model.embed`` gives it for the batch the text was served in."""
    rows: dict[str, np.ndarray] = {}
    for texts in batches:
        rows.update(zip(texts, model.embed(texts), strict=True))
    return rows


def embed_info(bundle: Bundle) -> ModelInfo:
    return load_embed_model(bundle, threads=1)[0]


@pytest.mark.parametrize("kind", ["embed", "classify"])
@pytest.mark.parametrize("overflow", ["truncate", "reject"])
def test_served_rows_are_model_embed_rows_and_each_text_is_tokenized_once(
    tiny_bundle: Path, kind: str, overflow: str
) -> None:
    bundle = load_bundle(tiny_bundle)
    model = served_model(bundle, kind, overflow)
    recorder = RecordingModel(model)
    requests = [mixed_texts(40, seed=1), *(mixed_texts(3, seed=s) for s in range(2, 7))]
    if overflow == "truncate":
        requests[1].append(TOO_LONG)  # served cut to 16 tokens
    seen = count_encodings(model)
    answers = serve(embed_info(bundle), recorder, requests, overflow)
    assert seen == Counter(t for texts in requests for t in texts)  # once each, counting included
    expected = rows_as_embedded(model, recorder.batches)
    assert any(len(texts) > 32 for texts in recorder.batches)  # embed's own 32-text chunks too
    for texts, answer in zip(requests, answers, strict=True):
        assert isinstance(answer, Inference)
        assert answer.embeddings.tobytes() == np.stack([expected[t] for t in texts]).tobytes()
        assert answer.prompt_tokens == sum(model.count_tokens(texts))


@pytest.mark.parametrize("kind", ["embed", "classify"])
def test_reject_refuses_over_long_texts_from_the_single_count(tiny_bundle: Path, kind: str) -> None:
    bundle = load_bundle(tiny_bundle)
    model = served_model(bundle, kind, "reject")
    recorder = RecordingModel(model)
    seen = count_encodings(model)
    fits = mixed_texts(5, seed=3)
    refused, served = serve(embed_info(bundle), recorder, [["hello", TOO_LONG], fits], "reject")
    assert isinstance(refused, InvalidInputError)
    assert str(refused).startswith(
        f"text 1 has 22 tokens; model 'tiny-embed' reads at most {TINY_MAX_LENGTH}"
    )
    assert isinstance(served, Inference)
    assert seen == Counter(["hello", TOO_LONG, *fits])
    assert recorder.batches == [fits]
    assert served.embeddings.tobytes() == model.embed(fits).tobytes()


def test_a_text_counted_whole_but_not_refused_is_cut_like_embed_cuts_it(tiny_bundle: Path) -> None:
    """A model that counts before truncation, served with text_overflow="truncate": an over-long text is
    encoded again, truncated (only it), and reads as ``embed`` reads it."""
    bundle = load_bundle(tiny_bundle)
    model = served_model(bundle, "embed", "reject")
    recorder = RecordingModel(model)
    seen = count_encodings(model)
    texts = ["hello world", TOO_LONG, "the lazy dog"]
    (answer,) = serve(embed_info(bundle), recorder, [texts], "truncate")
    assert seen == Counter([*texts, TOO_LONG])  # only the over-long text twice
    assert isinstance(answer, Inference)
    assert recorder.batches == [["hello world", "the lazy dog"], [TOO_LONG]]  # 16 and 32 token buckets
    expected = rows_as_embedded(model, recorder.batches)
    assert answer.embeddings.tobytes() == np.stack([expected[t] for t in texts]).tobytes()
    assert answer.prompt_tokens == 4 + 22 + 5  # counted whole


def test_models_that_do_not_tokenize_once_are_served_as_before(tiny_bundle: Path) -> None:
    """A text model without ``tokenize`` is counted with ``count_tokens`` and run with ``embed``."""
    bundle = load_bundle(tiny_bundle)
    model = served_model(bundle, "embed", "truncate")
    plain = Plain(model)
    seen = count_encodings(model)
    texts = mixed_texts(6, seed=4)
    (answer,) = serve(embed_info(bundle), plain, [texts])
    assert isinstance(answer, Inference)
    assert plain.calls == ["count_tokens", "embed"]
    assert seen == Counter(texts * 3)  # count_tokens, then embed's own count and encode
    assert answer.embeddings.tobytes() == model.embed(texts).tobytes()
