"""A model wrapper whose first ``embed`` is held until released, so later requests queue up behind it."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from kiln.serve.dataplane import TextModel


class Held:
    """Wraps a model; ``embed`` sets ``started``, then waits for ``release`` before the model answers.

    Set once, ``release`` lets every call through: only the first is really held.
    """

    def __init__(self, model: TextModel) -> None:
        self.model = model
        self.started = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.started.set()
        assert self.release.wait(10), "never released"
        return self.model.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.model.count_tokens(texts)
