"""Evaluation images for ``image-classify``: the sample photos shipped with scikit-image and scikit-learn.

No image data set can be downloaded where kiln builds, so the default evaluation data is made from the
photos two installed packages ship: 21 from ``skimage.data`` and 2 from ``sklearn.datasets``. Five of them
show something ImageNet-1k has a class for (:data:`SAMPLE_PHOTOS` ``accepts``: the class ids counted as
right); the rest (textures, microscopy, astronomy, text, a portrait, a dahlia) still measure top-1
agreement with the fp32 reference.

An *item* is a string the :func:`load_item` function turns into pixels:

* ``sample:NAME`` - a whole sample photo;
* ``sample:NAME/x0,y0,x1,y1`` - a crop of it (corners as fractions of width and height), ``/f`` appended
  for a horizontal flip; :func:`random_views` draws these like an Inception-style random-resized crop;
* anything else - an image file path.

The split is by photo: calibration views (and the ranking screen's) are cut from
:data:`CALIBRATION_PHOTOS`, held-out views from the other photos, so no pixel the quantizer calibrated on
is ever scored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kiln.errors import DataError, InvalidInputError
from kiln.runtime.image_preprocess import read_image, to_rgb
from kiln.tasks.datasets import LabelledTexts

SAMPLE_PREFIX = "sample:"
NO_CLASS = -1
"""The label of an image without a known ImageNet class (only agreement with the reference counts)."""


@dataclass(frozen=True)
class SamplePhoto:
    name: str
    source: str  # "skimage" (a ``skimage.data`` function) or "sklearn" (``load_sample_image`` file)
    accepts: tuple[int, ...] = ()  # ImageNet-1k ids counted as a right answer; () = no known class
    what: str = ""


SAMPLE_PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("chelsea", "skimage", (281, 282, 285), "a tabby cat (tabby, tiger cat, Egyptian cat)"),
    SamplePhoto("coffee", "skimage", (967, 968), "a cup of espresso (espresso, cup)"),
    SamplePhoto(
        "rocket",
        "skimage",
        (657, 744, 812),
        "a rocket on its launch pad (missile, projectile, space shuttle)",
    ),
    SamplePhoto("camera", "skimage", (872, 759), "the cameraman, gray (tripod, reflex camera)"),
    SamplePhoto(
        "china.jpg", "sklearn", (698, 663, 832), "the Summer Palace tower (palace, monastery, stupa)"
    ),
    SamplePhoto("flower.jpg", "sklearn", (), "a dahlia (no ImageNet class)"),
    SamplePhoto("astronaut", "skimage", (), "a portrait"),
    SamplePhoto("hubble_deep_field", "skimage"),
    SamplePhoto("immunohistochemistry", "skimage"),
    SamplePhoto("retina", "skimage"),
    SamplePhoto("brick", "skimage"),
    SamplePhoto("grass", "skimage"),
    SamplePhoto("gravel", "skimage"),
    SamplePhoto("moon", "skimage"),
    SamplePhoto("coins", "skimage"),
    SamplePhoto("clock", "skimage"),
    SamplePhoto("horse", "skimage"),
    SamplePhoto("page", "skimage"),
    SamplePhoto("text", "skimage"),
    SamplePhoto("logo", "skimage"),
    SamplePhoto("colorwheel", "skimage"),
    SamplePhoto("cell", "skimage"),
    SamplePhoto("microaneurysms", "skimage"),
)
PHOTOS = {p.name: p for p in SAMPLE_PHOTOS}
CALIBRATION_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "immunohistochemistry",
    "grass",
    "gravel",
    "clock",
    "horse",
    "text",
    "logo",
    "colorwheel",
    "cell",
    "microaneurysms",
)
"""Photos whose views calibrate (and screen); the others are held out. Disjoint by construction."""
EVALUATION_PHOTOS: tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.name not in CALIBRATION_PHOTOS)
LABELLED_PHOTOS: tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.accepts)


def _package_missing(name: str) -> DataError:
    return DataError(
        f"the sample photos ship with {name}, which is not installed: run `pip install scikit-image "
        "scikit-learn` (or pass your own images with --data FOLDER)"
    )


@lru_cache(maxsize=32)
def load_sample_photo(name: str) -> np.ndarray:
    """The sample photo ``name`` as uint8 RGB ``HxWx3`` (read-only; cached)."""
    photo = PHOTOS.get(name)
    if photo is None:
        raise InvalidInputError(f"unknown sample photo {name!r}; known: {', '.join(PHOTOS)}")
    if photo.source == "sklearn":
        if importlib.util.find_spec("sklearn") is None:
            raise _package_missing("scikit-learn")
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    else:
        if importlib.util.find_spec("skimage") is None:
            raise _package_missing("scikit-image")
        import skimage.data

        arr = getattr(skimage.data, name)()
    rgb = to_rgb(arr)
    rgb.flags.writeable = False
    return rgb


def view_item(name: str, box: Sequence[float] | None = None, flip: bool = False) -> str:
    """The item id of a view of a sample photo (``box``: x0, y0, x1, y1 as fractions)."""
    item = SAMPLE_PREFIX + name
    if box is not None:
        item += "/" + ",".join(f"{v:.4f}" for v in box)
    if flip:
        item += "/f"
    return item


def parse_view(item: str) -> tuple[str, tuple[float, float, float, float] | None, bool]:
    """``(photo, box or None, flipped)`` of a ``sample:`` item."""
    if not item.startswith(SAMPLE_PREFIX):
        raise InvalidInputError(f"{item!r} is not a sample-photo item (it must start with {SAMPLE_PREFIX!r})")
    parts = item[len(SAMPLE_PREFIX) :].split("/")
    name, rest = parts[0], parts[1:]
    flip = bool(rest) and rest[-1] == "f"
    if flip:
        rest = rest[:-1]
    box: tuple[float, float, float, float] | None = None
    if len(rest) > 1:
        raise InvalidInputError(f"bad sample-photo item {item!r}")
    if rest:
        try:
            x0, y0, x1, y1 = (float(v) for v in rest[0].split(","))
        except ValueError as exc:
            raise InvalidInputError(f"bad crop box in {item!r}: want x0,y0,x1,y1") from exc
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise InvalidInputError(f"crop box in {item!r} must satisfy 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        box = (x0, y0, x1, y1)
    return name, box, flip


def load_item(item: str) -> np.ndarray:
    """Pixels of an item: a sample-photo view, or an image file."""
    if not item.startswith(SAMPLE_PREFIX):
        return read_image(Path(item))
    name, box, flip = parse_view(item)
    arr = load_sample_photo(name)
    if box is not None:
        h, w = arr.shape[:2]
        x0, x1 = int(round(box[0] * w)), max(int(round(box[0] * w)) + 1, int(round(box[2] * w)))
        y0, y1 = int(round(box[1] * h)), max(int(round(box[1] * h)) + 1, int(round(box[3] * h)))
        arr = arr[y0:y1, x0:x1]
    if flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def random_views(
    names: Sequence[str],
    n: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> list[str]:
    """``n`` random-resized-crop views (area share, aspect ratio, position, flip) of ``names`` in turn."""
    items: list[str] = []
    for i in range(n):
        name = names[i % len(names)]
        share = float(rng.uniform(*area))
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        w = min(1.0, float(np.sqrt(share * aspect)))
        h = min(1.0, float(np.sqrt(share / aspect)))
        x0 = float(rng.uniform(0.0, 1.0 - w))
        y0 = float(rng.uniform(0.0, 1.0 - h))
        items.append(view_item(name, (x0, y0, x0 + w, y0 + h), flip=bool(rng.random() < 0.5)))
    return items


def photo_of(item: str) -> str:
    return parse_view(item)[0] if item.startswith(SAMPLE_PREFIX) else Path(item).name


def labelled_views(items: Sequence[str], label_names: Sequence[str], name: str) -> LabelledTexts:
    """Sample-photo items as :class:`LabelledTexts`: label = the first accepted class (or
    :data:`NO_CLASS`); columns ``photo`` and ``accepts`` (space-separated accepted ids)."""
    photos = [photo_of(i) for i in items]
    accepts = [PHOTOS[p].accepts if p in PHOTOS else () for p in photos]
    return LabelledTexts(
        texts=list(items),
        labels=np.asarray([a[0] if a else NO_CLASS for a in accepts], dtype=np.int64),
        label_names=list(label_names),
        name=name,
        columns={"photo": photos, "accepts": [" ".join(str(c) for c in a) for a in accepts]},
    )


@dataclass
class PhotoSplit:
    calibration: list[str]
    ranking: list[str]
    held_out: list[str]


def sample_photo_split(n_calibration: int, n_ranking: int, n_held_out: int, seed: int) -> PhotoSplit:
    """Views for each part of a build: calibration and ranking from :data:`CALIBRATION_PHOTOS` (two
    random streams), held out from :data:`EVALUATION_PHOTOS` (each whole photo first, then random views)."""
    rng = np.random.default_rng([seed, 1])
    calibration = random_views(CALIBRATION_PHOTOS, n_calibration, rng)
    ranking = random_views(CALIBRATION_PHOTOS, n_ranking, np.random.default_rng([seed, 2]))
    whole = [view_item(n) for n in EVALUATION_PHOTOS][:n_held_out]
    rest = random_views(EVALUATION_PHOTOS, n_held_out - len(whole), np.random.default_rng([seed, 3]))
    return PhotoSplit(calibration=calibration, ranking=ranking, held_out=whole + rest)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_folder(folder: Path, label_names: Sequence[str]) -> LabelledTexts:
    """A user's images: every image file under ``folder``; files in a sub-folder named after one of the
    model's classes are labelled with it, the rest are unlabelled (agreement only)."""
    if not folder.is_dir():
        raise DataError(f"--data {folder}: task image-classify takes a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--data {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    index = {n: i for i, n in enumerate(label_names)}
    labels = []
    for f in files:
        parent = f.parent.name if f.parent != folder else ""
        labels.append(index.get(parent, NO_CLASS))
    return LabelledTexts(
        texts=[str(f) for f in files],
        labels=np.asarray(labels, dtype=np.int64),
        label_names=list(label_names),
        name=str(folder),
        columns={
            "photo": [f.name for f in files],
            "accepts": ["" if lab == NO_CLASS else str(lab) for lab in labels],
        },
    )
