"""The structure-changing candidates of ``kiln build``'s search, and the text they train on.

A structural candidate is a pipeline: PyTorch-level recipes (distillation into a shallower student,
structured pruning of heads and FFN neurons, low-rank factorisation) applied to the fp32 reference, the
result exported to ONNX, then quantization recipes applied on top as *children* of that export (e.g.
``distill-L3`` → ``distill-L3-int8-dynamic``). Children are tried only if their parent passed its ranking
screen: a student already over budget in float does not improve by being quantized.

Order follows expected gain on a CPU at batch 1: halving the layers halves the encoder's work, pruning a
third of heads and neurons saves less, low-rank factorisation of a small encoder's square matrices saves
least. Training runs are bounded by steps and seconds (:class:`TrainBudget`).

Training text never includes what decides anything: texts of the held-out split and of the ranking screen
are removed from it. It is the build's calibration split (with its labels, for the hard-label term of the
classify loss) plus unlabelled text: the user's ``--unlabelled`` file, or else kiln's bundled Rotten
Tomatoes reviews (labels unused).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import DataError
from kiln.optimize.cpu import CpuInfo
from kiln.optimize.distill import Distill
from kiln.optimize.fusion import fuse_transformer
from kiln.optimize.lowrank import LowRank
from kiln.optimize.prune import PruneStructured
from kiln.optimize.quant_static import int8_static_for
from kiln.optimize.recipes import int8_dynamic_for
from kiln.optimize.torch_recipes import DistillLoss, TorchRecipeLike, TrainBudget

TECHNIQUES = ("quantize", "precision", "fuse", "distill", "prune", "low-rank")
"""Technique families ``--techniques`` selects from (default: all)."""
QUICK = ("quantize", "precision", "fuse")
"""The quick search: no training runs (``kiln run``'s default)."""
MAX_TRAIN_TEXTS = 12_000
TRAIN_SECONDS = 240.0
"""Default bound of a distillation run (``--train-seconds``)."""


@dataclass(frozen=True)
class StructuralCandidate:
    name: str
    technique: str
    steps: tuple[TorchRecipeLike, ...]
    children: tuple[tuple[str, Any, str | None], ...]
    """(name, recipe, parent): the parent is the structural candidate itself when None, else an
    earlier child (``distill-L3-fused`` → ``distill-L3-fused-int8-emb4``)."""


def parse_techniques(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"quantize,distill"`` → the families, checked; ``"all"`` → every one; ``"quick"`` → no training."""
    raw = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if raw == ["all"]:
        return TECHNIQUES
    if raw == ["quick"]:
        return QUICK
    unknown = [t for t in raw if t not in TECHNIQUES]
    if unknown or not raw:
        raise DataError(
            f"--techniques {','.join(raw) or '(empty)'}: unknown {unknown or 'nothing given'}; choose from "
            f"{', '.join(TECHNIQUES)} (comma-separated), or all, or quick"
        )
    return tuple(t for t in TECHNIQUES if t in raw)


def distill_loss_for(task: str) -> DistillLoss:
    """Embedding space: cosine to the teacher; classifiers: softened logits (T=2) mixed half and half
    with the hard labels where a batch has them."""
    if task == "embed":
        return DistillLoss(kind="cosine")
    return DistillLoss(kind="kl", temperature=2.0, alpha=0.5)


def structural_candidates(
    task: str,
    depth: int,
    cpu: CpuInfo,
    techniques: Sequence[str],
    train_seconds: float = TRAIN_SECONDS,
    shape: tuple[int, int] | None = None,
) -> list[StructuralCandidate]:
    """The structural pipelines a build tries for a ``depth``-layer transformer, best expected gain first.

    ``train_seconds`` bounds distillation; pruning's recovery gets half of it, low-rank's 3/8.
    ``shape`` (attention heads, hidden size of a BERT-class encoder) adds fused children when the
    ``fuse`` technique is on."""
    loss = distill_loss_for(task)

    def quantized(prefix: str) -> tuple[tuple[str, Any, str | None], ...]:
        children: list[tuple[str, Any, str | None]] = [
            (f"{prefix}-int8-dynamic", int8_dynamic_for(cpu), None)
        ]
        if shape is not None and "fuse" in techniques:
            children += [
                (f"{prefix}-fused", fuse_transformer(shape), None),
                (f"{prefix}-fused-int8-emb4", int8_dynamic_for(cpu, embeddings="int4"), f"{prefix}-fused"),
            ]
        children.append((f"{prefix}-int8-static", int8_static_for(cpu), None))
        return tuple(children)

    out: list[StructuralCandidate] = []
    if "distill" in techniques and depth >= 2:
        layers = max(1, depth // 2)
        name = f"distill-L{layers}"
        recipe = Distill(
            num_layers=layers,
            budget=TrainBudget(max_steps=2000, max_seconds=train_seconds, lr=1e-4),
            loss=loss,
        )
        out.append(StructuralCandidate(name, "distill", (recipe,), quantized(name)))
    if "prune" in techniques:
        prune = PruneStructured(
            heads=0.25,
            ffn=0.3,
            recovery=TrainBudget(max_steps=300, max_seconds=train_seconds / 2, lr=5e-5),
            recovery_loss=loss,
        )
        out.append(StructuralCandidate("prune-30", "prune", (prune,), quantized("prune-30")))
    if "low-rank" in techniques:
        lowrank = LowRank(
            energy=0.9,
            max_param_ratio=0.8,
            exclude=("*classifier*", "*embeddings*"),
            recovery=TrainBudget(max_steps=200, max_seconds=train_seconds * 0.375, lr=5e-5),
            recovery_loss=loss,
        )
        out.append(StructuralCandidate("lowrank-0.9", "low-rank", (lowrank,), ()))
    return out


def read_unlabelled(path: Path, column: str = "text") -> list[str]:
    """Texts of an ``--unlabelled`` file: one per line (.txt), or a ``column`` of CSV/JSONL/Parquet."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"--unlabelled {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            texts = path.read_text(encoding="utf-8").split("\n")  # not splitlines: \x85 and \u2028 are text
        else:
            if suffix in (".jsonl", ".json"):
                frame = pd.read_json(path, lines=suffix == ".jsonl")
            elif suffix == ".parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path)
            if column not in frame.columns:
                raise DataError(
                    f"--unlabelled {path} has no {column!r} column (it has {list(frame.columns)})"
                )
            texts = [str(t) for t in frame[column] if isinstance(t, str)]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"--unlabelled {path} cannot be read: {exc}") from exc
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise DataError(f"--unlabelled {path} holds no text")
    return texts


def training_texts(
    labelled: Sequence[str],
    labels: np.ndarray | None,
    unlabelled: Sequence[str],
    excluded: Sequence[str],
    seed: int,
    limit: int = MAX_TRAIN_TEXTS,
) -> tuple[list[str], np.ndarray | None, list[str]]:
    """(labelled texts, their labels, unlabelled texts) with every ``excluded`` text removed and the
    unlabelled part shuffled and cut so the total stays within ``limit``."""
    banned = set(excluded)
    keep = [i for i, t in enumerate(labelled) if t not in banned]
    texts = [labelled[i] for i in keep]
    kept_labels = None if labels is None else np.asarray(labels)[keep]
    seen = banned | set(texts)
    extra: list[str] = []
    for t in unlabelled:
        if t not in seen:
            seen.add(t)
            extra.append(t)
    order = np.random.default_rng(seed).permutation(len(extra))
    room = max(0, limit - len(texts))
    return texts, kept_labels, [extra[i] for i in order[:room]]
