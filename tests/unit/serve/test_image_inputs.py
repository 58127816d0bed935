"""Image files and tensors from requests: base64, safe decoding under a pixel limit, tensor checks."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from kiln.errors import InvalidInputError, PayloadTooLargeError
from kiln.runtime.image_preprocess import ImagePreprocess
from kiln.serve.image_inputs import (
    EncodedImages,
    ImageTensor,
    decode_base64,
    decode_image,
    prepare_images,
)

CFG = ImagePreprocess(resize=20, crop=16)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def test_base64_forms() -> None:
    data = bytes(range(256))
    std = base64.b64encode(data).decode()
    assert decode_base64(std, "x") == data
    assert decode_base64(std.rstrip("="), "x") == data
    assert decode_base64(base64.urlsafe_b64encode(data).decode(), "x") == data
    assert decode_base64(f"data:image/png;base64,{std}", "x") == data
    assert decode_base64(base64.encodebytes(data).decode(), "x") == data  # MIME line breaks
    with pytest.raises(InvalidInputError, match="image 3 is not base64"):
        decode_base64("a*b", "image 3")
    with pytest.raises(InvalidInputError, match="is empty"):
        decode_base64("  ", "image 3")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1", "CMYK", "I;16"])
def test_modes_become_rgb(mode: str) -> None:
    fmt = "TIFF" if mode in ("CMYK",) else "PNG"
    rgb, description = decode_image(encoded(Image.new(mode, (7, 5)), fmt), 0)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    assert description.startswith(f"{fmt.lower()} 7x5, ")


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    rgb, _ = decode_image(data, 0)
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 2] < 50


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    data = encoded(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(PayloadTooLargeError, match="image 2 is 40x30 = 1200 pixels; the limit is 1199"):
        decode_image(data, 2, max_pixels=1199)
    assert decode_image(data, 2, max_pixels=1200)[0].shape == (30, 40, 3)


def test_prepare_files_and_tensors() -> None:
    files = [
        encoded(Image.new("RGB", (30, 24), (9, 99, 199)), "JPEG"),
        encoded(Image.new("L", (16, 16)), "PNG"),
    ]
    prepared = prepare_images(EncodedImages(files), CFG)
    assert [r.shape for r in prepared.rows] == [(3, 16, 16)] * 2
    assert prepared.descriptions == [
        f"jpeg 30x24, {len(files[0])} bytes",
        f"png 16x16, {len(files[1])} bytes",
    ]
    x = np.stack(prepared.rows)
    again = prepare_images(ImageTensor(x), CFG)
    assert again.descriptions == ["tensor 3x16x16"] * 2
    np.testing.assert_array_equal(np.stack(again.rows), x)
    for bad, message in [
        (np.zeros((2, 3, 8, 8), np.float32), r"shape \[n, 3, 16, 16\]"),
        (np.zeros((0, 3, 16, 16), np.float32), r"shape \[n, 3, 16, 16\]"),
        (np.full((1, 3, 16, 16), np.inf, np.float32), "NaN or infinite"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            prepare_images(ImageTensor(bad), CFG)
