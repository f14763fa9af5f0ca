"""The head table: every head's dev/test accuracy on one relation, with its baselines and tests.

Per (relation, direction): Clark et al.'s (2019) best fixed offset (chosen on dev), chance, 95% cluster
bootstrap CIs over sentences, a clustered sign-flip test against the offset baseline (Holm over the
word-pair family), and a permutation null for "the best of all heads" (Westfall-Young maxT). The
definitions are in ``docs/methods/heads.md``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

from probekit.analyses.heads.collect import POSITIONAL_DIRECTION, Scored
from probekit.analyses.heads.positional import positional_frame
from probekit.stats import cluster_bootstrap_ci, cluster_sums, empirical_p, holm

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


def signflip_p(diff: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One-sided p-values (mean diff > 0) of a clustered paired sign-flip test, per column of ``diff``.

    Normal approximation of the randomisation distribution: z = sum d_s / sqrt(sum d_s^2), with d_s the
    sum of ``diff`` over cluster s; 1 where every d_s is 0.

    Parameters
    ----------
    diff : ``[m, K]`` paired differences (e.g. head correct - baseline correct).
    codes : ``[m]`` the cluster (sentence) of each row.

    Returns
    -------
    numpy.ndarray
        ``[K]`` p-values.

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.repeat(np.arange(20), 3)
    >>> signflip_p(np.ones((60, 1)), codes) < 1e-5, signflip_p(np.zeros((60, 1)), codes)
    (array([ True]), array([1.]))
    """
    _, c = np.unique(codes, return_inverse=True)
    d = cluster_sums(np.asarray(diff, dtype=np.float64), c.ravel(), int(c.max()) + 1)
    num, den = d.sum(0), np.sqrt((d**2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(den > 0, num / den, 0.0)
    p = scipy.stats.norm.sf(z)
    return np.where(den > 0, p, 1.0)


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
        p_off = signflip_p(corr_test - off_corr[:, None], groups_test)
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
