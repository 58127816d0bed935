"""The serving-side description of the ``classify`` task (pure data; no torch)."""

from __future__ import annotations

from pydantic import BaseModel, Field

TASK_NAME = "classify"


class ClassifyConfig(BaseModel):
    """How texts become labels: recorded in the manifest, read by the server.

    The exported graph returns logits ``[n, len(labels)]``; the server applies softmax and names the top
    class, so ``labels[k]`` is the name of logit ``k`` (the model's ``config.id2label``).
    """

    max_length: int = 256
    labels: list[str] = Field(min_length=2)
    input_name: str = "text"
    label_output: str = "label"
    scores_output: str = "scores"
