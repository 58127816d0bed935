"""Texts in, L2-normalised sentence embeddings out, from an exported embedding graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tokenizers import Encoding

from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer

EncodedRunner = Callable[[dict[str, np.ndarray]], np.ndarray]
ChunkRunner = Callable[[np.ndarray], np.ndarray]
"""The rows of the items at these indices (one model call)."""


def in_length_order(
    lengths: Sequence[int],
    run_chunk: ChunkRunner,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run items in batches of similar length (less padding), shortest first; rows in input order.

    ``lengths``: each item's tokens; ``run_chunk(idx)`` returns the rows of the items at ``idx``.
    ``on_batch(n)`` is called after each batch with the number of items it held (progress display).
    """
    order = np.argsort(lengths, kind="stable")
    chunks: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunks.append(run_chunk(idx))
        if on_batch is not None:
            on_batch(len(idx))
    out = np.empty((len(lengths), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


def embed_in_batches(
    tokenizer: TextTokenizer,
    run: EncodedRunner,
    texts: Sequence[str],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed ``texts`` in batches of similar length (less padding), returned in input order.

    Uses only ``count_tokens`` and ``encode`` of ``tokenizer`` (an image preprocessor fits too).
    ``on_batch(n)`` is called after each batch with the number of texts it held (progress display).
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)

    def run_chunk(idx: np.ndarray) -> np.ndarray:
        return run(tokenizer.encode([texts[i] for i in idx]))

    return in_length_order(tokenizer.count_tokens(texts), run_chunk, batch_size, on_batch)


class OnnxEmbedder:
    """An ONNX graph whose single output is the pooled, normalised embedding."""

    def __init__(self, backend: OnnxBackend, tokenizer: TextTokenizer) -> None:
        self.backend = backend
        self.tokenizer = tokenizer

    def run_encoded(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.backend.run(feed)[0], dtype=np.float32)

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        return embed_in_batches(self.tokenizer, self.run_encoded, texts, batch_size, on_batch)

    def embed_encodings(self, encodings: Sequence[Encoding], batch_size: int = 32) -> np.ndarray:
        """Like :meth:`embed`, from texts already encoded by ``tokenizer.encodings`` (unpadded, at most
        ``max_length`` tokens each): the same batches, feeds and rows, without encoding them again."""
        if not encodings:
            return np.zeros((0, 0), dtype=np.float32)

        def run_chunk(idx: np.ndarray) -> np.ndarray:
            return self.run_encoded(self.tokenizer.feed([encodings[i] for i in idx]))

        return in_length_order([len(e) for e in encodings], run_chunk, batch_size)
