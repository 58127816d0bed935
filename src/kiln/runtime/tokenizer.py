"""Text to padded id arrays with the Hugging Face ``tokenizers`` library (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from kiln.errors import BundleError, InvalidInputError


class TextTokenizer:
    """Encodes a batch padded to its own longest member, truncated to ``max_length``.

    Fixed padding stored in a ``tokenizer.json`` (all-MiniLM pads every input to 128) is turned off:
    padding per batch is several times faster on short texts. Encoding is split in two steps,
    ``encodings`` (each text on its own, unpadded) then ``feed`` (one batch, padded), so that a caller
    which has already encoded a text (the server counts tokens first) does not encode it again.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"cannot read tokenizer {path}: {exc}") from exc
        self.max_length = max_length
        pad = self._tok.padding
        self.pad_id = int(pad["pad_id"]) if pad else 0
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    def encodings(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text's encoding, truncated to ``max_length``, unpadded (special tokens included)."""
        return self._tok.encode_batch(list(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Real (unpadded, truncated) token count of each text."""
        return [len(e) for e in self.encodings(texts)]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if not texts:
            raise InvalidInputError("no texts to encode")
        return self.feed(self.encodings(texts))

    def feed(self, encodings: Sequence[Encoding]) -> dict[str, np.ndarray]:
        """The model inputs of one batch of unpadded encodings, padded on the right to the longest:
        ``input_ids`` (``pad_id``), ``attention_mask`` and ``token_type_ids`` (0), all int64."""
        if not encodings:
            raise InvalidInputError("no texts to encode")
        ids = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        real = np.arange(int(lengths.max())) < lengths[:, None]
        return {
            "input_ids": _padded(ids, real, self.pad_id),
            "attention_mask": real.astype(np.int64),
            "token_type_ids": _padded([e.type_ids for e in encodings], real, 0),
        }


def _padded(rows: list[list[int]], real: np.ndarray, fill: int) -> np.ndarray:
    """``rows`` as one int64 array shaped like ``real``, each row left-aligned, ``fill`` after it."""
    out = np.full(real.shape, fill, dtype=np.int64)
    out[real] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(real.sum()))
    return out
