"""A verified bundle becomes a served model: ONNX Runtime + tokenizers, never torch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
from pydantic import ValidationError

from kiln.bundle.load import Bundle
from kiln.errors import BundleError, TaskError
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.tasks.embed_config import TASK_NAME, EmbedConfig

WARMUP_TEXT = "kiln warm-up"


class EmbedModel:
    """An ``OnnxEmbedder`` with the token counter the OpenAI ``usage`` field needs."""

    def __init__(self, embedder: OnnxEmbedder) -> None:
        self.embedder = embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation, special tokens included, padding excluded."""
        mask = self.embedder.tokenizer.encode(texts)["attention_mask"]
        return [int(n) for n in mask.sum(axis=1)]


def embed_config(bundle: Bundle) -> EmbedConfig:
    manifest = bundle.manifest
    if manifest.task != TASK_NAME:
        raise TaskError(
            f"bundle {bundle.root} is for the {manifest.task!r} task; "
            f"`kiln serve` serves {TASK_NAME!r} bundles"
        )
    try:
        return EmbedConfig.model_validate(manifest.task_config)
    except ValidationError as exc:
        raise BundleError(f"bundle {bundle.root} has an invalid embed task_config: {exc}") from exc


def aliases(bundle: Bundle) -> frozenset[str]:
    """Other names clients may use: the bundle folder's name and, for hub models, the hub id."""
    names = {bundle.root.resolve().name}
    source = bundle.manifest.source
    if source.kind in ("hub", "package"):
        names.add(source.spec)
    names.discard(bundle.manifest.model_name)
    return frozenset(n for n in names if n)


def created_timestamp(created_at: str) -> int:
    """The manifest's ISO ``created_at`` as Unix seconds (0 when it cannot be read)."""
    try:
        return int(datetime.fromisoformat(created_at).timestamp())
    except (TypeError, ValueError):
        return 0


def load_embed_model(bundle: Bundle, threads: int = 0) -> tuple[ModelInfo, EmbedModel]:
    """Open the bundle's artifact and tokenizer, run one warm-up batch and check its shape."""
    config = embed_config(bundle)
    backend = OnnxBackend(bundle.artifact_path, threads=threads)
    tokenizer = TextTokenizer(bundle.tokenizer_path, max_length=config.max_length)
    model = EmbedModel(OnnxEmbedder(backend, tokenizer))
    out = model.embed([WARMUP_TEXT])
    if out.shape != (1, config.dimension):
        raise BundleError(
            f"bundle {bundle.root}: the model returns shape {tuple(out.shape)} for one text, "
            f"but the manifest says the embedding dimension is {config.dimension}; rebuild the bundle"
        )
    info = ModelInfo(
        name=bundle.manifest.model_name,
        inputs=(TensorSpec(config.input_name, "BYTES", (-1,)),),
        outputs=(TensorSpec(config.output_name, "FP32", (-1, config.dimension)),),
        aliases=aliases(bundle),
        task=TASK_NAME,
        max_length=config.max_length,
        variant=bundle.manifest.chosen,
        created=created_timestamp(bundle.manifest.created_at),
    )
    return info, model
