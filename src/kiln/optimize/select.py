"""Choose the variant to ship: the fastest at batch 1 whose quality drop fits the budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.bench.scores import VariantRecord
from kiln.errors import BuildError
from kiln.optimize.search import Budget

BASELINE = "onnx-fp32"
MIN_SPEEDUP = 1.1  # a variant must beat the float ONNX graph by this much to be chosen for speed
SPEED_TIE = 0.10
"""Batch-1 p50s within this fraction of the fastest count as a tie, broken by the smaller quality drop,
then the smaller file. Interleaved p50s of one graph moved by up to ~10% between builds on the shared
2-core machines kiln is measured on; a 5% "win" of a distilled fp32 graph (+0.91 pt) over an INT8 one
(+0.13 pt, 4x smaller) was noise, not a reason to ship it."""


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str


def _p50(v: VariantRecord) -> float:
    p = v.p50("batch1")
    return p if p is not None else float("inf")


def _drop(v: VariantRecord) -> float:
    return v.scores.quality.drop if v.scores.quality is not None else float("inf")


def within_budget(v: VariantRecord, max_quality_drop: float) -> bool:
    q = v.scores.quality
    return v.status == "ok" and q is not None and q.drop <= max_quality_drop


def bound_violation(v: VariantRecord, budget: Budget) -> str | None:
    """Which of the budget's hard bounds (latency, size, memory) ``v`` breaks, or None."""
    p50 = v.p50("batch1")
    if budget.max_latency_ms is not None and (p50 is None or p50 > budget.max_latency_ms):
        got = "not measured" if p50 is None else f"{p50:.2f} ms"
        return f"batch-1 p50 {got} > --max-latency-ms {budget.max_latency_ms:g}"
    size = v.scores.file_bytes
    if budget.max_size_mb is not None and (size is None or size / 1e6 > budget.max_size_mb):
        got = "not measured" if size is None else f"{size / 1e6:.1f} MB"
        return f"file {got} > --max-size-mb {budget.max_size_mb:g}"
    rss = v.scores.peak_rss_mb
    if budget.max_memory_mb is not None and (rss is None or rss > budget.max_memory_mb):
        got = "not measured" if rss is None else f"{rss:.0f} MB"
        return f"peak memory {got} > --max-memory-mb {budget.max_memory_mb:g}"
    return None


def choose(
    variants: Sequence[VariantRecord],
    max_quality_drop: float,
    reference: str,
    budget: Budget | None = None,
) -> Choice:
    """Pick among servable (ONNX) variants.

    The fastest batch-1 p50 within the quality budget (and within ``budget``'s latency, size and memory
    bounds) wins; p50s within ``SPEED_TIE`` of the fastest tie, and the smaller drop, then the smaller
    file, breaks the tie. The winner must be at least ``MIN_SPEEDUP``x faster than the float ONNX
    baseline or no larger on disk; otherwise the baseline (the same function as the PyTorch reference,
    exported) wins and the reason says so. When a bound excludes the baseline, the best variant within
    every bound wins whatever its speed-up; when nothing fits, :class:`BuildError` names what excluded
    each variant.
    """
    by_name = {v.name: v for v in variants}
    ref = by_name.get(reference)
    baseline = by_name.get(BASELINE)
    if baseline is None or baseline.status != "ok":
        why = baseline.reason if baseline is not None else "it was not built"
        raise BuildError(f"the float ONNX baseline is unusable ({why}); nothing can be served")
    in_quality = [v for v in variants if v.format == "onnx" and within_budget(v, max_quality_drop)]
    excluded: dict[str, str] = {}
    if budget is not None:
        for v in [baseline, *in_quality]:
            if (why := bound_violation(v, budget)) is not None:
                excluded[v.name] = why
    servable = [v for v in in_quality if v.name not in excluded]
    note = (
        "; excluded by the budget: " + "; ".join(f"{n} ({w})" for n, w in excluded.items())
        if excluded
        else ""
    )
    if BASELINE in excluded and not servable:
        raise BuildError(
            f"no variant fits the budget (quality drop within {max_quality_drop:g}{note}); loosen a bound "
            "(--max-size-mb, --max-latency-ms, --max-memory-mb, --max-quality-drop) and build again"
        )
    if not servable:
        return Choice(
            BASELINE,
            f"no optimised variant kept its quality drop within {max_quality_drop:g}; "
            f"shipping the float ONNX export of the reference{note}",
        )
    fastest = min(servable, key=_p50)
    tied = [v for v in servable if _p50(v) <= _p50(fastest) * (1.0 + SPEED_TIE)]
    best = min(tied, key=lambda v: (_drop(v), v.scores.file_bytes or 0, _p50(v)))
    if best is not fastest:
        note = (
            f"; {fastest.name} measured {_p50(best) / _p50(fastest) - 1:.1%} faster, within the "
            f"{SPEED_TIE:.0%} timing tie, but drops {_drop(fastest):+.4f}"
            f"{' with a larger file' if _drop(fastest) == _drop(best) else ''}{note}"
        )
    ref_note = ""
    if ref is not None and ref.p50("batch1"):
        ref_note = f", {_p50(ref) / _p50(best):.2f}x faster than the PyTorch fp32 reference"
    if best.name == BASELINE:
        return Choice(
            BASELINE,
            f"fastest variant within the quality budget (p50 {_p50(best):.2f} ms{ref_note}); "
            f"no optimised variant beat the float ONNX export{note}",
        )
    speedup = _p50(baseline) / _p50(best)
    drop = best.scores.quality.drop if best.scores.quality else float("nan")
    size_ratio = (baseline.scores.file_bytes or 0) / max(best.scores.file_bytes or 1, 1)
    if speedup < MIN_SPEEDUP and size_ratio <= 1.0 and BASELINE not in excluded:
        return Choice(
            BASELINE,
            f"{best.name} is only {speedup:.2f}x faster than {BASELINE} and no smaller; "
            f"shipping the float ONNX export of the reference{note}",
        )
    return Choice(
        best.name,
        f"fastest variant within the quality budget: batch-1 p50 {_p50(best):.2f} ms{ref_note}, "
        f"{speedup:.2f}x vs {BASELINE}, {size_ratio:.1f}x smaller file, quality drop {drop:+.4f} "
        f"(budget {max_quality_drop:g}){note}",
    )
