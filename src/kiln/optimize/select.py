"""Choose the variant to ship: the fastest at batch 1 whose quality drop fits the budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.bench.scores import VariantRecord
from kiln.errors import BuildError

BASELINE = "onnx-fp32"
MIN_SPEEDUP = 1.1  # a variant must beat the float ONNX graph by this much to be chosen for speed


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def _p50(v: VariantRecord) -> float:
    p = v.p50("batch1")
    return p if p is not None else float("inf")


def within_budget(v: VariantRecord, max_quality_drop: float) -> bool:
    q = v.scores.quality
    return v.status == "ok" and q is not None and q.drop <= max_quality_drop


def choose(variants: Sequence[VariantRecord], max_quality_drop: float, reference: str) -> Choice:
    """Pick among servable (ONNX) variants.

    The fastest batch-1 p50 within the quality budget wins, provided it is at least ``MIN_SPEEDUP``x
    faster than the float ONNX baseline or no larger on disk; otherwise the baseline (the same
    function as the PyTorch reference, exported) wins and the reason says so.
    """
    by_name = {v.name: v for v in variants}
    ref = by_name.get(reference)
    baseline = by_name.get(BASELINE)
    if baseline is None or baseline.status != "ok":
        why = baseline.reason if baseline is not None else "it was not built"
        raise BuildError(f"the float ONNX baseline is unusable ({why}); nothing can be served")
    servable = [v for v in variants if v.format == "onnx" and within_budget(v, max_quality_drop)]
    if not servable:
        return Choice(
            BASELINE,
            f"no optimised variant kept its quality drop within {max_quality_drop:g}; "
            "shipping the float ONNX export of the reference",
        )
    best = min(servable, key=_p50)
    ref_note = ""
    if ref is not None and ref.p50("batch1"):
        ref_note = f", {_p50(ref) / _p50(best):.2f}x faster than the PyTorch fp32 reference"
    if best.name == BASELINE:
        return Choice(
            BASELINE,
            f"fastest variant within the quality budget (p50 {_p50(best):.2f} ms{ref_note}); "
            "no optimised variant beat the float ONNX export",
        )
    speedup = _p50(baseline) / _p50(best)
    drop = best.scores.quality.drop if best.scores.quality else float("nan")
    size_ratio = (baseline.scores.file_bytes or 0) / max(best.scores.file_bytes or 1, 1)
    if speedup < MIN_SPEEDUP and size_ratio <= 1.0:
        return Choice(
            BASELINE,
            f"{best.name} is only {speedup:.2f}x faster than {BASELINE} and no smaller; "
            "shipping the float ONNX export of the reference",
        )
    return Choice(
        best.name,
        f"fastest variant within the quality budget: batch-1 p50 {_p50(best):.2f} ms{ref_note}, "
        f"{speedup:.2f}x vs {BASELINE}, {size_ratio:.1f}x smaller file, quality drop {drop:+.4f} "
        f"(budget {max_quality_drop:g})",
    )
