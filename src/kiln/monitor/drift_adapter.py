"""The one place the windowed monitor couples to the drift engine (profile, drift, cbpe).

The request log keeps, per sampled input (:mod:`kiln.monitor.store`): the text's length and tokens (the text
itself only with keep-text), the output summarised as a fixed 8-dimensional random projection
(:func:`kiln.monitor.requestlog.projection`), and, for a classifier, the top label and its probability.
:class:`ProfileChecker` turns those rows into the detector's :class:`~kiln.monitor.drift.WindowData`:

- input features: every profiled feature when texts are kept, else ``n_chars`` and ``n_tokens``;
- embeddings (embed models): the profile's reference sample goes through the same fixed projection, and
  the MMD and domain-classifier tests run on the 8 projected dimensions (a Johnson-Lindenstrauss view of the
  embedding: less power than all dimensions, the same calibration);
- classifier outputs: the top class and its confidence. The detector takes class probabilities, so each row
  becomes a vector with the confidence on the top class and the rest spread evenly over the others: the
  same top class and the same confidence, which is all the output tests and CBPE look at.

True labels that arrived later (``POST /v1/feedback``) are mapped to class ids by name (or integer id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.monitor.drift import Detector, DriftReport, WindowData
from kiln.monitor.profile import (
    PROFILE_NAME,
    EmbeddingProfile,
    Float16Matrix,
    ReferenceProfile,
    load_profile,
)
from kiln.monitor.requestlog import PROJECTION_DIMS, projection

__all__ = ["PROFILE_NAME", "LoggedSamples", "ProfileChecker", "find_profile"]


@dataclass
class LoggedSamples:
    """The sampled inputs of one window as the request log keeps them (one entry per input)."""

    text_chars: list[int] = field(default_factory=list)
    text_tokens: list[int | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    projections: list[list[float] | None] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    """Predicted top label (classifiers)."""
    scores: list[float | None] = field(default_factory=list)
    """Its probability (classifiers)."""
    truth: list[str | None] = field(default_factory=list)
    """True label from feedback, where one arrived."""

    def __len__(self) -> int:
        return len(self.text_chars)

    def add(
        self,
        text_chars: int,
        text_tokens: int | None,
        text: str | None,
        projected: list[float] | None,
        label: str | None,
        score: float | None,
        truth: str | None,
    ) -> None:
        self.text_chars.append(int(text_chars))
        self.text_tokens.append(text_tokens)
        self.texts.append(text)
        self.projections.append(projected)
        self.labels.append(label)
        self.scores.append(score)
        self.truth.append(truth)

    @property
    def labelled(self) -> int:
        return sum(t is not None for t in self.truth)


def find_profile(bundle_root: Path) -> ReferenceProfile | None:
    """The reference profile a bundle carries (``profile.json`` in its folder), or ``None``."""
    path = Path(bundle_root) / PROFILE_NAME
    return load_profile(path) if path.is_file() else None


def _median_distance(x: np.ndarray) -> float:
    s = x[:1000].astype(np.float64)
    sq = (s * s).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * s @ s.T, 0.0)
    off = d2[np.triu_indices(len(s), k=1)]
    med = float(np.sqrt(np.median(off))) if off.size else 1.0
    return med if med > 0 else 1.0


def projected_profile(profile: ReferenceProfile) -> ReferenceProfile:
    """``profile`` with its embedding sample seen through the request log's fixed projection."""
    emb = profile.embeddings
    if emb is None:
        return profile
    sample = emb.sample_array().astype(np.float64) @ projection(emb.dim)
    sample = np.round(sample, 6).astype(np.float32)
    projected = EmbeddingProfile(
        dim=PROJECTION_DIMS,
        n=emb.n,
        sample=Float16Matrix.from_array(sample),
        rff_dim=emb.rff_dim,
        rff_seed=emb.rff_seed,
        bandwidth=_median_distance(sample),
    )
    return profile.model_copy(update={"embeddings": projected})


def _class_index(name: str | None, classes: Sequence[str]) -> int:
    if name is None:
        return -1
    try:
        return list(classes).index(name)
    except ValueError:
        pass
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    return -1


class ProfileChecker:
    """Runs the drift tests of one reference profile on windows of logged samples.

    ``task``: the bundle's task (``embed`` or ``classify``); ``classes``: a classifier's class names in the
    order of its scores. Null distributions are cached per window size by the underlying detector.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        task: str,
        classes: Sequence[str] = (),
        alpha: float = 0.01,
        rounds: int = 2000,
    ) -> None:
        self.task = task
        self.classes = tuple(classes)
        self.profile = projected_profile(profile) if task == "embed" else profile
        self.detector = Detector(self.profile, alpha=alpha, rounds=rounds)

    @property
    def is_classifier(self) -> bool:
        return bool(self.classes) and self.profile.outputs is not None

    @property
    def reference_accuracy(self) -> float | None:
        """Accuracy on the reference (held-out) data, when the profile has a calibrator."""
        outputs = self.profile.outputs
        if outputs is None or outputs.calibrator is None:
            return None
        return outputs.calibrator.reference_accuracy

    def window_data(self, samples: LoggedSamples) -> WindowData:
        n = len(samples)
        features: dict[str, np.ndarray] = {}
        if n and all(t is not None for t in samples.texts):
            from kiln.monitor.features import text_features

            tokens = samples.text_tokens if all(t is not None for t in samples.text_tokens) else None
            features = text_features(
                [t or "" for t in samples.texts],
                None if tokens is None else [int(t or 0) for t in tokens],
                self.profile.vocabulary or None,
            )
        else:
            features["n_chars"] = np.asarray(samples.text_chars, dtype=np.float64)
            if n and all(t is not None for t in samples.text_tokens):
                features["n_tokens"] = np.asarray(samples.text_tokens, dtype=np.float64)
        embeddings = None
        if self.task == "embed" and n and all(p is not None for p in samples.projections):
            embeddings = np.asarray(samples.projections, dtype=np.float32).reshape(n, -1)
            if self.profile.embeddings is None or embeddings.shape[1] != self.profile.embeddings.dim:
                embeddings = None
        scores = labels = None
        if self.is_classifier and n and all(s is not None for s in samples.scores):
            k = len(self.classes)
            predicted = np.asarray([_class_index(lab, self.classes) for lab in samples.labels])
            if (predicted >= 0).all():
                confidence = np.clip(np.asarray(samples.scores, dtype=np.float64), 1.0 / k, 1.0)
                rest = (1.0 - confidence) / (k - 1)
                scores = np.repeat(rest[:, None], k, axis=1)
                scores[np.arange(n), predicted] = confidence
                labels = np.asarray([_class_index(t, self.classes) for t in samples.truth], dtype=np.int64)
        return WindowData(features=features, embeddings=embeddings, scores=scores, labels=labels)

    def check(self, samples: LoggedSamples) -> DriftReport:
        """The drift report (tests, verdict, estimated and realised accuracy) of one window."""
        return self.detector.detect(self.window_data(samples))


def bundle_checker(bundle_root: Path, alpha: float = 0.01) -> ProfileChecker | None:
    """A checker for the profile the bundle at ``bundle_root`` carries; ``None`` when it carries none."""
    from kiln.bundle.load import read_manifest

    profile = find_profile(bundle_root)
    if profile is None:
        return None
    manifest = read_manifest(bundle_root)
    classes = manifest.task_config.get("labels", ()) if manifest.task == "classify" else ()
    return ProfileChecker(profile, manifest.task, [str(c) for c in classes], alpha=alpha)
