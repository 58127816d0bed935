"""Language-agnostic input features of texts, one number (or category) per text, numpy only.

Every feature is computed the same way for the reference (at build time) and for live windows, so their
distributions can be compared. Character classes come from the code points (UTF-32), not from a language
model; words are ``\\w+`` runs, lower-cased. ``oov_rate`` needs a vocabulary taken from *other* texts than
the ones it scores (the profile builds it from one half of the reference and scores the other half).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)

NUMERIC_FEATURES = (
    "n_chars",
    "n_words",
    "n_tokens",
    "mean_word_chars",
    "digit_frac",
    "upper_frac",
    "punct_frac",
    "non_ascii_frac",
    "oov_rate",
)
CATEGORICAL_FEATURES = ("script",)
SCRIPTS = ("none", "latin", "greek_cyrillic", "hebrew_arabic", "indic", "cjk", "other")

# (first, last) code point of each script family; "latin" also takes ASCII letters and Latin extensions
_SCRIPT_RANGES = (
    ("latin", 0x41, 0x24F),
    ("greek_cyrillic", 0x370, 0x52F),
    ("hebrew_arabic", 0x590, 0x6FF),
    ("indic", 0x900, 0xDFF),
    ("cjk", 0x3040, 0x9FFF),
    ("cjk", 0xAC00, 0xD7AF),
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_vocabulary(texts: Iterable[str], max_words: int = 20_000, min_count: int = 2) -> list[str]:
    """The ``max_words`` most frequent words seen at least ``min_count`` times, most frequent first."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    common = [(w, c) for w, c in counts.most_common(max_words) if c >= min_count]
    return [w for w, _ in common]


def _script(letters: np.ndarray) -> str:
    if letters.size == 0:
        return "none"
    votes = np.zeros(len(SCRIPTS), dtype=np.int64)
    assigned = np.zeros(letters.size, dtype=bool)
    for name, lo, hi in _SCRIPT_RANGES:
        inside = (letters >= lo) & (letters <= hi)
        votes[SCRIPTS.index(name)] += int(inside.sum())
        assigned |= inside
    votes[SCRIPTS.index("other")] += int((~assigned).sum())
    return SCRIPTS[int(np.argmax(votes))]


def text_features(
    texts: Sequence[str],
    token_counts: Sequence[int] | np.ndarray | None = None,
    vocabulary: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per-text features: numeric ones as float64 arrays, ``script`` as an array of script names.

    ``token_counts`` (the model tokenizer's counts) fills ``n_tokens``; ``vocabulary`` fills ``oov_rate``
    (share of a text's words outside it). A feature whose input is missing is left out.
    """
    n = len(texts)
    vocab = frozenset(vocabulary) if vocabulary is not None else None
    out = {name: np.zeros(n, dtype=np.float64) for name in NUMERIC_FEATURES}
    script = np.empty(n, dtype=object)
    for i, text in enumerate(texts):
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        n_chars = cps.size
        ws = words(text)
        out["n_chars"][i] = n_chars
        out["n_words"][i] = len(ws)
        out["mean_word_chars"][i] = sum(map(len, ws)) / len(ws) if ws else 0.0
        if vocab is not None and ws:
            out["oov_rate"][i] = sum(w not in vocab for w in ws) / len(ws)
        if n_chars:
            digits = (cps >= 0x30) & (cps <= 0x39)
            upper = (cps >= 0x41) & (cps <= 0x5A)
            lower = (cps >= 0x61) & (cps <= 0x7A)
            space = (cps == 0x20) | ((cps >= 0x09) & (cps <= 0x0D))
            non_ascii = cps > 0x7F
            ascii_punct = ~(digits | upper | lower | space | non_ascii) & (cps > 0x20)
            out["digit_frac"][i] = digits.mean()
            out["upper_frac"][i] = upper.mean()
            out["punct_frac"][i] = ascii_punct.mean()
            out["non_ascii_frac"][i] = non_ascii.mean()
            letters = cps[upper | lower | (non_ascii & (cps >= 0xC0))]
        else:
            letters = cps
        script[i] = _script(letters)
    if token_counts is None:
        del out["n_tokens"]
    else:
        counts = np.asarray(token_counts, dtype=np.float64)
        if counts.shape != (n,):
            raise ValueError(f"token_counts has shape {counts.shape}; expected ({n},), one per text")
        out["n_tokens"] = counts
    if vocab is None:
        del out["oov_rate"]
    features: dict[str, np.ndarray] = dict(out)
    features["script"] = script.astype(str)
    return features
