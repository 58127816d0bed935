"""Image preprocessing (kiln.runtime.image_preprocess): resize shorter side, centre crop, normalise, NCHW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")

from kiln.errors import InvalidInputError
from kiln.runtime.image_preprocess import ImagePreprocess, ImagePreprocessor, preprocess, read_image, to_rgb


def test_to_rgb_accepts_gray_rgba_float_and_bool() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_rgb(gray).shape == (3, 4, 3) and (to_rgb(gray)[..., 2] == gray).all()
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert to_rgb(rgba).shape == (2, 2, 3)
    floats = np.full((2, 2, 3), 1.0)
    assert (to_rgb(floats) == 255).all()
    assert (to_rgb(np.ones((2, 2), dtype=bool)) == 255).all()
    assert to_rgb(np.full((2, 2), 1000, dtype=np.uint16)).max() < 255  # 16-bit scaled down


@pytest.mark.parametrize("shape", [(5,), (2, 2, 2), (0, 3, 3)])
def test_to_rgb_refuses_what_is_not_an_image(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError):
        to_rgb(np.zeros(shape, dtype=np.uint8))


def test_to_rgb_refuses_nan() -> None:
    with pytest.raises(InvalidInputError, match="NaN"):
        to_rgb(np.full((2, 2, 3), np.nan))


def test_preprocess_shape_range_and_normalisation() -> None:
    cfg = ImagePreprocess(resize=32, crop=28)
    white = np.full((40, 80, 3), 255, dtype=np.uint8)
    x = preprocess(white, cfg)
    assert x.shape == (3, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    black = preprocess(np.zeros((50, 30, 3), dtype=np.uint8), cfg)
    np.testing.assert_allclose(black, -1.0, atol=1e-6)


def test_preprocess_takes_the_centre_and_keeps_channel_order() -> None:
    cfg = ImagePreprocess(resize=8, crop=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    img = np.zeros((8, 24, 3), dtype=np.uint8)
    img[:, 8:16, 0] = 255  # a red band in the middle third: the centre crop sees only red
    x = preprocess(img, cfg)
    np.testing.assert_allclose(x[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[1:], 0.0, atol=1e-6)


def test_preprocess_matches_a_pil_reference() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(300, 451, 3), dtype=np.uint8)
    cfg = ImagePreprocess()
    want = Image.fromarray(img).resize((385, 256), Image.Resampling.BICUBIC).crop((80, 16, 304, 240))
    expected = (np.asarray(want, dtype=np.float32) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(preprocess(img, cfg), expected.transpose(2, 0, 1), atol=1e-6)


def test_config_round_trips_and_names_its_shape() -> None:
    cfg = ImagePreprocess(resize=160, crop=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert ImagePreprocess.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.input_shape() == ["batch", 3, 128, 128]


def test_preprocessor_encodes_items_and_caches(tmp_path: Path) -> None:
    calls: list[str] = []

    def load(item: str) -> np.ndarray:
        calls.append(item)
        return np.full((10 + len(item), 20, 3), 7 * len(item), dtype=np.uint8)

    pre = ImagePreprocessor(ImagePreprocess(resize=16, crop=16), input_name="x", load=load)
    feed = pre.encode(["a", "bb", "a"])
    assert list(feed) == ["x"] and feed["x"].shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(feed["x"][0], feed["x"][2])
    assert calls.count("a") == 1
    assert pre.count_tokens(["a", "bb"]) == [11 * 20, 12 * 20]
    assert pre.max_length == 16
    with pytest.raises(InvalidInputError):
        pre.encode([])
    feeds = pre.parity_feeds(["a", "bb"], batch_sizes=(1, 3))
    assert [f["x"].shape[0] for f in feeds] == [1, 3]


def test_read_image_decodes_and_explains_failures(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "im.png"
    Image.fromarray(np.full((5, 6, 3), 9, dtype=np.uint8)).save(path)
    assert read_image(path).shape == (5, 6, 3)
    bad = tmp_path / "not.png"
    bad.write_text("hello")
    with pytest.raises(InvalidInputError, match="not an image"):
        read_image(bad)
    with pytest.raises(InvalidInputError, match="no image file"):
        read_image(tmp_path / "missing.png")
