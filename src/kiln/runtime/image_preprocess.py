"""Images to the float tensors an ImageNet-style CNN takes (no torch; Pillow for decoding and resizing).

The steps are the classic evaluation transform: resize so the shorter side is ``resize`` pixels (bicubic),
take the centre ``crop`` x ``crop`` square, scale to [0, 1], subtract ``mean`` and divide by ``std`` per
channel, lay out as ``NCHW`` float32. :class:`ImagePreprocess` records them in the manifest, so a server
applies exactly what the build measured.

:class:`ImagePreprocessor` has the role :class:`kiln.runtime.tokenizer.TextTokenizer` has for text: the
build's stages hand it items (image files, or any id its ``load`` function understands) and get feed
dicts back (``encode``), or a size per item (``count_tokens``: the source image's pixel count).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import InvalidInputError
from kiln.runtime.tokenizer import TextTokenizer

DEFAULT_INPUT_NAME = "pixel_values"
ImageLoader = Callable[[str], np.ndarray]


class ImagePreprocess(BaseModel):
    """How a decoded RGB image becomes one row of the model's input (recorded in the manifest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int = Field(default=256, ge=1, description="the shorter side is resized to this many pixels")
    crop: int = Field(default=224, ge=1, description="then the centre crop x crop square is taken")
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    scale: float = Field(default=1.0 / 255.0, gt=0.0, description="uint8 pixel values are multiplied by it")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"

    def input_shape(self) -> list[int | str]:
        """The model input's shape, ``batch`` being the free axis."""
        return ["batch", 3, self.crop, self.crop]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any common image array (gray ``HxW``, ``HxWx1``, RGB, RGBA; uint8 or floats in [0, 1]) as uint8
    ``HxWx3``."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(f"an image must be HxW, HxWx3 or HxWx4; got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InvalidInputError("the image holds NaN or infinite values")
        peak = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else 255.0
        return np.ascontiguousarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer):
        peak = 255 if int(arr.max(initial=0)) <= 255 else int(np.iinfo(arr.dtype).max)
        return np.ascontiguousarray((arr.astype(np.float64) * (255.0 / peak)).round().astype(np.uint8))
    raise InvalidInputError(f"unsupported image dtype {arr.dtype}")


def preprocess(image: np.ndarray, cfg: ImagePreprocess) -> np.ndarray:
    """One image as a float32 ``3 x crop x crop`` array (resize shorter side, centre crop, normalise)."""
    from PIL import Image

    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    short = min(h, w)
    size = (max(cfg.resize, round(w * cfg.resize / short)), max(cfg.resize, round(h * cfg.resize / short)))
    method = Image.Resampling.BICUBIC if cfg.interpolation == "bicubic" else Image.Resampling.BILINEAR
    pil = Image.fromarray(rgb, mode="RGB")
    if size != (w, h):
        pil = pil.resize(size, method)
    if min(size) < cfg.crop:
        raise InvalidInputError(f"resize {cfg.resize} is smaller than crop {cfg.crop}")
    left, top = (size[0] - cfg.crop) // 2, (size[1] - cfg.crop) // 2
    pil = pil.crop((left, top, left + cfg.crop, top + cfg.crop))
    pixels = np.asarray(pil, dtype=np.float32) * np.float32(cfg.scale)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    x: np.ndarray = ((pixels - mean) / std).astype(np.float32, copy=False)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file (any format Pillow reads) to uint8 RGB ``HxWx3``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as exc:
        raise InvalidInputError(f"no image file at {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"{path} is not an image Pillow can read ({exc})") from exc


class ImagePreprocessor(TextTokenizer):
    """Items (image paths, or ids ``load`` resolves) to ``{input_name: N x 3 x crop x crop}`` feeds.

    A :class:`TextTokenizer` by type only, so the build's stages take it where they take a tokenizer:
    ``encode`` and ``count_tokens`` are its whole interface (the text machinery is never set up).
    Decoded, preprocessed rows are cached (``cache_size`` items), as the build encodes the same
    evaluation images for every variant.
    """

    def __init__(
        self,
        cfg: ImagePreprocess | None = None,
        input_name: str = DEFAULT_INPUT_NAME,
        load: ImageLoader | None = None,
        cache_size: int = 2048,
    ) -> None:
        self.cfg = cfg or ImagePreprocess()
        self.input_name = input_name
        self.max_length = self.cfg.crop
        self._load: ImageLoader = load or read_image
        self._row = lru_cache(maxsize=cache_size)(self._row_uncached)
        self._pixels = lru_cache(maxsize=cache_size)(self._pixels_uncached)

    def _row_uncached(self, item: str) -> np.ndarray:
        row = preprocess(self._load(item), self.cfg)
        row.flags.writeable = False
        return row

    def _pixels_uncached(self, item: str) -> int:
        shape = np.shape(self._load(item))
        return int(shape[0] * shape[1]) if len(shape) >= 2 else 0

    def image(self, item: str) -> np.ndarray:
        """The decoded source image of ``item`` (uint8 RGB)."""
        return to_rgb(self._load(item))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The source image's pixel count per item (what "size" means for an image)."""
        return [self._pixels(item) for item in texts]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if not texts:
            raise InvalidInputError("no images to encode")
        return {self.input_name: np.stack([self._row(item) for item in texts])}

    def encode_arrays(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded images (any :func:`to_rgb` layout) to a feed, without the item cache."""
        if not images:
            raise InvalidInputError("no images to encode")
        return {self.input_name: np.stack([preprocess(im, self.cfg) for im in images])}

    def parity_feeds(
        self, items: Sequence[str], batch_sizes: Sequence[int] = (1, 4, 8)
    ) -> list[dict[str, np.ndarray]]:
        """Feeds of the given batch sizes cut from ``items`` (the parity gate's shapes for images)."""
        if not items:
            raise ValueError("parity needs at least one image")
        feeds = []
        for i, batch in enumerate(batch_sizes):
            chosen = [items[(i * 7 + j * 13) % len(items)] for j in range(batch)]
            feeds.append(self.encode(chosen))
        return feeds
