"""The image-classify task: model folders, labels, sample-photo views and their split, quality, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.errors import DataError, InvalidInputError, TaskError
from kiln.runtime.image_preprocess import ImagePreprocess, ImagePreprocessor
from kiln.tasks.image_classify import (
    CNN_OP_TYPES,
    ImageClassifyTask,
    find_model_file,
    image_quality,
    int8_static_cnn,
    read_labels,
    read_preprocess,
)
from kiln.tasks.image_classify_config import ImageClassifyConfig
from kiln.tasks.image_labels import IMAGENET_1K
from kiln.tasks.images import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    LABELLED_PHOTOS,
    NO_CLASS,
    PHOTOS,
    image_folder,
    labelled_views,
    parse_view,
    random_views,
    sample_photo_split,
    view_item,
)


def test_imagenet_labels_are_the_1000_classes_in_order() -> None:
    assert len(IMAGENET_1K) == 1000 and len(set(IMAGENET_1K)) == 1000
    assert IMAGENET_1K[0] == "tench" and IMAGENET_1K[281] == "tabby" and IMAGENET_1K[967] == "espresso"


def test_calibration_and_evaluation_photos_are_disjoint_and_cover_the_labelled_ones() -> None:
    assert not set(CALIBRATION_PHOTOS) & set(EVALUATION_PHOTOS)
    assert set(CALIBRATION_PHOTOS) | set(EVALUATION_PHOTOS) == set(PHOTOS)
    assert set(LABELLED_PHOTOS) <= set(EVALUATION_PHOTOS) and len(LABELLED_PHOTOS) == 5


def test_view_items_round_trip() -> None:
    item = view_item("chelsea", (0.1, 0.2, 0.7, 0.9), flip=True)
    assert parse_view(item) == ("chelsea", (0.1, 0.2, 0.7, 0.9), True)
    assert parse_view(view_item("coffee")) == ("coffee", None, False)
    for bad in (
        "sample:chelsea/0.5,0.1,0.2,0.9",
        "sample:chelsea/a,b,c,d",
        "sample:x/0,0,1,1/2,2",
        "cat.png",
    ):
        with pytest.raises(InvalidInputError):
            parse_view(bad)


def test_random_views_are_reproducible_and_inside_the_photo() -> None:
    a = random_views(["chelsea", "coffee"], 20, np.random.default_rng(3))
    assert a == random_views(["chelsea", "coffee"], 20, np.random.default_rng(3))
    assert len(set(a)) == 20
    for item in a:
        _, box, _ = parse_view(item)
        assert box is not None and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        assert (box[2] - box[0]) * (box[3] - box[1]) >= 0.2


def test_split_is_by_photo() -> None:
    s = sample_photo_split(32, 20, 40, seed=0)
    assert len(s.calibration) == 32 and len(s.ranking) == 20 and len(s.held_out) == 40
    assert {parse_view(i)[0] for i in s.calibration + s.ranking} <= set(CALIBRATION_PHOTOS)
    assert {parse_view(i)[0] for i in s.held_out} == set(EVALUATION_PHOTOS)
    assert s.held_out[: len(EVALUATION_PHOTOS)] == [view_item(n) for n in EVALUATION_PHOTOS]
    assert not set(s.calibration) & set(s.ranking)


def test_labelled_views_carry_accepted_classes() -> None:
    data = labelled_views([view_item("chelsea"), view_item("brick")], IMAGENET_1K, "x")
    assert list(data.labels) == [281, NO_CLASS]
    assert data.columns["accepts"] == ["281 282 285", ""] and data.columns["photo"] == ["chelsea", "brick"]


def test_image_quality_is_agreement_with_accuracy_on_known_classes() -> None:
    ref = np.eye(4)[[0, 1, 2, 3]]
    var = np.eye(4)[[0, 1, 2, 0]]
    q = image_quality(ref, var, ["0", "1 2", "", "3"])
    assert q.metric == "top1_agreement" and q.value == 0.75 and q.drop == 0.25
    assert q.extra["reference_accuracy"] == 1.0 and q.extra["accuracy"] == pytest.approx(2 / 3)
    assert q.extra["n_labelled"] == 3 and q.drop_ci95[0] <= 0.25 <= q.drop_ci95[1]
    same = image_quality(ref, ref, ["", "", "", ""])
    assert same.drop == 0.0 and "accuracy" not in same.extra


def test_find_model_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="no image classifier"):
        find_model_file(tmp_path)
    (tmp_path / "a.onnx").write_bytes(b"")
    assert find_model_file(tmp_path) == ("onnx", tmp_path / "a.onnx")
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(TaskError, match="several ONNX"):
        find_model_file(tmp_path)
    pth = tmp_path / "pth"
    pth.mkdir()
    (pth / "efficientnet-lite0-1.pth").write_bytes(b"")
    assert find_model_file(pth)[0] == "efficientnet-lite0"
    with pytest.raises(TaskError, match="not a folder"):
        find_model_file(pth / "efficientnet-lite0-1.pth")


def test_labels_and_preprocess_files(tmp_path: Path) -> None:
    assert read_labels(tmp_path, 1000) == list(IMAGENET_1K)
    assert read_labels(tmp_path, 3) == ["class_0", "class_1", "class_2"]
    (tmp_path / "labels.txt").write_text("cat\ndog\n\n")
    assert read_labels(tmp_path, 2) == ["cat", "dog"]
    with pytest.raises(TaskError, match="names 2 classes"):
        read_labels(tmp_path, 3)
    (tmp_path / "labels.txt").write_text("cat\ncat\n")
    with pytest.raises(TaskError, match="twice"):
        read_labels(tmp_path, 2)
    assert read_preprocess(tmp_path) == ImagePreprocess()
    (tmp_path / "preprocess.json").write_text('{"resize": 40, "crop": 32}')
    assert read_preprocess(tmp_path).crop == 32
    (tmp_path / "preprocess.json").write_text('{"crop": "big"}')
    with pytest.raises(TaskError, match="preprocessing"):
        read_preprocess(tmp_path)


def test_image_folder_labels_by_subfolder(tmp_path: Path) -> None:
    from PIL import Image

    with pytest.raises(DataError, match="no image files"):
        image_folder(tmp_path, ["cat", "dog"])
    (tmp_path / "cat").mkdir()
    img = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    img.save(tmp_path / "cat" / "a.png")
    img.save(tmp_path / "b.jpg")
    data = image_folder(tmp_path, ["cat", "dog"])
    assert sorted(zip(data.columns["photo"], data.labels.tolist(), strict=True)) == [
        ("a.png", 0),
        ("b.jpg", NO_CLASS),
    ]


def test_task_split_on_sample_photos_is_small_when_asked() -> None:
    pytest.importorskip("skimage")
    task = ImageClassifyTask()
    split = task.eval_split(Path("."), eval_samples=40, seed=0)
    assert len(split.held_out) == 40 and len(split.calibration) == 16 and split.ranking is not None
    assert len(split.ranking) == 20
    assert "split by photo" in split.notes
    assert task.parity_texts(split) == split.ranking.texts
    assert task.quality_texts(split) == split.held_out.texts


def test_serving_config_says_what_serving_needs() -> None:
    class Ref:
        pre = ImagePreprocessor(ImagePreprocess(resize=36, crop=32), input_name="input")
        labels = ["a", "b"]
        module = None

    cfg = ImageClassifyTask().serving_config(Ref(), 0)  # type: ignore[arg-type]
    assert isinstance(cfg, ImageClassifyConfig)
    dumped = cfg.model_dump()
    assert dumped["input_name"] == "input" and dumped["input_shape"] == ["batch", 3, 32, 32]
    assert dumped["preprocess"]["resize"] == 36 and dumped["preprocess"]["mean"] == (0.5, 0.5, 0.5)
    assert dumped["labels"] == ["a", "b"] and dumped["output_name"] == "logits"
    assert ImageClassifyConfig.model_validate(dumped) == cfg


def test_the_cnn_static_recipe_quantizes_activations_with_full_8_bit_weights() -> None:
    from kiln.optimize.cpu import CpuInfo

    no_vnni = CpuInfo(model="x86", flags=frozenset({"avx2"}), cores=2)
    recipe = int8_static_cnn(no_vnni)
    assert recipe.per_channel and not recipe.reduce_range and recipe.calibration_method == "MinMax"
    assert recipe.op_types == CNN_OP_TYPES and "Clip" in recipe.op_types
    assert recipe.activation_type == "QInt8" and recipe.weight_type == "QInt8" and "CNN" in recipe.why


def test_sample_photo_accuracy_only_for_imagenet_models(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    task = ImageClassifyTask()
    split = task.eval_split(tmp_path, eval_samples=40, seed=0)
    assert split.held_out.label_names == ["a", "b", "c"]
    small = np.eye(3)[np.arange(40) % 3]
    assert "accuracy" not in task.quality(small, small, split, seed=0).extra
    imagenet = np.zeros((40, 1000))
    imagenet[:, 281] = 1.0
    q = ImageClassifyTask().quality(imagenet, imagenet, split, seed=0)
    assert q.extra["n_labelled"] > 0 and q.value == 1.0


def test_folder_data_is_split_and_labelled_by_the_models_classes(tmp_path: Path) -> None:
    from PIL import Image

    model_dir, data = tmp_path / "model", tmp_path / "data"
    model_dir.mkdir()
    (model_dir / "labels.txt").write_text("cat\ndog\n")
    for i in range(60):
        folder = data / ("cat" if i % 2 else "other")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(folder / f"{i}.png")
    split = ImageClassifyTask(data).eval_split(model_dir, eval_samples=None, seed=0)
    assert (len(split.calibration), len(split.ranking or []), len(split.held_out)) == (16, 18, 26)
    assert set(split.held_out.labels.tolist()) <= {0, NO_CLASS}
    with pytest.raises(DataError, match="too few"):
        ImageClassifyTask(data).eval_split(model_dir, eval_samples=30, seed=0)
