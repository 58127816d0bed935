"""The recipe search's budget and trace: what the user bounds, and what the build tried and why it stopped.

:class:`Budget` holds every bound ``kiln build`` accepts (quality drop, absolute or relative to the
reference's value; batch-1 p50 latency; file size; peak memory; trials; wall-clock time; target device).
:class:`SearchTrace` records each candidate's path through the stages (made, parity gate, ranking screen,
accuracy control, held-out evaluation) with its outcome, reason and seconds, for the manifest's
``search_trace``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kiln.bench.scores import Quality
from kiln.errors import BuildError

Outcome = Literal["kept", "rejected", "failed", "skipped", "interrupted"]


def parse_quality_drop(text: str | float) -> tuple[float, bool]:
    """``"0.01"`` → (0.01, absolute); ``"2%"`` → (0.02, relative: a share of the reference's value)."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    number = raw[:-1].strip() if relative else raw
    try:
        value = float(number)
    except ValueError:
        raise BuildError(
            f"--max-quality-drop {raw!r} is not a number: give an absolute drop (0.01 = one point of the "
            "metric) or a share of the reference's value (2%)"
        ) from None
    if relative:
        value /= 100.0
    if not 0.0 <= value <= 1.0:
        raise BuildError(
            f"--max-quality-drop {raw!r} is out of range: an absolute drop in [0, 1] or a share in [0%, 100%]"
        )
    return value, relative


class Budget(BaseModel):
    """Every bound of one build; None means unbounded."""

    model_config = ConfigDict(frozen=True)

    max_quality_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    quality_drop_relative: bool = Field(
        default=False, description="max_quality_drop is a share of the reference's metric value"
    )
    max_latency_ms: float | None = Field(default=None, gt=0, description="batch-1 p50")
    max_size_mb: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)
    max_trials: int | None = Field(default=None, ge=0, description="optional candidates to try")
    time_budget_s: float | None = Field(default=None, gt=0)
    target: Literal["cpu", "cuda"] = "cpu"

    def absolute_drop(self, reference_value: float | None) -> float:
        """The quality-drop bound in the metric's units."""
        if not self.quality_drop_relative:
            return self.max_quality_drop
        if reference_value is None:
            raise BuildError(
                "a relative --max-quality-drop needs the reference's quality, which was not measured"
            )
        return self.max_quality_drop * abs(reference_value)

    def describe_drop(self, reference_value: float | None) -> str:
        if not self.quality_drop_relative:
            return f"{self.max_quality_drop:g}"
        return (
            f"{self.max_quality_drop:.2%} of the reference's {reference_value:.4f} "
            f"= {self.absolute_drop(reference_value):.4f}"
        )

    def as_manifest(self, reference_value: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"max_quality_drop": self.absolute_drop(reference_value)}
        if self.quality_drop_relative:
            out["max_quality_drop_relative"] = self.max_quality_drop
        for key in ("max_latency_ms", "max_size_mb", "max_memory_mb", "max_trials", "time_budget_s"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["target"] = self.target
        return out


def check_target(target: str) -> None:
    """``cpu`` always; a GPU target only where ONNX Runtime has its execution provider — and even then
    kiln's build measures on the CPU provider so far, so it says so instead of pretending."""
    if target == "cpu":
        return
    if target != "cuda":
        raise BuildError(f"--target {target!r} is not supported: use cpu (or cuda with onnxruntime-gpu)")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise BuildError(
            "--target cuda: no GPU backend is available here (this onnxruntime has no "
            "CUDAExecutionProvider); install onnxruntime-gpu on a machine with an NVIDIA GPU, or build "
            "with --target cpu"
        )
    raise BuildError(
        "--target cuda: onnxruntime has the CUDAExecutionProvider, but kiln's build measures variants on "
        "the CPU provider only so far; build with --target cpu"
    )


def screen_failure(quality: Quality, max_drop: float) -> str | None:
    """Why a ranking-screen result is clearly over budget, or None. "Clearly": even the optimistic end of
    the drop's 95% interval is over, so sampling noise on the small subset does not reject a good one."""
    low = min(quality.drop_ci95) if quality.drop_ci95 else quality.drop
    if quality.drop > max_drop and low > max_drop:
        return (
            f"ranking screen: quality drop {quality.drop:+.4f} (95% CI {quality.drop_ci95[0]:+.4f} to "
            f"{quality.drop_ci95[1]:+.4f}) is over the budget {max_drop:g}"
        )
    return None


def recipe_summary(recipe: Sequence[dict[str, Any]]) -> str:
    """One line per pipeline: the kinds and the settings that tell variants apart."""
    parts = []
    for step in recipe:
        kind = str(step.get("kind", "?"))
        details = []
        for key in (
            "dtype",
            "per_channel",
            "reduce_range",
            "calibration_method",
            "block_size",
            "accuracy_level",
            "num_layers",
            "heads",
            "ffn",
            "channels",
            "energy",
        ):
            if key in step:
                details.append(f"{key}={step[key]}")
        excluded = step.get("nodes_to_exclude")
        if excluded:
            details.append(f"{len(excluded)} nodes kept float")
        parts.append(f"{kind}({', '.join(details)})" if details else kind)
    return " → ".join(parts)


class TraceEntry(BaseModel):
    candidate: str
    recipe: str
    stage: str = Field(description="the last stage the candidate reached")
    outcome: Outcome
    reason: str = ""
    seconds: float = 0.0


class SearchTrace:
    """The ordered record of a build's candidates (one entry per candidate, updated as it moves on)."""

    def __init__(self) -> None:
        self.entries: dict[str, TraceEntry] = {}
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def add(
        self,
        candidate: str,
        recipe: str,
        stage: str,
        outcome: Outcome,
        reason: str = "",
        seconds: float = 0.0,
    ) -> TraceEntry:
        entry = TraceEntry(
            candidate=candidate, recipe=recipe, stage=stage, outcome=outcome, reason=reason, seconds=seconds
        )
        self.entries[candidate] = entry
        return entry

    def update(
        self,
        candidate: str,
        stage: str | None = None,
        outcome: Outcome | None = None,
        reason: str | None = None,
    ) -> None:
        entry = self.entries[candidate]
        if stage is not None:
            entry.stage = stage
        if outcome is not None:
            entry.outcome = outcome
        if reason is not None:
            entry.reason = reason

    @contextmanager
    def timed(self, candidate: str) -> Iterator[None]:
        """Add the seconds spent inside to the candidate's entry."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.entries[candidate].seconds = round(
                self.entries[candidate].seconds + time.perf_counter() - start, 3
            )

    def as_manifest(self) -> list[dict[str, Any]]:
        return [e.model_dump() for e in self.entries.values()]
