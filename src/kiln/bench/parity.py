"""The parity gate: a variant's outputs against the reference on several input shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from kiln.bench.scores import ParityCheck
from kiln.runtime.tokenizer import TextTokenizer

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

# (batch size, sequence length): single short input, mixed-length padding, long inputs.
DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((1, 8), (4, 24), (8, 64), (2, 128))

# exact: float-preserving steps (export, graph optimisation); lossy: quantization and friends.
TOLERANCES: dict[str, dict[str, float]] = {
    "exact": {"max_abs_diff": 1e-4, "min_cosine": 0.9999},
    "lossy": {"max_abs_diff": float("inf"), "min_cosine": 0.95},
}


def parity_inputs(
    tokenizer: TextTokenizer, texts: Sequence[str], shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES
) -> list[dict[str, np.ndarray]]:
    """Encoded batches of exactly the given shapes, cut from real texts of mixed lengths."""
    if not texts:
        raise ValueError("parity needs at least one text")
    feeds = []
    for i, (batch, seq) in enumerate(shapes):
        chosen = [texts[(i * 7 + j * 13) % len(texts)] for j in range(batch)]
        # repeat each text so every row reaches the target length; vary the repeat so padding differs
        chosen = [" ".join([t] * (1 + (seq * (j + 1)) // max(4 * batch, 1))) for j, t in enumerate(chosen)]
        enc = tokenizer.encode(chosen)
        cut = {k: np.ascontiguousarray(v[:, :seq]) for k, v in enc.items()}
        if cut["input_ids"].shape[1] < seq:
            pad = seq - cut["input_ids"].shape[1]
            cut = {k: np.pad(v, ((0, 0), (0, pad))) for k, v in cut.items()}
        cut["attention_mask"][:, 0] = 1  # a row of pure padding is not a real input
        feeds.append(cut)
    return feeds


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(den, 1e-12))


def check_parity(
    reference: Runner, variant: Runner, feeds: Sequence[dict[str, np.ndarray]]
) -> list[ParityCheck]:
    checks = []
    for feed in feeds:
        ref = reference(feed)
        out = variant(feed)
        # text feeds: batch x tokens; other inputs (images, N x C x H x W): batch x last axis
        shape = (feed["input_ids"] if "input_ids" in feed else next(iter(feed.values()))).shape
        if ref.shape != out.shape:
            checks.append(
                ParityCheck(
                    batch_size=int(shape[0]),
                    seq_len=int(shape[-1]),
                    max_abs_diff=float("inf"),
                    min_cosine=-1.0,
                )
            )
            continue
        checks.append(
            ParityCheck(
                batch_size=int(shape[0]),
                seq_len=int(shape[-1]),
                max_abs_diff=float(np.max(np.abs(ref - out))),
                min_cosine=float(np.min(_cosines(ref, out))),
                max_prob_shift=_prob_shift(ref, out) if ref.ndim == 2 and ref.shape[1] >= 2 else None,
            )
        )
    return checks


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def _prob_shift(ref: np.ndarray, out: np.ndarray) -> float:
    """Largest change of a softmax probability, any row, any class (for logits)."""
    return float(np.max(np.abs(_softmax(ref) - _softmax(out))))


def judge_parity(checks: Sequence[ParityCheck], precision: Literal["exact", "lossy"]) -> str | None:
    """None when every check is within tolerance, else the reason the variant is rejected."""
    tol = TOLERANCES[precision]
    for c in checks:
        if c.max_abs_diff > tol["max_abs_diff"] or c.min_cosine < tol["min_cosine"]:
            return (
                f"parity gate ({precision}): at batch {c.batch_size} x {c.seq_len} tokens "
                f"max |diff| {c.max_abs_diff:.2e} (limit {tol['max_abs_diff']:.0e}), "
                f"min cosine {c.min_cosine:.4f} (limit {tol['min_cosine']})"
            )
    return None
