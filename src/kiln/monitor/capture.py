"""What one request ran, noted for the request log while the request is served.

The request log's side of each protocol (``kiln.serve.monitoring`` for HTTP, ``kiln.serve.grpc.calls`` for
gRPC) opens a :class:`Capture` for each request in a context variable; the dataplane fills it in after each
inference (:meth:`Capture.note`, through :func:`current_capture` or :func:`note_inference`), with the
top label and its probability per text when the model is a classifier. Without an open capture
(monitoring off, direct library use) nothing is noted.
Only a sampled request's capture keeps the texts and outputs, by reference: the request log's writer
thread hashes and summarises them later, off the request's path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec

import numpy as np

P = ParamSpec("P")
_current: ContextVar[Capture | None] = ContextVar("kiln_monitor_capture", default=None)


@dataclass
class Capture:
    """The inferences of one request: counts always, inputs and outputs when ``sampled``."""

    sampled: bool = False
    model: str | None = None
    version: str | None = None
    n_inputs: int = 0
    n_tokens: int | None = None
    texts: list[str] = field(default_factory=list)
    tokens: list[int | None] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)

    def note(
        self,
        model: str,
        texts: Sequence[str],
        tokens: Sequence[int] | None = None,
        embeddings: np.ndarray | None = None,
        labels: Sequence[str] | None = None,
        scores: Sequence[float] | None = None,
        version: str | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.n_inputs += len(texts)
        if tokens is not None:
            self.n_tokens = (self.n_tokens or 0) + sum(tokens)
        if not self.sampled:
            return
        n = len(texts)
        self.texts.extend(texts)
        self.tokens.extend(tokens if tokens is not None else [None] * n)
        if embeddings is not None:
            self.embeddings.append(embeddings)
        self.labels.extend(labels if labels is not None else [None] * n)
        self.scores.extend(scores if scores is not None else [None] * n)


def open_capture(capture: Capture) -> Token[Capture | None]:
    """Make ``capture`` the current request's; pass the token to :func:`close_capture` when done."""
    return _current.set(capture)


def close_capture(token: Token[Capture | None]) -> None:
    _current.reset(token)


def current_capture() -> Capture | None:
    return _current.get()


def _on_current(method: Callable[Concatenate[Capture, P], None]) -> Callable[P, None]:
    """``method`` called on the current request's capture (a no-op when none is being captured)."""

    def call(*args: P.args, **kwargs: P.kwargs) -> None:
        capture = _current.get()
        if capture is not None:
            method(capture, *args, **kwargs)

    return call


note_inference = _on_current(Capture.note)
"""Note one inference for the request being served (:meth:`Capture.note`'s arguments; no-op when none is
being captured)."""
