"""One protocol-agnostic dataplane: the loaded models, their metadata, readiness, limits and inference.

Protocol adapters (``v2_rest``, ``openai_routes``) turn requests into plain Python values, call the
dataplane and encode its answers; nothing here knows about HTTP. ``ainfer`` queues a request's texts with
the model's ``TextBatcher`` (batching.py): texts of concurrent requests run together, in length buckets,
on the model's own worker thread, so the event loop (and with it the health probes) stays responsive.
One model call runs at a time in the whole dataplane: ONNX Runtime already uses every core per call.
``start()`` / ``stop()`` start and stop the worker threads (the app's lifespan calls them; ``ainfer``
also starts a worker that is not running).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kiln.errors import InvalidInputError, PayloadTooLargeError, UnknownModelError
from kiln.serve.batching import BatchConfig, TextBatcher
from kiln.settings import Settings

DEFAULT_VERSION = "1"


class TextModel(Protocol):
    """What the dataplane needs from a loaded model."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output; ``-1`` in ``shape`` means any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """Everything a protocol needs to describe a served model."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = "onnxruntime_onnx"
    versions: tuple[str, ...] = (DEFAULT_VERSION,)
    aliases: frozenset[str] = frozenset()
    task: str = "embed"
    max_length: int | None = None
    variant: str | None = None
    created: int = 0
    """Unix time the model was built (OpenAI's ``created``); 0 when unknown."""

    @property
    def dimension(self) -> int:
        return self.outputs[0].shape[-1]


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for."""

    max_batch_items: int = 256
    max_text_chars: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(max_batch_items=settings.max_batch_items, max_text_chars=settings.max_text_chars)


@dataclass(frozen=True)
class Inference:
    """Embeddings ``[n, dim]`` float32 in input order, and the tokens they cost when asked for."""

    embeddings: np.ndarray
    prompt_tokens: int | None = None


InferenceObserver = Callable[[str, int, float], None]
"""Called after each model call (one batch) with (model name, number of texts, seconds)."""
QueueDepthObserver = Callable[[str, int], None]
"""Called with (model name, texts waiting) whenever a model's queue depth changes."""


class _Served:
    """A model with its metadata and its batcher."""

    def __init__(self, info: ModelInfo, model: TextModel, batcher: TextBatcher) -> None:
        self.info = info
        self.model = model
        self.batcher = batcher


class DataPlane:
    def __init__(
        self,
        limits: Limits | None = None,
        observer: InferenceObserver | None = None,
        batching: BatchConfig | None = None,
        queue_observer: QueueDepthObserver | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.batching = batching or BatchConfig()
        self._observer = observer
        self._queue_observer = queue_observer
        self._models: dict[str, _Served] = {}
        self._names: dict[str, str] = {}
        self._draining = False
        self._compute = threading.Lock()  # one model call at a time, across models: no oversubscription

    # -- models -------------------------------------------------------------------------------------
    def add(self, info: ModelInfo, model: TextModel) -> None:
        """Serve ``model`` under ``info.name`` and its aliases."""
        for key in (info.name, *sorted(info.aliases)):
            owner = self._names.get(key)
            if owner is not None and owner != info.name:
                raise ValueError(f"model name {key!r} is already taken by {owner!r}")
        batcher = TextBatcher(
            info.name,
            run=lambda texts: self._embed(info.name, texts),
            count_tokens=model.count_tokens,
            config=self.batching,
            on_queue=self._queue_callback(info.name),
        )
        self._models[info.name] = _Served(info, model, batcher)
        for key in (info.name, *info.aliases):
            self._names.setdefault(key, info.name)

    def _queue_callback(self, name: str) -> Callable[[int], None] | None:
        observer = self._queue_observer
        if observer is None:
            return None
        return lambda depth: observer(name, depth)

    def start(self) -> None:
        """Start every model's batching worker thread."""
        for served in self._models.values():
            served.batcher.start()

    def stop(self) -> None:
        """Run what is queued, then stop the worker threads (blocks: call it off the event loop)."""
        for served in self._models.values():
            served.batcher.stop()

    def queue_depth(self, name: str) -> int:
        """Texts waiting for a batch of model ``name``."""
        return self._models[self.resolve(name).name].batcher.depth

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def models(self) -> list[ModelInfo]:
        return [s.info for s in self._models.values()]

    def resolve(self, name: str, version: str | None = None) -> ModelInfo:
        """The model served as ``name`` (its name or an alias), optionally at ``version``."""
        canonical = self._names.get(name)
        if canonical is None:
            served = ", ".join(repr(n) for n in self._models) or "none"
            raise UnknownModelError(f"unknown model {name!r}; this server serves: {served}")
        info = self._models[canonical].info
        if version is not None and version not in info.versions:
            raise UnknownModelError(
                f"model {canonical!r} has no version {version!r}; versions: {', '.join(info.versions)}"
            )
        return info

    # -- health -------------------------------------------------------------------------------------
    def is_live(self) -> bool:
        return True

    def is_ready(self, name: str | None = None, version: str | None = None) -> bool:
        """Ready when loaded and not shutting down; raises ``UnknownModelError`` for an unknown name."""
        if name is not None:
            self.resolve(name, version)
        return bool(self._models) and not self._draining

    def drain(self) -> None:
        """Report not-ready from now on (the server is shutting down)."""
        self._draining = True

    # -- inference ----------------------------------------------------------------------------------
    def check_texts(self, texts: Sequence[str]) -> None:
        """Raise a request error if ``texts`` is empty, too many, or holds an empty or too long text."""
        if len(texts) == 0:
            raise InvalidInputError("the input holds no texts: send at least one")
        if len(texts) > self.limits.max_batch_items:
            raise PayloadTooLargeError(
                f"{len(texts)} texts in one request; the limit is {self.limits.max_batch_items} "
                "(split the request, or raise KILN_MAX_BATCH_ITEMS)"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(f"text {i} is {type(text).__name__}, not a string")
            if not text:
                raise InvalidInputError(f"text {i} is empty: every input must hold at least one character")
            if len(text) > self.limits.max_text_chars:
                raise InvalidInputError(
                    f"text {i} has {len(text)} characters; the limit is {self.limits.max_text_chars} "
                    "(shorten it, or raise KILN_MAX_TEXT_CHARS)"
                )
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidInputError(
                        f"text {i} is not valid Unicode (it holds a lone surrogate such as \\ud800)"
                    ) from None

    def infer(self, model_name: str, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` (float32 ``[n, dim]``), computed in the calling thread (no batching)."""
        items = list(texts)
        name = self.resolve(model_name).name
        self.check_texts(items)
        return self._embed(name, items)

    async def ainfer(self, model_name: str, texts: Sequence[str], *, with_tokens: bool = False) -> Inference:
        """Embeddings of ``texts``, batched with other requests' texts off the event loop; optionally the
        tokens they cost. Raises ``OverloadedError`` at once when the model's queue is full."""
        items = list(texts)
        served = self._models[self.resolve(model_name).name]
        self.check_texts(items)  # fail fast, before queueing
        result = await served.batcher.submit(items)
        return Inference(
            embeddings=result.embeddings, prompt_tokens=sum(result.tokens) if with_tokens else None
        )

    def _embed(self, name: str, texts: list[str]) -> np.ndarray:
        """One model call: float32 rows in input order, shape-checked and observed."""
        served = self._models[name]
        with self._compute:
            start = time.perf_counter()
            embeddings = np.ascontiguousarray(served.model.embed(texts), dtype=np.float32)
            seconds = time.perf_counter() - start
        if embeddings.shape != (len(texts), served.info.dimension):
            raise RuntimeError(
                f"model {served.info.name!r} returned shape {embeddings.shape} for {len(texts)} texts; "
                f"expected ({len(texts)}, {served.info.dimension})"
            )
        if self._observer is not None:
            self._observer(served.info.name, len(texts), seconds)
        return embeddings
