"""A verified bundle becomes a served model: ONNX Runtime + tokenizers (+ Pillow for images), never torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from tokenizers import Encoding

from kiln.bench.quality_classify import softmax
from kiln.bundle.load import Bundle
from kiln.errors import BundleError, TaskError
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.image_preprocess import preprocess
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.serve.batching import Prepared
from kiln.serve.dataplane import ModelInfo, ServedModel, TensorSpec
from kiln.serve.image_inputs import ImageInputs, PreparedImages, prepare_images
from kiln.tasks.classify_config import TASK_NAME as CLASSIFY
from kiln.tasks.classify_config import ClassifyConfig
from kiln.tasks.embed_config import TASK_NAME, EmbedConfig
from kiln.tasks.image_classify_config import TASK_NAME as IMAGE_CLASSIFY
from kiln.tasks.image_classify_config import ImageClassifyConfig

WARMUP_TEXT = "kiln warm-up"
IMAGE_INPUT = "image"
"""The v2 input of an image model that takes image files (BYTES, one element per image); its other
input, named as the graph's (``ImageClassifyConfig.input_name``), takes preprocessed FP32 tensors."""
CLASSIFIERS = frozenset({CLASSIFY, IMAGE_CLASSIFY})


class UntruncatedCounter:
    """Encodings *before* truncation (special tokens included), from the bundle's tokenizer file.

    Served with ``text_overflow="reject"``, the batcher counts tokens with these (through
    :class:`ServedTokenizer`) to refuse texts longer than the model reads; the texts it accepts have no
    more than ``max_length`` tokens, so their counts are also what the model sees.
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"cannot read tokenizer {path}: {exc}") from exc
        self._tok.no_truncation()
        self._tok.no_padding()

    def encodings(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text's whole encoding (unpadded, special tokens included)."""
        return self._tok.encode_batch(list(texts))


@dataclass(frozen=True, slots=True)
class TokenizedText:
    """A served text and its encoding, made when the batcher counted its tokens (``len(encoding)``)."""

    text: str
    encoding: Encoding


class ServedTokenizer:
    """Tokenizes each served text once: the count the batcher buckets by (and OpenAI ``usage`` reports)
    comes from the same encoding the model call then reads.

    Encodings are unpadded and truncated to ``max_length``; with ``untruncated`` (see
    :class:`UntruncatedCounter`) they are whole, so that the count is the one before truncation, and a
    text that is not refused for it has no more tokens than the model reads.
    """

    def __init__(self, tokenizer: TextTokenizer, untruncated: UntruncatedCounter | None = None) -> None:
        self.tokenizer = tokenizer
        self._untruncated = untruncated

    @property
    def counts_untruncated(self) -> bool:
        return self._untruncated is not None

    def encodings(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text's encoding, as counted (whole with ``untruncated``, else truncated)."""
        if self._untruncated is not None:
            return self._untruncated.encodings(texts)
        return self.tokenizer.encodings(texts)

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, padding excluded."""
        return [len(e) for e in self.encodings(texts)]

    def tokenize(self, texts: Sequence[str]) -> Prepared[TokenizedText]:
        """Each text's count and encoding, for the batcher (one tokenizer call for all texts)."""
        encodings = self.encodings(texts)
        return Prepared(
            ready=[TokenizedText(t, e) for t, e in zip(texts, encodings, strict=True)],
            tokens=[len(e) for e in encodings],
        )

    def model_encodings(self, items: Sequence[TokenizedText]) -> list[Encoding]:
        """What the model reads of each text: its encoding, cut to ``max_length`` when it is longer (a
        text counted whole that was not refused; encoded again, with truncation, only then)."""
        encodings = [item.encoding for item in items]
        over = [i for i, e in enumerate(encodings) if len(e) > self.tokenizer.max_length]
        if over:
            cut = self.tokenizer.encodings([items[i].text for i in over])
            for i, e in zip(over, cut, strict=True):
                encodings[i] = e
        return encodings


class EmbedModel:
    """An ``OnnxEmbedder`` with the token counter the OpenAI ``usage`` field needs.

    ``untruncated``: count tokens before truncation (see :class:`UntruncatedCounter`). Through the
    batcher, ``tokenize`` then ``embed_tokenized`` tokenize each text once (``embed`` tokenizes again)."""

    def __init__(self, embedder: OnnxEmbedder, untruncated: UntruncatedCounter | None = None) -> None:
        self.embedder = embedder
        self.tokens = ServedTokenizer(embedder.tokenizer, untruncated)

    @property
    def counts_untruncated(self) -> bool:
        return self.tokens.counts_untruncated

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation (before it, with ``untruncated``), special tokens included,
        padding excluded."""
        return self.tokens.count(texts)

    def tokenize(self, texts: Sequence[str]) -> Prepared[TokenizedText]:
        """Each text's ``count_tokens`` and the encoding ``embed_tokenized`` reads."""
        return self.tokens.tokenize(texts)

    def embed_tokenized(self, items: Sequence[TokenizedText]) -> np.ndarray:
        """``embed`` of the texts ``tokenize`` made ``items`` of (the same rows), without encoding them
        again."""
        return self.embedder.embed_encodings(self.tokens.model_encodings(items))


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


def _untruncated(bundle: Bundle, text_overflow: str) -> UntruncatedCounter | None:
    return UntruncatedCounter(bundle.tokenizer_path) if text_overflow == "reject" else None


def load_embed_model(
    bundle: Bundle, threads: int = 0, text_overflow: str = "truncate", spinning: bool = True
) -> tuple[ModelInfo, EmbedModel]:
    """Open the bundle's artifact and tokenizer, run one warm-up batch and check its shape.

    ``text_overflow="reject"``: the model counts tokens before truncation, so that the dataplane can
    refuse texts longer than ``max_length``."""
    config = embed_config(bundle)
    backend = bundle.backend(threads, spinning)
    tokenizer = TextTokenizer(bundle.tokenizer_path, max_length=config.max_length)
    model = EmbedModel(OnnxEmbedder(backend, tokenizer), _untruncated(bundle, text_overflow))
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


class ClassifyModel:
    """An exported classifier (logits out) whose rows the dataplane sees as softmax ``scores``."""

    def __init__(
        self, runner: OnnxEmbedder, labels: Sequence[str], untruncated: UntruncatedCounter | None = None
    ) -> None:
        self.runner = runner
        self.labels = tuple(labels)
        self.tokens = ServedTokenizer(runner.tokenizer, untruncated)

    @property
    def counts_untruncated(self) -> bool:
        return self.tokens.counts_untruncated

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities ``[n, classes]`` (float32); column ``k`` is ``labels[k]``."""
        return _probabilities(self.runner.embed(texts))

    def classify(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        scores = self.embed(texts)
        return top_labels(self.labels, scores), scores

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Like :meth:`EmbedModel.count_tokens`."""
        return self.tokens.count(texts)

    def tokenize(self, texts: Sequence[str]) -> Prepared[TokenizedText]:
        """Like :meth:`EmbedModel.tokenize`."""
        return self.tokens.tokenize(texts)

    def embed_tokenized(self, items: Sequence[TokenizedText]) -> np.ndarray:
        """``embed`` of the texts ``tokenize`` made ``items`` of, without encoding them again."""
        return _probabilities(self.runner.embed_encodings(self.tokens.model_encodings(items)))


def _probabilities(logits: np.ndarray) -> np.ndarray:
    """A classifier's logits as float32 class probabilities."""
    return softmax(logits).astype(np.float32)


def top_labels(labels: Sequence[str], scores: np.ndarray) -> list[str]:
    """The name of each row's highest-scoring class."""
    return [labels[int(k)] for k in np.asarray(scores).argmax(axis=1)]


def classify_config(bundle: Bundle) -> ClassifyConfig:
    try:
        return ClassifyConfig.model_validate(bundle.manifest.task_config)
    except ValidationError as exc:
        raise BundleError(f"bundle {bundle.root} has an invalid classify task_config: {exc}") from exc


def load_classify_model(
    bundle: Bundle, threads: int = 0, text_overflow: str = "truncate", spinning: bool = True
) -> tuple[ModelInfo, ClassifyModel]:
    """Open a classify bundle, run one warm-up text and check it returns one score per class."""
    config = classify_config(bundle)
    backend = bundle.backend(threads, spinning)
    tokenizer = TextTokenizer(bundle.tokenizer_path, max_length=config.max_length)
    model = ClassifyModel(
        OnnxEmbedder(backend, tokenizer), config.labels, _untruncated(bundle, text_overflow)
    )
    n = len(config.labels)
    out = model.embed([WARMUP_TEXT])
    if out.shape != (1, n):
        raise BundleError(
            f"bundle {bundle.root}: the model returns shape {tuple(out.shape)} for one text, "
            f"but the manifest names {n} classes; rebuild the bundle"
        )
    info = ModelInfo(
        name=bundle.manifest.model_name,
        inputs=(TensorSpec(config.input_name, "BYTES", (-1,)),),
        # scores first: the dataplane checks each batch's rows against outputs[0]'s last dimension
        outputs=(
            TensorSpec(config.scores_output, "FP32", (-1, n)),
            TensorSpec(config.label_output, "BYTES", (-1,)),
        ),
        aliases=aliases(bundle),
        task=CLASSIFY,
        max_length=config.max_length,
        variant=bundle.manifest.chosen,
        created=created_timestamp(bundle.manifest.created_at),
        labels=tuple(config.labels),
    )
    return info, model


class ImageClassifyModel:
    """An exported CNN (logits out) behind the bundle's preprocessing: images in, softmax ``scores`` out."""

    def __init__(self, backend: OnnxBackend, config: ImageClassifyConfig) -> None:
        self.backend = backend
        self.config = config
        self.labels = tuple(config.labels)
        self._input = backend.input_names[0]
        names = backend.output_names
        self._output = names.index(config.output_name) if config.output_name in names else 0

    def prepare(self, images: ImageInputs, max_pixels: int) -> PreparedImages:
        """Decode and preprocess image files, or check a preprocessed tensor (see ``image_inputs``)."""
        return prepare_images(images, self.config.preprocess, max_pixels)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The graph's logits for a float32 ``[n, 3, H, W]`` batch."""
        out = self.backend.run({self._input: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out[self._output], dtype=np.float32)

    def embed(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``[n, classes]`` (float32) of preprocessed rows; column ``k`` is
        ``labels[k]``."""
        return _probabilities(self.logits(np.stack(list(rows))))


def image_classify_config(bundle: Bundle) -> ImageClassifyConfig:
    try:
        config = ImageClassifyConfig.model_validate(bundle.manifest.task_config)
    except ValidationError as exc:
        raise BundleError(f"bundle {bundle.root} has an invalid image-classify task_config: {exc}") from exc
    if config.input_dtype != "float32":
        raise BundleError(
            f"bundle {bundle.root}: the model's input is {config.input_dtype}; "
            "kiln serves float32 image inputs"
        )
    return config


def load_image_classify_model(
    bundle: Bundle, threads: int = 0, spinning: bool = True
) -> tuple[ModelInfo, ImageClassifyModel]:
    """Open an image-classify bundle, run one warm-up image and check it returns one score per class."""
    config = image_classify_config(bundle)
    model = ImageClassifyModel(bundle.backend(threads, spinning), config)
    side = config.preprocess.crop
    warmup = np.full((side, side, 3), 128, dtype=np.uint8)
    n = len(config.labels)
    try:
        out = model.embed([preprocess(warmup, config.preprocess)])
    except Exception as exc:  # ORT's own errors: wrong input name, rank or size
        raise BundleError(
            f"bundle {bundle.root}: the model cannot run one {side}x{side} image: {exc}"
        ) from exc
    if out.shape != (1, n):
        raise BundleError(
            f"bundle {bundle.root}: the model returns shape {tuple(out.shape)} for one image, "
            f"but the manifest names {n} classes; rebuild the bundle"
        )
    tensor_name = config.input_name if config.input_name != IMAGE_INPUT else f"{IMAGE_INPUT}_tensor"
    info = ModelInfo(
        name=bundle.manifest.model_name,
        inputs=(
            TensorSpec(IMAGE_INPUT, "BYTES", (-1,)),
            TensorSpec(tensor_name, "FP32", (-1, 3, side, side)),
        ),
        # scores first: the dataplane checks each batch's rows against outputs[0]'s last dimension
        outputs=(
            TensorSpec(config.scores_output, "FP32", (-1, n)),
            TensorSpec(config.label_output, "BYTES", (-1,)),
        ),
        aliases=aliases(bundle),
        task=IMAGE_CLASSIFY,
        variant=bundle.manifest.chosen,
        created=created_timestamp(bundle.manifest.created_at),
        labels=tuple(config.labels),
        top_k=config.top_k,
    )
    return info, model


def load_model(
    bundle: Bundle, threads: int = 0, text_overflow: str = "truncate", spinning: bool = True
) -> tuple[ModelInfo, ServedModel]:
    """Load a bundle of any task kiln serves (``text_overflow``: see :func:`load_embed_model`;
    ``spinning``: ONNX Runtime's idle worker threads spin, see ``KILN_ORT_SPINNING``)."""
    if bundle.manifest.task == CLASSIFY:
        return load_classify_model(bundle, threads, text_overflow, spinning)
    if bundle.manifest.task == IMAGE_CLASSIFY:
        return load_image_classify_model(bundle, threads, spinning)
    if bundle.manifest.task != TASK_NAME:
        raise TaskError(
            f"bundle {bundle.root} is for the {bundle.manifest.task!r} task; `kiln serve` serves "
            f"{TASK_NAME!r}, {CLASSIFY!r} and {IMAGE_CLASSIFY!r} bundles"
        )
    return load_embed_model(bundle, threads, text_overflow, spinning)


def output_arrays(info: ModelInfo, rows: np.ndarray) -> dict[str, np.ndarray]:
    """A batch's rows as the model's named output tensors (classifiers: ``scores`` and ``label``)."""
    if info.task in CLASSIFIERS:
        scores, label = info.outputs[0].name, info.outputs[1].name
        return {scores: rows, label: np.asarray(top_labels(info.labels, rows), dtype=object)}
    return {info.outputs[0].name: rows}
