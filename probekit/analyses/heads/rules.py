"""Head-level verdicts: is the dev-selected head a specialist for its relation?

The rule (Voita et al. 2019's 10-point margin over Clark et al. 2019's best fixed offset, plus a CI, a
permutation null and a random-init model; the reasons are in ``docs/methods/heads.md``):

- ``specialist found (L.H)``: test accuracy >= offset + `SPECIALIST_MARGIN`, CI low > offset,
  ``dev_p_maxT`` < `ALPHA`, CI low > the random-init model's best head (when scored), n >= `MIN_N`;
- ``only positional (L.H)``: it passes, but the head is Voita-positional and >= `MOSTLY_AT_OFFSET` of
  the relation sits at its offset; for the positional relations: test accuracy >= `POSITIONAL_SHARE`;
- ``none`` otherwise; ``n/a (...)`` when there is nothing to judge.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probekit.analyses.heads.collect import POSITIONAL_DIRECTION
from probekit.analyses.heads.positional import POSITIONAL_SHARE

SPECIALIST_MARGIN = 0.10  # Voita et al.: >= 10 points above the offset baseline
MOSTLY_AT_OFFSET = 0.50  # "the relation is mostly at that offset"
ALPHA = 0.05  # the permutation null's level in the specialist rule
MIN_N = 30  # fewer test instances: no verdict (a percentile bootstrap of 11/11 is [1, 1])

VERDICT_COLUMNS = [
    "model",
    "data",
    "relation",
    "direction",
    "n",
    "n_dev",
    "layer",
    "head",
    "dev_accuracy",
    "accuracy",
    "ci_low",
    "ci_high",
    "attention_mass",
    "offset",
    "offset_accuracy",
    "delta",
    "random_accuracy",
    "passes_rule",
    "p_offset",
    "p_holm",
    "p_perm",
    "head_positional",
    "head_top_offset",
    "share_at_top_offset",
    "verdict",
    "also_passes",
]


def _passes(row, margin, random_accuracy=np.nan) -> bool:
    """The specialist rule for one head row."""
    p = getattr(row, "dev_p_maxT", np.nan)
    return bool(
        row.n >= MIN_N
        and row.accuracy - row.offset_accuracy >= margin - 1e-12
        and row.ci_low > row.offset_accuracy
        and (pd.isna(p) or p < ALPHA)
        and (pd.isna(random_accuracy) or row.ci_low > random_accuracy)
    )


def _relation_verdict(verdicts: pd.Series) -> str:
    """Both directions of a relation in one verdict: any specialist > only positional > none."""
    v = [x for x in verdicts if isinstance(x, str)]
    spec = [x.split("(", 1)[1].rstrip(")") for x in v if x.startswith("specialist")]
    if spec:
        return f"specialist found ({', '.join(dict.fromkeys(spec))})"
    posn = [x.split("(", 1)[1].rstrip(")") for x in v if x.startswith("only positional")]
    if posn:
        return f"only positional ({', '.join(dict.fromkeys(posn))})"
    return "none" if any(x == "none" for x in v) else (v[0] if v else "none")


def verdicts(
    heads: pd.DataFrame, baselines: pd.DataFrame | None = None, margin: float = SPECIALIST_MARGIN
) -> pd.DataFrame:
    """One verdict per (model, relation, direction) from a ``heads`` frame.

    Parameters
    ----------
    heads : the per-head frame of `analyze_heads` / `score_heads` (rows with ``best_on_dev``).
    baselines : optional, the per-family frame of `analyze_heads`; supplies ``p_perm``, the counts of
        families without scored rows (reported as ``n/a``) and, when present, ``random_accuracy``: the
        random-init model's best head, which a specialist's CI lower bound must then also exceed.
    margin : the points above the offset baseline a specialist needs (Voita et al.: 0.10).

    Returns
    -------
    pandas.DataFrame
        `VERDICT_COLUMNS` plus ``relation_verdict`` (both directions combined).

    Examples
    --------
    >>> import pandas as pd
    >>> row = {"model": "m", "data": "d", "relation": "amod", "direction": "head_to_dep", "layer": 3,
    ...        "head": 1, "n": 200, "n_dev": 200, "dev_accuracy": 0.8, "accuracy": 0.8, "ci_low": 0.7,
    ...        "ci_high": 0.9, "attention_mass": 0.5, "best_on_dev": True, "offset": -1,
    ...        "offset_accuracy": 0.6, "delta": 0.2, "p_offset": 1e-4, "p_holm": 0.001,
    ...        "head_positional": False, "head_top_offset": -1, "share_at_top_offset": 0.6}
    >>> verdicts(pd.DataFrame([row])).verdict.iloc[0]
    'specialist found (3.1)'
    """
    rows = []
    keys = ["model", "relation", "direction"]
    fam_rows = (
        baselines.to_dict("records")
        if baselines is not None
        else [dict(zip(keys, k, strict=True)) for k in heads[keys].drop_duplicates().itertuples(index=False)]
    )
    random_acc = {(f["relation"], f["direction"]): f.get("random_accuracy", np.nan) for f in fam_rows}
    for fam in fam_rows:
        sub = heads[
            (heads.model == fam["model"])
            & (heads.relation == fam["relation"])
            & (heads.direction == fam["direction"])
        ]
        row = {
            "model": fam["model"],
            "data": heads.data.iloc[0] if len(heads) else "",
            "relation": fam["relation"],
            "direction": fam["direction"],
        }
        best = sub[sub.best_on_dev]
        if best.empty:
            n_vis = fam.get("n", 0) + fam.get("n_dev", 0)
            row.update(
                {
                    "n": fam.get("n", 0),
                    "n_dev": fam.get("n_dev", 0),
                    "verdict": "n/a (no visible instances)"
                    if n_vis == 0
                    else "n/a (one split side is empty)",
                }
            )
            rows.append(row)
            continue
        b = next(best.itertuples())
        tag = f"{int(b.layer)}.{int(b.head)}"
        r_acc = random_acc.get((b.relation, b.direction), np.nan)
        passes = _passes(b, margin, r_acc)
        mostly_at = bool(b.head_positional) and b.share_at_top_offset >= MOSTLY_AT_OFFSET
        if b.n < MIN_N:
            verdict = f"n/a (n={int(b.n)} < {MIN_N} test instances)"
        elif fam["direction"] == POSITIONAL_DIRECTION:
            verdict = f"only positional ({tag})" if b.accuracy >= POSITIONAL_SHARE else "none"
        elif passes:
            verdict = f"only positional ({tag})" if mostly_at else f"specialist found ({tag})"
        else:
            verdict = "none"
        others = heads[
            (heads.model == b.model)
            & (heads.layer == b.layer)
            & (heads["head"] == b.head)
            & (heads.direction != POSITIONAL_DIRECTION)
            & ~((heads.relation == b.relation) & (heads.direction == b.direction))
        ]
        also = [
            f"{o.relation}/{o.direction}"
            for o in others.itertuples()
            if _passes(o, margin, random_acc.get((o.relation, o.direction), np.nan))
        ]
        row.update(
            {
                "n": int(b.n),
                "n_dev": int(b.n_dev),
                "layer": int(b.layer),
                "head": int(b.head),
                "dev_accuracy": b.dev_accuracy,
                "accuracy": b.accuracy,
                "ci_low": b.ci_low,
                "ci_high": b.ci_high,
                "attention_mass": b.attention_mass,
                "offset": b.offset,
                "offset_accuracy": b.offset_accuracy,
                "delta": b.delta,
                "random_accuracy": r_acc,
                "passes_rule": bool(passes),
                "p_offset": getattr(b, "p_offset", np.nan),
                "p_holm": b.p_holm,
                "p_perm": fam.get("p_perm", np.nan),
                "head_positional": bool(b.head_positional),
                "head_top_offset": int(b.head_top_offset),
                "share_at_top_offset": b.share_at_top_offset,
                "verdict": verdict,
                "also_passes": ";".join(also),
            }
        )
        rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=VERDICT_COLUMNS)
    for c in ("layer", "head", "head_top_offset"):
        out[c] = out[c].astype("Int64")
    out["relation_verdict"] = [
        _relation_verdict(out[(out.model == m) & (out.relation == r)].verdict)
        for m, r in zip(out.model, out.relation, strict=True)
    ]
    return out


def specificity(heads: pd.DataFrame, margin: float = SPECIALIST_MARGIN) -> pd.DataFrame:
    """For each (model, relation, direction)'s dev-selected head: its test accuracy on every other one.

    Parameters
    ----------
    heads : the per-head frame of `analyze_heads` / `score_heads`.
    margin : as in `verdicts`.

    Returns
    -------
    pandas.DataFrame
        ``model, relation, direction, layer, head, other_relation, other_direction, accuracy,
        offset_accuracy, delta, passes`` (``passes``: the specialist rule holds there too; the
        random-init comparison is not applied here).

    Examples
    --------
    >>> import pandas as pd
    >>> row = {"model": "m", "relation": "amod", "direction": "head_to_dep", "layer": 0, "head": 1,
    ...        "best_on_dev": True, "n": 100, "accuracy": 0.9, "ci_low": 0.8, "offset_accuracy": 0.5,
    ...        "delta": 0.4}
    >>> specificity(pd.DataFrame([row])).passes.tolist()
    [True]
    """
    rows = []
    for b in heads[heads.best_on_dev].itertuples():
        same = heads[(heads.model == b.model) & (heads.layer == b.layer) & (heads["head"] == b.head)]
        for o in same.itertuples():
            rows.append(
                {
                    "model": b.model,
                    "relation": b.relation,
                    "direction": b.direction,
                    "layer": b.layer,
                    "head": b.head,
                    "other_relation": o.relation,
                    "other_direction": o.direction,
                    "accuracy": o.accuracy,
                    "offset_accuracy": o.offset_accuracy,
                    "delta": o.delta,
                    "passes": bool(o.direction != POSITIONAL_DIRECTION and _passes(o, margin)),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "model",
            "relation",
            "direction",
            "layer",
            "head",
            "other_relation",
            "other_direction",
            "accuracy",
            "offset_accuracy",
            "delta",
            "passes",
        ],
    )
