from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from kiln.errors import BundleError, InvalidInputError
from kiln.runtime.embedder import OnnxEmbedder, embed_in_batches
from kiln.runtime.tokenizer import TextTokenizer

VOCAB = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"])}


@pytest.fixture
def tok_path(tmp_path: Path) -> Path:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")  # fixed padding, as MiniLM ships it
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_fixed_padding_is_replaced_by_per_batch_padding(tok_path: Path) -> None:
    enc = TextTokenizer(tok_path, max_length=64).encode(["a b", "a"])
    assert enc["input_ids"].shape == (2, 4)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert enc["token_type_ids"].shape == (2, 4)


def test_truncation_and_counts(tok_path: Path) -> None:
    t = TextTokenizer(tok_path, max_length=5)
    assert t.encode(["a b c d a b c"])["input_ids"].shape == (1, 5)
    # counts ignore the padding a batch adds
    assert t.count_tokens(["a b c", "a"]) == [5, 3]


def test_empty_and_bad_inputs(tok_path: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        TextTokenizer(tok_path, 8).encode([])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BundleError, match="cannot read tokenizer"):
        TextTokenizer(bad, 8)


def test_batches_keep_input_order(tok_path: Path) -> None:
    t = TextTokenizer(tok_path, 32)
    texts = ["a b c d", "a", "b c", "d d d d d d", "c"]
    seen: list[int] = []
    out = embed_in_batches(
        t, lambda f: f["attention_mask"].sum(1, keepdims=True).astype(np.float32), texts, 2, seen.append
    )
    assert out[:, 0].tolist() == [6, 3, 4, 8, 3]
    assert sum(seen) == len(texts)


def reference_feed(path: Path, max_length: int, texts: list[str]) -> dict[str, np.ndarray]:
    """What ``tokenizers`` itself pads a batch to (per-batch padding, truncation)."""
    tok = Tokenizer.from_file(str(path))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=max_length)
    encs = tok.encode_batch(texts)
    return {
        "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
        "token_type_ids": np.asarray([e.type_ids for e in encs], dtype=np.int64),
    }


@pytest.mark.parametrize("single", ["[CLS] $A [SEP]", "[CLS]:1 $A:1 [SEP]:1"])
def test_feed_of_encodings_pads_as_the_tokenizer_does(tok_path: Path, single: str) -> None:
    tok = Tokenizer.from_file(str(tok_path))
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(tok_path))
    t = TextTokenizer(tok_path, max_length=6)
    texts = ["a b", "a", "a b c d a b c", "d d d", "c"]
    encodings = t.encodings(texts)
    assert [len(e) for e in encodings] == [4, 3, 6, 5, 3]  # unpadded, truncated
    expected = reference_feed(tok_path, 6, texts)
    for feed in (t.feed(encodings), t.encode(texts)):
        assert feed.keys() == expected.keys()
        for name, array in expected.items():
            assert feed[name].dtype == np.int64
            np.testing.assert_array_equal(feed[name], array)
    with pytest.raises(InvalidInputError):
        t.feed([])


class RecordingBackend:
    """Rows are [sum of ids, feed width]; records every feed."""

    input_names = ["input_ids", "attention_mask", "token_type_ids"]

    def __init__(self) -> None:
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(feed)
        ids = feed["input_ids"]
        return [np.stack([ids.sum(axis=1), np.full(len(ids), ids.shape[1])], axis=1)]


def test_embed_encodings_runs_the_feeds_embed_runs(tok_path: Path) -> None:
    t = TextTokenizer(tok_path, max_length=6)
    texts = ["a b c d", "a", "b c", "d d d d d d", "c", "a a", "b"]
    by_text, by_encoding = RecordingBackend(), RecordingBackend()
    from_texts = OnnxEmbedder(by_text, t)  # type: ignore[arg-type]
    from_encodings = OnnxEmbedder(by_encoding, t)  # type: ignore[arg-type]
    rows = from_texts.embed(texts, batch_size=3)
    again = from_encodings.embed_encodings(t.encodings(texts), batch_size=3)
    assert rows.tobytes() == again.tobytes()
    assert len(by_text.feeds) == len(by_encoding.feeds) == 3
    for feed, same in zip(by_text.feeds, by_encoding.feeds, strict=True):
        for name in feed:
            np.testing.assert_array_equal(feed[name], same[name])
    assert from_encodings.embed_encodings([]).shape == (0, 0)
