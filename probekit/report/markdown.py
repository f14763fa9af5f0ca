"""REPORT.md of a run folder and the comparison of runs, rendered from verdict rows and the run's tables.

The claim verdicts are decided in `probekit.experiment.verdicts`, which passes its rows to `write_report`;
this module only renders them, with the probe summaries, the plots and the list of tables it finds in the
run folder. It reads tables only through `probekit.report.read_table` and the columns of
`probekit.report.schema`. See ``docs/methods/report.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pandas as pd

from probekit.report.schema import (
    CLAIM_VERDICTS,
    PROBES_SUMMARY,
    STRUCTURAL_PROBES,
    TREES_PARTS,
    TREES_SUMMARY,
    WEIGHTING_COMPARISON,
    WEIGHTING_SINK,
)
from probekit.report.tables import atomic_write_text, markdown_table, read_table, stage_tables


def _rel(run_dir: Path, path: Path) -> str:
    return str(path.relative_to(run_dir))


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """A run folder's ``manifest.json`` (name, config, ``skipped`` notes, ...); ``{}`` if it has none.

    Examples
    --------
    >>> import tempfile
    >>> read_manifest(tempfile.mkdtemp())
    {}
    """
    path = Path(run_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def probe_summaries(
    run_dir: str | os.PathLike, model: str | None = None, task: str | None = None
) -> Iterator[tuple[Path, Any]]:
    """(path, row) for every row of every ``probes/*/probes_summary.csv`` of a run folder.

    Parameters
    ----------
    run_dir
        The run folder.
    model, task
        Keep only rows of this model / probing task.

    Returns
    -------
    iterator of (pathlib.Path, namedtuple)
        The summary file and one of its rows (``DataFrame.itertuples``), folder by folder.

    Examples
    --------
    >>> import tempfile
    >>> list(probe_summaries(tempfile.mkdtemp()))
    []
    """
    for folder, (frame,) in stage_tables(run_dir, PROBES_SUMMARY):
        for r in frame.itertuples(index=False):
            if (model is None or r.model == model) and (task is None or r.task == task):
                yield folder / PROBES_SUMMARY.file, r


def probe_sentence(r) -> str:
    """One sentence on a probe's layer curve.

    Parameters
    ----------
    r
        A row of a `probekit.analyses.probes.probe_summary` table (``itertuples``), with the columns of
        `probekit.report.schema.PROBES_SUMMARY`.

    Returns
    -------
    str
        Best layer (chosen on the dev halves) with its test accuracy and CI, the first layer within one
        point of it and the baselines.

    Examples
    --------
    >>> row = pd.DataFrame([dict(task="upos", data="svo", split="random", n_seeds=1, best_layer=2,
    ...     dev_accuracy=0.91, accuracy=0.9, ci_low=0.85, ci_high=0.95, first_layer_within=1,
    ...     layer0_accuracy=0.5, control_accuracy=0.6, selectivity=0.3, majority_accuracy=0.4)])
    >>> probe_sentence(next(row.itertuples()))
    'upos probe on svo (random split, 1 seed(s)): best layer 2 (chosen on dev, 0.910) at 0.900 [0.850, 0.950] on test, within 1 point of that on dev from layer 1; layer 0 (embeddings) 0.500, control task 0.600 (selectivity +0.300), majority 0.400'
    """  # noqa: E501
    baselines = [] if pd.isna(r.layer0_accuracy) else [f"layer 0 (embeddings) {r.layer0_accuracy:.3f}"]
    baselines.append(
        f"control task {r.control_accuracy:.3f} (selectivity {r.selectivity:+.3f})"
        if not pd.isna(r.control_accuracy)
        else "no control task (undefined for a single word type, or not run)"
    )
    baselines.append(f"majority {r.majority_accuracy:.3f}")
    dev = getattr(r, "dev_accuracy", float("nan"))
    chosen, on = (f" (chosen on dev, {dev:.3f})", " on test") if not pd.isna(dev) else ("", "")
    text = (
        f"{r.task} probe on {r.data} ({r.split} split, {int(r.n_seeds)} seed(s)): "
        f"best layer {int(r.best_layer)}{chosen} "
        f"at {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]{on}, within 1 point of that"
        f"{' on dev' if on else ''} from layer {int(r.first_layer_within)}; " + ", ".join(baselines)
    )
    if not pd.isna(getattr(r, "random_init_accuracy", float("nan"))):
        text += (
            f", random-init model {r.random_init_accuracy:.3f} "
            f"(its best layer {int(r.random_init_best_layer)})"
        )
        if r.accuracy - r.random_init_accuracy < 0.02:
            text += " — the random-init model decodes it as well, so the probe reads surface/lexical cues"
    return text


def c4_rule_markdown(table: pd.DataFrame, link: str = "c4_rule.csv") -> str:
    """The C4 rule before and after, as Markdown: per (model, relation) whether the old and the new rule
    pass, on the model and on its random-init twin, with the new rule's false-positive rate there; then
    every member of the family (``c4_rule.csv``, `probekit.experiment.verdicts.c4_rule_table`).

    Parameters
    ----------
    table
        The C4 rule table (columns of `probekit.experiment.verdicts.C4_RULE_COLUMNS`).
    link
        Its run-relative path.

    Returns
    -------
    str
        Markdown.

    Examples
    --------
    >>> t = pd.DataFrame([dict(model="m", relation="nsubj", data="d", direction="head_to_dep", n=100,
    ...     layer=1, head=2, accuracy=0.9, offset_accuracy=0.5, delta=0.4, p_perm=0.01, p_offset=1e-4,
    ...     p_family=2e-4, positional=False, old_rule=True, new_rule=True, random_layer=0, random_head=1,
    ...     random_delta=0.2, random_p_family=0.5, random_old_rule=True, random_new_rule=False,
    ...     family_size=2, random_family_size=2, random_fpr=0.0, random_fpr_old=0.5)])
    >>> print(c4_rule_markdown(t).splitlines()[4])
    | m | nsubj | True | True | True | False | 0 of 2 (0.00) | 1 of 2 (0.50) |
    """
    if table.empty:
        return ""
    rel = (
        table.groupby(["model", "relation"], sort=False)
        .agg(
            old_rule=("old_rule", "any"),
            new_rule=("new_rule", "any"),
            random_old_rule=("random_old_rule", "any"),
            random_new_rule=("random_new_rule", "any"),
        )
        .reset_index()
    )
    per_model = table.drop_duplicates("model").set_index("model")

    def fpr(model: str, column: str) -> str:  # "k of n (rate)", or "not run" without a random-init model
        rate, size = per_model[column][model], per_model.random_family_size[model]
        if pd.isna(rate) or pd.isna(size):
            return "not run"
        return f"{round(rate * size)} of {int(size)} ({rate:.2f})"

    rel["random_fpr (new rule)"] = [fpr(m, "random_fpr") for m in rel.model]
    rel["random_fpr (old rule)"] = [fpr(m, "random_fpr_old") for m in rel.model]
    members = table[
        [
            "model",
            "relation",
            "data",
            "direction",
            "n",
            "layer",
            "head",
            "delta",
            "p_perm",
            "p_offset",
            "p_family",
            "positional",
            "old_rule",
            "new_rule",
            "random_layer",
            "random_head",
            "random_p_family",
            "random_old_rule",
            "random_new_rule",
        ]
    ]
    lines = [
        f"**The C4 rule, before and after** ([{link}]({link}); the rule: `docs/methods/report.md`, "
        '"C4 rule"). A relation passes when any of its data set x direction members does; the '
        "false-positive rate is the share of the random-init model's family the rule passes.",
        "",
        markdown_table(rel),
        "",
        "Every member (head = the dev-selected layer.head; p_family = Holm over the model's family):",
        "",
        markdown_table(members),
        "",
    ]
    return "\n".join(lines)


def weighting_lines(run_dir: str | os.PathLike) -> list[str]:
    """One Markdown line per ``weighting/<model>__<data>/`` folder of a run (the weighting stage): the C4
    conclusions that change against raw and the sink mass the norm weighting removes; ``[]`` without one.

    Examples
    --------
    >>> import tempfile
    >>> weighting_lines(tempfile.mkdtemp())
    []
    """
    run_dir = Path(run_dir)
    lines = []
    for folder, (c,) in stage_tables(run_dir, WEIGHTING_COMPARISON):
        changed = c[c.conclusion_changed.astype(bool)]
        what = (
            "no C4 conclusion changes against raw"
            if changed.empty
            else "conclusions that change against raw: "
            + "; ".join(
                f"{r.relation}/{r.direction} ({r.weighting}: {r.conclusion})" for r in changed.itertuples()
            )
        )
        if (folder / WEIGHTING_SINK.file).is_file():
            sink = read_table(folder / WEIGHTING_SINK.file, WEIGHTING_SINK)
            raw, norm = float(sink.sink_raw.sum()), float(sink.sink_norm.sum())
            gone = f"{100 * (1 - norm / raw):.1f}%" if raw > 0 else "n/a"
            what += (
                f"; mean sink mass {sink.sink_raw.mean():.3f} raw vs {sink.sink_norm.mean():.3f} "
                f"norm-weighted ({gone} disappears)"
            )
        link = _rel(run_dir, folder / WEIGHTING_COMPARISON.file)
        lines.append(f"- **{c.model.iloc[0]}** on `{c.data.iloc[0]}`: {what}. Table: [{link}]({link})")
    return lines


def write_report(
    run_dir: str | os.PathLike,
    verdicts: pd.DataFrame,
    claims: Mapping[str, str],
    labels: Sequence[str],
    details: Mapping[str, str] | None = None,
) -> Path:
    """Write ``REPORT.md`` of a run folder: the verdict table, each claim's evidence, the probe
    summaries, the plots and every table.

    Parameters
    ----------
    run_dir
        The run folder (its ``manifest.json`` gives the title and the skipped stages).
    verdicts
        One row per (claim, model), columns ``claim, model, verdict, evidence, tables`` (``tables``: the
        comma-separated run-relative paths of the evidence); no rows for a run without claim analyses.
    claims
        Claim id -> claim text, in report order.
    labels
        The possible verdicts, listed in the report's introduction.
    details
        Claim id -> Markdown appended to that claim's section (e.g. `c4_rule_markdown`).

    Returns
    -------
    pathlib.Path
        ``run_dir / "REPORT.md"``.

    Examples
    --------
    >>> import tempfile
    >>> rows = pd.DataFrame(columns=["claim", "model", "verdict", "evidence", "tables"])
    >>> path = write_report(tempfile.mkdtemp(), rows, {}, [])
    >>> path.read_text().splitlines()[2]
    'Numbers come from the CSV tables linked below; `probekit report` rebuilds this file from them.'
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    name = manifest.get("name", run_dir.name)
    if verdicts.empty:  # a run without claim analyses (e.g. probes only)
        lines = [
            f"# {name}",
            "",
            "Numbers come from the CSV tables linked below; `probekit report` rebuilds this file from them.",
            "",
        ]
    else:
        lines = [
            f"# {name}: claim verdicts",
            "",
            "Each claim of the source document, measured on each model. Verdicts: " + ", ".join(labels) + ".",
            "Numbers come from the CSV tables linked in each row; `probekit report` rebuilds this file "
            "from them.",
            "",
            "## Claims",
            "",
        ]
        lines += [f"- **{k}** — {v}" for k, v in claims.items()]
        lines += ["", "## Verdicts", "", markdown_table(verdicts.drop(columns="tables")), ""]
    replication = run_dir / "replication" / "replication.md"  # probekit.experiment.replication, >= 3 models
    if not verdicts.empty and replication.is_file():
        lines += ["## Replication across models", "", replication.read_text(encoding="utf-8").rstrip(), ""]
    skipped = manifest.get("skipped", [])
    if skipped:
        lines += ["Not run: " + "; ".join(dict.fromkeys(skipped)) + ".", ""]
    for claim, text in claims.items():
        sub = verdicts[verdicts.claim == claim]
        if sub.empty:
            continue
        lines += [f"## {claim}", "", f"> {text}", ""]
        for r in sub.itertuples():
            lines += [
                f"- **{r.model}: {r.verdict}.** {r.evidence}. Tables: "
                + ", ".join(
                    f"[{t.strip()}]({t.strip()})" for t in cast(str, r.tables).split(",") if t.strip()
                )
            ]
        lines.append("")
        if details and details.get(claim):
            lines += [details[claim], ""]
    probe_rows = list(probe_summaries(run_dir))
    if probe_rows:
        lines += [
            "## Probes",
            "",
            "Per-layer linear probes (`probekit.analyses.probes`), summarised over seeds "
            "(`probe_summary`); the curves are in the plots below and every row in the linked tables.",
            "",
        ]
        lines += [
            f"- **{r.model}** — {probe_sentence(r)}. Table: [{_rel(run_dir, p)}]({_rel(run_dir, p)})"
            for p, r in probe_rows
        ]
        lines.append("")
    lines += trees_section(run_dir)
    weighting = weighting_lines(run_dir)
    if weighting:
        lines += [
            "## Attention weighting",
            "",
            "C4 rerun on norm-weighted (Kobayashi et al. 2020) and rollout (Abnar & Zuidema 2020) attention "
            "(`compare_weightings`, `docs/methods/weighting.md`).",
            "",
            *weighting,
            "",
        ]
    pngs = sorted(run_dir.rglob("*.png"))
    if pngs:
        lines += ["## Plots", ""]
        lines += [f"![{_rel(run_dir, p)}]({_rel(run_dir, p)})" for p in pngs]
        lines.append("")
    tables = sorted(p for p in run_dir.rglob("*.csv") if p.parent != run_dir)
    if tables:
        lines += (
            ["## All tables", ""] + [f"- [{_rel(run_dir, p)}]({_rel(run_dir, p)})" for p in tables] + [""]
        )
    return atomic_write_text(run_dir / "REPORT.md", "\n".join(lines))


#: the trees section's title (issue 17)
TREES_TITLE = "Are whole trees in the attention or the residual stream?"


def _versus(row, base, metric: str) -> str:
    """``0.412 [0.39, 0.43]``, then where it sits against ``base``'s interval on ``metric``."""
    lo, hi = getattr(row, f"{metric}_low"), getattr(row, f"{metric}_high")
    blo, bhi = getattr(base, f"{metric}_low"), getattr(base, f"{metric}_high")
    value, ref = getattr(row, metric), getattr(base, metric)
    where = (
        "above it, the intervals apart"
        if lo > bhi
        else "below it, the intervals apart"
        if hi < blo
        else "the intervals overlap"
    )
    return (
        f"{value:.3f} [{lo:.3f}, {hi:.3f}] vs {ref:.3f} [{blo:.3f}, {bhi:.3f}] ({value - ref:+.3f}; {where})"
    )


def trees_sentences(summary: pd.DataFrame) -> list[str]:
    """One line per model of a trees summary: best head and attention probe against the right chain.

    Parameters
    ----------
    summary
        A ``trees_summary.csv`` table (columns of `probekit.report.schema.TREES_SUMMARY`).

    Returns
    -------
    list of str
        Markdown bullet lines.

    Examples
    --------
    >>> cols = dict(data="d", n_sentences=9, n_arcs=90, uuas_low=0.3, uuas_high=0.5,
    ...             uas_low=0.2, uas_high=0.4)
    >>> t = pd.DataFrame([dict(model="m", method="best_head", detail="L1.H2", uuas=0.4, uas=0.3, **cols),
    ...     dict(model="m", method="words_probe", detail="argmax", uuas=0.6, uas=0.6, **cols),
    ...     dict(model="m", method="chain_head_right", detail="", uuas=0.45, uas=0.3, **cols)])
    >>> trees_sentences(t)[0][:60]
    '- **m**: best single head (L1.H2, chosen on dev) UUAS 0.400 '
    """
    out: list[str] = []
    chain = summary[summary.method == "chain_head_right"]
    if chain.empty:
        return out
    base = next(chain.itertuples())
    for model in dict.fromkeys(summary.model):
        rows = {r.method: r for r in summary[summary.model == model].itertuples()}
        parts = []
        if "best_head" in rows:
            r = rows["best_head"]
            parts.append(
                f"best single head ({r.detail}, chosen on dev) UUAS {_versus(r, base, 'uuas')} for the chain"
            )
        if "words_probe" in rows:
            parts.append(
                f"attention probe UAS {_versus(rows['words_probe'], base, 'uas')} for the right chain"
            )
        if parts:
            out.append(f"- **{model}**: " + "; ".join(parts) + ".")
    return out


def structural_sentences(frame: pd.DataFrame) -> list[str]:
    """One line per trained model of a ``structural_probes.csv`` table: its best distance-probe layer
    (by test UUAS, so the best layer is chosen on test, as Hewitt & Manning report it) against the
    linear-position baseline and the random-init model's best layer, with the selectivity at that layer
    (UUAS on gold trees minus UUAS on the random control trees).

    Examples
    --------
    >>> row = dict(probe="distance", uuas_ci_low=0.0, uuas_ci_high=1.0)
    >>> t = pd.DataFrame([dict(model="m", target="gold", baseline="none", layer=3, uuas=0.6, **row),
    ...     dict(model="m", target="control", baseline="control", layer=3, uuas=0.2, **row),
    ...     dict(model="linear-position", target="gold", baseline="linear-position", layer=None, uuas=0.4,
    ...          **row)])
    >>> structural_sentences(t)[0][:58]
    '- **m**: best distance-probe layer 3, UUAS 0.600 [0.000, 1'
    """
    dist = frame[frame.probe == "distance"].dropna(subset=["uuas"])
    dist = dist if "target" in dist else dist.assign(target="gold")  # optional columns
    has_ci = {"uuas_ci_low", "uuas_ci_high"} <= set(dist.columns)
    gold = dist[dist.target == "gold"]
    linear = gold[gold.baseline == "linear-position"]
    out = []
    for model in dict.fromkeys(gold[gold.baseline == "none"].model):
        own = gold[(gold.model == model) & (gold.baseline == "none")]
        best = own.loc[own.uuas.idxmax()]
        control = dist[(dist.model == model) & (dist.target == "control") & (dist.layer == best.layer)]
        text = f"- **{model}**: best distance-probe layer {int(best.layer)}, UUAS {best.uuas:.3f}"
        text += f" [{best.uuas_ci_low:.3f}, {best.uuas_ci_high:.3f}]" if has_ci else ""
        random_init = gold[gold.model == f"random:{model}"]
        for name, ref in (("linear position", linear), ("the random-init model", random_init)):
            if ref.empty:
                continue
            r = ref.loc[cast(int, ref.uuas.idxmax())]  # tables read from CSV: integer row labels
            where = (
                ""
                if not has_ci
                else "; above it, the intervals apart"
                if best.uuas_ci_low > r.uuas_ci_high
                else "; below it, the intervals apart"
                if best.uuas_ci_high < r.uuas_ci_low
                else "; the intervals overlap"
            )
            text += f"; vs {name} {r.uuas:.3f} ({best.uuas - r.uuas:+.3f}{where})"
        if not control.empty:
            text += f"; selectivity over random control trees {best.uuas - control.uuas.iloc[0]:+.3f}"
        out.append(text + ".")
    return out


def trees_section(run_dir: str | os.PathLike) -> list[str]:
    """REPORT.md's trees section (only for a run with a trees stage): per model and data the summary
    table, where the head trees and the attention probe sit against the chain baseline, and the
    structural probes' table when the stage wrote one.

    Examples
    --------
    >>> import tempfile
    >>> trees_section(tempfile.mkdtemp())
    []
    """
    run_dir = Path(run_dir)
    found = list(stage_tables(run_dir, TREES_SUMMARY, TREES_PARTS))
    if not found:
        return []
    lines = [
        f"## {TREES_TITLE}",
        "",
        "Whole dependency trees read from attention (`probekit.analyses.trees`, docs/methods/trees.md): "
        "each head's maximum spanning tree (undirected: UUAS; directed with the gold root: UAS), Clark "
        "et al.'s (2019) attention probe (a learned weighting of every head's attention in both "
        "directions, fitted on the train part; attention only, no word embeddings) and baselines "
        "(chains over the words, the best fixed offset chosen on train, the random-init model). Heads are "
        "chosen on dev; every number is on the test part, punctuation excluded, with 95% bootstrap CIs over "
        "sentences. Causal models see only leftward attention, so their trees come from A + A^T and their "
        "directed trees are the undirected ones oriented from the gold root. For scale: Clark et al. "
        "(BERT-base, PTB) found the best single head far below a full parser and their attention-and-words "
        "probe at 77 UAS against 26 for right-branching.",
        "",
    ]
    cols = ["model", "method", "detail", "uuas", "uuas_low", "uuas_high", "uas", "uas_low", "uas_high"]
    for folder, (summary, parts) in found:
        note = ", ".join(
            f"{r.part} {r.fraction:g} ({int(cast(int, r.n_sentences))} sentences)" for r in parts.itertuples()
        )
        data = summary.data.iloc[0] if len(summary) else ""
        lines += [f"**{folder.name}** on {data} — parts: {note}.", ""]
        lines += trees_sentences(summary)
        lines += ["", markdown_table(summary[cols]), ""]
        rel = _rel(run_dir, folder / TREES_SUMMARY.file)
        lines += [f"Table: [{rel}]({rel})", ""]
    structural = list(stage_tables(run_dir, STRUCTURAL_PROBES))
    if structural:
        lines += [
            "Residual stream: Hewitt & Manning's (2019) structural probes, the best layer per model, probe, "
            "target and baseline: the distance probe's by UUAS (the minimum spanning tree of its predicted "
            "distances), the depth probe's by root accuracy. For scale: Hewitt & Manning report about 0.8 "
            "UUAS for BERT's best layers on PTB, far above their linear-position baseline.",
            "",
        ]
        shown = ["model", "probe", "target", "baseline", "layer", "uuas", "uuas_ci_low", "uuas_ci_high"]
        shown += ["dspr", "root_acc", "nspr"]
        for folder, (frame,) in structural:
            frame = frame if "target" in frame else frame.assign(target="gold")  # optional columns
            frame = frame.assign(key=frame.uuas.where(frame.probe == "distance", frame.get("root_acc")))
            frame = frame.dropna(subset=["key"])  # the depth probe has no UUAS, the distance probe no root
            best = frame.loc[frame.groupby(["model", "probe", "target", "baseline"], sort=True).key.idxmax()]
            lines += [*structural_sentences(frame), ""]
            lines += [markdown_table(best[[c for c in shown if c in best.columns]]), ""]
            rel = _rel(run_dir, folder / STRUCTURAL_PROBES.file)
            lines += [f"Table: [{rel}]({rel})", ""]
    return lines


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """One Markdown table of every run's claim verdicts (``verdicts.csv``), side by side.

    Parameters
    ----------
    run_dirs
        Run folders; one without ``verdicts.csv`` is left out.
    out
        The Markdown file to write.

    Returns
    -------
    pathlib.Path
        ``out``.

    Examples
    --------
    >>> import tempfile
    >>> out = compare_runs([], Path(tempfile.mkdtemp()) / "comparison.md")
    >>> out.read_text().splitlines()[:3]
    ['# Comparison of runs', '', '| claim | model |']
    """
    frames = []
    for d in map(Path, run_dirs):
        if (d / CLAIM_VERDICTS.file).exists():
            f = read_table(d / CLAIM_VERDICTS.file, CLAIM_VERDICTS)
            f.insert(0, "run", d.name)
            frames.append(f)
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["run", "claim", "model", "verdict"])
    )
    pivot = table.pivot_table(
        index=["claim", "model"], columns="run", values="verdict", aggfunc="first"
    ).reset_index()
    return atomic_write_text(out, "# Comparison of runs\n\n" + markdown_table(pivot))
