import numpy as np
import pytest

from kiln.monitor.features import build_vocabulary, text_features, words


def test_character_mix_and_lengths() -> None:
    f = text_features(["Hello, World 42!", ""], token_counts=[5, 0])
    assert f["n_chars"].tolist() == [16, 0]
    assert f["n_words"].tolist() == [3, 0]
    assert f["n_tokens"].tolist() == [5, 0]
    assert f["digit_frac"][0] == pytest.approx(2 / 16)
    assert f["upper_frac"][0] == pytest.approx(2 / 16)
    assert f["punct_frac"][0] == pytest.approx(2 / 16)
    assert f["mean_word_chars"][0] == pytest.approx((5 + 5 + 2) / 3)
    assert f["script"].tolist() == ["latin", "none"]
    assert "oov_rate" not in f


def test_script_is_told_by_code_points() -> None:
    f = text_features(["Привет мир", "日本語のテキスト", "مرحبا بالعالم", "Ça va très bien"])
    assert f["script"].tolist() == ["greek_cyrillic", "cjk", "hebrew_arabic", "latin"]
    assert f["non_ascii_frac"][0] > 0.8
    assert f["non_ascii_frac"][3] == pytest.approx(2 / 15)


def test_oov_rate_against_a_vocabulary() -> None:
    vocab = build_vocabulary(["the cat sat", "the cat ran", "a dog"], min_count=2)
    assert vocab == ["the", "cat"]
    f = text_features(["The cat flew", "dog"], vocabulary=vocab)
    assert f["oov_rate"].tolist() == pytest.approx([1 / 3, 1.0])


def test_token_counts_must_match() -> None:
    with pytest.raises(ValueError, match="one per text"):
        text_features(["a", "b"], token_counts=np.array([1]))


def test_words_are_lowercased_unicode_runs() -> None:
    assert words("Don't STOP—ünïcode") == ["don", "t", "stop", "ünïcode"]
