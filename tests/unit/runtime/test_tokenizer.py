from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from kiln.errors import BundleError, InvalidInputError
from kiln.runtime.embedder import embed_in_batches
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
