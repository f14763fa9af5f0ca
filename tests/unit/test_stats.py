"""probekit.stats: bootstrap CIs, permutation tests, multiple-testing corrections, rank helpers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from probekit.errors import ProbekitError
from probekit.stats import (
    bh,
    bootstrap_ci,
    empirical_p,
    holm,
    mean_of_means_bootstrap_ci,
    permutation_test,
    spearman,
    topk_overlap,
)

# --------------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------------


def test_bootstrap_ci_is_reproducible_for_a_seed():
    rng = np.random.default_rng(1)
    values = rng.random(500)
    groups = np.repeat(np.arange(50), 10)
    for g in (None, groups):
        assert bootstrap_ci(values, g, seed=3) == bootstrap_ci(values, g, seed=3)
        assert bootstrap_ci(values, g, seed=3) != bootstrap_ci(values, g, seed=4)


def test_bootstrap_ci_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(size=100)
    large = rng.normal(size=10_000)
    lo, hi = bootstrap_ci(large)
    assert lo < large.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / np.sqrt(large.size), rel=0.15)
    lo_s, hi_s = bootstrap_ci(small)
    assert hi_s - lo_s > 5 * (hi - lo)


def test_cluster_bootstrap_resamples_whole_groups():
    # group "a": one instance with value 0; group "b": 99 instances with value 1.
    # Resampling the 2 groups can only give means 0 (a, a), 0.99 (a, b) or 1 (b, b);
    # resampling instances would give means near 0.99 with a narrow interval.
    values = np.array([0.0] + [1.0] * 99)
    groups = np.array(["a"] + ["b"] * 99)
    lo, hi = bootstrap_ci(values, groups, n_boot=2000)
    assert lo == 0.0 and hi == 1.0
    lo_i, _hi_i = bootstrap_ci(values, n_boot=2000)
    assert lo_i > 0.95


def test_cluster_bootstrap_is_wider_when_groups_are_correlated():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 50)
    values = rng.normal(size=40)[groups] + 0.1 * rng.normal(size=groups.size)  # strong group effect
    lo_g, hi_g = bootstrap_ci(values, groups)
    lo_i, hi_i = bootstrap_ci(values)
    assert (hi_g - lo_g) > 4 * (hi_i - lo_i)


def test_bootstrap_general_statistic_path():
    rng = np.random.default_rng(0)
    values = rng.normal(size=300)
    groups = np.repeat(np.arange(30), 10)
    lo, hi = bootstrap_ci(values, groups, statistic=np.median, n_boot=200, seed=1)
    assert lo < np.median(values) < hi
    assert (lo, hi) == bootstrap_ci(values, groups, statistic=np.median, n_boot=200, seed=1)


def test_bootstrap_vectorised_mean_equals_the_general_path():
    # the fast path for np.mean (resampled group sums / counts) gives the replicates of the plain loop
    # over materialised resamples (timings belong to the benchmarks, not to unit tests)
    rng = np.random.default_rng(0)
    values = (rng.random(2_000) < 0.8).astype(float)
    groups = np.repeat(np.arange(100), 20)
    fast = bootstrap_ci(values, groups, n_boot=200, seed=3)
    slow = bootstrap_ci(values, groups, statistic=lambda v: float(np.mean(v)), n_boot=200, seed=3)
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ProbekitError, match="groups"):
        bootstrap_ci([1.0, 2.0], groups=[0])
    with pytest.raises(ProbekitError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ProbekitError, match="ci"):
        bootstrap_ci([1.0, 2.0], ci=95)


# --------------------------------------------------------------------------------------------------
# permutation tests
# --------------------------------------------------------------------------------------------------


def test_empirical_p_hand_example():
    null = [1.0, 2.0, 3.0, 4.0]
    assert empirical_p(3.0, null) == pytest.approx((1 + 2) / 5)  # 3 and 4 are >= 3
    assert empirical_p(3.0, null, alternative="less") == pytest.approx((1 + 3) / 5)
    assert empirical_p(10.0, null) == pytest.approx(1 / 5)  # never zero
    assert empirical_p(0.0, null, alternative="two-sided") == pytest.approx(2 / 5)
    with pytest.raises(ProbekitError, match="alternative"):
        empirical_p(1.0, null, alternative="bigger")


def test_permutation_test_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.5, 1, 200), rng.normal(0.0, 1, 200)
    p_shift = permutation_test(a, b, n_perm=2000, seed=0)
    assert p_shift < 0.01
    assert p_shift >= 1 / 2001  # the +1 correction
    assert permutation_test(b, a, n_perm=2000, seed=0) > 0.9  # wrong direction
    same = permutation_test(rng.normal(size=200), rng.normal(size=200), n_perm=2000, seed=0)
    assert same > 0.01
    assert permutation_test(a, b, n_perm=500, seed=7) == permutation_test(a, b, n_perm=500, seed=7)


def test_permutation_test_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.2, 1, 60), rng.normal(0.0, 1, 50)
    ours = permutation_test(a, b, n_perm=5000, seed=0)
    ref = scipy.stats.permutation_test(
        (a, b), lambda x, y: x.mean() - y.mean(), n_resamples=5000, alternative="greater", random_state=0
    ).pvalue
    assert ours == pytest.approx(ref, abs=0.02)


# --------------------------------------------------------------------------------------------------
# multiple testing
# --------------------------------------------------------------------------------------------------


def test_holm_hand_computed_example():
    # m = 4 non-NaN; sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01=0.04, 3*0.03=0.09, 2*0.04=0.08
    # -> 0.09 (monotone), 1*0.5
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, np.nan, 0.5])


def test_holm_caps_at_one_keeps_shape_and_order():
    p = np.array([[0.2, 0.9], [0.001, 0.6]])
    adj = holm(p)
    assert adj.shape == p.shape
    assert adj.max() <= 1.0
    assert np.all(adj >= p)
    order = np.argsort(p.ravel())
    assert np.all(np.diff(adj.ravel()[order]) >= 0)
    assert holm([]).shape == (0,)
    assert np.isnan(holm([np.nan])).all()


def test_holm_is_between_bonferroni_and_raw():
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    adj = holm(p)
    assert np.all(adj >= p - 1e-15)
    assert np.all(adj <= np.minimum(1, p * p.size) + 1e-15)


def test_bh_matches_scipy_and_passes_nan_through():
    p = np.array([0.01, 0.02, np.nan, 0.03, 0.5])
    adj = bh(p)
    np.testing.assert_allclose(adj[~np.isnan(p)], scipy.stats.false_discovery_control(p[~np.isnan(p)]))
    assert np.isnan(adj[2])


def test_pvalue_corrections_reject_out_of_range():
    with pytest.raises(ProbekitError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])
    with pytest.raises(ProbekitError):
        bh([-0.1])


# --------------------------------------------------------------------------------------------------
# rank agreement
# --------------------------------------------------------------------------------------------------


def test_spearman_and_topk_overlap():
    a = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    rho, _ = spearman(a, a**2)
    assert rho == pytest.approx(1.0)
    rho, _ = spearman(a, -a)
    assert rho == pytest.approx(-1.0)
    assert topk_overlap(a, a, 2) == 1.0
    assert topk_overlap(a, -a, 2) == 0.0
    assert topk_overlap([3.0, 2.0, np.nan, 1.0], [3.0, 1.0, 9.0, 2.0], 2) == 0.5
    with pytest.raises(ProbekitError, match="k must"):
        topk_overlap(a, a, 0)


def test_mean_of_means_bootstrap_equals_a_hand_computation():
    # sample 0: groups g (values 1, 1), h (0); sample 1: items 1, 0, 0 (no groups). Replicate b averages
    # the two resampled means; sample k draws like bootstrap_ci with seed + k.
    values, groups = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [["g", "g", "h"], None]
    n_boot = 50
    d0 = np.random.default_rng(7).integers(0, 2, size=(n_boot, 2))  # units g=0, h=1
    d1 = np.random.default_rng(8).integers(0, 3, size=(n_boot, 3))
    mean0 = np.array([2.0, 0.0])[d0].sum(axis=1) / np.array([2.0, 1.0])[d0].sum(axis=1)
    mean1 = np.array([1.0, 0.0, 0.0])[d1].mean(axis=1)
    expected = np.quantile((mean0 + mean1) / 2, [0.1, 0.9])
    got = mean_of_means_bootstrap_ci(values, groups, n_boot=n_boot, ci=0.8, seed=7)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_mean_of_means_bootstrap_of_one_sample_is_bootstrap_ci():
    rng = np.random.default_rng(1)
    values, groups = rng.random(60), np.repeat(np.arange(12), 5)
    single = mean_of_means_bootstrap_ci([values], [groups], n_boot=300, seed=4)
    np.testing.assert_allclose(single, bootstrap_ci(values, groups, n_boot=300, seed=4), rtol=1e-12)
    with pytest.raises(ProbekitError, match="one groups entry per sample"):
        mean_of_means_bootstrap_ci([values], [], n_boot=10)
