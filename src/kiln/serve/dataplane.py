"""One protocol-agnostic dataplane: the loaded models and versions, routing, readiness, limits, inference.

Protocol adapters (``v2_rest``, ``openai_routes``, ``grpc``) turn requests into plain Python values, call
the dataplane and encode its answers; nothing here knows about HTTP. ``ainfer`` queues a request's texts
with the model version's ``TextBatcher`` (batching.py): texts of concurrent requests run together, in
length buckets, on that version's own worker thread, so the event loop (and with it the health probes)
stays responsive. One model call runs at a time in the whole dataplane: ONNX Runtime already uses every
core per call. ``start()`` / ``stop()`` start and stop the worker threads (the app's lifespan calls them;
``ainfer`` also starts a worker that is not running).

Models and versions: a model (a name plus aliases) serves one or more versions. A request that names a
version gets it; one that does not goes to the model's *stable* version (the highest version that is not
the canary), or, when a canary is set (``set_canary``) and loaded beside a stable version, to the canary
with the canary's weight. ``install`` adds or replaces one version atomically (the switch is one dict
update under a lock); ``remove`` takes versions out of routing and hands them back as ``Retired``:
``Retired.drain()`` waits for the requests that were already routed to them, then stops their worker.
The model repository (repository.py) builds hot swap, canary and unload on these three calls.

Image models (``ImageModel``, task ``image-classify``) take ``ainfer_images`` instead of ``ainfer``: a
request's images are decoded and preprocessed in a worker thread (``asyncio.to_thread``; never on the event
loop, and before queueing, so that one bad image fails only its own request), then the rows join the
version's batcher like texts do, and the model call returns class probabilities.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kiln.errors import InvalidInputError, PayloadTooLargeError, UnknownModelError
from kiln.monitor.capture import current_capture
from kiln.serve.batching import BatchConfig, BatchRunner, Prepared, Preparer, TextBatcher, counted
from kiln.serve.image_inputs import DEFAULT_MAX_PIXELS, ImageInputs, PreparedImages
from kiln.settings import TEXT_OVERFLOW, Settings

log = logging.getLogger("kiln.serve")

DEFAULT_VERSION = "1"
DRAIN_TIMEOUT_S = 30.0


class TextModel(Protocol):
    """What the dataplane needs from a loaded model."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


@runtime_checkable
class TokenizingModel(Protocol):
    """A text model that tokenizes each batched text once: ``tokenize`` counts texts for the batcher and
    keeps their encodings, ``embed_tokenized`` runs a batch from them (the rows ``embed`` would return)."""

    def tokenize(self, texts: list[str]) -> Prepared[Any]: ...

    def embed_tokenized(self, items: list[Any]) -> np.ndarray: ...


@runtime_checkable
class ImageModel(Protocol):
    """What the dataplane needs from a loaded image model."""

    def prepare(self, images: ImageInputs, max_pixels: int) -> PreparedImages:
        """A request's images as model rows (runs in a worker thread; raises request errors)."""
        ...

    def embed(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``[n, classes]`` of a batch of rows (runs in the batch worker)."""
        ...


ServedModel = TextModel | ImageModel


def _no_tokens(items: Sequence[Any]) -> list[int]:
    """An image costs no tokens: every image shares one batching bucket."""
    return [0] * len(items)


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
    version: str = DEFAULT_VERSION
    """The version this info describes (``versions``: every version of the model now loaded)."""
    labels: tuple[str, ...] = ()
    """Class names of a ``classify`` model: column ``k`` of its scores is ``labels[k]``."""
    top_k: int | None = None
    """Classes a classifier lists per input when a request does not say (``None``: all)."""

    @property
    def dimension(self) -> int:
        return self.outputs[0].shape[-1]


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for.

    ``max_text_chars``: a longer text is always refused (400). ``text_overflow``: what happens to a text of
    more tokens than the model's ``max_length``: ``truncate`` (the model reads its first ``max_length``
    tokens) or ``reject`` (400 naming the text, its tokens and the limit). ``max_batch_items`` also
    bounds the images of one request; ``max_image_pixels``: a larger image is refused (413) before it is
    decoded.
    """

    max_batch_items: int = 256
    max_text_chars: int = 100_000
    text_overflow: str = "truncate"
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.text_overflow not in TEXT_OVERFLOW:
            raise ValueError(
                f"text_overflow must be one of {', '.join(TEXT_OVERFLOW)}, not {self.text_overflow!r}"
            )
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be at least 1, not {self.max_image_pixels}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_batch_items=settings.max_batch_items,
            max_text_chars=settings.max_text_chars,
            text_overflow=settings.text_overflow,
            max_image_pixels=settings.max_image_pixels,
        )


@dataclass(frozen=True)
class Inference:
    """Embeddings ``[n, dim]`` float32 in input order, and the tokens they cost when asked for."""

    embeddings: np.ndarray
    prompt_tokens: int | None = None
    version: str = DEFAULT_VERSION
    """The model version that computed them."""


InferenceObserver = Callable[[str, str, int, float], None]
"""Called after each model call (one batch) with (model name, version, number of texts, seconds)."""
QueueDepthObserver = Callable[[str, str, int], None]
"""Called with (model name, version, texts waiting for that version) whenever its queue depth changes."""
TokenObserver = Callable[[str, str, int], None]
"""Called after each request's inference with (model name, version, tokens of its texts)."""


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key for versions: numbers by value (``"10"`` after ``"9"``), then other names."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


@dataclass(frozen=True)
class Canary:
    """Send ``weight`` (0 < weight < 1) of a model's unversioned requests to ``version``."""

    version: str
    weight: float

    def __post_init__(self) -> None:
        if not 0 < self.weight < 1:
            raise ValueError(f"a canary weight is a fraction between 0 and 1 (exclusive), not {self.weight}")


class _Version:
    """One loaded version: its metadata, model and batcher, and the requests routed to it not yet done."""

    def __init__(self, info: ModelInfo, model: ServedModel) -> None:
        self.info = info
        self.model = model
        self.batcher: TextBatcher[Any, Any] | None = None  # set by the dataplane right after
        self._inflight = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)


class Retired:
    """A version taken out of routing: ``drain()`` finishes the requests it already had, then stops it."""

    def __init__(self, name: str, version: _Version) -> None:
        self.name = name
        self.version = version.info.version
        self._served = version

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Wait for the requests routed to this version (at most ``timeout`` s), then stop its worker
        (which runs whatever is still queued first). Blocks: call it off the event loop."""
        if not self._served.wait_idle(timeout):
            log.warning(
                "model %r version %s still had %d requests after %.0f s; stopping it anyway",
                self.name,
                self.version,
                self._served.inflight,
                timeout,
            )
        if self._served.batcher is not None:
            self._served.batcher.stop(timeout)


class _Model:
    """A name, its aliases, its loaded versions and how unversioned requests are split between them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[str, _Version] = {}
        self.canary: Canary | None = None

    def ordered(self) -> list[str]:
        return sorted(self.versions, key=version_key)

    def stable(self) -> _Version:
        """The version unversioned requests go to when they do not go to the canary."""
        order = self.ordered()
        others = [v for v in order if self.canary is None or v != self.canary.version]
        return self.versions[(others or order)[-1]]

    def route(self, rng: random.Random) -> _Version:
        canary = self.canary
        stable = self.stable()
        if canary is not None and canary.version in self.versions and stable.info.version != canary.version:
            return self.versions[canary.version] if rng.random() < canary.weight else stable
        return stable

    def aliases(self) -> set[str]:
        return {a for v in self.versions.values() for a in v.info.aliases} - {self.name}

    def refresh_infos(self) -> None:
        """Every version's info lists the versions now loaded."""
        loaded = tuple(self.ordered())
        for served in self.versions.values():
            served.info = dataclasses.replace(served.info, versions=loaded)


class DataPlane:
    def __init__(
        self,
        limits: Limits | None = None,
        observer: InferenceObserver | None = None,
        batching: BatchConfig | None = None,
        queue_observer: QueueDepthObserver | None = None,
        rng: random.Random | None = None,
        token_observer: TokenObserver | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.batching = batching or BatchConfig()
        self._observer = observer
        self._queue_observer = queue_observer
        self._token_observer = token_observer
        self._rng = rng or random.Random()
        self._models: dict[str, _Model] = {}
        self._names: dict[str, str] = {}  # name or alias -> model name
        self._unloaded: dict[str, str] = {}  # name or alias of a model that was unloaded -> its name
        self._lock = threading.RLock()  # guards _models, _names, routing and in-flight counting
        self._started = False
        self._draining = False
        self._compute = threading.Lock()  # one model call at a time, across models: no oversubscription

    # -- models -------------------------------------------------------------------------------------
    def add(self, info: ModelInfo, model: ServedModel) -> None:
        """Serve ``model`` as version ``info.version`` of ``info.name`` (a version already there is
        replaced, and stopped once its requests are done: this call may block until then)."""
        retired = self.install(info, model)
        if retired is not None:
            retired.drain()

    def install(self, info: ModelInfo, model: ServedModel) -> Retired | None:
        """Serve ``model`` as version ``info.version`` of model ``info.name``, atomically: the next request
        routed to that version (or to the model, when it becomes the stable version) runs on it.

        A name always means its own model; aliases are best effort: an alias that is another model's
        name, or already another model's alias, stays theirs. The version this replaces, if any, comes
        back as ``Retired`` (drain it off the event loop).
        """
        served = _Version(info, model)
        run, prepare = self._batch_steps(served)
        served.batcher = TextBatcher(
            info.name,
            run=run,
            prepare=prepare,
            config=self.batching,
            on_queue=self._queue_callback(info.name, info.version),
            max_tokens=self._token_limit(info, model),
        )
        with self._lock:
            entry = self._models.get(info.name)
            if entry is None:
                entry = self._models[info.name] = _Model(info.name)
            old = entry.versions.get(info.version)
            entry.versions[info.version] = served
            entry.refresh_infos()
            self._reindex()
            for key in (info.name, *info.aliases):
                self._unloaded.pop(key, None)
            if self._started:
                served.batcher.start()
        return Retired(info.name, old) if old is not None else None

    def remove(self, name: str, versions: Iterable[str] | None = None) -> list[Retired]:
        """Take ``versions`` (default: all) of model ``name`` out of routing; drain what comes back.

        A model left with no version is gone: requests naming it are told it was unloaded.
        """
        with self._lock:
            entry = self._models.get(self.resolve(name).name)
            assert entry is not None
            chosen = list(entry.versions) if versions is None else list(versions)
            missing = [v for v in chosen if v not in entry.versions]
            if missing:
                raise UnknownModelError(self._no_version_message(entry, missing[0]))
            names = {entry.name, *entry.aliases()}
            retired = [Retired(entry.name, entry.versions.pop(v)) for v in chosen]
            if not entry.versions:
                del self._models[entry.name]
                self._unloaded.update(dict.fromkeys(names, entry.name))
            else:
                entry.refresh_infos()
            self._reindex()
        return retired

    def set_canary(self, name: str, canary: Canary | None) -> None:
        """Split ``name``'s unversioned requests: ``canary.weight`` to ``canary.version`` (once it is loaded
        beside another version), the rest to the stable version. ``None`` ends the split."""
        with self._lock:
            self._models[self.resolve(name).name].canary = canary

    def _reindex(self) -> None:
        """Rebuild the name/alias table: names first, then aliases in model order, first come first served."""
        names = {m: m for m in self._models}
        for entry in self._models.values():
            for alias in sorted(entry.aliases()):
                if alias not in names:
                    names[alias] = entry.name
        self._names = names

    def _batch_steps(self, served: _Version) -> tuple[BatchRunner[Any], Preparer[Any, Any]]:
        """How a version's batcher prepares and runs its texts: a ``TokenizingModel`` keeps each text's
        encoding from counting to its model call; other models are only counted (an image: 0 tokens)
        and run from the queued items."""
        model = served.model
        if isinstance(model, TokenizingModel):
            embed_tokenized = model.embed_tokenized
            return (lambda items: self._call_model(served, embed_tokenized, items)), model.tokenize
        count = _no_tokens if isinstance(model, ImageModel) else model.count_tokens
        return (lambda items: self._embed(served, items)), counted(count)

    def _token_limit(self, info: ModelInfo, model: ServedModel) -> int | None:
        """With ``text_overflow="reject"``: the tokens a text may have (the model's ``max_length``)."""
        if self.limits.text_overflow != "reject" or isinstance(model, ImageModel):
            return None
        if info.max_length is None or not getattr(model, "counts_untruncated", False):
            raise ValueError(
                f"model {info.name!r} version {info.version} cannot refuse over-long texts: it does not say "
                "its max_length or does not count tokens before truncation (serve it with "
                "text_overflow='truncate')"
            )
        return info.max_length

    def _queue_callback(self, name: str, version: str) -> Callable[[int], None] | None:
        observer = self._queue_observer
        if observer is None:
            return None
        return lambda depth: observer(name, version, depth)

    def _depth_of(self, name: str) -> int:
        entry = self._models.get(name)
        if entry is None:
            return 0
        return sum(v.batcher.depth for v in list(entry.versions.values()) if v.batcher is not None)

    def _batchers(self) -> list[TextBatcher[Any, Any]]:
        with self._lock:
            return [
                v.batcher for m in self._models.values() for v in m.versions.values() if v.batcher is not None
            ]

    def start(self) -> None:
        """Start every version's batching worker thread (and those of versions installed later)."""
        self._started = True
        for batcher in self._batchers():
            batcher.start()

    def stop(self) -> None:
        """Run what is queued, then stop the worker threads (blocks: call it off the event loop)."""
        self._started = False
        for batcher in self._batchers():
            batcher.stop()

    def queue_depth(self, name: str) -> int:
        """Texts waiting for a batch of model ``name`` (all its versions)."""
        return self._depth_of(self.resolve(name).name)

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def models(self) -> list[ModelInfo]:
        """The stable version's info of every model."""
        with self._lock:
            return [m.stable().info for m in self._models.values()]

    def loaded_versions(self) -> dict[str, list[str]]:
        """Model name -> its loaded versions, in version order."""
        with self._lock:
            return {name: m.ordered() for name, m in self._models.items()}

    def _entry(self, name: str) -> _Model:
        canonical = self._names.get(name)
        if canonical is None:
            served = ", ".join(repr(n) for n in self._models) or "none"
            if name in self._unloaded:
                was = self._unloaded[name]
                raise UnknownModelError(
                    f"model {name!r} is unloaded; load it again through the model repository "
                    f"(POST /v2/repository/models/{was}/load). This server serves: {served}"
                )
            raise UnknownModelError(f"unknown model {name!r}; this server serves: {served}")
        return self._models[canonical]

    @staticmethod
    def _no_version_message(entry: _Model, version: str) -> str:
        return (
            f"model {entry.name!r} has no version {version!r} loaded; versions: {', '.join(entry.ordered())}"
        )

    def _version(self, name: str, version: str | None) -> _Version:
        with self._lock:
            entry = self._entry(name)
            if version is None:
                return entry.stable()
            served = entry.versions.get(version)
            if served is None:
                raise UnknownModelError(self._no_version_message(entry, version))
            return served

    def resolve(self, name: str, version: str | None = None) -> ModelInfo:
        """The model served as ``name`` (its name or an alias): ``version``, or the stable version."""
        return self._version(name, version).info

    def route(self, name: str, version: str | None = None) -> ModelInfo:
        """Like ``resolve``, but an unversioned request may go to the canary (by its weight)."""
        info = self.resolve(name, version)
        if version is not None:
            return info
        with self._lock:
            entry = self._models.get(info.name)
            return entry.route(self._rng).info if entry is not None else info

    def _enter(self, name: str, version: str | None) -> _Version:
        """Route a request and count it in flight on its version, atomically with respect to ``remove``."""
        with self._lock:
            served = (
                self._version(name, version) if version is not None else self._entry(name).route(self._rng)
            )
            served.enter()
            return served

    # -- health -------------------------------------------------------------------------------------
    def is_live(self) -> bool:
        return True

    def is_ready(self, name: str | None = None, version: str | None = None) -> bool:
        """Ready when loaded and not shutting down; raises ``UnknownModelError`` for an unknown (or
        unloaded) model or version."""
        if name is not None:
            self.resolve(name, version)
        return bool(self._models) and not self._draining

    def drain(self) -> None:
        """Report not-ready from now on (the server is shutting down)."""
        self._draining = True

    # -- inference ----------------------------------------------------------------------------------
    def check_texts(self, texts: Sequence[str]) -> None:
        """Raise a request error if ``texts`` is empty, too many, or holds an empty or too long text."""
        self._check_count(len(texts), "texts")
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

    def infer(self, model_name: str, texts: Sequence[str], version: str | None = None) -> np.ndarray:
        """Embeddings of ``texts`` (float32 ``[n, dim]``), computed in the calling thread (no batching)."""
        items = list(texts)
        self.check_texts(items)
        served = self._enter(model_name, version)
        try:
            self._check_text_model(served)
            return self._embed(served, items)
        finally:
            served.leave()

    @staticmethod
    def _check_text_model(served: _Version) -> None:
        if isinstance(served.model, ImageModel):
            info = served.info
            raise InvalidInputError(
                f"model {info.name!r} is an {info.task!r} model: it takes images, not texts (v2 infer with "
                "the input named in its metadata, or POST /v1/images/classify)"
            )

    async def ainfer(
        self,
        model_name: str,
        texts: Sequence[str],
        *,
        with_tokens: bool = False,
        version: str | None = None,
    ) -> Inference:
        """Embeddings of ``texts`` from ``version`` (default: routed, see the module doc), batched with
        other requests' texts off the event loop; optionally the tokens they cost. Raises
        ``OverloadedError`` at once when the version's queue is full."""
        items = list(texts)
        self.resolve(model_name, version)  # an unknown model is reported before a malformed input
        self.check_texts(items)  # fail fast, before queueing
        served = self._enter(model_name, version)
        try:
            self._check_text_model(served)
            assert served.batcher is not None
            result = await served.batcher.submit(items)
        finally:
            served.leave()
        info = served.info
        if self._token_observer is not None:
            self._token_observer(info.name, info.version, sum(result.tokens))
        self._note(info, items, result.tokens, result.embeddings)
        return Inference(
            embeddings=result.embeddings,
            prompt_tokens=sum(result.tokens) if with_tokens else None,
            version=served.info.version,
        )

    def check_image_count(self, n: int) -> None:
        """Raise a request error if a request holds no image, or more than ``max_batch_items``."""
        self._check_count(n, "images")

    def _check_count(self, n: int, what: str) -> None:
        """A request's ``n`` texts or images: at least one, at most ``max_batch_items``."""
        if n == 0:
            raise InvalidInputError(f"the input holds no {what}: send at least one")
        if n > self.limits.max_batch_items:
            raise PayloadTooLargeError(
                f"{n} {what} in one request; the limit is {self.limits.max_batch_items} "
                "(split the request, or raise KILN_MAX_BATCH_ITEMS)"
            )

    async def ainfer_images(
        self, model_name: str, images: ImageInputs, *, version: str | None = None
    ) -> Inference:
        """Class probabilities ``[n, classes]`` of ``images`` (files as bytes, or a preprocessed tensor)
        from ``version`` (default: routed). The images are decoded and preprocessed in a worker thread,
        then batched with other requests' images off the event loop. Raises ``OverloadedError`` when the
        version's queue is full, and request errors naming the image at fault."""
        self.resolve(model_name, version)  # an unknown model is reported before a malformed input
        self.check_image_count(len(images))
        served = self._enter(model_name, version)
        try:
            model = served.model
            if not isinstance(model, ImageModel):
                info = served.info
                raise InvalidInputError(
                    f"model {info.name!r} is a {info.task!r} model: it takes texts, not images"
                )
            assert served.batcher is not None
            served.batcher.check_room(len(images))  # before decoding: a full queue costs no work
            prepared = await asyncio.to_thread(model.prepare, images, self.limits.max_image_pixels)
            result = await served.batcher.submit(prepared.rows)
        finally:
            served.leave()
        self._note(served.info, prepared.descriptions, None, result.embeddings)
        return Inference(embeddings=result.embeddings, version=served.info.version)

    @staticmethod
    def _note(info: ModelInfo, texts: list[str], tokens: list[int] | None, rows: np.ndarray) -> None:
        """Tell the request log, when one is capturing this request (whatever the protocol), what ran:
        the rows (embeddings, or a classifier's class probabilities; summarised later, off the request's
        path) and, for a classifier, each text's top label and its probability. No I/O here. For images,
        ``texts`` are their descriptions (format, size, bytes: never the image) and ``tokens`` is None."""
        capture = current_capture()
        if capture is None:
            return
        labels = scores = None
        n = len(info.labels)
        if capture.sampled and n and rows.ndim == 2 and rows.shape[1] == n:
            top = rows.argmax(axis=1)
            labels = [info.labels[int(k)] for k in top]
            scores = rows[np.arange(len(top)), top].astype(float).tolist()
        capture.note(
            info.name,
            texts,
            tokens,
            rows,
            labels=labels,
            scores=scores,
            version=info.version,
        )

    def _embed(self, served: _Version, texts: list[Any]) -> np.ndarray:
        """One model call (texts, or an image model's rows): float32 rows in input order, shape-checked
        and observed."""
        return self._call_model(served, served.model.embed, texts)

    def _call_model(self, served: _Version, call: BatchRunner[Any], texts: list[Any]) -> np.ndarray:
        """``call(texts)`` (``embed``, or ``embed_tokenized`` of prepared texts) as one model call:
        float32 rows in input order, shape-checked and observed."""
        info = served.info
        with self._compute:
            start = time.perf_counter()
            embeddings = np.ascontiguousarray(call(texts), dtype=np.float32)
            seconds = time.perf_counter() - start
        if embeddings.shape != (len(texts), info.dimension):
            raise RuntimeError(
                f"model {info.name!r} version {info.version} returned shape {embeddings.shape} for "
                f"{len(texts)} texts; expected ({len(texts)}, {info.dimension})"
            )
        if self._observer is not None:
            self._observer(info.name, info.version, len(texts), seconds)
        return embeddings
