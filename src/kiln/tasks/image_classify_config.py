"""The serving-side description of the ``image-classify`` task (pure data; no torch)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from kiln.runtime.image_preprocess import DEFAULT_INPUT_NAME, ImagePreprocess

TASK_NAME = "image-classify"


class ImageClassifyConfig(BaseModel):
    """How an image becomes a label: recorded in the manifest, read by the server.

    The server decodes the image to RGB, applies ``preprocess`` (:func:`kiln.runtime.image_preprocess.
    preprocess`), stacks a batch into ``input_name`` (``input_shape``, float32) and runs the graph, whose
    output ``output_name`` is logits ``[n, len(labels)]``; softmax and the top ``top_k`` classes follow,
    ``labels[k]`` naming logit ``k``.
    """

    input_name: str = DEFAULT_INPUT_NAME
    input_shape: list[int | str] = Field(default_factory=lambda: ImagePreprocess().input_shape())
    input_dtype: str = "float32"
    output_name: str = "logits"
    preprocess: ImagePreprocess = Field(default_factory=ImagePreprocess)
    labels: list[str] = Field(min_length=2)
    top_k: int = Field(default=5, ge=1)
    label_output: str = "label"
    scores_output: str = "scores"
