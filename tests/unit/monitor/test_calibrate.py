import numpy as np
import pytest

from kiln.monitor.calibrate import (
    FourierFeatures,
    NullDistribution,
    histogram_statistic,
    multinomial_rows,
    null_histogram,
)
from kiln.monitor.profile import categorical_histogram, make_reference_profile, numeric_histogram

ROUNDS = 2000


def test_null_p_value_and_threshold_agree() -> None:
    null = NullDistribution(np.sort(np.random.default_rng(0).normal(size=999)))
    assert null.p_value(-100.0) == 1.0
    assert null.p_value(100.0) < 1e-6
    t = null.threshold(0.05)
    assert null.p_value(np.nextafter(t, np.inf)) <= 0.05 < null.p_value(t)
    deep = null.threshold(1e-4)  # beyond 999 rounds: the exponential tail
    assert deep > null.values[-1]
    assert null.p_value(deep) == pytest.approx(1e-4)


def test_tail_extrapolation_errs_on_the_large_side() -> None:
    rng = np.random.default_rng(1)
    normal = NullDistribution(np.sort(rng.normal(size=5000)))
    assert normal.p_value(4.0) > 3.2e-5  # true upper tail of N(0, 1) at 4
    chi2_3 = NullDistribution(np.sort((rng.normal(size=(5000, 3)) ** 2).sum(1)))
    assert chi2_3.p_value(25.0) > 1.6e-5  # true upper tail of chi-square(3) at 25
    assert chi2_3.p_value(25.0) < 1e-3


def test_multinomial_rows_match_the_distribution() -> None:
    p = np.array([0.5, 0.3, 0.2])
    draws = multinomial_rows(np.random.default_rng(0), 100, p, 20_000)
    assert (draws.sum(axis=1) == 100).all()
    np.testing.assert_allclose(draws.mean(axis=0), 100 * p, rtol=0.01)
    np.testing.assert_allclose(draws.var(axis=0), 100 * p * (1 - p), rtol=0.05)


def test_statistics_are_zero_on_identical_counts() -> None:
    h = numeric_histogram(np.random.default_rng(0).normal(size=1000), max_bins=20)
    for name in ("ks", "wasserstein", "chi2", "psi", "js"):
        assert histogram_statistic(name, h, np.asarray(h.counts), np.asarray(h.counts))[0] == pytest.approx(
            0.0
        )
    with pytest.raises(ValueError, match="unknown statistic"):
        histogram_statistic("nope", h, np.asarray(h.counts), np.asarray(h.counts))


def test_wasserstein_measures_a_shift_in_reference_sds() -> None:
    rng = np.random.default_rng(0)
    h = numeric_histogram(rng.normal(size=20_000), max_bins=50)
    shifted = h.bin(rng.normal(0.25, 1.0, size=20_000))
    w = histogram_statistic("wasserstein", h, np.asarray(h.counts), shifted)[0]
    assert w == pytest.approx(0.25, abs=0.04)


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
def test_thresholds_shrink_as_windows_grow(kind: str) -> None:
    rng = np.random.default_rng(0)
    stats: tuple[str, ...]
    if kind == "numeric":
        h = numeric_histogram(rng.exponential(size=3000), max_bins=30)
        stats = ("ks", "wasserstein", "psi", "js")
    else:
        h = categorical_histogram(rng.choice(["a", "b", "c"], size=3000, p=[0.6, 0.3, 0.1]), ["a", "b", "c"])
        stats = ("chi2", "psi", "js")
    sizes = (50, 200, 1000, 5000)
    nulls = [null_histogram(h, n, stats, ROUNDS, seed=1) for n in sizes]
    for stat in stats:
        thresholds = [null[stat].threshold(0.01) for null in nulls]
        if stat == "chi2":  # chi-square's null does not depend on the sizes (k - 1 degrees of freedom)
            assert max(thresholds) / min(thresholds) < 1.3, thresholds
        else:
            assert thresholds == sorted(thresholds, reverse=True), (stat, thresholds)
            assert thresholds[0] > 1.5 * thresholds[-1]


def test_chi2_null_matches_its_asymptotic_law() -> None:
    rng = np.random.default_rng(0)
    h = categorical_histogram(rng.choice(["a", "b", "c", "d"], size=5000), ["a", "b", "c", "d"])
    null = null_histogram(h, 1000, ["chi2"], 5000, seed=2)["chi2"]
    assert null.values.mean() == pytest.approx(3.0, rel=0.1)  # chi-square with 3 degrees of freedom


def test_mmd_null_shrinks_with_window_and_fits_real_draws() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(800, 6)).astype(np.float32)
    profile = make_reference_profile(["a b c"] * 800, None, ref, embedding_rows=800)
    assert profile.embeddings is not None
    ff = FourierFeatures(profile.embeddings.model_copy(update={"rff_dim": 256}))  # fewer: faster test
    t = [ff.null(n, ROUNDS, seed=3).threshold(0.05) for n in (100, 400, 2000)]
    assert t == sorted(t, reverse=True)
    # the simulated null is the law of MMD^2 between the sample and fresh windows from the same distribution
    observed = [ff.mmd2(rng.normal(size=(400, 6))) for _ in range(100)]
    assert np.mean(np.asarray(observed) > t[1]) < 0.12
