"""Text to padded id arrays with the Hugging Face ``tokenizers`` library (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from kiln.errors import BundleError, InvalidInputError


class TextTokenizer:
    """Encodes a batch padded to its own longest member, truncated to ``max_length``.

    Fixed padding stored in a ``tokenizer.json`` (all-MiniLM pads every input to 128) is turned off:
    padding per batch is several times faster on short texts.
    """

    def __init__(self, path: Path, max_length: int) -> None:
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"cannot read tokenizer {path}: {exc}") from exc
        self.max_length = max_length
        pad = self._tok.padding
        pad_id = int(pad["pad_id"]) if pad else 0
        pad_token = str(pad["pad_token"]) if pad else "[PAD]"
        self._tok.no_padding()
        self._tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
        self._tok.enable_truncation(max_length=max_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Real (unpadded, truncated) token count of each text."""
        return [sum(e.attention_mask) for e in self._tok.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if not texts:
            raise InvalidInputError("no texts to encode")
        encs = self._tok.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        types = np.asarray([e.type_ids for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
