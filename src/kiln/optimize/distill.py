"""Knowledge distillation into a shallower student initialised from the teacher's own layers.

The student is a copy of the teacher that keeps some of its layers (``layers`` by index, or
``num_layers`` spread evenly from the first to the last) — the rest of the model (embeddings, heads,
pooling wrappers) is kept as it is. It is then trained to match the teacher's outputs on the batches
given (the user's data plus unlabelled text):

* ``embed`` (an encoder wrapped in ``MeanPooledEncoder``): the embedding space, ``loss.kind="cosine"``
  (or ``"mse"``);
* classifiers: the teacher's softened logits, ``loss.kind="kl"`` with ``temperature`` and ``alpha`` (the
  weight of the soft term; batches that carry ``labels`` add ``1 - alpha`` of hard cross-entropy).

Training stops at ``budget.max_steps`` or ``budget.max_seconds``, whichever comes first, reports each step
through ``on_progress`` and is deterministic for a given seed and step count.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from kiln.errors import BuildError
from kiln.optimize.torch_recipes import (
    Batch,
    DistillLoss,
    Progress,
    TorchRecipeConfig,
    TrainBudget,
    train_to_teacher,
)


class Distill(TorchRecipeConfig):
    """Keep ``layers`` (or ``num_layers`` evenly spread) of the teacher and train towards its outputs."""

    kind: Literal["distill"] = "distill"
    num_layers: int | None = Field(default=None, ge=1)
    layers: tuple[int, ...] | None = None
    budget: TrainBudget = TrainBudget(max_steps=300, max_seconds=180.0, lr=1e-4)
    loss: DistillLoss = DistillLoss()
    precision: Literal["lossy"] = "lossy"

    @model_validator(mode="after")
    def _one_layer_choice(self) -> Distill:
        if (self.num_layers is None) == (self.layers is None):
            raise ValueError("give exactly one of num_layers (a count) or layers (teacher layer indices)")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers must name at least one teacher layer")
            if any(i < 0 for i in self.layers) or list(self.layers) != sorted(set(self.layers)):
                raise ValueError(
                    f"layers must be distinct, ascending, non-negative indices, got {self.layers}"
                )
        return self

    def teacher_layers(self, teacher_depth: int) -> list[int]:
        """Which teacher layers the student starts from."""
        if self.layers is not None:
            if self.layers[-1] >= teacher_depth:
                raise BuildError(
                    f"layers {self.layers} name a layer the {teacher_depth}-layer teacher does not have"
                )
            return list(self.layers)
        count = int(self.num_layers or 0)
        if count >= teacher_depth:
            raise BuildError(f"a {count}-layer student is not smaller than the {teacher_depth}-layer teacher")
        return evenly_spaced(teacher_depth, count)

    def apply(
        self, model: torch.nn.Module, data: Sequence[Batch] | None = None, on_progress: Progress | None = None
    ) -> torch.nn.Module:
        """A trained student (``model``, the teacher, is not changed)."""
        if not data:
            raise BuildError(
                "distillation trains on batches of the user's data or unlabelled text: pass data"
            )
        student = make_student(model, self.teacher_layers(len(layer_stack(model))))
        was_training = model.training
        train_to_teacher(student, model, data, self.budget, self.loss, on_progress, "distill")
        model.train(was_training)
        return student.eval()


def evenly_spaced(depth: int, count: int) -> list[int]:
    """``count`` layer indices from 0 to ``depth - 1``, evenly spread (first and last kept)."""
    if count < 1 or count > depth:
        raise BuildError(f"cannot pick {count} of {depth} layers")
    if count == 1:
        return [depth - 1]
    return sorted({int(round(x)) for x in np.linspace(0, depth - 1, count)})


def _stack_path(model: torch.nn.Module) -> str:
    """Name of the longest ModuleList of same-typed blocks (BERT's ``encoder.layer``)."""
    best, best_len = "", 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > best_len:
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best, best_len = name, len(module)
    if best_len < 2:
        raise BuildError(
            f"{type(model).__name__} has no stack of repeated layers to take a shallower student from"
        )
    return best


def layer_stack(model: torch.nn.Module) -> torch.nn.ModuleList:
    stack = model.get_submodule(_stack_path(model))
    assert isinstance(stack, torch.nn.ModuleList)
    return stack


def make_student(teacher: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """A copy of ``teacher`` that keeps only layers ``keep`` of its layer stack (weights copied)."""
    student = copy.deepcopy(teacher)
    path = _stack_path(student)
    stack = student.get_submodule(path)
    assert isinstance(stack, torch.nn.ModuleList)
    if not keep or max(keep) >= len(stack):
        raise BuildError(f"cannot keep layers {list(keep)} of a {len(stack)}-layer stack")
    kept = torch.nn.ModuleList([stack[i] for i in keep])
    for new_index, block in enumerate(kept):
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                setattr(sub, "layer_idx", new_index)  # noqa: B010 (a Module attribute mypy cannot see)
    parent_name, _, attr = path.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    setattr(parent, attr, kept)
    for module in student.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(kept)
    for p in student.parameters():
        p.requires_grad_(True)
    return student
