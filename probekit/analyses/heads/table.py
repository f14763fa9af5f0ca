"""The head table: every head's dev/test accuracy on one relation, with its baselines and tests.

Per (relation, direction): Clark et al.'s (2019) best fixed offset (chosen on dev), chance, 95% cluster
bootstrap CIs over sentences, a clustered sign-flip test against the offset baseline (Holm over the
word-pair family), and a permutation null for "the best of all heads" (Westfall-Young maxT). The
definitions are in ``docs/methods/heads.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probekit.analyses.heads.collect import POSITIONAL_DIRECTION, Scored
from probekit.analyses.heads.positional import positional_frame
from probekit.analyses.heads.rules import ALPHA
from probekit.stats import cluster_bootstrap_ci, cluster_sums, empirical_p, holm

#: Monte Carlo sign patterns of `signflip_p` when exact enumeration is too large (p >= 1/(n+1))
SIGNFLIP_FLIPS = 9_999

HEAD_COLUMNS = [
    "model",
    "data",
    "relation",
    "direction",
    "layer",
    "head",
    "n",
    "accuracy",
    "attention_mass",
    "ci_low",
    "ci_high",
    "n_dev",
    "dev_accuracy",
    "dev_attention_mass",
    "best_on_dev",
    "offset",
    "offset_accuracy",
    "delta",
    "p_offset",
    "p_holm",
    "dev_p_maxT",
    "head_positional",
    "head_top_offset",
    "share_at_top_offset",
    "split_seed",
    "test_size",
]


def signflip_p(
    diff: np.ndarray, codes: np.ndarray, n_flips: int = SIGNFLIP_FLIPS, seed: int = 0
) -> np.ndarray:
    """One-sided p-values (mean diff > 0) of a clustered paired sign-flip test, per column of ``diff``.

    The statistic is T = sum_s d_s, with d_s the sum of ``diff`` over cluster (sentence) s; under the
    null hypothesis each d_s is symmetric about 0, so every sign pattern of the d_s is equally likely
    (a randomisation test; Fisher 1935, Good 2005). The clusters with d_s = 0 in every column cannot
    change T and are left out. With S_nz remaining clusters:

    - exact when ``2**S_nz <= n_flips + 1``: every sign pattern is enumerated and
      p = #{patterns with T* >= T} / 2**S_nz (the identity is one of them, so p >= 2**-S_nz);
    - otherwise Monte Carlo: ``n_flips`` random sign patterns drawn with ``seed``, shared by all columns,
      and p = (b + 1) / (n_flips + 1) with b = #{T* >= T} (Phipson & Smyth 2010), so p is never 0 and
      never below ``1 / (n_flips + 1)``.

    Ties within 1e-9 count as extreme. A column whose d_s are all 0 gets p = 1. The randomisation
    distribution is computed as one matrix product per chunk of patterns (``[flips, S] @ [S, K]``);
    `scipy.stats.permutation_test` (``permutation_type="samples"``) gives the same exact p-values
    (tests/unit/test_heads.py checks it) but is ~100x slower on a full head table.

    Parameters
    ----------
    diff : ``[m, K]`` paired differences (e.g. head correct - baseline correct).
    codes : ``[m]`` the cluster (sentence) of each row.
    n_flips : Monte Carlo sign patterns (and the enumeration limit).
    seed : seed of the Monte Carlo patterns.

    Returns
    -------
    numpy.ndarray
        ``[K]`` p-values.

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.repeat(np.arange(20), 3)
    >>> signflip_p(np.ones((60, 1)), codes), signflip_p(np.zeros((60, 1)), codes)   # 1/(9999+1); 1
    (array([0.0001]), array([1.]))
    >>> signflip_p(np.array([[1.0], [1.0], [-1.0]]), np.arange(3))   # exact: 4 of 8 patterns have T* >= 1
    array([0.5])
    """
    diff = np.asarray(diff, dtype=np.float64)
    diff = diff.reshape(len(diff), -1)
    if diff.shape[0] == 0:
        return np.ones(diff.shape[1])
    _, c = np.unique(codes, return_inverse=True)
    d = cluster_sums(diff, c.ravel(), int(c.max()) + 1)  # [S, K]
    d = d[np.any(d != 0, axis=1)]  # [S_nz, K]
    s_nz = d.shape[0]
    observed = d.sum(0)  # [K]
    tol = 1e-9 * np.maximum(1.0, np.abs(observed))
    exact = s_nz <= 62 and 2**s_nz <= n_flips + 1
    total = 2**s_nz if exact else n_flips
    rng = np.random.default_rng(seed)
    extreme = np.zeros(d.shape[1], dtype=np.int64)
    chunk = max(1, 2**20 // max(1, s_nz))
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        if exact:  # pattern i: bit j of i set = cluster j flipped
            bits = (np.arange(start, stop)[:, None] >> np.arange(s_nz)[None, :]) & 1
            signs = 1.0 - 2.0 * bits  # [stop-start, S_nz]
        else:
            signs = rng.choice([-1.0, 1.0], size=(stop - start, s_nz))
        extreme += np.count_nonzero(signs @ d >= observed - tol, axis=0)
    p = extreme / total if exact else (extreme + 1) / (n_flips + 1)
    return np.where(np.any(d != 0, axis=0), p, 1.0)


def _n_candidates(inst: pd.DataFrame, n_words: np.ndarray, causal: bool) -> np.ndarray:
    """Visible candidate words per instance (self only for the ``self`` relation)."""
    src = inst.src.to_numpy(dtype=np.int64)
    self_ok = inst.self_ok.to_numpy(dtype=bool)
    n = n_words[inst.sentence_idx.to_numpy(dtype=np.int64)]
    return (src + self_ok) if causal else (n - ~self_ok)


def _null_max(
    pred: np.ndarray, inst: pd.DataFrame, n_words: np.ndarray, causal: bool, n_perm: int, seed: int
) -> np.ndarray:
    """``[n_perm, L*H]`` accuracies against random visible partners (``docs/methods/heads.md``)."""
    src = inst.src.to_numpy(dtype=np.int64)
    self_ok = inst.self_ok.to_numpy(dtype=bool)
    n_cand = _n_candidates(inst, n_words, causal)
    rng = np.random.default_rng(seed)
    out = np.empty((n_perm, pred.shape[1]))
    for p in range(n_perm):
        r = rng.integers(0, n_cand)
        if not causal:
            r = r + ((~self_ok) & (r >= src))
        out[p] = (pred == r.astype(pred.dtype)[:, None]).mean(0)
    return out


def head_table(model_name, data_spec, sc: Scored, inst, fam_keys, n_boot, n_perm, seed, test_size):
    """Per-head rows and per-family baselines for one model (``fam_keys``: `families`)."""
    lh = sc.pred.shape[1]
    layer = np.repeat(sc.layers, sc.n_heads)
    head = np.tile(np.arange(sc.n_heads), len(sc.layers))
    pos = positional_frame(model_name, sc)
    top_offset = pos.top_offset.to_numpy()
    frames, fams = [], []
    # enough sign patterns that Holm over every word-pair head of the table can reach ALPHA / 2
    n_tests = lh * sum(d != POSITIONAL_DIRECTION for _, d in fam_keys)
    n_flips_wp = max(SIGNFLIP_FLIPS, int(np.ceil(2 * n_tests / ALPHA)) - 1)
    rel_arr, dir_arr = inst.relation.to_numpy(), inst.direction.to_numpy()
    for rel, direction in fam_keys:
        rows_all = np.flatnonzero((rel_arr == rel) & (dir_arr == direction))
        sub = inst.iloc[rows_all]
        is_test = sub.is_test.to_numpy()
        dev_rows, test_rows = rows_all[~is_test], rows_all[is_test]
        off_dev = sub.offset.to_numpy()[~is_test]
        off_test = sub.offset.to_numpy()[is_test]
        k = best_offset(off_dev)
        fam = {
            "model": model_name,
            "data": data_spec,
            "relation": rel,
            "direction": direction,
            "n": len(test_rows),
            "n_dev": len(dev_rows),
            "offset": k,
            "offset_dev_accuracy": offset_share(off_dev, k),
            "offset_accuracy": offset_share(off_test, k),
            "chance_accuracy": float(
                np.mean(1.0 / _n_candidates(inst.iloc[test_rows], sc.n_words, sc.causal))
            )
            if len(test_rows)
            else np.nan,
        }
        if len(dev_rows) == 0 or len(test_rows) == 0:
            fams.append(fam)
            continue
        tgt = inst.tgt.to_numpy()
        corr_dev = sc.pred[dev_rows] == tgt[dev_rows, None]
        corr_test = sc.pred[test_rows] == tgt[test_rows, None]
        acc_dev, acc_test = corr_dev.mean(0), corr_test.mean(0)
        mass_dev, mass_test = sc.mass[dev_rows].mean(0), sc.mass[test_rows].mean(0)
        groups_test = inst.sentence_idx.to_numpy()[test_rows]
        low, high = cluster_bootstrap_ci(corr_test, groups_test, n_boot=n_boot, seed=seed)
        off_corr = (off_test == k).astype(float)
        n_flips = SIGNFLIP_FLIPS if direction == POSITIONAL_DIRECTION else n_flips_wp
        p_off = signflip_p(corr_test - off_corr[:, None], groups_test, n_flips=n_flips, seed=seed)
        null = _null_max(sc.pred[dev_rows], inst.iloc[dev_rows], sc.n_words, sc.causal, n_perm, seed).max(1)
        best = int(np.lexsort((np.arange(lh), -mass_dev, -acc_dev))[0])
        p_maxT = np.array([empirical_p(a, null) for a in acc_dev])
        share_top = np.array([np.mean(off_test == o) for o in top_offset])
        frames.append(
            pd.DataFrame(
                {
                    "model": model_name,
                    "data": data_spec,
                    "relation": rel,
                    "direction": direction,
                    "layer": layer,
                    "head": head,
                    "n": len(test_rows),
                    "accuracy": acc_test,
                    "attention_mass": mass_test.astype(np.float64),
                    "ci_low": low,
                    "ci_high": high,
                    "n_dev": len(dev_rows),
                    "dev_accuracy": acc_dev,
                    "dev_attention_mass": mass_dev.astype(np.float64),
                    "best_on_dev": np.arange(lh) == best,
                    "offset": k,
                    "offset_accuracy": fam["offset_accuracy"],
                    "delta": acc_test - fam["offset_accuracy"],
                    "p_offset": p_off,
                    "p_holm": np.nan,
                    "dev_p_maxT": p_maxT,
                    "head_positional": pos.positional.to_numpy(),
                    "head_top_offset": top_offset,
                    "share_at_top_offset": share_top,
                    "split_seed": seed,
                    "test_size": test_size,
                }
            )
        )
        fam.update(
            {
                "best_layer": int(layer[best]),
                "best_head": int(head[best]),
                "best_dev_accuracy": float(acc_dev[best]),
                "best_accuracy": float(acc_test[best]),
                "best_ci_low": float(low[best]),
                "best_ci_high": float(high[best]),
                "null_max_mean": float(null.mean()),
                "null_max_q95": float(np.quantile(null, 0.95)),
                "p_perm": empirical_p(acc_dev[best], null),
                "n_perm": n_perm,
            }
        )
        fams.append(fam)
    heads = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HEAD_COLUMNS)
    word_pair = (heads.direction != POSITIONAL_DIRECTION).to_numpy()
    if word_pair.any():
        heads.loc[word_pair, "p_holm"] = holm(heads.loc[word_pair, "p_offset"].to_numpy())
    fam_cols = [
        "model",
        "data",
        "relation",
        "direction",
        "n",
        "n_dev",
        "offset",
        "offset_dev_accuracy",
        "offset_accuracy",
        "chance_accuracy",
        "best_layer",
        "best_head",
        "best_dev_accuracy",
        "best_accuracy",
        "best_ci_low",
        "best_ci_high",
        "null_max_mean",
        "null_max_q95",
        "p_perm",
        "n_perm",
    ]
    fam_df = pd.DataFrame(fams).reindex(columns=fam_cols)
    for c in ("best_layer", "best_head", "n_perm"):
        fam_df[c] = fam_df[c].astype("Int64")
    return heads[HEAD_COLUMNS], fam_df


def attach_random(fam: pd.DataFrame, rfam: pd.DataFrame) -> pd.DataFrame:
    r = rfam[
        [
            "relation",
            "direction",
            "model",
            "best_layer",
            "best_head",
            "best_accuracy",
            "best_ci_low",
            "best_ci_high",
        ]
    ].rename(
        columns={
            "model": "random_model",
            "best_layer": "random_best_layer",
            "best_head": "random_best_head",
            "best_accuracy": "random_accuracy",
            "best_ci_low": "random_ci_low",
            "best_ci_high": "random_ci_high",
        }
    )
    return fam.merge(r, on=["relation", "direction"], how="left")


def best_offset(offsets: np.ndarray) -> float:
    """Most frequent offset (ties: smallest |k|, then negative); NaN when there is none."""
    if len(offsets) == 0:
        return float("nan")
    values, counts = np.unique(offsets, return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], abs(values[i]), values[i]))
    return int(values[order[0]])


def offset_share(offsets: np.ndarray, k) -> float:
    """Share of ``offsets`` equal to ``k`` (the accuracy of always predicting offset k); NaN when empty."""
    return float(np.mean(offsets == k)) if len(offsets) and not pd.isna(k) else float("nan")
