"""Structured pruning that removes structure: attention heads, FFN neurons, CNN channels.

Nothing is masked. Transformer layers of the BERT family (``attention.self.{query,key,value}``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense`` — BERT, RoBERTa, MiniLM, ...) get
their Linear weights physically sliced: a pruned head loses its rows of the q/k/v projections and its
columns of the output projection; a pruned FFN neuron loses its row of the intermediate projection and
its column of the output projection. transformers 5 dropped ``prune_heads``; its BERT attention reshapes
with ``-1`` heads, so sliced weights are all it takes (the per-layer ``num_attention_heads`` and
``all_head_size`` attributes are updated too). The config's global head count is left as it was: a
pruned model is exported, not re-saved as a Hugging Face folder.

CNN channels are removed with torch-pruning's ``DependencyGraph`` (through ``MetaPruner``), which keeps
coupled layers (conv → batch norm → next conv, residual adds, depthwise groups) consistent.

Importance:

* ``activation`` (needs data): a head scores the mean L2 norm of what it adds to the attention output
  (its context slice times its slice of the output projection), a neuron the mean of
  ``|activation| * ||its output column||``, both over the real (unpadded) tokens of the calibration
  batches.
* ``weight``: the same products taken on weight norms alone (no data needed).

CNN channels are ranked by the group L2 norm of all coupled weights (torch-pruning
``MagnitudeImportance``), whatever ``importance`` says.

The lowest-scoring heads/neurons are removed in each layer (the same count in every layer), then an
optional recovery trains the pruned model towards the unpruned one (cosine to its embeddings for
``embed``) on unlabelled batches, kept only where it lowers that loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from kiln.errors import BuildError
from kiln.optimize.torch_recipes import (
    Batch,
    DistillLoss,
    Progress,
    TorchRecipeConfig,
    TrainBudget,
    model_inputs,
    recover,
    spread,
)


class PruneStructured(TorchRecipeConfig):
    """Remove the given fractions of attention heads and FFN neurons (transformers) or conv channels
    (CNNs), lowest importance first, then optionally recover by training towards the unpruned model."""

    kind: Literal["prune-structured"] = "prune-structured"
    heads: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="fraction of attention heads removed per layer"
    )
    ffn: float = Field(default=0.0, ge=0.0, lt=1.0, description="fraction of FFN neurons removed per layer")
    channels: float = Field(default=0.0, ge=0.0, lt=1.0, description="fraction of conv channels removed")
    importance: Literal["activation", "weight"] = "activation"
    calibration_batches: int = Field(default=16, ge=1)
    round_to: int = Field(default=8, ge=1, description="kept FFN neurons / channels: a multiple of this")
    recovery: TrainBudget | None = None
    recovery_loss: DistillLoss = DistillLoss()
    precision: Literal["lossy"] = "lossy"

    @model_validator(mode="after")
    def _prunes_something(self) -> PruneStructured:
        if self.heads == 0 and self.ffn == 0 and self.channels == 0:
            raise ValueError(
                "nothing to prune: set at least one of heads, ffn, channels above 0 (and below 1)"
            )
        return self

    def apply(
        self, model: torch.nn.Module, data: Sequence[Batch] | None = None, on_progress: Progress | None = None
    ) -> torch.nn.Module:
        """A pruned copy of ``model`` (``model`` itself is not changed)."""
        calibration = spread(data, self.calibration_batches) if data else []
        if self.importance == "activation" and not calibration and (self.heads or self.ffn):
            raise BuildError(
                "activation importance needs calibration batches: pass data or use importance='weight'"
            )
        if self.recovery is not None and not data:
            raise BuildError("recovery training needs unlabelled batches: pass data or set recovery=None")
        was_training = model.training
        model.eval()
        pruned = copy.deepcopy(model)
        if self.heads or self.ffn:
            layers = transformer_layers(pruned)
            if not layers:
                raise BuildError(
                    f"{type(model).__name__} has no BERT-family transformer layers (attention.self.query/key/"
                    "value, intermediate.dense, output.dense): head and FFN pruning cannot apply to it"
                )
            scores = (
                activation_scores(pruned, layers, calibration, on_progress)
                if self.importance == "activation"
                else [weight_scores(layer) for layer in layers]
            )
            for layer, score in zip(layers, scores, strict=True):
                if self.heads:
                    n = score.heads.numel()
                    keep = max(1, n - round(self.heads * n))
                    prune_heads(layer, _top(score.heads, keep))
                if self.ffn:
                    n = score.neurons.numel()
                    keep = min(n, max(1, _round_up(n - round(self.ffn * n), self.round_to)))
                    prune_neurons(layer, _top(score.neurons, keep))
        if self.channels:
            example = data[0] if data else None
            prune_channels(pruned, example, self.channels, self.round_to)
        if self.recovery is not None and data:
            pruned = recover(pruned, model, data, self.recovery, self.recovery_loss, on_progress)
        pruned.eval()
        model.train(was_training)
        return pruned


@dataclass
class LayerScores:
    heads: torch.Tensor  # (num_heads,)
    neurons: torch.Tensor  # (intermediate_size,)


def _is_bert_layer(module: Any) -> bool:
    try:
        parts = [
            module.attention.self.query,
            module.attention.self.key,
            module.attention.self.value,
            module.attention.output.dense,
            module.intermediate.dense,
            module.output.dense,
        ]
    except AttributeError:
        return False
    return all(isinstance(p, torch.nn.Linear) for p in parts)


def transformer_layers(model: torch.nn.Module) -> list[Any]:
    """The BERT-family transformer layers of ``model``, in order (duck-typed: ``Any``)."""
    return [m for m in model.modules() if _is_bert_layer(m)]


def head_count(layer: Any) -> int:
    return int(layer.attention.self.query.out_features // _head_size(layer))


def _head_size(layer: Any) -> int:
    attn = layer.attention.self
    size = getattr(attn, "attention_head_size", None)
    if not isinstance(size, int) or size < 1:
        raise BuildError(f"{type(attn).__name__} has no attention_head_size: cannot tell its heads apart")
    return size


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in their original order."""
    return torch.sort(torch.topk(scores, keep).indices).values


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def weight_scores(layer: Any) -> LayerScores:
    d = _head_size(layer)
    attn = layer.attention.self
    w_o = layer.attention.output.dense.weight.detach()
    rows = torch.stack(
        [lin.weight.detach().pow(2).sum(dim=1) for lin in (attn.query, attn.key, attn.value)]
    ).sum(0)
    per_head_in = rows.reshape(-1, d).sum(dim=1).sqrt()
    per_head_out = w_o.pow(2).sum(dim=0).reshape(-1, d).sum(dim=1).sqrt()
    w_in = layer.intermediate.dense.weight.detach()
    w_out = layer.output.dense.weight.detach()
    return LayerScores(heads=per_head_in * per_head_out, neurons=w_in.norm(dim=1) * w_out.norm(dim=0))


@torch.no_grad()
def activation_scores(
    model: torch.nn.Module,
    layers: Sequence[Any],
    data: Sequence[Batch],
    on_progress: Progress | None = None,
) -> list[LayerScores]:
    """Per-layer head and neuron scores from forward hooks over ``data`` (real tokens only)."""
    head_sums = [torch.zeros(head_count(layer), dtype=torch.float64) for layer in layers]
    neuron_sums = [
        torch.zeros(layer.intermediate.dense.out_features, dtype=torch.float64) for layer in layers
    ]
    state: dict[str, torch.Tensor | None] = {"mask": None}
    tokens = 0.0

    def valid(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        mask = state["mask"]
        if mask is not None and mask.numel() == flat.shape[0]:
            flat = flat[mask.reshape(-1).bool()]
        return flat

    def on_context(i: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        layer = layers[i]
        d = _head_size(layer)
        w_o = layer.attention.output.dense.weight

        def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            ctx = valid(args[0])  # (tokens, heads * d)
            heads = ctx.shape[1] // d
            per_head = torch.einsum("thd,ohd->tho", ctx.reshape(-1, heads, d), w_o.reshape(-1, heads, d))
            head_sums[i] += per_head.norm(dim=2).sum(dim=0).double()

        return hook

    def on_hidden(i: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        col_norm = layers[i].output.dense.weight.norm(dim=0)

        def hook(_mod: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            act = valid(args[0])
            neuron_sums[i] += (act.abs().sum(dim=0) * col_norm).double()

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(on_context(i)))
        handles.append(layer.output.dense.register_forward_pre_hook(on_hidden(i)))
    try:
        for step, batch in enumerate(data):
            args, kwargs = model_inputs(batch)
            mask = kwargs.get("attention_mask")
            state["mask"] = mask
            tokens += float(mask.sum()) if mask is not None else float(args[0].shape[0] if args else 1)
            model(*args, **kwargs)
            if on_progress is not None:
                on_progress("calibrate", step + 1, len(data), 0.0)
    finally:
        for handle in handles:
            handle.remove()
    return [
        LayerScores(heads=(h / max(tokens, 1.0)).float(), neurons=(n / max(tokens, 1.0)).float())
        for h, n in zip(head_sums, neuron_sums, strict=True)
    ]


def _slice_linear(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear keeping ``index`` of its outputs (``dim=0``) or inputs (``dim=1``)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    out_f, in_f = weight.shape
    new = torch.nn.Linear(in_f, out_f, bias=linear.bias is not None, dtype=weight.dtype, device=weight.device)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        bias = linear.bias.detach()
        new.bias.data.copy_(bias.index_select(0, index) if dim == 0 else bias)
    return new


def prune_heads(layer: Any, keep: torch.Tensor) -> None:
    """Keep only heads ``keep`` (indices) of a BERT-family layer, in place."""
    d = _head_size(layer)
    rows = (keep.unsqueeze(1) * d + torch.arange(d)).reshape(-1)
    attn = layer.attention.self
    for name in ("query", "key", "value"):
        setattr(attn, name, _slice_linear(getattr(attn, name), rows, dim=0))
    out = layer.attention.output
    out.dense = _slice_linear(out.dense, rows, dim=1)
    if hasattr(attn, "num_attention_heads"):
        attn.num_attention_heads = int(keep.numel())
    if hasattr(attn, "all_head_size"):
        attn.all_head_size = int(rows.numel())


def prune_neurons(layer: Any, keep: torch.Tensor) -> None:
    """Keep only FFN neurons ``keep`` (indices) of a BERT-family layer, in place."""
    inter = layer.intermediate
    out = layer.output
    inter.dense = _slice_linear(inter.dense, keep, dim=0)
    out.dense = _slice_linear(out.dense, keep, dim=1)


def prune_channels(model: torch.nn.Module, example: Batch | None, ratio: float, round_to: int) -> None:
    """Remove ``ratio`` of the channels of every prunable conv group, in place (torch-pruning)."""
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise BuildError(
            "channel pruning needs torch-pruning: run `pip install --no-deps torch-pruning`"
        ) from exc
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d)]
    if not convs:
        raise BuildError(f"{type(model).__name__} has no convolution: channel pruning cannot apply to it")
    if example is None:
        raise BuildError("channel pruning traces the model: pass at least one example batch as data")
    args, kwargs = model_inputs(example)
    example_inputs: object = args[0] if args else kwargs
    # Final classifier outputs are the model's contract: never prune them.
    ignored: list[torch.nn.Module] = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    ignored = ignored[-1:] if ignored else [convs[-1]]
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            round_to=round_to if round_to > 1 else None,
        )
        pruner.step()
    except Exception as exc:  # torch-pruning raises plain exceptions on graphs it cannot trace
        raise BuildError(f"channel pruning of {type(model).__name__} failed: {exc}") from exc
