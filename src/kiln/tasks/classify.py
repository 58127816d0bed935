"""The ``classify`` task for ``kiln build``: a fine-tuned sequence classifier, judged on the user's data.

The user passes the labelled file (``--data``: CSV/TSV/JSONL/Parquet with a text and a label column).
Labels are matched to the model's ``config.id2label`` by name (or by class id when they are integers), so
the data must only hold classes the model knows. The examples drawn are split, stratified by label:
10% calibration (inputs for recipes that need them), 30% ranking (parity agreement; the search later),
60% held out (the quality every variant reports and the selection budgets).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from kiln.bench.quality_classify import (
    LENGTH_SLICE,
    agreement_failure,
    classify_quality,
    length_bucket,
)
from kiln.bench.scores import ParityCheck, Quality
from kiln.errors import DataError, TaskError
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.base import EvalSplit, Reference, Runner, Task
from kiln.tasks.classify_config import TASK_NAME, ClassifyConfig
from kiln.tasks.datasets import LabelledTexts, _stratified_indices, load_labelled_file

EXAMPLE_TEXTS = ["kiln exports this sentence.", "and a second, longer one for shape."]
CALIBRATION_FRACTION = 0.1
RANKING_FRACTION = 0.3
MIN_TOP1_AGREEMENT = 0.98
"""Lossy variants must name the reference's class on at least this share of the ranking texts."""
MAX_PROB_SHIFT = 0.2
"""...and move no softmax probability of any row by more than this on the parity shapes. The gate catches
broken graphs (wrong outputs, collapsed or flipped logits); how much accuracy a variant loses is the
held-out evaluation's call, against ``--max-quality-drop``. (It replaced a logit-cosine gate: a
two-class row near the decision boundary has logits near zero, whose angle swings under any rounding —
per-channel INT8 graphs with top-1 agreement 0.99 were turned away at cosine 0.80 — while its
probabilities barely move. Per-channel INT8 MiniLM shifts them by at most 0.05, a broken graph by 0.5.)"""
MAX_AGREEMENT_TEXTS = 512


def match_labels(data: LabelledTexts, model_labels: Sequence[str], where: str) -> LabelledTexts:
    """Re-index ``data``'s labels to the model's class ids (by name, else by integer id)."""
    by_name = {name: i for i, name in enumerate(model_labels)}
    ids: list[int] = []
    unknown: list[str] = []
    for name in data.label_names:
        if name in by_name:
            ids.append(by_name[name])
            continue
        try:
            number = int(name)
        except ValueError:
            number = -1
        if 0 <= number < len(model_labels) and str(number) == name:
            ids.append(number)
        else:
            unknown.append(name)
    if unknown:
        raise DataError(
            f"{where}: labels {unknown} are not classes of the model; it knows {list(model_labels)} "
            "(config.json id2label). Rename the labels in the file, or use integer class ids."
        )
    mapping = np.asarray(ids, dtype=np.int64)
    return LabelledTexts(
        texts=data.texts,
        labels=mapping[data.labels],
        label_names=list(model_labels),
        name=data.name,
        columns=data.columns,
    )


def _split(
    data: LabelledTexts, size: int, seed: int, names: tuple[str, str]
) -> tuple[LabelledTexts, LabelledTexts]:
    rest, chosen = _stratified_indices(data.labels, size, seed)
    return data.subset(rest, f"{data.name}/{names[0]}"), data.subset(chosen, f"{data.name}/{names[1]}")


class ClassifyTask(Task):
    """Quality is accuracy (plus macro-F1, ROC-AUC, per-slice accuracy) on the user's held-out examples;
    parity compares logits. The reference's memory is probed as its encoder (``torch-embed``): the
    classification head it leaves out is ``hidden x classes`` weights."""

    name = TASK_NAME
    graph_output = "logits"
    quality_metric = "accuracy"
    memory_probe: Literal["torch-embed"] = "torch-embed"

    def __init__(
        self,
        data_path: Path | None,
        text_column: str = "text",
        label_column: str = "label",
        slice_by: Sequence[str] = (),
    ) -> None:
        self.data_path = data_path
        self.text_column, self.label_column = text_column, label_column
        self.slice_by = tuple(slice_by)
        self._rankings: dict[int, np.ndarray] = {}  # id(reference runner) -> its ranking outputs

    def check_model(self, model_dir: Path) -> None:
        from kiln.tasks.classify_torch import check_classify_config

        check_classify_config(model_dir)
        if self.data_path is None:
            raise TaskError(
                "task classify needs labelled data: pass --data FILE (CSV, JSONL or Parquet with "
                f"{self.text_column!r} and {self.label_column!r} columns)"
            )

    def load_reference(self, model_dir: Path, tokenizer: TextTokenizer, threads: int) -> Reference:
        from kiln.tasks.classify_torch import TorchClassifier

        return TorchClassifier(model_dir, tokenizer, threads)

    def example_feed(self, tokenizer: TextTokenizer) -> dict[str, np.ndarray]:
        return tokenizer.encode(EXAMPLE_TEXTS)

    def wrap_onnx(self, backend: OnnxBackend, tokenizer: TextTokenizer) -> Runner:
        return OnnxEmbedder(backend, tokenizer)  # rows are logits here

    def eval_split(self, model_dir: Path, eval_samples: int | None, seed: int) -> EvalSplit:
        from kiln.tasks.classify_torch import check_classify_config

        if self.data_path is None:
            raise TaskError("task classify needs labelled data: pass --data FILE")
        if LENGTH_SLICE in self.slice_by:
            raise DataError(f"--slice-by {LENGTH_SLICE!r} is built in (length buckets); name another column")
        raw = load_labelled_file(self.data_path, self.text_column, self.label_column, self.slice_by)
        data = match_labels(raw, check_classify_config(model_dir), str(self.data_path))
        if eval_samples and eval_samples < len(data):
            _, chosen = _stratified_indices(data.labels, eval_samples, seed)
            data = data.subset(chosen)
        n = len(data)
        n_calibration = max(1, round(n * CALIBRATION_FRACTION))
        n_held_out = max(1, round(n * (1.0 - CALIBRATION_FRACTION - RANKING_FRACTION)))
        rest, held_out = _split(data, n_held_out, seed, ("rest", "held-out"))
        rest.name = data.name
        ranking, calibration = _split(rest, n_calibration, seed, ("ranking", "calibration"))
        notes = (
            f"stratified split: {len(calibration)} calibration, {len(ranking)} ranking, "
            f"{len(held_out)} held out; accuracy on the held-out split, paired bootstrap 95% interval; "
            f"slices: {', '.join((LENGTH_SLICE, *self.slice_by))}"
        )
        return EvalSplit(data=data, held_out=held_out, calibration=calibration, ranking=ranking, notes=notes)

    def parity_texts(self, split: EvalSplit) -> list[str]:
        return (split.ranking or split.held_out).texts

    def judge_lossy(
        self, checks: Sequence[ParityCheck], reference: Runner, variant: Runner, split: EvalSplit
    ) -> str | None:
        """Lossy steps: the same top-1 class on at least ``MIN_TOP1_AGREEMENT`` of the ranking texts and
        no class probability moved by more than ``MAX_PROB_SHIFT``. (Exact steps: logits within the exact
        tolerances, :meth:`Task.judge_parity`.)"""
        for c in checks:
            shift = 1.0 if c.max_prob_shift is None else c.max_prob_shift  # no logits rows: broken
            if not shift <= MAX_PROB_SHIFT:
                return (
                    f"parity gate (lossy): at batch {c.batch_size} x {c.seq_len} tokens a class "
                    f"probability moved by {shift:.3f} (limit {MAX_PROB_SHIFT})"
                )
        texts = self.parity_texts(split)[:MAX_AGREEMENT_TEXTS]
        if id(reference) not in self._rankings:  # the PyTorch reference, or a structural parent
            self._rankings[id(reference)] = reference.embed(texts)
        return agreement_failure(
            self._rankings[id(reference)], variant.embed(texts), MIN_TOP1_AGREEMENT, "ranking texts"
        )

    def quality_texts(self, split: EvalSplit) -> list[str]:
        return split.held_out.texts

    def quality(self, reference: np.ndarray, variant: np.ndarray, split: EvalSplit, seed: int) -> Quality:
        held = split.held_out
        slices = {LENGTH_SLICE: [length_bucket(t) for t in held.texts], **held.columns}
        return classify_quality(reference, variant, held.labels, slices, seed=seed)

    def serving_config(self, reference: Reference, max_length: int) -> ClassifyConfig:
        labels = getattr(reference, "labels", None)
        if not isinstance(labels, list):
            raise TaskError("the classify reference does not name its classes")
        return ClassifyConfig(max_length=max_length, labels=labels)
