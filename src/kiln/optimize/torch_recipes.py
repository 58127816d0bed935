"""PyTorch-level recipes: the shared pieces of pruning, distillation and low-rank factorisation.

These recipes change a model's *structure* before export (fewer heads, neurons, channels, layers or a
factorised weight), so the exported ONNX graph does less work. Each is pure config (pydantic, recorded
in the manifest) with ``apply(model, data=None, on_progress=None) -> torch.nn.Module`` that returns a
new module and leaves the input untouched; the caller exports the result with
:func:`kiln.optimize.export.export_onnx`. :func:`apply_torch_pipeline` runs several in order.

Data is a sequence of ready batches, each either a tensor (one positional input, e.g. images) or a
mapping of keyword inputs (``input_ids``/``attention_mask``/``token_type_ids`` for an encoder wrapped in
:class:`kiln.tasks.embed_torch.MeanPooledEncoder`). A mapping may carry ``labels``: they are not fed to
the model, only to the hard-label term of the distillation loss. :func:`text_batches` makes such batches
from texts.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Literal, Protocol, Union

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from kiln.errors import BuildError

if TYPE_CHECKING:
    from kiln.optimize.distill import Distill
    from kiln.optimize.lowrank import LowRank
    from kiln.optimize.prune import PruneStructured
    from kiln.runtime.tokenizer import TextTokenizer

Batch = Union[torch.Tensor, Mapping[str, torch.Tensor]]  # noqa: UP007 (a runtime alias)
# on_progress(stage, done, total, loss): stage names the step ("calibrate", "recover", "distill", ...)
Progress = Callable[[str, int, int, float], None]
LABELS = "labels"


class TorchRecipeConfig(BaseModel):
    """Base of every PyTorch-level recipe: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainBudget(TorchRecipeConfig):
    """How long a (recovery or distillation) training run may go: whichever of ``max_steps`` and
    ``max_seconds`` comes first ends it. ``seed`` fixes the initialisation of anything random and the
    order batches are drawn in, so a run bounded by steps is reproducible. Embedding tables are frozen by
    default: they hold most of a small encoder's parameters and the time Adam spends on them buys little in
    a short run."""

    max_steps: int = Field(default=200, ge=1)
    max_seconds: float = Field(default=120.0, gt=0)
    lr: float = Field(default=5e-5, gt=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    freeze_embeddings: bool = Field(
        default=True, description="leave embedding tables as they are (most of a small encoder's bytes)"
    )
    seed: int = 0


class DistillLoss(TorchRecipeConfig):
    """What the student is trained to match.

    * ``cosine``: 1 - cosine(student, teacher) along the last axis (embedding space: for ``embed``).
    * ``mse``: mean squared error to the teacher's outputs.
    * ``kl``: KL divergence of the softened distributions (``temperature``), scaled by T^2 as in Hinton et
      al.; where a batch carries ``labels`` the hard cross-entropy is mixed in with weight ``1 - alpha``.
    """

    kind: Literal["cosine", "mse", "kl"] = "cosine"
    temperature: float = Field(default=2.0, gt=0, le=100)
    alpha: float = Field(default=0.5, ge=0, le=1)


def model_inputs(batch: Batch) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Positional and keyword inputs of a batch (``labels`` left out)."""
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    return (), {k: v for k, v in batch.items() if k != LABELS}


def output_tensor(out: object) -> torch.Tensor:
    """The main tensor of a model output: the tensor itself, ``last_hidden_state``, ``logits`` or the
    first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("last_hidden_state", "logits"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise BuildError(
        f"cannot find an output tensor in a {type(out).__name__}: wrap the model so it returns one"
    )


def run_model(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    args, kwargs = model_inputs(batch)
    return output_tensor(model(*args, **kwargs))


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, loss: DistillLoss, batch: Batch
) -> torch.Tensor:
    """The loss of ``student`` outputs against ``teacher`` outputs (and hard labels, for ``kl``)."""
    if student.shape != teacher.shape:
        raise BuildError(
            f"student output has shape {tuple(student.shape)}, the teacher's {tuple(teacher.shape)}"
        )
    if loss.kind == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(student, teacher, dim=-1)).mean()
    if loss.kind == "mse":
        return torch.nn.functional.mse_loss(student, teacher)
    t = loss.temperature
    soft = torch.nn.functional.kl_div(
        torch.nn.functional.log_softmax(student / t, dim=-1),
        torch.nn.functional.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    labels = None if isinstance(batch, torch.Tensor) else batch.get(LABELS)
    if labels is None or loss.alpha >= 1.0:
        return soft
    hard = torch.nn.functional.cross_entropy(student, labels)
    return loss.alpha * soft + (1.0 - loss.alpha) * hard


def train_to_teacher(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: Sequence[Batch],
    budget: TrainBudget,
    loss: DistillLoss,
    on_progress: Progress | None = None,
    stage: str = "train",
) -> list[float]:
    """Train ``student`` to match ``teacher`` on ``data`` (cycled in a seeded random order) within
    ``budget``; returns the loss of every step. Dropout is off (both modules in eval mode) so a run
    bounded by steps is deterministic; the teacher is frozen."""
    if not data:
        raise BuildError(f"{stage}: no training batches were given")
    torch.manual_seed(budget.seed)
    rng = np.random.default_rng(budget.seed)
    teacher.eval()
    student.eval()
    frozen = (
        {id(m.weight) for m in student.modules() if isinstance(m, torch.nn.Embedding)}
        if budget.freeze_embeddings
        else set()
    )
    params = [p for p in student.parameters() if p.requires_grad and id(p) not in frozen]
    if not params:
        raise BuildError(f"{stage}: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=budget.lr, weight_decay=budget.weight_decay)
    warmup = max(1, budget.max_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * max(0.0, 0.5 * (1 + math.cos(math.pi * step / budget.max_steps)))
        ),
    )
    targets: dict[int, torch.Tensor] = {}
    losses: list[float] = []
    order: list[int] = []
    start = time.perf_counter()
    for step in range(budget.max_steps):
        if not order:
            order = [int(i) for i in rng.permutation(len(data))]
        index = order.pop()
        batch = data[index]
        if index not in targets:
            with torch.no_grad():
                targets[index] = run_model(teacher, batch).detach()
        with torch.enable_grad():
            value = distill_loss(run_model(student, batch), targets[index], loss, batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
        losses.append(float(value.detach()))
        if on_progress is not None:
            on_progress(stage, step + 1, budget.max_steps, losses[-1])
        if time.perf_counter() - start >= budget.max_seconds:
            break
    return losses


@torch.no_grad()
def mean_teacher_loss(
    student: torch.nn.Module, teacher: torch.nn.Module, data: Sequence[Batch], loss: DistillLoss
) -> float:
    """Mean loss of ``student`` against ``teacher`` over ``data`` (no training)."""
    student.eval()
    teacher.eval()
    values = [float(distill_loss(run_model(student, b), run_model(teacher, b), loss, b)) for b in data]
    if not values:
        raise BuildError("no batches to evaluate the loss on")
    return float(np.mean(values))


def spread(data: Sequence[Batch], count: int) -> list[Batch]:
    """``count`` batches evenly spread over ``data`` (batches sorted by length then cover every length)."""
    if count >= len(data):
        return list(data)
    return [data[int(i)] for i in np.linspace(0, len(data) - 1, count).round()]


def recover(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: Sequence[Batch],
    budget: TrainBudget,
    loss: DistillLoss,
    on_progress: Progress | None = None,
    check_batches: int = 16,
) -> torch.nn.Module:
    """Recovery training of a pruned/factorised ``student`` towards ``teacher``, kept only if it lowers
    the loss on (up to ``check_batches`` of) the batches it saw: a model already close to its teacher
    can be pushed further away by a few noisy optimiser steps."""
    check = spread(data, check_batches)
    before = mean_teacher_loss(student, teacher, check, loss)
    trained = copy.deepcopy(student)
    for p in trained.parameters():
        p.requires_grad_(True)
    train_to_teacher(trained, teacher, data, budget, loss, on_progress, "recover")
    after = mean_teacher_loss(trained, teacher, check, loss)
    return trained.eval() if after < before else student.eval()


def text_batches(
    tokenizer: TextTokenizer,
    texts: Sequence[str],
    batch_size: int = 32,
    labels: Sequence[int] | np.ndarray | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Encoder batches (``input_ids``, ``attention_mask``, ``token_type_ids``; ``labels`` if given),
    each padded to its own longest text. Texts are grouped by length first so little padding is run."""
    if batch_size < 1:
        raise BuildError(f"batch_size must be at least 1, got {batch_size}")
    if labels is not None and len(labels) != len(texts):
        raise BuildError(f"{len(texts)} texts but {len(labels)} labels")
    lengths = tokenizer.count_tokens(texts)
    order = np.argsort(np.asarray(lengths), kind="stable")
    out: list[dict[str, torch.Tensor]] = []
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        feed = tokenizer.encode([texts[i] for i in idx])
        batch = {k: torch.from_numpy(v) for k, v in feed.items()}
        if labels is not None:
            batch[LABELS] = torch.as_tensor(np.asarray(labels)[idx], dtype=torch.long)
        out.append(batch)
    return out


class TorchRecipeLike(Protocol):
    @property
    def kind(self) -> str: ...

    def apply(
        self, model: torch.nn.Module, data: Sequence[Batch] | None = None, on_progress: Progress | None = None
    ) -> torch.nn.Module: ...


def apply_torch_pipeline(
    model: torch.nn.Module,
    recipes: Sequence[TorchRecipeLike],
    data: Sequence[Batch] | None = None,
    on_progress: Progress | None = None,
) -> torch.nn.Module:
    """Apply ``recipes`` in order, each to the previous one's result; the input model is not modified."""
    current = model
    for recipe in recipes:
        current = recipe.apply(current, data=data, on_progress=on_progress)
    return current


if TYPE_CHECKING:
    TorchRecipe = Annotated[PruneStructured | Distill | LowRank, Field(discriminator="kind")]


def __getattr__(name: str) -> object:
    # ``TorchRecipe`` (the discriminated union of the three recipes, for pydantic fields such as a
    # manifest's recipe list) is built on first use: its members import this module for their base.
    if name == "TorchRecipe":
        from kiln.optimize.distill import Distill
        from kiln.optimize.lowrank import LowRank
        from kiln.optimize.prune import PruneStructured

        return Annotated[PruneStructured | Distill | LowRank, Field(discriminator="kind")]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
