"""Images in requests: untrusted bytes decoded under limits, or preprocessed tensors checked; both become
the rows an image model runs (no web framework here; Pillow is imported when an image is decoded).

Two kinds of input, one per request:

* :class:`EncodedImages`: image files as bytes (one element per image). Pillow decodes them, but only the
  formats in ``DECODED_FORMATS`` (plugins that run external programs, such as EPS through Ghostscript, are
  never tried); the first frame of an animated or multi-page file is used. The size in the file's header
  is checked against ``max_pixels`` *before* any pixel is decoded (a decompression bomb is refused with
  413, as is one Pillow's own bomb check catches); an empty, unknown, truncated or corrupt file is refused
  with 400 naming the image and the problem. Decoded images go through the bundle's preprocessing
  (:func:`kiln.runtime.image_preprocess.preprocess`: exactly what the build measured). EXIF orientation
  is not applied, as in the build.
* :class:`ImageTensor`: an already preprocessed float32 ``[n, 3, H, W]`` tensor of the model's input
  shape; it must hold finite numbers only.

Each prepared image also gets a short description for the request log (format, size, bytes; or the
tensor's shape): the log never sees an image's bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.errors import InvalidInputError, PayloadTooLargeError
from kiln.runtime.image_preprocess import ImagePreprocess, preprocess

DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Pillow plugins tried on request bytes: the common photo and web formats, nothing that runs a program."""
DEFAULT_MAX_PIXELS = 25_000_000
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)


@dataclass(frozen=True)
class EncodedImages:
    """Image files as bytes, one per image."""

    items: Sequence[bytes]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class ImageTensor:
    """Images already preprocessed: float32 ``[n, 3, H, W]``."""

    array: np.ndarray

    def __len__(self) -> int:
        return int(self.array.shape[0]) if self.array.ndim else 0


ImageInputs = EncodedImages | ImageTensor


@dataclass(frozen=True)
class PreparedImages:
    """What the model runs (float32 ``3 x H x W`` rows, in input order) and what the log may keep of them."""

    rows: list[np.ndarray]
    descriptions: list[str]


def formats_text() -> str:
    return ", ".join("WebP" if f == "WEBP" else f for f in DECODED_FORMATS)


def decode_base64(text: str, what: str) -> bytes:
    """The bytes of a base64 string (standard or URL-safe alphabet, padding optional, an optional
    ``data:<type>;base64,`` prefix); ``InvalidInputError`` naming ``what`` otherwise."""
    body = _DATA_URL.sub("", text.strip(), count=1)
    body = "".join(body.split())  # line breaks (MIME-style base64) are allowed
    if not body:
        raise InvalidInputError(f"{what} is empty: send the image file's bytes, base64-encoded")
    if "-" in body or "_" in body:
        body = body.replace("-", "+").replace("_", "/")
    body += "=" * (-len(body) % 4)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"{what} is not base64: JSON carries an image file as the base64 text of its bytes "
            "(or send the raw bytes: multipart/form-data, or the binary tensor extension)"
        ) from None


def _too_many_pixels(index: int, width: int, height: int, max_pixels: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"image {index} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
        "(send a smaller image, or raise KILN_MAX_IMAGE_PIXELS / --max-image-pixels)"
    )


def decode_image(data: bytes, index: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """One image file's first frame as uint8 RGB ``H x W x 3``, and its description for the log.

    Raises ``InvalidInputError`` (400) for anything that is not a whole image in one of
    ``DECODED_FORMATS`` and ``PayloadTooLargeError`` (413) for one of more than ``max_pixels`` pixels.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInputError(f"image {index} is empty (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLargeError(
            f"image {index} is refused as a decompression bomb ({exc}); the limit is {max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"image {index} ({len(data)} bytes) is not an image file kiln decodes ({formats_text()})"
        ) from None
    except Exception as exc:  # a malformed header: the plugin raises whatever its parser hit
        raise InvalidInputError(
            f"image {index} has a malformed or truncated header ({type(exc).__name__}: {exc})"
        ) from None
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise InvalidInputError(f"image {index} is {width}x{height}: it holds no pixels")
        if width * height > max_pixels:
            raise _too_many_pixels(index, width, height, max_pixels)
        kind = im.format or "image"
        try:
            rgb = np.asarray(im.convert("RGB"))
        except Image.DecompressionBombError:
            raise _too_many_pixels(index, width, height, max_pixels) from None
        except Exception as exc:  # truncated or corrupt pixel data (OSError, SyntaxError, ValueError ...)
            raise InvalidInputError(
                f"image {index} ({kind}, {width}x{height}) cannot be decoded: {exc} "
                "(is the file truncated or corrupt?)"
            ) from None
    return rgb, f"{kind.lower()} {width}x{height}, {len(data)} bytes"


def check_tensor(array: np.ndarray, channels: int, side: int) -> None:
    """``InvalidInputError`` unless ``array`` is ``[n >= 1, channels, side, side]`` of finite numbers."""
    expected = [channels, side, side]
    if array.ndim != 4 or list(array.shape[1:]) != expected or array.shape[0] < 1:
        raise InvalidInputError(
            f"a preprocessed image tensor must have shape [n, {channels}, {side}, {side}]; "
            f"got {list(array.shape)}"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError("the preprocessed image tensor holds NaN or infinite values")


def prepare_images(
    images: ImageInputs, cfg: ImagePreprocess, max_pixels: int = DEFAULT_MAX_PIXELS
) -> PreparedImages:
    """The model rows of ``images`` (decoded and preprocessed, or checked), one at a time: at most one
    decoded full-size image is held at once."""
    if isinstance(images, ImageTensor):
        array = np.asarray(images.array, dtype=np.float32)
        check_tensor(array, 3, cfg.crop)
        shape = "x".join(str(d) for d in array.shape[1:])
        return PreparedImages(list(array), [f"tensor {shape}"] * len(array))
    rows: list[np.ndarray] = []
    descriptions: list[str] = []
    for i, data in enumerate(images.items):
        rgb, description = decode_image(bytes(data), i, max_pixels)
        rows.append(preprocess(rgb, cfg))
        descriptions.append(description)
    return PreparedImages(rows, descriptions)
