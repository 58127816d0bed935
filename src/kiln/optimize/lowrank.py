"""Low-rank factorisation of Linear layers by truncated SVD.

``W (out x in) ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``: one Linear becomes two, ``in -> r`` (no bias) and
``r -> out`` (the original bias). The rank ``r`` is the smallest that keeps ``energy`` of the squared
singular values (``sum(S[:r]^2) / sum(S^2)``). A layer is left as it is where the factorised form would
not be smaller, i.e. unless ``r * (in + out) <= max_param_ratio * in * out`` — then it would not be
faster either: two MatMuls of that size cost more than the one they replace.

Trained transformer weights often have flat spectra: at high ``energy`` most of their layers are skipped,
and :func:`plan_ranks` says so before anything is changed.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from kiln.errors import BuildError
from kiln.optimize.torch_recipes import (
    Batch,
    DistillLoss,
    Progress,
    TorchRecipeConfig,
    TrainBudget,
    recover,
)


class LowRankLinear(torch.nn.Module):
    """``second(first(x))``: a rank-``rank`` stand-in for one Linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.rank = rank
        self.first = torch.nn.Linear(in_features, rank, bias=False)
        self.second = torch.nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class LowRank(TorchRecipeConfig):
    """Factorise every matching Linear layer whose factorised form keeping ``energy`` is smaller."""

    kind: Literal["low-rank"] = "low-rank"
    energy: float = Field(default=0.9, gt=0.0, lt=1.0, description="share of squared singular values kept")
    max_param_ratio: float = Field(
        default=1.0, gt=0.0, le=1.0, description="factorise only where params shrink to at most this share"
    )
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    min_features: int = Field(default=16, ge=1, description="leave Linear layers smaller than this alone")
    recovery: TrainBudget | None = None
    recovery_loss: DistillLoss = DistillLoss()
    precision: Literal["lossy"] = "lossy"

    def plan(self, model: torch.nn.Module) -> list[RankChoice]:
        return plan_ranks(model, self)

    def apply(
        self, model: torch.nn.Module, data: Sequence[Batch] | None = None, on_progress: Progress | None = None
    ) -> torch.nn.Module:
        """A copy of ``model`` with the worthwhile Linear layers factorised (``model`` is not changed)."""
        if self.recovery is not None and not data:
            raise BuildError("recovery training needs unlabelled batches: pass data or set recovery=None")
        was_training = model.training
        model.eval()
        out = copy.deepcopy(model)
        choices = plan_ranks(out, self)
        for step, choice in enumerate(choices):
            if choice.factorise:
                parent_name, _, attr = choice.name.rpartition(".")
                parent = out.get_submodule(parent_name) if parent_name else out
                setattr(parent, attr, factorise(getattr(parent, attr), choice.rank))
            if on_progress is not None:
                on_progress("low-rank", step + 1, len(choices), 0.0)
        if self.recovery is not None and data:
            out = recover(out, model, data, self.recovery, self.recovery_loss, on_progress)
        out.eval()
        model.train(was_training)
        return out


@dataclass(frozen=True)
class RankChoice:
    name: str
    in_features: int
    out_features: int
    rank: int  # the rank that keeps the energy asked for
    factorise: bool  # False where the factorised form would not be smaller

    @property
    def params_before(self) -> int:
        return self.in_features * self.out_features

    @property
    def params_after(self) -> int:
        return self.rank * (self.in_features + self.out_features) if self.factorise else self.params_before


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` with ``sum(s[:r]^2) >= energy * sum(s^2)`` (``s`` sorted descending)."""
    if not 0.0 < energy <= 1.0:
        raise BuildError(f"energy must be in (0, 1], got {energy}")
    power = singular_values.double().pow(2)
    total = float(power.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(power, dim=0) / total
    # the small tolerance keeps float rounding from asking for one more rank than exact arithmetic would
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=torch.float64))) + 1
    return min(rank, singular_values.numel())


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_ranks(model: torch.nn.Module, recipe: LowRank) -> list[RankChoice]:
    """The rank each matching Linear layer would get and whether factorising it pays."""
    choices: list[RankChoice] = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name:
            continue
        if not _matches(name, recipe.include) or _matches(name, recipe.exclude):
            continue
        if min(module.in_features, module.out_features) < recipe.min_features:
            continue
        s = torch.linalg.svdvals(module.weight.detach().double())
        rank = rank_for_energy(s, recipe.energy)
        worth = (
            rank * (module.in_features + module.out_features)
            <= recipe.max_param_ratio * (module.in_features * module.out_features)
            and rank * (module.in_features + module.out_features) < module.in_features * module.out_features
        )
        choices.append(RankChoice(name, module.in_features, module.out_features, rank, worth))
    return choices


def factorise(linear: torch.nn.Linear, rank: int) -> LowRankLinear:
    """The rank-``rank`` truncated SVD of ``linear`` as two Linear layers."""
    weight = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    out = LowRankLinear(linear.in_features, linear.out_features, rank, linear.bias is not None)
    dtype = linear.weight.dtype
    out.first.weight.data.copy_((root.unsqueeze(1) * vh[:rank]).to(dtype))
    out.second.weight.data.copy_((u[:, :rank] * root.unsqueeze(0)).to(dtype))
    if linear.bias is not None:
        out.second.bias.data.copy_(linear.bias.detach())
    return out.to(linear.weight.device)
