from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from kiln.bench.parity import DEFAULT_SHAPES, check_parity, judge_parity, parity_inputs
from kiln.runtime.tokenizer import TextTokenizer

WORDS = ["[PAD]", "[UNK]", "the", "film", "is", "good", "bad", "very", "a", "plot"]


@pytest.fixture
def tokenizer(tmp_path: Path) -> TextTokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return TextTokenizer(path, max_length=256)


def _pool(feed: dict[str, np.ndarray]) -> np.ndarray:
    table = np.random.default_rng(0).normal(size=(len(WORDS), 6)).astype(np.float32)
    h = table[feed["input_ids"]] * feed["attention_mask"][..., None]
    e = h.sum(1) / feed["attention_mask"].sum(1, keepdims=True)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


TEXTS = ["the film is good", "a very bad plot", "good", "the plot is very very good film"]


def test_inputs_have_the_requested_shapes(tokenizer: TextTokenizer) -> None:
    feeds = parity_inputs(tokenizer, TEXTS)
    assert [f["input_ids"].shape for f in feeds] == list(DEFAULT_SHAPES)
    for f in feeds:
        assert f["attention_mask"][:, 0].all()
    # mixed lengths inside a batch: padding differs between rows somewhere
    assert any(len(set(f["attention_mask"].sum(1).tolist())) > 1 for f in feeds)


def test_identical_runner_passes_exact(tokenizer: TextTokenizer) -> None:
    checks = check_parity(_pool, _pool, parity_inputs(tokenizer, TEXTS))
    assert all(c.max_abs_diff == 0.0 for c in checks)
    assert judge_parity(checks, "exact") is None


def test_small_noise_passes_lossy_but_not_exact(tokenizer: TextTokenizer) -> None:
    rng = np.random.default_rng(1)
    noisy = lambda f: _pool(f) + rng.normal(scale=1e-2, size=_pool(f).shape).astype(np.float32)  # noqa: E731
    checks = check_parity(_pool, noisy, parity_inputs(tokenizer, TEXTS))
    assert judge_parity(checks, "lossy") is None
    reason = judge_parity(checks, "exact")
    assert reason is not None and "parity gate (exact)" in reason


def test_broken_variant_is_rejected(tokenizer: TextTokenizer) -> None:
    flipped = lambda f: -_pool(f)  # noqa: E731
    reason = judge_parity(check_parity(_pool, flipped, parity_inputs(tokenizer, TEXTS)), "lossy")
    assert reason is not None and "min cosine -1.0000" in reason


def test_shape_mismatch_is_rejected(tokenizer: TextTokenizer) -> None:
    wrong = lambda f: _pool(f)[:, :3]  # noqa: E731
    checks = check_parity(_pool, wrong, parity_inputs(tokenizer, TEXTS))
    assert judge_parity(checks, "lossy") is not None


def _logits(feed: dict[str, np.ndarray]) -> np.ndarray:
    """Two-class logits: the first row sits on the decision boundary, the others are confident."""
    margin = np.linspace(0.02, 4.0, feed["input_ids"].shape[0]).astype(np.float32)
    return np.stack([margin / 2, -margin / 2], axis=1)


def test_logits_carry_the_largest_probability_shift(tokenizer: TextTokenizer) -> None:
    nudged = lambda f: _logits(f) + np.float32([0.05, 0.0])  # noqa: E731  (class 0 up a little)
    checks = check_parity(_logits, nudged, parity_inputs(tokenizer, TEXTS))
    assert all(c.max_prob_shift is not None and 0 < c.max_prob_shift < 0.02 for c in checks)
    embeddings = check_parity(_pool, _pool, parity_inputs(tokenizer, TEXTS))
    assert all(c.max_prob_shift is not None for c in embeddings)  # any rows x columns output gets one


def test_a_boundary_row_flips_its_angle_but_barely_its_probabilities(tokenizer: TextTokenizer) -> None:
    def tilted(feed: dict[str, np.ndarray]) -> np.ndarray:
        out = _logits(feed).copy()
        out[0] = [-0.02, 0.02]  # the boundary row: the sign flips, the decision was a coin toss anyway
        return out

    feeds = [f for f in parity_inputs(tokenizer, TEXTS) if f["input_ids"].shape[0] > 1]
    checks = check_parity(_logits, tilted, feeds)
    assert min(c.min_cosine for c in checks) < 0  # what the old logit-cosine gate turned away
    assert max(c.max_prob_shift or 1.0 for c in checks) < 0.02
