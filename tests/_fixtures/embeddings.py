"""What a server must answer: a bundle's own ONNX model and tokenizer run in process, with no server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kiln.bundle.load import load_bundle
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.tokenizer import TextTokenizer


def bundle_embeddings(bundle_dir: Path, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
    """``texts`` embedded by the bundle in ``bundle_dir``, as one batch.

    ``max_length``: the tokenizer's; ``None`` takes the manifest's ``task_config["max_length"]``.
    """
    bundle = load_bundle(bundle_dir)
    if max_length is None:
        max_length = int(bundle.manifest.task_config["max_length"])
    tokenizer = TextTokenizer(bundle.tokenizer_path, max_length)
    return OnnxEmbedder(bundle.backend(), tokenizer).embed(texts)  # the settings the server uses
