"""Small, general statistics shared by every analysis: bootstrap CIs, permutation tests, multiple testing.

Everything here takes plain arrays and returns plain numbers, is seeded (the same ``seed`` gives the same
answer), and raises `ProbekitError` for inputs that cannot give a meaningful answer.

- `bootstrap_ci` — percentile bootstrap confidence interval; with ``groups`` it is a *cluster* bootstrap
  that resamples whole groups (e.g. sentences), because the words of one sentence are not independent.
- `mean_of_means_bootstrap_ci` — the CI of a mean over several samples (e.g. seeds) of each sample's
  mean, every sample cluster-resampled on its own.
- `cluster_bootstrap_ci` — the cluster bootstrap of the mean of many columns at once (e.g. one per
  attention head), from the same draws as `bootstrap_ci`; `cluster_sums` — per-group column sums.
- `permutation_test` — p-value for a difference in means between two samples.
- `empirical_p` — p-value of an observed statistic against samples from its null distribution.
- `holm` / `bh` — family-wise (Holm–Bonferroni) and false-discovery-rate (Benjamini–Hochberg) corrections.
- `spearman` / `topk_overlap` — rank agreement between two score vectors (e.g. two head rankings).

References: Efron & Tibshirani (1993), *An Introduction to the Bootstrap*; Davison & Hinkley (1997) §3.8
for the cluster bootstrap; Phipson & Smyth (2010), "Permutation p-values should never be zero" for the
+1 correction; Holm (1979); Benjamini & Hochberg (1995).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats

from probekit.errors import ProbekitError

_ALTERNATIVES = ("greater", "less", "two-sided")
# Resamples are drawn in chunks so that (chunk x n_groups) index arrays stay around this many entries.
_CHUNK_ENTRIES = 2_000_000


# --------------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval for ``statistic(values)``.

    Each of ``n_boot`` resamples draws, with replacement, as many units as there are in the data and
    recomputes the statistic; the interval is the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of those
    replicates (the percentile method, Efron & Tibshirani 1993, ch. 13).

    The *unit* is an instance when ``groups`` is None. When ``groups`` is given (one group id per value,
    e.g. the sentence id of each word), the unit is a whole group: a resample draws groups and keeps all
    their instances (the cluster bootstrap). Use it whenever instances in a group are correlated — words
    of one sentence share a context, so resampling words would give intervals that are too narrow.

    For ``statistic=np.mean`` (the default) the computation is vectorised: per-group sums and counts are
    computed once, and each replicate is the ratio of resampled sums to resampled counts, so 1000
    resamples of ~20k instances take a few milliseconds. Any other statistic is computed in a Python
    loop over replicates (fine for hundreds of resamples, slower for large data). For the mean of many
    columns at once, use `cluster_bootstrap_ci` (same draws).

    Parameters
    ----------
    values : 1-D array of numbers (e.g. 0/1 correctness per test instance).
    groups : optional 1-D array of hashable group ids, same length as ``values``.
    statistic : function from a 1-D array to a number.
    n_boot : number of bootstrap replicates.
    ci : confidence level in (0, 1).
    seed : seed of the `numpy.random.default_rng` that draws the resamples (same seed, same interval).

    Returns
    -------
    (low, high) : floats.
    """
    values = _as_1d_float(values, "values", where="bootstrap_ci")
    codes = _bootstrap_units(values, groups, n_boot, ci, where="bootstrap_ci")
    replicates = _bootstrap_replicates(values, codes, statistic, n_boot, seed)
    low, high = _percentile_interval(replicates, ci)
    return float(low), float(high)


def mean_of_means_bootstrap_ci(
    values: Sequence[Sequence[float] | np.ndarray],
    groups: Sequence[Sequence | np.ndarray | None],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile cluster-bootstrap CI of ``mean_k mean(values[k])``: the mean over S samples (e.g. the
    test sets of S seeds) of each sample's mean.

    Each replicate resamples every sample on its own, whole groups with replacement (the cluster
    bootstrap of `bootstrap_ci`; instances when its ``groups[k]`` is None), takes each resample's mean
    and averages the S means; the interval is the percentile interval of the replicates. Sample k is
    drawn exactly as ``bootstrap_ci(values[k], groups[k], n_boot=n_boot, ci=ci, seed=seed + k)`` draws,
    so for S = 1 the two functions agree. The interval covers the sampling of the items within each
    sample, with the samples themselves (their splits, their fitted probes) held fixed (Davison &
    Hinkley 1997, §3.8, for the stratified cluster bootstrap).

    Parameters
    ----------
    values : S 1-D arrays (e.g. 0/1 correctness per test instance of each seed).
    groups : S arrays of group ids (same lengths as ``values``) or None.
    n_boot, ci, seed : as in `bootstrap_ci`.

    Returns
    -------
    (low, high) : floats.

    Examples
    --------
    >>> from probekit.stats import mean_of_means_bootstrap_ci
    >>> low, high = mean_of_means_bootstrap_ci([[1, 1, 0, 1], [0, 1, 1, 1]], [[0, 0, 1, 1], None], n_boot=200)
    >>> bool(0 <= low <= 0.75 <= high <= 1)
    True
    """
    where = "mean_of_means_bootstrap_ci"
    if len(values) == 0 or len(values) != len(groups):
        raise ProbekitError(
            f"need one groups entry per sample and at least one sample, got {len(values)} and {len(groups)}",
            where=where,
        )
    arrays = [_as_1d_float(v, "values", where=where) for v in values]
    codes = [_bootstrap_units(v, g, n_boot, ci, where=where) for v, g in zip(arrays, groups, strict=True)]
    total = np.zeros(n_boot)  # [n_boot] sum over samples of each replicate's mean
    for k, (v, c) in enumerate(zip(arrays, codes, strict=True)):
        total += _bootstrap_replicates(v, c, np.mean, n_boot, seed + k)
    low, high = _percentile_interval(total / len(arrays), ci)
    return float(low), float(high)


def cluster_bootstrap_ci(
    values: np.ndarray, groups: np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile cluster-bootstrap CI of the mean of each column of ``values  # [m, K]``.

    The same resamples of whole groups are shared by all K columns, and they are the resamples that
    `bootstrap_ci` draws: for one column this is ``bootstrap_ci(values[:, k], groups, n_boot=n_boot,
    ci=ci, seed=seed)`` (same draws, same chunking; equal up to float rounding, as the sums are added in
    another order), vectorised: resample counts C  # [n_boot, n_groups] times per-group sums. A 1-D
    ``values`` is one column.

    Returns
    -------
    (low, high) : two ``[K]`` arrays.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ProbekitError(
            f"values must be 1-D or 2-D, got shape {values.shape}", where="cluster_bootstrap_ci"
        )
    codes = _bootstrap_units(values[:, 0], groups, n_boot, ci, where="cluster_bootstrap_ci")
    n_units = int(codes.max()) + 1
    sums = cluster_sums(values, codes, n_units)
    counts = np.bincount(codes, minlength=n_units).astype(float)
    reps = np.empty((n_boot, values.shape[1]))
    for start, stop, idx in _resamples(n_units, n_boot, seed):
        flat = (idx + n_units * np.arange(stop - start)[:, None]).ravel()
        c = np.bincount(flat, minlength=(stop - start) * n_units).reshape(stop - start, n_units).astype(float)
        reps[start:stop] = (c @ sums) / (c @ counts)[:, None]
    return _percentile_interval(reps, ci)


def cluster_sums(values: np.ndarray, codes: np.ndarray, n_units: int) -> np.ndarray:
    """Per-cluster sums ``[n_units, K]`` of ``values  # [m, K]`` for ``codes`` in 0..n_units-1."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros((n_units, values.shape[1]))
    if len(codes) == 0:
        return out
    if np.any(np.diff(codes) < 0):
        order = np.argsort(codes, kind="stable")
        codes, values = codes[order], values[order]
    starts = np.flatnonzero(np.r_[True, np.diff(codes) > 0])
    out[codes[starts]] = np.add.reduceat(values, starts, axis=0)
    return out


def _bootstrap_units(values: np.ndarray, groups, n_boot, ci, *, where: str) -> np.ndarray:
    """Check the bootstrap arguments; the resampling unit (0..n_units-1) of each of the
    ``len(values)`` rows."""
    if values.size == 0:
        raise ProbekitError("cannot bootstrap an empty array", where=where, fix="pass at least one value")
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 1):
        raise ProbekitError(f"n_boot must be a positive integer, got {n_boot!r}", where=where)
    if not 0 < ci < 1:
        raise ProbekitError(
            f"ci must lie strictly between 0 and 1, got {ci!r}",
            where=where,
            fix="e.g. ci=0.95 for a 95% interval",
        )
    if groups is None:
        return np.arange(values.size)
    groups = np.asarray(groups)
    if groups.shape != values.shape:
        raise ProbekitError(
            f"groups has shape {groups.shape} but values has {values.shape[0]} rows",
            where=where,
            fix="give one group id per value",
        )
    _, codes = np.unique(groups, return_inverse=True)
    return codes.ravel()


def _resamples(n_units: int, n_boot: int, seed: int):
    """The bootstrap draws: yields ``(start, stop, idx)`` with ``idx  # [stop-start, n_units]`` the units of
    replicates ``start..stop-1``, drawn with replacement from `numpy.random.default_rng(seed)` in chunks of
    about ``_CHUNK_ENTRIES`` entries (the chunking does not change the draws)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ENTRIES // n_units)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        yield start, stop, rng.integers(0, n_units, size=(stop - start, n_units))


def _bootstrap_replicates(values, codes, statistic, n_boot, seed) -> np.ndarray:
    """``n_boot`` bootstrap replicates of ``statistic``, resampling the units labelled by ``codes``."""
    n_units = int(codes.max()) + 1
    out = np.empty(n_boot)
    if statistic is np.mean or statistic is np.average:
        # mean of a resample = (sum of resampled group sums) / (sum of resampled group sizes)
        sums = np.bincount(codes, weights=values, minlength=n_units)
        counts = np.bincount(codes, minlength=n_units).astype(float)
        for start, stop, idx in _resamples(n_units, n_boot, seed):
            out[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
        return out
    # general statistic: materialise each resample
    order = np.argsort(codes, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(codes, minlength=n_units))[:-1])
    for start, _, idx in _resamples(n_units, n_boot, seed):
        for b, units in enumerate(idx, start):
            out[b] = statistic(values[np.concatenate([members[i] for i in units])])
    return out


def _percentile_interval(replicates: np.ndarray, ci: float):
    """The ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of ``replicates`` along its first axis."""
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha], axis=0)
    return low, high


# --------------------------------------------------------------------------------------------------
# permutation tests and empirical p-values
# --------------------------------------------------------------------------------------------------


def empirical_p(
    observed: float, null_samples: Sequence[float] | np.ndarray, alternative: str = "greater"
) -> float:
    """p-value of ``observed`` against samples drawn from its null distribution.

    ``p = (1 + #{null samples at least as extreme as observed}) / (1 + n_null)``. The +1 counts the
    observed value as one draw from the null, which keeps the test valid and the p-value above zero
    (Phipson & Smyth 2010). "At least as extreme" means ``>= observed`` for ``alternative="greater"``,
    ``<= observed`` for ``"less"``; ``"two-sided"`` doubles the smaller one-sided p-value (capped at 1),
    which does not assume the null is centred at zero. Ties within 1e-12 (relative) count as extreme, so
    float rounding never makes a test anti-conservative.
    """
    _check_alternative(alternative, "empirical_p")
    null = _as_1d_float(null_samples, "null_samples", where="empirical_p")
    null = null[~np.isnan(null)]
    if null.size == 0:
        raise ProbekitError(
            "null_samples is empty (or all NaN)",
            where="empirical_p",
            fix="draw samples from the null distribution first",
        )
    observed = float(observed)
    if np.isnan(observed):
        return float("nan")
    tol = 1e-12 * max(1.0, abs(observed))
    p_greater = (1 + np.count_nonzero(null >= observed - tol)) / (1 + null.size)
    p_less = (1 + np.count_nonzero(null <= observed + tol)) / (1 + null.size)
    if alternative == "greater":
        return float(p_greater)
    if alternative == "less":
        return float(p_less)
    return float(min(1.0, 2 * min(p_greater, p_less)))


def permutation_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_perm: int = 10_000,
    seed: int = 0,
    alternative: str = "greater",
) -> float:
    """Permutation test for a difference in means, ``mean(a) - mean(b)``; returns the p-value.

    Under the null hypothesis that ``a`` and ``b`` come from the same distribution, the group labels
    are exchangeable: the observed difference is compared with the differences obtained after randomly
    re-assigning the pooled values to groups of the original sizes (``n_perm`` times, seeded), and the
    p-value is `empirical_p` of the observed difference (with the +1 correction).
    ``alternative="greater"`` tests ``mean(a) > mean(b)``.

    The samples must be exchangeable under the null: if ``a`` and ``b`` are paired (the same items
    measured twice) or clustered (words of sentences), permute within pairs/clusters instead.
    """
    _check_alternative(alternative, "permutation_test")
    a = _as_1d_float(a, "a", where="permutation_test")
    b = _as_1d_float(b, "b", where="permutation_test")
    if a.size == 0 or b.size == 0:
        raise ProbekitError("both samples need at least one value", where="permutation_test")
    if not (isinstance(n_perm, int | np.integer) and n_perm >= 1):
        raise ProbekitError(f"n_perm must be a positive integer, got {n_perm!r}", where="permutation_test")
    pooled = np.concatenate([a, b])
    n, n_a = pooled.size, a.size
    observed = a.mean() - b.mean()
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    chunk = max(1, _CHUNK_ENTRIES // n)
    for start in range(0, n_perm, chunk):
        stop = min(start + chunk, n_perm)
        perms = rng.permuted(np.broadcast_to(pooled, (stop - start, n)), axis=1)
        null[start:stop] = perms[:, :n_a].mean(axis=1) - perms[:, n_a:].mean(axis=1)
    return empirical_p(observed, null, alternative=alternative)


# --------------------------------------------------------------------------------------------------
# multiple testing
# --------------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (controls the family-wise error rate).

    With the m non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the
    i-th is ``max_{j <= i} min(1, (m - j + 1) * p_(j))`` — the running maximum keeps the adjusted values
    in the same order as the raw ones. Rejecting where adjusted ``<= alpha`` is Holm's (1979) procedure.
    NaNs pass through unchanged and do not count towards m. The output has the input's shape.
    """
    p, shape = _as_pvalues(pvalues, "holm")
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m:
        order = np.argsort(p[ok], kind="stable")
        scaled = (m - np.arange(m)) * p[ok][order]
        adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
        tmp = np.empty(m)
        tmp[order] = adjusted
        out[ok] = tmp
    return out.reshape(shape)


def bh(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values; controls the false discovery rate).

    Thin wrapper over `scipy.stats.false_discovery_control` that lets NaNs pass through (they do not
    count towards the number of tests) and keeps the input's shape.
    """
    p, shape = _as_pvalues(pvalues, "bh")
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = scipy.stats.false_discovery_control(p[ok], method="bh")
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------------
# rank agreement
# --------------------------------------------------------------------------------------------------


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation and its two-sided p-value (`scipy.stats.spearmanr`), NaN pairs dropped."""
    a = _as_1d_float(a, "a", where="spearman")
    b = _as_1d_float(b, "b", where="spearman")
    if a.shape != b.shape:
        raise ProbekitError(
            f"a has {a.size} values but b has {b.size}",
            where="spearman",
            fix="pass two score vectors over the same items",
        )
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        raise ProbekitError("need at least 3 paired non-NaN values", where="spearman")
    res = scipy.stats.spearmanr(a[ok], b[ok])
    return float(res.statistic), float(res.pvalue)


def topk_overlap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, k: int) -> float:
    """Fraction of the k highest-scoring items under ``a`` that are also among the k highest under ``b``.

    Items are positions in the two (equally long) score vectors; NaN scores rank last; ties are broken
    by position. 1.0 means the same top-k set, k/n is the chance level.
    """
    a = _as_1d_float(a, "a", where="topk_overlap")
    b = _as_1d_float(b, "b", where="topk_overlap")
    if a.shape != b.shape:
        raise ProbekitError(f"a has {a.size} values but b has {b.size}", where="topk_overlap")
    if not (isinstance(k, int | np.integer) and 1 <= k <= a.size):
        raise ProbekitError(f"k must be an integer in 1..{a.size}, got {k!r}", where="topk_overlap")

    def top(x):
        return set(np.argsort(-np.nan_to_num(x, nan=-np.inf), kind="stable")[:k].tolist())

    return len(top(a) & top(b)) / k


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _as_1d_float(x, name: str, *, where: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ProbekitError(f"{name} must be numbers ({exc})", where=where) from None
    if arr.ndim != 1:
        raise ProbekitError(
            f"{name} must be 1-D, got shape {arr.shape}",
            where=where,
            fix="flatten it, or pass one value per instance",
        )
    return arr


def _as_pvalues(pvalues, where: str) -> tuple[np.ndarray, tuple[int, ...]]:
    try:
        arr = np.asarray(pvalues, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ProbekitError(f"p-values must be numbers ({exc})", where=where) from None
    flat = arr.ravel()
    bad = ~np.isnan(flat) & ((flat < 0) | (flat > 1))
    if bad.any():
        raise ProbekitError(f"p-values must lie in [0, 1]; got {flat[bad][:3].tolist()}", where=where)
    return flat, arr.shape


def _check_alternative(alternative: str, where: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ProbekitError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}", where=where)
