"""Label-free accuracy of a classifier (confidence-based performance estimation, CBPE), numpy only.

On the reference (held-out, labelled) the model's top-class confidence is calibrated against whether the
prediction was right: ``P(correct | confidence)``, by isotonic regression (pool-adjacent-violators) or Platt
scaling. On a live window without labels the expected accuracy is the mean calibrated confidence. Its
interval adds two variances: the window's own sampling (each prediction is right with probability ``p_i``,
so the realised accuracy varies by ``sum p_i (1 - p_i) / n^2``) and the calibration's (the spread of the
estimate over calibrators fitted on bootstrap resamples of the reference).

The estimate holds under covariate shift as long as ``P(correct | confidence)`` does not change; under
concept shift (the meaning of labels changes) nothing label-free can, so compare with
:func:`realised_accuracy` once labels arrive.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

GRID_SIZE = 201


class AccuracyEstimate(BaseModel):
    kind: Literal["estimated", "realised"]
    value: float
    low: float
    high: float
    n: int
    level: float = 0.95


class ConfidenceCalibrator(BaseModel):
    """``P(correct | top-class confidence)`` on a fixed grid of confidences, plus bootstrap refits."""

    method: Literal["isotonic", "platt"]
    grid: list[float]
    curve: list[float]
    bootstrap_curves: list[list[float]] = Field(default_factory=list)
    n: int = Field(description="reference predictions the calibrator was fitted on")
    reference_accuracy: float

    def predict(self, confidence: np.ndarray) -> np.ndarray:
        """Calibrated probability that each prediction is right."""
        return np.interp(np.asarray(confidence, dtype=np.float64), self.grid, self.curve)


def top_class(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, confidence) from class probabilities ``(n, k)``, or ``P(class 1)`` ``(n,)``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must be (n,) or (n, k>=2) class probabilities, got shape {s.shape}")
    return s.argmax(axis=1), s.max(axis=1)


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Increasing least-squares fit of ``y`` on ``x`` (pool adjacent violators).

    Returns knots (mean ``x`` of each pooled block, its mean ``y``); interpolate between them.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    ux, start = np.unique(xs, return_index=True)
    weights = np.diff(np.append(start, xs.size)).astype(np.float64)
    sums_y = np.add.reduceat(ys, start)
    # blocks as parallel stacks: total weight, sum of y, sum of x
    bw: list[float] = []
    by: list[float] = []
    bx: list[float] = []
    for w, sy, xv in zip(weights, sums_y, ux, strict=True):
        bw.append(float(w))
        by.append(float(sy))
        bx.append(float(xv * w))
        while len(bw) > 1 and by[-2] / bw[-2] >= by[-1] / bw[-1]:
            w2, y2, x2 = bw.pop(), by.pop(), bx.pop()
            bw[-1] += w2
            by[-1] += y2
            bx[-1] += x2
    wa = np.asarray(bw)
    return np.asarray(bx) / wa, np.asarray(by) / wa


def platt_fit(x: np.ndarray, y: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """``P(y=1) = sigmoid(a * logit(x) + b)`` by Newton's method (a tiny ridge keeps it finite)."""
    xc = np.clip(np.asarray(x, dtype=np.float64), 1e-6, 1 - 1e-6)
    f = np.log(xc / (1 - xc))
    t = np.asarray(y, dtype=np.float64)
    design = np.stack([f, np.ones_like(f)], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        grad = design.T @ (p - t) + 1e-6 * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def _curve(method: str, x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    if method == "isotonic":
        kx, ky = isotonic_fit(x, y)
        return np.interp(grid, kx, ky)
    a, b = platt_fit(x, y)
    g = np.clip(grid, 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-(a * np.log(g / (1 - g)) + b)))


def fit_calibrator(
    confidence: np.ndarray,
    correct: np.ndarray,
    method: Literal["isotonic", "platt"] = "isotonic",
    n_bootstrap: int = 30,
    seed: int = 0,
) -> ConfidenceCalibrator:
    """Calibrate top-class ``confidence`` against ``correct`` (0/1) on labelled reference predictions."""
    x = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 10:
        raise ValueError(
            f"need matching 1-d confidence and correctness (at least 10), got {x.shape}, {y.shape}"
        )
    grid = np.linspace(0.0, 1.0, GRID_SIZE)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, x.size, x.size)
        boots.append(np.round(_curve(method, x[idx], y[idx], grid), 6).tolist())
    return ConfidenceCalibrator(
        method=method,
        grid=np.round(grid, 6).tolist(),
        curve=np.round(_curve(method, x, y, grid), 6).tolist(),
        bootstrap_curves=boots,
        n=int(x.size),
        reference_accuracy=float(y.mean()),
    )


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def estimate_accuracy(
    calibrator: ConfidenceCalibrator, confidence: np.ndarray, level: float = 0.95
) -> AccuracyEstimate:
    """Expected accuracy of the predictions with these top-class confidences, and an interval for the
    accuracy that labels would show (window sampling + calibration uncertainty)."""
    c = np.asarray(confidence, dtype=np.float64)
    if c.size == 0:
        raise ValueError("no predictions to estimate accuracy on")
    p = calibrator.predict(c)
    value = float(p.mean())
    var = float((p * (1 - p)).sum()) / c.size**2
    if calibrator.bootstrap_curves:
        boot = [float(np.interp(c, calibrator.grid, curve).mean()) for curve in calibrator.bootstrap_curves]
        var += float(np.var(boot, ddof=1)) if len(boot) > 1 else 0.0
    half = _z(level) * math.sqrt(var)
    return AccuracyEstimate(
        kind="estimated",
        value=value,
        low=max(0.0, value - half),
        high=min(1.0, value + half),
        n=int(c.size),
        level=level,
    )


def realised_accuracy(predictions: np.ndarray, labels: np.ndarray, level: float = 0.95) -> AccuracyEstimate:
    """Accuracy once labels arrive, with a Wilson score interval."""
    pred, lab = np.asarray(predictions), np.asarray(labels)
    if pred.shape != lab.shape or pred.size == 0:
        raise ValueError(f"predictions {pred.shape} and labels {lab.shape} must match and not be empty")
    n = pred.size
    acc = float((pred == lab).mean())
    z = _z(level)
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return AccuracyEstimate(
        kind="realised",
        value=acc,
        low=max(0.0, centre - half),
        high=min(1.0, centre + half),
        n=n,
        level=level,
    )
