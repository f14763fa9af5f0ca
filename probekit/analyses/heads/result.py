"""`HeadAnalysis`, everything `analyze_heads` measured, and its files: tables, ``summary.md``, heatmaps."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probekit.analyses.heads.positional import POSITIONAL_SHARE
from probekit.analyses.heads.rules import ALPHA, MIN_N, SPECIALIST_MARGIN
from probekit.report import (
    HeadPanel,
    atomic_write_text,
    latex_table,
    markdown_table,
    plot_head_heatmap,
    write_table,
)

#: the dev-selected head of one (relation, direction) and its test score with 95% CI, in the order the
#: tables show them: the verdicts in ``summary.md`` and `probekit.analyses.heads.compare.COMPARISON_COLUMNS`
SELECTED_HEAD_COLUMNS = ("relation", "direction", "n", "layer", "head", "accuracy", "ci_low", "ci_high")


@dataclass(frozen=True)
class HeadAnalysis:
    """Everything `analyze_heads` measured; every frame is tidy and deterministic.

    - ``heads``: one row per (model, relation, direction, layer, head), see ``HEAD_COLUMNS``.
    - ``baselines``: one row per (model, relation, direction): offset baseline, best head, permutation
      null, random-init model (``random_*`` columns).
    - ``verdicts``: one row per (model, relation, direction), see `probekit.analyses.heads.rules`.
    - ``counts``: instance counts per (model, relation, direction): all, visible, dev, test.
    - ``positional``: Voita positional heads (+ TransformerLens detector scores when run).
    - ``specificity``: the chosen head's test accuracy on every other relation/direction.
    - ``timings``: seconds per stage (not written to the deterministic files).
    """

    model: str
    data: str
    n_sentences: int
    heads: pd.DataFrame
    baselines: pd.DataFrame
    verdicts: pd.DataFrame
    counts: pd.DataFrame
    positional: pd.DataFrame
    specificity: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def write(self, out: str | os.PathLike, heatmaps: bool = True) -> list[Path]:
        """Write the tables, ``summary.md`` and one heatmap PNG per relation into ``out`` (`write_report`)."""
        return write_report(self, out, heatmaps=heatmaps)


def write_report(res: HeadAnalysis, out: str | os.PathLike, heatmaps: bool = True) -> list[Path]:
    """``heads.csv``, ``baselines.csv``, ``verdicts.csv``, ``counts.csv``, ``positional.csv``,
    ``specificity.csv``, ``summary.md`` and ``heatmap_<relation>.png`` (deterministic CSVs). The summary
    tables (all but the per-head ``heads.csv``) also get LaTeX (booktabs) renderings, ``<name>.tex``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_table(res.heads, out / "heads.csv")]
    for name, frame in (
        ("baselines", res.baselines),
        ("verdicts", res.verdicts),
        ("counts", res.counts),
        ("positional", res.positional),
        ("specificity", res.specificity),
    ):
        written += [
            write_table(frame, out / f"{name}.csv"),
            atomic_write_text(out / f"{name}.tex", latex_table(frame)),
        ]
    written.append(atomic_write_text(out / "summary.md", summary_markdown(res)))
    if heatmaps:
        written += plot_heatmaps(res.heads[res.heads.model == res.model], out)
    return written


def plot_heatmaps(heads: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """One PNG per relation: test accuracy over layers x heads, one panel per direction; the
    dev-selected head is boxed (`probekit.report.plot_head_heatmap`)."""
    paths = []
    for rel in dict.fromkeys(heads.relation):
        sub = heads[heads.relation == rel]
        n_layers, n_heads = int(sub.layer.max()) + 1, int(sub["head"].max()) + 1
        panels = []
        for d in dict.fromkeys(sub.direction):
            s = sub[sub.direction == d]
            grid = np.full((n_layers, n_heads), np.nan)  # [layer, head]
            grid[s.layer.to_numpy(), s["head"].to_numpy()] = s.accuracy.to_numpy()
            b = next(s[s.best_on_dev].itertuples())
            title = (
                f"{rel} {d}\nbest {int(b.layer)}.{int(b.head)}: {b.accuracy:.2f} "
                f"vs offset {b.offset:+.0f}: {b.offset_accuracy:.2f}"
            )
            panels.append(HeadPanel(grid, title, mark=(int(b.layer), int(b.head))))
        path = Path(out) / f"heatmap_{rel.replace(':', '_')}.png"
        paths.append(plot_head_heatmap(panels, path, cbar="test accuracy", vmin=0, vmax=1))
    return paths


def summary_markdown(res: HeadAnalysis) -> str:
    """Best head per relation vs its baselines, counts and positional heads, as Markdown."""
    s = res.settings
    lines = [
        f"# Head specialization: {res.model} on `{res.data}`",
        "",
        f"{res.n_sentences} sentences, split by sentence into dev/test (test_size={s.get('test_size')}, "
        f"seed={s.get('seed')}). Best head chosen on dev, reported on test; 95% cluster-bootstrap CI over "
        f"sentences ({s.get('n_boot')} resamples); permutation null over all heads on dev "
        f"({s.get('n_perm')} draws). Layer/head indices are 0-based. Specialist rule: test accuracy >= "
        f"offset + {SPECIALIST_MARGIN:.2f}, CI low > offset, p_perm < {ALPHA}, (when scored) CI low > the "
        f"random-init model's best head, and n >= {MIN_N} test instances; a passing head that is "
        "Voita-positional with the relation mostly at its offset is 'only positional' (see "
        "`docs/methods/heads.md`).",
        "",
        "## Verdicts",
        "",
    ]
    if s.get("weighting", "raw") != "raw":
        lines[2:2] = [
            f"Heads are scored on **{s['weighting']}**-weighted attention, not the raw pattern "
            "(`docs/methods/weighting.md`).",
            "",
        ]
    v = res.verdicts
    b = res.baselines
    show = v[
        [
            "model",
            *SELECTED_HEAD_COLUMNS,
            "offset",
            "offset_accuracy",
            "random_accuracy",
            "p_holm",
            "p_perm",
            "verdict",
        ]
    ].copy()
    show = show.merge(
        b[["model", "relation", "direction", "chance_accuracy", "null_max_q95"]],
        on=["model", "relation", "direction"],
        how="left",
    )
    lines += [markdown_table(show), ""]
    rel = v[["model", "relation", "relation_verdict"]].drop_duplicates()
    lines += ["## Per relation", "", markdown_table(rel), ""]
    also = v[v.also_passes.fillna("") != ""][
        ["model", "relation", "direction", "layer", "head", "also_passes"]
    ]
    if len(also):
        lines += [
            "Chosen heads that also pass the rule on other relations (specificity):",
            "",
            markdown_table(also),
            "",
        ]
    lines += [
        "## Instance counts (visible = partner visible to the source)",
        "",
        markdown_table(res.counts),
        "",
    ]
    pos = res.positional[res.positional.positional]
    lines += [
        f"## Positional heads (Voita: argmax on one relative offset for >= {POSITIONAL_SHARE:.0%} of words)",
        "",
        markdown_table(pos) if len(pos) else "none",
        "",
    ]
    tl_cols = [c for c in res.positional.columns if c.startswith("tl_")]
    if tl_cols:
        lines += [
            "## TransformerLens detect_head (token level, own tokenization, exclude_bos=True): top 3 heads",
            "",
        ]
        for c in tl_cols:
            top = res.positional.sort_values([c, "layer", "head"], ascending=[False, True, True]).head(3)
            lines.append(
                f"- {c}: "
                + ", ".join(
                    f"{r.layer}.{r.head} = {getattr(r, c):.3f} (Voita top offset "
                    f"{r.top_offset:+d}, share {r.share:.2f})"
                    for r in top.itertuples()
                )
            )
        lines.append("")
    return "\n".join(lines)
