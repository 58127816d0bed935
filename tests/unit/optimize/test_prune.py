"""Structured pruning really removes heads, neurons and channels: shapes, parameters and ONNX bytes shrink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from _fixtures.tiny_bert import REVIEWS, one_thread, tiny_encoder  # noqa: F401
from _fixtures.tiny_bert import export_and_check as export_tiny
from kiln.errors import BuildError
from kiln.optimize.prune import PruneStructured, head_count, transformer_layers
from kiln.optimize.torch_recipes import (
    DistillLoss,
    TrainBudget,
    apply_torch_pipeline,
    mean_teacher_loss,
    param_count,
    recover,
    text_batches,
)
from kiln.runtime.tokenizer import TextTokenizer
from kiln.sources.default import default_model_path

TEXTS = [
    *REVIEWS[:4],
    "an ambitious mess that is still worth seeing for its last twenty minutes",
    *REVIEWS[5:],
] * 4


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(default_model_path() / "tokenizer.json", 64)


@pytest.fixture(scope="module")
def batches(tokenizer: TextTokenizer) -> list[dict[str, torch.Tensor]]:
    return text_batches(tokenizer, TEXTS, batch_size=8)


def export_and_check(module: torch.nn.Module, tokenizer: TextTokenizer, dst: Path) -> Path:
    """Export ``module`` and check ORT reproduces it on two different input shapes."""
    return export_tiny(module, tokenizer, dst, TEXTS[:2], (TEXTS[:3], TEXTS[3:8]))


@pytest.fixture(scope="module")
def original_onnx(tmp_path_factory: pytest.TempPathFactory, tokenizer: TextTokenizer) -> Path:
    return export_and_check(tiny_encoder(), tokenizer, tmp_path_factory.mktemp("orig") / "model.onnx")


def test_config_validates() -> None:
    for bad in ({"heads": 1.0}, {"ffn": -0.1}, {"channels": 1.5}, {}, {"heads": 0.3, "colour": "red"}):
        with pytest.raises(ValidationError):
            PruneStructured.model_validate(bad)
    with pytest.raises(ValidationError):
        PruneStructured(heads=0.3, recovery=TrainBudget(max_steps=0))
    ok = PruneStructured(heads=0.3, ffn=0.3)
    assert PruneStructured.model_validate_json(ok.model_dump_json()) == ok


def test_heads_and_neurons_are_removed(
    batches: list[dict[str, torch.Tensor]], tokenizer: TextTokenizer, original_onnx: Path, tmp_path: Path
) -> None:
    model = tiny_encoder()
    before = param_count(model)
    pruned = PruneStructured(heads=0.5, ffn=0.5, round_to=1).apply(model, batches)

    assert param_count(model) == before  # the input is left alone
    for layer in transformer_layers(pruned):
        attn = layer.attention.self
        assert head_count(layer) == 2 and attn.num_attention_heads == 2
        assert attn.query.weight.shape == (16, 32) and attn.key.weight.shape == (16, 32)
        assert attn.value.weight.shape == (16, 32)
        assert layer.attention.output.dense.weight.shape == (32, 16)
        assert layer.intermediate.dense.weight.shape == (32, 32)
        assert layer.output.dense.weight.shape == (32, 32)
    # per layer: q/k/v/o lose 4 * 32 * 16 weights + 3 * 16 biases, the FFN 2 * 32 * 32 + 32
    assert before - param_count(pruned) == 2 * (4 * 32 * 16 + 3 * 16 + 2 * 32 * 32 + 32)

    with torch.no_grad():
        out = pruned(**batches[0])
    assert out.shape == (8, 32) and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(8), atol=1e-5)

    onnx_path = export_and_check(pruned, tokenizer, tmp_path / "pruned.onnx")
    assert onnx_path.stat().st_size < original_onnx.stat().st_size - 2 * (4 * 32 * 16 + 2 * 32 * 32) * 4 * 0.9


def test_least_important_head_and_neuron_go_first(batches: list[dict[str, torch.Tensor]]) -> None:
    for importance in ("activation", "weight"):
        model = tiny_encoder()
        layer = transformer_layers(model)[0]
        with torch.no_grad():  # head 2 and neuron 5 contribute nothing
            layer.attention.self.value.weight[16:24] = 0
            layer.attention.self.value.bias[16:24] = 0
            layer.attention.output.dense.weight[:, 16:24] = 0
            layer.output.dense.weight[:, 5] = 0
        pruned = PruneStructured(heads=0.25, ffn=1 / 64, round_to=1, importance=importance).apply(
            model, batches
        )
        first = transformer_layers(pruned)[0]
        with torch.no_grad():
            kept_rows = first.attention.self.value.weight
            kept_ffn = first.output.dense.weight
        assert head_count(first) == 3 and kept_ffn.shape == (32, 63)
        # head 2 removed: the kept value rows are heads 0, 1, 3 of the original
        orig_v = layer.attention.self.value.weight
        assert torch.equal(kept_rows, torch.cat([orig_v[:16], orig_v[24:]]))
        assert torch.equal(
            kept_ffn, torch.cat([layer.output.dense.weight[:, :5], layer.output.dense.weight[:, 6:]], 1)
        )


def test_recovery_moves_pruned_model_back_towards_teacher(batches: list[dict[str, torch.Tensor]]) -> None:
    loss = DistillLoss(kind="cosine")
    recipe = PruneStructured(heads=0.5, ffn=0.5, round_to=1)
    with_recovery = recipe.model_copy(update={"recovery": TrainBudget(max_steps=20, lr=3e-3, seed=1)})
    model = tiny_encoder()
    plain = recipe.apply(model, batches)
    recovered = with_recovery.apply(model, batches)
    assert param_count(recovered) == param_count(plain)
    assert mean_teacher_loss(recovered, model, batches, loss) < 0.5 * mean_teacher_loss(
        plain, model, batches, loss
    )

    # recovery that makes things worse (here: a wild learning rate) is dropped
    wild = recover(plain, model, batches, TrainBudget(max_steps=3, lr=0.9), loss)
    assert wild is plain


def test_pruning_refuses_what_it_cannot_do(batches: list[dict[str, torch.Tensor]]) -> None:
    with pytest.raises(BuildError, match="no BERT-family"):
        PruneStructured(heads=0.5, importance="weight").apply(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(BuildError, match="calibration"):
        PruneStructured(heads=0.5).apply(tiny_encoder())
    with pytest.raises(BuildError, match="no convolution"):
        PruneStructured(channels=0.5).apply(tiny_encoder(), batches)


class TinyCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU()
        )
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU()
        )
        self.depthwise = torch.nn.Sequential(
            torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.BatchNorm2d(16), torch.nn.ReLU()
        )
        self.expand = torch.nn.Conv2d(16, 32, 1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)  # a residual couples stem and block channels
        x = self.expand(self.depthwise(x)).mean(dim=(2, 3))
        return self.head(x)


def export_cnn(module: torch.nn.Module, example: torch.Tensor, dst: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        module, (example,), dynamo=True, dynamic_shapes={"x": {0: batch}}, input_names=["x"], verbose=False
    )
    assert program is not None
    program.save(str(dst))
    return dst


def test_cnn_channels_are_removed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyCnn().eval()
    images = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    before = param_count(model)
    pruned: Any = apply_torch_pipeline(model, [PruneStructured(channels=0.5, round_to=1)], images)

    assert param_count(model) == before
    assert pruned.stem[0].out_channels == 8 and pruned.block[0].weight.shape == (8, 8, 3, 3)
    assert pruned.depthwise[0].groups == 8 and pruned.expand.weight.shape == (16, 8, 1, 1)
    assert pruned.head.weight.shape == (10, 16)  # the outputs stay as they were
    assert param_count(pruned) < 0.4 * before

    small = export_cnn(pruned, images[0], tmp_path / "pruned.onnx")
    large = export_cnn(model, images[0], tmp_path / "orig.onnx")
    assert small.stat().st_size < large.stat().st_size
    session = ort.InferenceSession(str(small), providers=["CPUExecutionProvider"])
    for x in (images[1], images[1][:1]):
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, pruned(x).numpy(), atol=1e-4)
