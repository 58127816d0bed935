"""Distillation: a shallower student from the teacher's layers, trained towards the teacher's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from _fixtures.tiny_bert import REVIEWS, export_and_check, one_thread  # noqa: F401
from _fixtures.tiny_bert import tiny_encoder as tiny_bert_encoder
from kiln.errors import BuildError
from kiln.optimize.distill import Distill, evenly_spaced, layer_stack, make_student
from kiln.optimize.export import export_onnx
from kiln.optimize.recipes import ExportOnnx
from kiln.optimize.torch_recipes import (
    DistillLoss,
    TrainBudget,
    distill_loss,
    mean_teacher_loss,
    param_count,
    text_batches,
)
from kiln.runtime.tokenizer import TextTokenizer
from kiln.sources.default import default_model_path
from kiln.tasks.embed_torch import GRAPH_OUTPUT

TEXTS = REVIEWS * 3
HELD_OUT = ["nobody will remember this one", "a small gem", "too long by an hour", "sharp and funny"]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(default_model_path() / "tokenizer.json", 64)


def tiny_encoder(layers: int = 4) -> Any:
    return tiny_bert_encoder(layers)


def test_config_validates() -> None:
    bad: list[dict[str, object]] = [
        {},
        {"num_layers": 2, "layers": (0, 2)},
        {"num_layers": 0},
        {"layers": ()},
        {"layers": (2, 0)},
        {"layers": (1, 1)},
        {"layers": (-1, 2)},
        {"num_layers": 2, "loss": {"temperature": 0}},
        {"num_layers": 2, "loss": {"alpha": 1.5}},
        {"num_layers": 2, "budget": {"max_seconds": 0}},
        {"num_layers": 2, "budget": {"lr": 2.0}},
    ]
    for kwargs in bad:
        with pytest.raises(ValidationError):
            Distill.model_validate(kwargs)
    ok = Distill(num_layers=2, budget=TrainBudget(max_steps=10))
    assert Distill.model_validate_json(ok.model_dump_json()) == ok
    with pytest.raises(BuildError, match="not smaller"):
        ok.model_copy(update={"num_layers": 4}).teacher_layers(4)
    with pytest.raises(BuildError, match="does not have"):
        Distill(layers=(0, 5)).teacher_layers(4)


def test_student_takes_the_teachers_layers() -> None:
    assert evenly_spaced(6, 3) == [0, 2, 5] and evenly_spaced(4, 2) == [0, 3] and evenly_spaced(12, 1) == [11]
    teacher = tiny_encoder()
    student: Any = make_student(teacher, [1, 3])
    assert len(layer_stack(teacher)) == 4 and len(layer_stack(student)) == 2
    assert student.encoder.config.num_hidden_layers == 2 and teacher.encoder.config.num_hidden_layers == 4
    for new, old in zip(
        layer_stack(student), [layer_stack(teacher)[1], layer_stack(teacher)[3]], strict=True
    ):
        for p_new, p_old in zip(new.parameters(), old.parameters(), strict=True):
            assert torch.equal(p_new, p_old) and p_new.data_ptr() != p_old.data_ptr()
    per_layer = param_count(layer_stack(teacher)[0])
    assert param_count(teacher) - param_count(student) == 2 * per_layer


def test_distillation_lowers_the_loss_and_exports(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    data = text_batches(tokenizer, TEXTS, batch_size=8)
    held = text_batches(tokenizer, HELD_OUT, batch_size=4)
    teacher = tiny_encoder()
    recipe = Distill(num_layers=2, budget=TrainBudget(max_steps=40, lr=2e-3, seed=3))
    untrained = make_student(teacher, recipe.teacher_layers(4))
    progress: list[tuple[str, int, int, float]] = []
    student = recipe.apply(teacher, data, on_progress=lambda *a: progress.append(a))

    assert [p[1] for p in progress] == list(range(1, 41)) and {p[0] for p in progress} == {"distill"}
    losses = [p[3] for p in progress]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    loss = DistillLoss()
    for batches in (data, held):
        assert mean_teacher_loss(student, teacher, batches, loss) < 0.7 * mean_teacher_loss(
            untrained, teacher, batches, loss
        )
    assert len(layer_stack(student)) == 2 and param_count(student) < param_count(teacher)

    # deterministic for a seed; a time budget ends the run early
    again = recipe.apply(teacher, data)
    for a, b in zip(student.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    steps: list[int] = []
    recipe.model_copy(update={"budget": TrainBudget(max_steps=40, max_seconds=1e-9)}).apply(
        teacher, data, on_progress=lambda _s, done, _t, _l: steps.append(done)
    )
    assert steps == [1]

    small = export_and_check(student, tokenizer, tmp_path / "student.onnx", TEXTS[:2], (TEXTS[:3], HELD_OUT))
    example = tokenizer.encode(TEXTS[:2])
    large = export_onnx(teacher, example, tmp_path / "teacher.onnx", ExportOnnx(), GRAPH_OUTPUT)
    assert small.stat().st_size < large.stat().st_size


def test_soft_and_hard_losses() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 3), torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = {"x": student, "labels": labels}
    soft = distill_loss(student, teacher, DistillLoss(kind="kl", temperature=2.0, alpha=1.0), batch)
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    expected = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    assert float(soft) == pytest.approx(float(expected), rel=1e-5)
    mixed = distill_loss(student, teacher, DistillLoss(kind="kl", temperature=2.0, alpha=0.25), batch)
    hard = torch.nn.functional.cross_entropy(student, labels)
    assert float(mixed) == pytest.approx(0.25 * float(soft) + 0.75 * float(hard), rel=1e-5)
    assert float(distill_loss(teacher, teacher, DistillLoss(kind="cosine"), teacher)) == pytest.approx(
        0.0, abs=1e-6
    )
    with pytest.raises(BuildError, match="shape"):
        distill_loss(student, teacher[:, :2], DistillLoss(), student)
