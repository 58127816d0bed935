"""What the tasks' PyTorch references share: loading a Hugging Face folder and running it (build only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.errors import TaskError
from kiln.runtime.embedder import embed_in_batches
from kiln.runtime.tokenizer import TextTokenizer

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def quiet_transformers() -> None:
    """Turn off transformers' download/loading progress bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_hf_model(auto_class: Any, model_dir: Path, threads: int, what: str) -> torch.nn.Module:
    """``auto_class.from_pretrained(model_dir)`` in fp32 on ``threads`` threads (0: torch's default);
    a folder transformers cannot load raises :class:`TaskError` naming ``what`` it was loaded as."""
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        model: torch.nn.Module = auto_class.from_pretrained(model_dir, dtype=torch.float32)
    except Exception as exc:  # transformers raises many unrelated types for unreadable folders
        raise TaskError(f"transformers cannot load {model_dir} as {what}: {exc}") from exc
    return model


class TorchRunner:
    """A PyTorch reference: ``module`` called positionally with :data:`INPUT_NAMES`, float rows out."""

    module: torch.nn.Module
    tokenizer: TextTokenizer

    def run_encoded(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES))
        return out.numpy().astype(np.float32, copy=False)

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Rows of ``texts`` (embeddings, or logits for a classifier: the runner protocol's name)."""
        return embed_in_batches(self.tokenizer, self.run_encoded, texts, batch_size, on_batch)
