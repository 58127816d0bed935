"""Texts in, L2-normalised sentence embeddings out, from an exported embedding graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer

EncodedRunner = Callable[[dict[str, np.ndarray]], np.ndarray]


def embed_in_batches(
    tokenizer: TextTokenizer,
    run: EncodedRunner,
    texts: Sequence[str],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed ``texts`` in batches of similar length (less padding), returned in input order.

    ``on_batch(n)`` is called after each batch with the number of texts it held (progress display).
    """
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    lengths = tokenizer.count_tokens(texts)
    order = np.argsort(lengths, kind="stable")
    chunks: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunks.append(run(tokenizer.encode([texts[i] for i in idx])))
        if on_batch is not None:
            on_batch(len(idx))
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(chunks)
    return out


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
