"""Low-rank factorisation: energy-based rank, the size rule, and an exportable smaller model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from _fixtures.tiny_bert import export_and_check, one_thread  # noqa: F401
from _fixtures.tiny_bert import tiny_encoder as tiny_bert_encoder
from kiln.optimize.export import export_onnx
from kiln.optimize.lowrank import LowRank, LowRankLinear, factorise, plan_ranks, rank_for_energy
from kiln.optimize.recipes import ExportOnnx
from kiln.optimize.torch_recipes import DistillLoss, TrainBudget, mean_teacher_loss, param_count, text_batches
from kiln.runtime.tokenizer import TextTokenizer
from kiln.sources.default import default_model_path
from kiln.tasks.embed_torch import GRAPH_OUTPUT, MeanPooledEncoder

TEXTS = ["a quiet, moving film", "dull", "the plot never comes together", "one of the best of the year"] * 4


def tiny_encoder() -> MeanPooledEncoder:
    # intermediate wide enough that the weights saved outweigh the extra nodes' bytes
    return tiny_bert_encoder(intermediate=256)


def synthetic(out_f: int, in_f: int, singular: list[float], seed: int = 0) -> torch.Tensor:
    """A matrix with exactly the given singular values (the rest zero)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_f, out_f, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_f, in_f, generator=gen, dtype=torch.float64))
    k = len(singular)
    return (u[:, :k] * torch.tensor(singular, dtype=torch.float64)) @ v[:, :k].T


def test_rank_for_energy() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1, 0 of 14
    assert rank_for_energy(s, 0.5) == 1  # 9/14 = 0.64
    assert rank_for_energy(s, 9 / 14) == 1  # exactly met
    assert rank_for_energy(s, 0.9) == 2  # 13/14 = 0.93
    assert rank_for_energy(s, 0.95) == 3
    assert rank_for_energy(s, 1.0) == 3  # the zero value is never needed
    assert rank_for_energy(torch.zeros(5), 0.9) == 1


def test_factorised_linear_keeps_the_energy_asked_for() -> None:
    weight = synthetic(48, 64, [8.0, 6.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(weight.float())
    model = torch.nn.Sequential(linear)
    (choice,) = plan_ranks(model, LowRank(energy=0.9))
    s = torch.linalg.svdvals(weight)
    expected = int(np.argmax(np.cumsum(s.numpy() ** 2) / float((s**2).sum()) >= 0.9)) + 1
    assert choice.rank == expected == 3 and choice.factorise
    assert choice.params_after == 3 * (64 + 48) < choice.params_before

    small: Any = LowRank(energy=0.9).apply(model)
    assert isinstance(small[0], LowRankLinear) and small[0].rank == 3
    assert small[0].first.weight.shape == (3, 64) and small[0].second.weight.shape == (48, 3)
    assert torch.equal(small[0].second.bias, linear.bias)
    x = torch.randn(100, 64)
    with torch.no_grad():
        # residual energy of a rank-r truncation is exactly the dropped singular values' share
        rebuilt = small[0].second.weight.double() @ small[0].first.weight.double()
        lost = float((rebuilt - weight).pow(2).sum() / weight.pow(2).sum())
        assert lost == pytest.approx(float((s[3:] ** 2).sum() / (s**2).sum()), rel=1e-4)
        assert lost <= 0.1
        assert torch.allclose(small(x), x @ rebuilt.float().T + linear.bias, atol=1e-4)
    # an exact low-rank matrix comes back exactly
    exact = torch.nn.Linear(64, 48)
    with torch.no_grad():
        exact.weight.copy_(synthetic(48, 64, [5.0, 1.0]).float())
        assert torch.allclose(factorise(exact, 2)(x), exact(x), atol=1e-5)


def test_layers_that_would_not_shrink_are_left_alone() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 64)  # random: a flat spectrum, 0.9 energy needs ~3/4 of the rank
    model = torch.nn.Sequential(dense, torch.nn.ReLU(), torch.nn.Linear(64, 4))
    (choice,) = plan_ranks(model, LowRank(energy=0.9))  # the 4-wide head is below min_features
    assert choice.rank * 128 >= 64 * 64 and not choice.factorise
    out: Any = LowRank(energy=0.9).apply(model)
    assert isinstance(out[0], torch.nn.Linear) and param_count(out) == param_count(model)
    assert not plan_ranks(model, LowRank(energy=0.9, exclude=("0",)))


def test_config_validates() -> None:
    for bad in ({"energy": 1.0}, {"energy": 0.0}, {"energy": -0.5}, {"max_param_ratio": 1.5}, {"rank": 3}):
        with pytest.raises(ValidationError):
            LowRank.model_validate(bad)


def test_factorised_encoder_exports_smaller(tmp_path: Path) -> None:
    tok = TextTokenizer(default_model_path() / "tokenizer.json", 64)
    batches = text_batches(tok, TEXTS, batch_size=8)
    model = tiny_encoder()
    recipe = LowRank(energy=0.5, include=("*encoder.layer.*",))
    choices = recipe.plan(model)
    assert choices and any(c.factorise for c in choices)
    small = recipe.apply(model)
    saved = sum(c.params_before - c.params_after for c in choices)
    assert saved > 0 and param_count(model) - param_count(small) == saved
    factorised = [m for m in small.modules() if isinstance(m, LowRankLinear)]
    assert len(factorised) == sum(c.factorise for c in choices)

    # recovery towards the original lowers the cosine loss (or is dropped)
    loss = DistillLoss()
    recovered = recipe.model_copy(update={"recovery": TrainBudget(max_steps=15, lr=3e-3)}).apply(
        model, batches
    )
    assert mean_teacher_loss(recovered, model, batches, loss) <= mean_teacher_loss(
        small, model, batches, loss
    )

    dst = export_and_check(small, tok, tmp_path / "lowrank.onnx", TEXTS[:2], (TEXTS[:3], TEXTS[4:9]))
    example = tok.encode(TEXTS[:2])
    orig = export_onnx(model, example, tmp_path / "orig.onnx", ExportOnnx(), GRAPH_OUTPUT)
    assert dst.stat().st_size < orig.stat().st_size


def test_recipes_are_data_in_a_pipeline() -> None:
    from pydantic import TypeAdapter

    from kiln.optimize.distill import Distill
    from kiln.optimize.prune import PruneStructured
    from kiln.optimize.torch_recipes import TorchRecipe

    adapter = TypeAdapter(list[TorchRecipe])
    raw = [
        {"kind": "prune-structured", "heads": 0.3, "ffn": 0.3, "recovery": {"max_steps": 50}},
        {"kind": "distill", "num_layers": 3},
        {"kind": "low-rank", "energy": 0.9},
    ]
    recipes = adapter.validate_python(raw)
    assert [type(r) for r in recipes] == [PruneStructured, Distill, LowRank]
    assert adapter.validate_json(adapter.dump_json(recipes)) == recipes
    with pytest.raises(ValidationError):
        adapter.validate_python([{"kind": "prune-structured", "heads": 1.2}])
    with pytest.raises(ValidationError):
        adapter.validate_python([{"kind": "sparsify"}])
