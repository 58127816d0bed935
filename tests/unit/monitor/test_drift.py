import numpy as np
import pytest

from kiln.errors import DataError
from kiln.monitor.drift import (
    Detector,
    WindowData,
    benjamini_hochberg,
    detect,
    domain_classifier_auc,
    holm,
)
from kiln.monitor.features import text_features
from kiln.monitor.profile import ReferenceProfile, make_reference_profile

WORDS = [f"w{i}" for i in range(300)]
DIM = 8
ROUNDS = 1000


def _texts(rng: np.random.Generator, n: int, mean_words: float = 12.0) -> list[str]:
    lengths = np.maximum(1, rng.poisson(mean_words, n))
    zipf = 1.0 / np.arange(1, len(WORDS) + 1)
    return [" ".join(rng.choice(WORDS, size=k, p=zipf / zipf.sum())).capitalize() + "." for k in lengths]


def _scores(rng: np.random.Generator, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p1 = 1.0 / (1.0 + np.exp(-2.0 * emb[:, 0]))
    return np.stack([1 - p1, p1], axis=1), (rng.random(len(p1)) < p1).astype(np.int64)


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    t = _texts(rng, 1500)
    emb = rng.normal(size=(1500, DIM)).astype(np.float32)
    s, y = _scores(rng, emb)
    profile = make_reference_profile(t, [len(x.split()) for x in t], emb, labels=y, scores=s, seed=0)
    assert profile.embeddings is not None
    profile.embeddings.rff_dim = 256  # plenty for 8 dimensions, and a faster test
    return profile


@pytest.fixture(scope="module")
def pool(profile: ReferenceProfile) -> WindowData:
    """Fresh draws from the reference distribution (not the reference's own rows)."""
    rng = np.random.default_rng(99)
    t = _texts(rng, 2500)
    emb = rng.normal(size=(2500, DIM)).astype(np.float32)
    s, y = _scores(rng, emb)
    return WindowData(
        features=text_features(t, [len(x.split()) for x in t], profile.vocabulary),
        embeddings=emb,
        scores=s,
        labels=y,
    )


def _take(pool: WindowData, idx: np.ndarray) -> WindowData:
    assert pool.features is not None and pool.embeddings is not None and pool.scores is not None
    assert pool.labels is not None
    return WindowData(
        features={k: v[idx] for k, v in pool.features.items()},
        embeddings=pool.embeddings[idx],
        scores=pool.scores[idx],
        labels=pool.labels[idx],
    )


def test_holm_and_bh_adjustments() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    assert holm([0.9, 0.8]).max() <= 1.0


def test_identical_distribution_alarms_near_alpha(profile: ReferenceProfile, pool: WindowData) -> None:
    alpha = 0.05
    detector = Detector(profile, alpha=alpha, rounds=ROUNDS, seed=1)
    rng = np.random.default_rng(5)
    verdicts, raw = [], []
    for _ in range(100):
        report = detector.detect(_take(pool, rng.choice(2500, 100, replace=False)))
        verdicts.append(report.drift)
        raw += [t.p_value <= alpha for t in report.tests if t.counts_toward_verdict]
    # each test alone alarms at about alpha; after Holm the whole family alarms at most at alpha
    assert 0.025 < np.mean(raw) < 0.075
    assert np.mean(verdicts) <= alpha + 0.03


def test_clear_shifts_alarm(profile: ReferenceProfile, pool: WindowData) -> None:
    detector = Detector(profile, rounds=ROUNDS)
    rng = np.random.default_rng(6)
    idx = rng.choice(2500, 300, replace=False)
    assert not detector.detect(_take(pool, idx)).drift

    longer = _take(pool, idx)
    longer.features = text_features(
        t := _texts(rng, 300, mean_words=15.0), [len(x.split()) for x in t], profile.vocabulary
    )
    report = detector.detect(longer)
    assert report.drift and "input:n_words:wasserstein" in report.alarms

    moved = _take(pool, idx)
    assert moved.embeddings is not None
    moved.embeddings = moved.embeddings + np.r_[np.zeros(DIM - 1), 0.5].astype(np.float32)
    report = detector.detect(moved)
    assert {"embedding:embedding:mmd", "embedding:embedding:domain_auc"} <= set(report.alarms)

    relabelled = _take(pool, idx)
    relabelled.labels = np.ones(300, dtype=np.int64)
    assert "labels:labels:chi2" in detector.detect(relabelled).alarms


def test_report_fields(profile: ReferenceProfile, pool: WindowData) -> None:
    window = _take(pool, np.arange(200))
    report = Detector(profile, rounds=ROUNDS).detect(window, window_size=200)
    assert report.n == 200 and report.correction == "holm"
    ks = report.test("input:n_chars:ks")
    assert ks.p_adjusted is not None and ks.p_adjusted >= ks.p_value
    assert ks.threshold > 0 and ks.alarm == (ks.p_adjusted <= 0.01)
    assert not report.test("input:n_chars:psi").counts_toward_verdict
    assert report.accuracy_estimate is not None and report.accuracy_realised is not None
    assert abs(report.accuracy_estimate.value - report.accuracy_realised.value) < 0.08
    assert report.accuracy_realised.n == 200


def test_partial_labels_and_texts(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(3)
    t = _texts(rng, 150)
    labels = np.full(150, -1)
    labels[:40] = 1
    window = WindowData(texts=t, token_counts=[len(x.split()) for x in t], labels=labels)
    report = Detector(profile, rounds=ROUNDS).detect(window)
    assert report.test("labels:labels:chi2").n == 40
    assert report.test("input:oov_rate:ks").n == 150


def test_window_size_and_shapes_are_checked(profile: ReferenceProfile, pool: WindowData) -> None:
    detector = Detector(profile, rounds=ROUNDS)
    with pytest.raises(DataError, match="calibrated for the exact window size"):
        detector.detect(_take(pool, np.arange(50)), window_size=100)
    with pytest.raises(DataError, match="different numbers of rows"):
        len(WindowData(texts=["a"], embeddings=np.zeros((2, DIM))))
    assert not detect(WindowData(embeddings=np.random.default_rng(0).normal(size=(100, DIM))), profile).drift
    with pytest.raises(DataError, match="columns"):
        detector.detect(WindowData(embeddings=np.zeros((20, DIM + 1))))


def test_domain_classifier_null_and_shift() -> None:
    rng = np.random.default_rng(0)
    # exact under exchangeability: reference and window both fresh draws of one distribution
    p_null = [
        domain_classifier_auc(rng.normal(size=(400, 5)), rng.normal(size=(200, 5)), seed=s)[1]
        for s in range(200)
    ]
    assert 0.02 < np.mean(np.asarray(p_null) < 0.1) < 0.18
    auc, p, _ = domain_classifier_auc(rng.normal(size=(400, 5)), rng.normal(0.4, 1.0, size=(200, 5)))
    assert auc > 0.6 and p < 1e-3


def test_null_cache_keeps_recent_sizes_and_recomputes_identically(
    profile: ReferenceProfile, pool: WindowData
) -> None:
    # a server sees a new window size in almost every window: the cache must not grow without bound
    detector = Detector(profile, rounds=200, cached_sizes=2)
    windows = {n: _take(pool, np.arange(n)) for n in (60, 70, 80)}
    first = detector.detect(windows[60])
    partial = _take(pool, np.arange(70))
    assert partial.labels is not None
    partial.labels[:55] = -1  # the labels test runs on 15 rows: a second size within one window
    detector.detect(partial)
    assert detector.cached_window_sizes == [70, 15]
    detector.detect(windows[80])
    assert detector.cached_window_sizes == [15, 80]
    again = detector.detect(windows[60])  # evicted, simulated again from the same seeds
    assert detector.cached_window_sizes == [80, 60]
    assert again.model_dump() == first.model_dump()
    with pytest.raises(ValueError, match="cached_sizes"):
        Detector(profile, cached_sizes=0)


def test_one_detector_shared_by_threads(profile: ReferenceProfile, pool: WindowData) -> None:
    from concurrent.futures import ThreadPoolExecutor

    detector = Detector(profile, rounds=200, cached_sizes=2)
    sizes = [40, 45, 50, 55] * 3
    with ThreadPoolExecutor(4) as ex:
        reports = list(ex.map(lambda n: detector.detect(_take(pool, np.arange(n))), sizes))
    alone = Detector(profile, rounds=200)
    expected = {n: alone.detect(_take(pool, np.arange(n))).model_dump() for n in set(sizes)}
    assert all(r.model_dump() == expected[n] for n, r in zip(sizes, reports, strict=True))
    assert len(detector.cached_window_sizes) <= 2


def test_default_cache_holds_a_dashboard_of_windows(
    profile: ReferenceProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the dashboard re-reads its 24 windows every refresh while the open window grows: the 24 sizes of
    # complete windows must stay cached however many open-window sizes pass through
    import kiln.monitor.drift as drift

    calls: list[int] = []
    real = drift.null_histogram

    def counting(hist, n, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(n)
        return real(hist, n, *args, **kwargs)

    monkeypatch.setattr(drift, "null_histogram", counting)
    detector = Detector(profile, rounds=20)
    complete = list(range(100, 124))
    for refresh in range(40):
        for n in [*complete, 500 + refresh]:
            detector.calibrate(n)
    assert sorted(set(calls)) == sorted([*complete, *range(500, 540)])
    assert len(calls) == len(set(calls)) * len(profile.features) + 2 * len(set(calls))  # each once
