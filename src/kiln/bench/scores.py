"""The measured record of one variant (pure data: safe to import while serving)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class LatencyStats(BaseModel):
    """Wall-clock latency of one call at a fixed batch size, after warm-up."""

    batch_size: int
    runs: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float = Field(description="items per second at this batch size (batch_size / mean)")


class ParityCheck(BaseModel):
    """Outputs of a variant against the reference on one input shape."""

    batch_size: int
    seq_len: int
    max_abs_diff: float
    min_cosine: float
    max_prob_shift: float | None = Field(
        default=None,
        description="logits (rows x classes): the largest change of a softmax probability in any row",
    )


class Quality(BaseModel):
    """Task quality on held-out data; ``drop`` is reference minus this variant on the primary metric."""

    metric: str
    value: float
    drop: float
    drop_ci95: tuple[float, float]
    extra: dict[str, float] = Field(default_factory=dict)


class Scores(BaseModel):
    quality: Quality | None = None
    latency: dict[str, LatencyStats] = Field(default_factory=dict)
    peak_rss_mb: float | None = None
    file_bytes: int | None = None


class VariantRecord(BaseModel):
    """One candidate artifact: how it was made, whether it passed, what it scored."""

    name: str
    format: Literal["pytorch", "onnx"]
    recipe: list[dict[str, Any]] = Field(description="the pipeline of recipe configs that made it, in order")
    status: Literal["ok", "rejected", "failed"] = "ok"
    reason: str | None = None
    file: str | None = Field(default=None, description="artifact path relative to the build directory")
    parity: list[ParityCheck] = Field(default_factory=list)
    scores: Scores = Field(default_factory=Scores)

    def p50(self, key: str = "batch1") -> float | None:
        stats = self.scores.latency.get(key)
        return stats.p50_ms if stats else None
