from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import DataError, TaskError
from kiln.tasks.classify import ClassifyTask, match_labels
from kiln.tasks.classify_config import ClassifyConfig
from kiln.tasks.datasets import LabelledTexts, load_labelled_file


def _config(folder: Path, **overrides: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, object] = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "id2label": {"0": "rotten", "1": "fresh"},
        "label2id": {"rotten": 0, "fresh": 1},
    }
    cfg.update(overrides)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["text,label,genre"] + [f"{t},{lab},{g}" for t, lab, g in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _balanced_rows(n: int) -> list[tuple[str, str, str]]:
    return [
        (f"review number {i}", "fresh" if i % 2 else "rotten", "drama" if i % 3 else "comedy")
        for i in range(n)
    ]


def test_labels_match_by_name_and_reindex_to_model_ids() -> None:
    data = LabelledTexts(["a", "b", "c"], np.array([0, 1, 0]), ["fresh", "rotten"], "d")
    out = match_labels(data, ["rotten", "fresh"], "d.csv")
    assert out.label_names == ["rotten", "fresh"]
    assert out.labels.tolist() == [1, 0, 1]


def test_integer_labels_match_class_ids() -> None:
    data = LabelledTexts(["a", "b"], np.array([0, 1]), ["0", "1"], "d")
    assert match_labels(data, ["neg", "pos"], "d.csv").labels.tolist() == [0, 1]


def test_unknown_labels_name_what_the_model_knows() -> None:
    data = LabelledTexts(["a", "b"], np.array([0, 1]), ["fresh", "meh"], "d")
    with pytest.raises(DataError, match=r"\['meh'\].*\['rotten', 'fresh'\]"):
        match_labels(data, ["rotten", "fresh"], "d.csv")
    ints = LabelledTexts(["a", "b"], np.array([0, 1]), ["0", "7"], "d")
    with pytest.raises(DataError, match="'7'"):
        match_labels(ints, ["rotten", "fresh"], "d.csv")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"architectures": ["BertModel"]}, "ForSequenceClassification"),
        ({"problem_type": "multi_label_classification"}, "multi-label"),
        ({"id2label": {"0": "only"}, "label2id": {"only": 0}}, "single class"),
    ],
)
def test_models_the_task_cannot_use_are_refused(
    tmp_path: Path, overrides: dict[str, object], match: str
) -> None:
    folder = _config(tmp_path / "m", **overrides)
    with pytest.raises(TaskError, match=match):
        ClassifyTask(tmp_path / "d.csv").check_model(folder)


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(TaskError, match="config.json"):
        ClassifyTask(tmp_path / "d.csv").check_model(tmp_path / "m")


def test_data_is_required(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="--data"):
        ClassifyTask(None).check_model(_config(tmp_path / "m"))


def test_split_is_stratified_calibration_ranking_held_out(tmp_path: Path) -> None:
    model = _config(tmp_path / "m")
    data = _csv(tmp_path / "d.csv", _balanced_rows(100))
    split = ClassifyTask(data, slice_by=("genre",)).eval_split(model, None, seed=0)
    assert (len(split.calibration), len(split.held_out)) == (10, 60)
    assert split.ranking is not None and len(split.ranking) == 30
    assert split.n_train == 40 and split.fit is None
    texts = set(split.calibration.texts) | set(split.ranking.texts) | set(split.held_out.texts)
    assert len(texts) == 100  # disjoint and complete
    assert split.held_out.label_names == ["rotten", "fresh"]
    assert abs(int(split.held_out.labels.sum()) - 30) <= 1
    assert len(split.held_out.columns["genre"]) == 60
    assert "held out" in split.notes and "genre" in split.notes


def test_eval_samples_draws_fewer(tmp_path: Path) -> None:
    split = ClassifyTask(_csv(tmp_path / "d.csv", _balanced_rows(100))).eval_split(
        _config(tmp_path / "m"), 50, seed=0
    )
    assert split.data.name == "d" and len(split.data) == 50


def test_bad_data_files_say_what_is_wrong(tmp_path: Path) -> None:
    model = _config(tmp_path / "m")
    with pytest.raises(DataError, match="'nope'"):
        ClassifyTask(_csv(tmp_path / "d.csv", _balanced_rows(10)), slice_by=("nope",)).eval_split(
            model, None, 0
        )
    with pytest.raises(DataError, match="no column"):
        ClassifyTask(_csv(tmp_path / "e.csv", _balanced_rows(10)), text_column="review").eval_split(
            model, None, 0
        )
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        ClassifyTask(empty).eval_split(model, None, 0)
    rows = [*_balanced_rows(10), ("odd one", "so-so", "drama")]
    with pytest.raises(DataError, match="so-so"):
        ClassifyTask(_csv(tmp_path / "f.csv", rows)).eval_split(model, None, 0)
    with pytest.raises(DataError, match="built in"):
        ClassifyTask(_csv(tmp_path / "g.csv", _balanced_rows(10)), slice_by=("length",)).eval_split(
            model, None, 0
        )


def test_extra_columns_follow_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "a", "label": 1, "src": "x"}\n{"text": "", "label": 0, "src": "y"}\n'
        '{"text": "c", "label": 0, "src": null}\n'
    )
    data = load_labelled_file(path, extra_columns=("src",))
    assert data.texts == ["a", "c"] and data.columns == {"src": ["x", ""]}
    assert data.subset([1]).columns == {"src": [""]}


def test_config_needs_two_labels() -> None:
    assert ClassifyConfig(labels=["a", "b"]).scores_output == "scores"
    with pytest.raises(ValueError):
        ClassifyConfig(labels=["a"])


def test_lossy_gate_judges_probability_shift_not_logit_angle(tmp_path: Path) -> None:
    from kiln.bench.scores import ParityCheck
    from kiln.tasks.classify import MAX_PROB_SHIFT

    task = ClassifyTask(_csv(tmp_path / "d.csv", _balanced_rows(20)))
    broken = [ParityCheck(batch_size=8, seq_len=64, max_abs_diff=3.0, min_cosine=0.9, max_prob_shift=0.6)]
    reason = task.judge_lossy(broken, None, None, None)  # type: ignore[arg-type]
    assert reason is not None and "probability moved by 0.600" in reason and str(MAX_PROB_SHIFT) in reason
    missing = [ParityCheck(batch_size=1, seq_len=8, max_abs_diff=float("inf"), min_cosine=-1.0)]
    assert task.judge_lossy(missing, None, None, None) is not None  # type: ignore[arg-type]
