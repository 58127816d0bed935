from __future__ import annotations

from pathlib import Path

import pytest

from kiln.cli import build_parser, main
from kiln.errors import TaskError
from kiln.optimize.build import BuildOptions, build, make_task
from kiln.tasks.classify import ClassifyTask
from kiln.tasks.embed import EmbedTask


def test_classify_flags_parse() -> None:
    args = build_parser().parse_args(
        [
            "build",
            "m",
            "--task",
            "classify",
            "--data",
            "d.csv",
            "--slice-by",
            "genre",
            "--slice-by",
            "src",
            "--text-column",
            "review",
            "--label-column",
            "y",
        ]
    )
    assert (args.task, args.data, args.slice_by) == ("classify", "d.csv", ["genre", "src"])
    assert (args.text_column, args.label_column) == ("review", "y")


def test_make_task_picks_the_task() -> None:
    assert isinstance(make_task(BuildOptions()), EmbedTask)
    task = make_task(BuildOptions(task="classify", data=Path("d.csv"), slice_by=("g",)))
    assert isinstance(task, ClassifyTask) and task.slice_by == ("g",)
    with pytest.raises(TaskError, match="available: embed, classify"):
        make_task(BuildOptions(task="generate"))
    with pytest.raises(TaskError, match="--data"):
        make_task(BuildOptions(data=Path("d.csv")))


def test_classify_needs_a_model() -> None:
    with pytest.raises(TaskError, match="needs a model"):
        build(BuildOptions(task="classify", data=Path("d.csv")))


def test_cli_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(
        '{"architectures": ["BertForSequenceClassification"], "num_labels": 2}'
    )
    assert main(["build", str(model), "--task", "classify"]) == 2
    assert "--data" in capsys.readouterr().err
