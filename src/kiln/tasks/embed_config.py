"""The serving-side description of the ``embed`` task (pure data; no torch)."""

from __future__ import annotations

from pydantic import BaseModel

TASK_NAME = "embed"


class EmbedConfig(BaseModel):
    """How texts become embeddings: recorded in the manifest, read by the server."""

    max_length: int = 256
    dimension: int
    pooling: str = "mean"
    normalize: bool = True
    input_name: str = "text"
    output_name: str = "embedding"
