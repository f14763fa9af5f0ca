"""Do the claim verdicts replicate across model families? Generated from a run's verdicts and tables.

A run over three or more models (``experiments/zoo.yaml``: SmolLM2, MiniLM, Gemma 3) gets a
``replication/`` folder, which ``REPORT.md`` shows as its "Replication across models" section:

- ``replication.csv``: one row per claim with each model's verdict and ``replication``:
  ``replicates`` when every model on which the claim is testable got the same verdict, ``differs`` when
  they disagree, ``not testable`` when fewer than two models could test it;
- ``blimp_vs_published.csv``: minimal-pair accuracy per BLiMP paradigm and model (score stage) next to
  the published GPT-2 accuracy (Warstadt et al. 2020, `probekit.analyses.scoring.PUBLISHED_BLIMP`);
- ``replication.md``: the table and one generated sentence per claim. No hand-written text: every word
  is built from those two tables.

"Same verdict" is deliberately strict: ``supported`` on one model and ``partly supported`` on another
counts as ``differs`` (the reasons are in each model's evidence). Runs with fewer than three models get
nothing (their REPORT.md is unchanged).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.analyses.scoring import PUBLISHED_BLIMP
from probekit.report import atomic_write_text, markdown_table, write_table

MIN_MODELS = 3
NOT_TESTABLE = "not testable in this model"
FOLDER = "replication"


def replication_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: each model's verdict (a column per model) and ``replication``.

    Parameters
    ----------
    verdicts : pandas.DataFrame
        ``claim, model, verdict`` rows (``verdicts.csv``).

    Returns
    -------
    pandas.DataFrame
        ``claim, <model>..., testable_models, replication``.

    Examples
    --------
    >>> rows = pd.DataFrame({"claim": ["C1"] * 3 + ["C5"] * 3, "model": ["a", "b", "c"] * 2,
    ...     "verdict": ["supported"] * 3 + ["supported", "not testable in this model", "not supported"]})
    >>> replication_table(rows)[["claim", "testable_models", "replication"]].values.tolist()
    [['C1', 3, 'replicates'], ['C5', 2, 'differs']]
    """
    models = list(dict.fromkeys(verdicts.model))
    rows = []
    for claim, sub in verdicts.groupby("claim", sort=True):
        by_model = dict(zip(sub.model, sub.verdict, strict=True))
        testable = {v for v in by_model.values() if v != NOT_TESTABLE}
        n_testable = sum(v != NOT_TESTABLE for v in by_model.values())
        outcome = "replicates" if len(testable) == 1 else "differs"
        outcome = outcome if n_testable >= 2 else "not testable"
        rows.append(
            {"claim": claim}
            | {m: by_model.get(m, "not run") for m in models}
            | {"testable_models": n_testable, "replication": outcome}
        )
    return pd.DataFrame(rows)


def blimp_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """BLiMP accuracy per paradigm (rows) and model (columns) from the score stage, with published GPT-2.

    Reads every ``score/<model>__<data>/minimal_pairs.csv`` whose data is a ``blimp:`` source; empty when
    there is none.
    """
    frames = []
    for path in sorted(Path(run_dir).glob("score/*/minimal_pairs.csv")):
        table = pd.read_csv(path)
        if {"model", "data", "paradigm", "accuracy"} <= set(table.columns):
            blimp = table.data.astype(str).str.startswith("blimp:") & (table.paradigm.astype(str) != "all")
            frames.append(table[blimp])  # per paradigm; the pooled "all" row is left out
    if not frames or all(f.empty for f in frames):
        return pd.DataFrame(columns=["paradigm", "GPT-2 (published)"])
    long = pd.concat(frames, ignore_index=True)
    wide = long.pivot_table(index="paradigm", columns="model", values="accuracy", aggfunc="first")
    wide = wide[list(dict.fromkeys(long.model))].reset_index()
    wide.columns.name = None
    wide["GPT-2 (published)"] = [PUBLISHED_BLIMP.get(p, {}).get("GPT-2", np.nan) for p in wide.paradigm]
    return wide


def _listing(by_verdict: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{verdict.removesuffix(' in this model')} in {', '.join(models)}"
        for verdict, models in by_verdict.items()
    )


def replication_markdown(table: pd.DataFrame, blimp: pd.DataFrame, claims: dict[str, str]) -> str:
    """The section: the replication table, one generated sentence per claim, and the BLiMP comparison."""
    models = [c for c in table.columns if c not in ("claim", "testable_models", "replication")]
    lines = [
        f"Each claim's verdict on the {len(models)} models ({', '.join(models)}) and whether it replicates "
        "(the same verdict on every model that can test the claim); generated from "
        f"[{FOLDER}/replication.csv]({FOLDER}/replication.csv).",
        "",
        markdown_table(table),
        "",
    ]
    for r in table.to_dict("records"):
        by_verdict: dict[str, list[str]] = {}
        for m in models:
            by_verdict.setdefault(str(r[m]), []).append(m)
        text = claims.get(str(r["claim"]), "")
        lines.append(
            f"- **{r['claim']}** ({text[:80].rstrip()}{'...' if len(text) > 80 else ''}): "
            f"**{r['replication']}** across {r['testable_models']} testable model(s) — "
            f"{_listing(by_verdict)}."
        )
    if not blimp.empty:
        scored = [c for c in blimp.columns if c not in ("paradigm", "GPT-2 (published)")]
        means = ", ".join(f"{m} {blimp[m].mean():.3f}" for m in scored)
        gpt2 = blimp["GPT-2 (published)"].mean()
        lines += [
            "",
            f"BLiMP minimal pairs ({len(blimp)} paradigms), accuracy next to the published GPT-2 accuracy "
            f"(Warstadt et al. 2020; [{FOLDER}/blimp_vs_published.csv]({FOLDER}/blimp_vs_published.csv)); "
            f"mean over paradigms: {means}; GPT-2 (published) {gpt2:.3f}.",
            "",
            markdown_table(blimp),
        ]
    return "\n".join(lines) + "\n"


def write_replication(
    run_dir: str | os.PathLike, verdicts: pd.DataFrame, claims: dict[str, str]
) -> list[Path]:
    """Write ``replication/`` (see the module docstring) when ``verdicts`` covers >= 3 models.

    Returns the paths written (none for fewer models). Examples are in ``tests/unit/test_gemma.py``.
    """
    folder = Path(run_dir) / FOLDER
    if verdicts.empty or verdicts.model.nunique() < MIN_MODELS:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    table = replication_table(verdicts)
    blimp = blimp_table(run_dir)
    written = [write_table(table, folder / "replication.csv")]
    if not blimp.empty:
        written.append(write_table(blimp, folder / "blimp_vs_published.csv"))
    written.append(atomic_write_text(folder / "replication.md", replication_markdown(table, blimp, claims)))
    return written
