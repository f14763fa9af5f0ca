"""The claim verdicts C1-C5 of a run folder, decided from its tables alone.

Each rule ``verdict_cN(run_dir)`` reads the tables the stages wrote (through `probekit.report.read_table`
and the columns of `probekit.report.schema`) and returns one row per model: claim, model, verdict,
evidence, tables. `judge_claims` applies every rule; `build_report` writes ``verdicts.csv`` and
``REPORT.md`` (`probekit.report.write_report`), and ``c4_rule.csv`` (`c4_rule_table`). The rules and
their thresholds are described in ``docs/methods/report.md``.

The C4 rule (fixed before the numbers were looked at; ``docs/methods/report.md``, "C4 rule"). For one
model, the *family* is every (relation, data set, direction) with relation in `C4_RELATIONS`, a word-pair
direction, and a dev-selected head with at least `MIN_N` test instances. A member passes when

1. *scoring half (dev)*: its head is the top head on dev and beats the permutation null of the best of
   all heads, ``p_perm`` (``dev_p_maxT`` of that head) < `C4_ALPHA`;
2. *held-out half (test)*: the same head (same layer.head) beats the fixed-offset baseline on test, by
   the exact clustered sign-flip test ``p_offset``, Holm-adjusted over the whole family
   (``p_family`` <= `C4_ALPHA`: family-wise error controlled over relations x data x directions);
3. its test accuracy is >= `SPECIALIST_MARGIN` above the offset baseline (Voita et al. 2019);
4. it is not positional: not a Voita-positional head with >= `MOSTLY_AT_OFFSET` of the relation at its
   offset (the heads stage's rule);
5. on a trained model, its test CI lower bound exceeds the random-init model's best head.

A relation passes when any of its members does. The same rule, 1-4, is applied to the random-init model
(``random:<model>``), with its own family; the share of that family it passes is the rule's
false-positive rate, reported next to the verdict. The old rule ("old rule": any member with a
``specialist found`` verdict of the heads stage, one uncorrected test per member) is kept as a column.

This module reads files only: it imports nothing of the experiment runner (config, stages), so
``probekit report`` rebuilds a report without running anything, and ``report`` never imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from probekit.analyses.heads.rules import ALPHA, MIN_N, MOSTLY_AT_OFFSET, SPECIALIST_MARGIN
from probekit.report.markdown import (
    c4_rule_markdown,
    probe_sentence,
    probe_summaries,
    read_manifest,
    write_report,
)
from probekit.report.schema import (
    BANK_CUE_SUMMARY,
    BANK_SUMMARY,
    CHECK_ATTENTION,
    CLAIM_VERDICTS,
    EXPLORED_SUMMARY,
    HEAD_VERDICTS,
    MEDIATION_EFFECTS,
    MEDIATION_SUMMARY,
    MINIMAL_PAIRS,
    SPECIALISTS,
    SPECIALISTS_VS_RANDOM,
)
from probekit.report.tables import check_columns, stage_folders, stage_tables, write_table
from probekit.stats import holm

CLAIMS = {
    "C1": "An attention weight is softmax(q·k/√d_k); each head has its own W_Q, W_K, W_V.",
    "C2": "'bank' near 'river' attends to river/steep; 'bank' near 'deposit' attends to deposit/money.",
    "C3": "In 'The curious cat explored the mysterious room.', 'explored' attends to 'cat' (0.45) and "
    "'room' (0.28).",
    "C4": "One head handles subject-verb relations, another adjective-noun, another positions.",
    "C5": "The model's behaviour depends on these relations (loss / minimal-pair accuracy).",
}
VERDICTS = ("supported", "partly supported", "not supported", "not testable in this model")

#: C4's relations (UD labels) and how the claim names them; and the positional "relations"
C4_RELATIONS = {
    "nsubj": "subject-verb",
    "amod": "adjective-noun",
    "det": "determiner-noun",
    "obj": "verb-object",
}
POSITIONAL = ("prev_word", "next_word", "self", "first_word")

#: the C4 rule's family-wise level (Holm) and the level of its dev-half permutation null
C4_ALPHA = ALPHA
#: the C4 rule's table, in the run folder
C4_RULE_FILE = "c4_rule.csv"
#: its columns: per (model, relation, data, direction), the old and new rule, and the random-init model
C4_RULE_COLUMNS = [
    "model",
    "relation",
    "data",
    "direction",
    "n",
    "layer",
    "head",
    "accuracy",
    "offset_accuracy",
    "delta",
    "p_perm",
    "p_offset",
    "p_family",
    "positional",
    "old_rule",
    "new_rule",
    "random_layer",
    "random_head",
    "random_delta",
    "random_p_family",
    "random_old_rule",
    "random_new_rule",
    "family_size",
    "random_family_size",
    "random_fpr",
    "random_fpr_old",
]
_C4_NEEDS = ("n", "delta", "p_offset", "p_perm", "random_accuracy", "head_positional", "share_at_top_offset")


def _rel(run_dir: Path, path: Path) -> str:
    return str(path.relative_to(run_dir))


def _row(claim: str, model: str, verdict: str, evidence: str, tables: str) -> dict:
    return {"claim": claim, "model": model, "verdict": verdict, "evidence": evidence, "tables": tables}


def verdict_c1(run_dir: str | os.PathLike) -> list[dict]:
    """C1 (softmax(q·k/√d_k), own W_Q/W_K/W_V per head) from ``check_attention/*/check_attention.csv``.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    list of dict
        One row (claim, model, verdict, evidence, tables) per checked model.

    Examples
    --------
    >>> import tempfile
    >>> from probekit.report import write_table
    >>> run = Path(tempfile.mkdtemp())
    >>> check = pd.DataFrame({"model": ["m", "m"], "q_hook": "hook_q", "k_hook": "hook_k", "n_heads": 4,
    ...                       "n_kv_heads": 4, "scale": "1/sqrt(16)", "max_abs_diff": [1e-7, 3e-7]})
    >>> _ = write_table(check, run / "check_attention" / "m" / "check_attention.csv")
    >>> verdict_c1(run)[0]["verdict"]
    'supported'
    """
    run_dir, rows = Path(run_dir), []
    for folder, (df,) in stage_tables(run_dir, CHECK_ATTENTION):
        worst = float(df.max_abs_diff.max())
        gqa = int(df.n_kv_heads.iloc[0]) < int(df.n_heads.iloc[0])
        ok = worst <= 1e-5
        verdict = ("partly supported" if gqa else "supported") if ok else "not supported"
        evidence = (
            f"recomputed softmax(q·k/√{df.scale.iloc[0].split('(')[-1].rstrip(')')}) from "
            f"`{df.q_hook.iloc[0]}`/`{df.k_hook.iloc[0]}` matches `hook_pattern` in all {len(df)} layers "
            f"(max abs diff {worst:.1e})"
        )
        if gqa:
            evidence += (
                f"; but W_K/W_V are shared: {df.n_heads.iloc[0]} query heads use {df.n_kv_heads.iloc[0]} "
                "key/value heads (GQA), so heads do not each have their own W_K, W_V"
            )
        if df.q_hook.iloc[0] == "hook_rot_q":
            evidence += "; q and k are taken after rotary position embedding"
        rows.append(
            _row("C1", df.model.iloc[0], verdict, evidence, _rel(run_dir, folder / CHECK_ATTENTION.file))
        )
    return rows


def verdict_c2(run_dir: str | os.PathLike) -> list[dict]:
    """C2 ('bank' attends to its own sense's cue words) from ``claims/*/bank_summary.csv`` and
    ``bank_cue_summary.csv``, with the ``sense`` probes of ``probes/*/probes_summary.csv``.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    list of dict
        One row per model with a claims stage.

    Examples
    --------
    >>> import tempfile
    >>> verdict_c2(tempfile.mkdtemp())
    []
    """
    run_dir, rows = Path(run_dir), []
    for folder, (seed, cue) in stage_tables(run_dir, BANK_SUMMARY, BANK_CUE_SUMMARY):
        model, c = seed.model.iloc[0], cue.iloc[0]
        parts = []
        for r in seed.itertuples():
            if r.testable:
                parts.append(
                    f"'bank' #{r.bank} ({r.sense}): {r.heads_own_gt_other}/{r.n_heads} heads weight the "
                    f"own-sense cues above the other ones (mean {r.mean_own:.3f} vs {r.mean_other:.3f})"
                )
            else:
                parts.append(
                    f"'bank' #{r.bank} ({r.sense}): "
                    + (
                        "no cue word is visible (all come later; causal mask)"
                        if not r.own_cues_visible and not r.other_cues_visible
                        else "only the *other* sense's cues are visible (causal mask)"
                        if r.other_cues_visible
                        else "only its own cues are visible"
                    )
                )
        if bool(seed.testable.any()):
            parts.append(
                "in the seed sentence each 'bank' is also nearer its own cues, so that comparison is "
                "confounded by distance"
            )
        parts.append(
            f"template:bank_sense ({int(c.n_sentences)} sentences with a visible cue): best head "
            f"{c.best_head} gives the cue word {c.best_cue_attention:.3f} vs "
            f"{c.its_random_word_attention:.3f} "
            f"for the other words and {c.its_offset_matched_attention:.3f} for non-cue words at the same "
            f"offset (median head {c.median_head_cue_attention:.3f}; best-of-heads null "
            f"{c.null_best_mean:.3f}, p = {c.p_value:.3g}); {int(c.heads_cue_gt_offset)}/{int(c.n_heads)} "
            "heads attend to the cue more than to other words at its offset (the cue is always a content "
            "word and many of the others are function words, so this shows cue-seeking, not sense as such)"
        )
        testable = bool(seed.testable.all())
        cue_effect = c.p_value < 0.05 and c.best_cue_attention > c.its_offset_matched_attention + 0.05
        typical = c.heads_cue_gt_offset > c.n_heads / 2
        if not testable:
            verdict = "partly supported" if cue_effect else "not testable in this model"
            parts.append(
                "the seed sentence's claim needs forward attention, which a causal model lacks; "
                "only cues *before* 'bank' can be tested"
            )
        elif cue_effect and typical:
            verdict = "supported"
        elif cue_effect:
            verdict = "partly supported"
            parts.append(
                "some heads attend to the sense cue beyond distance, most do not: a property of "
                "particular heads, not of 'the' attention"
            )
        else:
            verdict = "not supported"
        tables = [_rel(run_dir, folder / BANK_SUMMARY.file), _rel(run_dir, folder / "bank_cue_heads.csv")]
        for path, r in probe_summaries(run_dir, model, task="sense"):
            parts.append(probe_sentence(r))
            tables.append(_rel(run_dir, path))
        rows.append(_row("C2", model, verdict, "; ".join(parts), ", ".join(tables)))
    return rows


def verdict_c3(run_dir: str | os.PathLike) -> list[dict]:
    """C3 ('explored' attends to 'cat' 0.45 and 'room' 0.28) from ``claims/*/explored_summary.csv``.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    list of dict
        One row per model with a claims stage.

    Examples
    --------
    >>> import tempfile
    >>> verdict_c3(tempfile.mkdtemp())
    []
    """
    run_dir, rows = Path(run_dir), []
    for folder, (frame,) in stage_tables(run_dir, EXPLORED_SUMMARY):
        s = frame.iloc[0]
        causal = "mean_room_to_explored" in s.index and not pd.isna(s.get("mean_room_to_explored"))
        path = folder / EXPLORED_SUMMARY.file
        check_columns(
            frame, path, EXPLORED_SUMMARY, ("max_room_to_explored",) if causal else ("mean_explored_to_room",)
        )
        ev = (
            f"'explored' → 'cat' averages {s.mean_explored_to_cat:.3f} over {int(s.n_heads)} heads (max "
            f"{s.max_explored_to_cat:.3f}); 'cat' is the most-attended other word in "
            f"{int(s.heads_argmax_cat)} heads; "
            f"closest head {s.closest_head} gives cat {s.closest_cat:.3f}"
        )
        if causal:
            ev += (
                f"; 'room' comes after 'explored' and is invisible to it (causal mask): 'room' → 'explored' "
                f"averages {s.mean_room_to_explored:.3f} (max {s.max_room_to_explored:.3f})"
            )
        else:
            ev += f", room {s.closest_room:.3f}; 'explored' → 'room' averages {s.mean_explored_to_room:.3f}"
        ev += (
            f"; on average {s.mean_explored_to_sink:.2f} of 'explored''s attention goes to the "
            "sink/special tokens"
        )
        within = int(s["heads_within_0.1"])
        if causal:
            verdict = "not testable in this model" if within == 0 else "partly supported"
            ev += f"; {within} heads put 0.45±0.1 on 'cat'"
        else:
            verdict = "partly supported" if within > 0 else "not supported"
            ev += f"; {within} heads come within 0.1 of (0.45, 0.28)"
        ev += ". The figures describe at most particular heads, not the model"
        rows.append(_row("C3", s.model, verdict, ev, _rel(run_dir, folder / "explored_weights.csv")))
    return rows


def _heads_evidence(
    run_dir: Path, heads: list[tuple[Path, list[pd.DataFrame]]], model: str
) -> tuple[dict, list[str]]:
    """Per data set: which relations have a specialist head, which are only positional."""
    found, parts = {}, []
    for folder, (table,) in heads:
        if model not in set(table.model):
            continue
        v = table[table.model == model]
        data = str(v.data.iloc[0])
        rel = v.drop_duplicates("relation").set_index("relation").relation_verdict
        spec = {r: str(rel[r]) for r in rel.index}
        found[data] = spec
        bits = []
        for r, label in C4_RELATIONS.items():
            if r in spec:
                chosen = v[(v.relation == r) & v.verdict.str.startswith("specialist")]
                detail = "; ".join(
                    f"{x.direction} {x.layer:.0f}.{x['head']:.0f}: {x.accuracy:.2f} vs offset "
                    f"{x.offset_accuracy:.2f} [CI {x.ci_low:.2f}-{x.ci_high:.2f}]"
                    + (f", also passes {x.also_passes}" if isinstance(x.also_passes, str) else "")
                    for _, x in chosen.iterrows()
                )
                bits.append(f"{label} ({r}): {spec[r]}" + (f" — {detail}" if detail else ""))
        pos = [f"{r}: {spec[r]}" for r in POSITIONAL if r in spec and spec[r].startswith("only positional")]
        if pos:
            bits.append("positional heads: " + ", ".join(pos))
        rnd = table[table.model == f"random:{model}"]
        if not rnd.empty:
            n_spec = int(rnd.verdict.str.startswith("specialist").sum())
            bits.append(f"random-init model: {n_spec} specialist(s)")
        parts.append(
            f"on {data} (heads-stage verdicts, one uncorrected test each): "
            + "; ".join(bits)
            + f" ([summary]({_rel(run_dir, folder / 'summary.md')}))"
        )
    return found, parts


def _ablation_evidence(run_dir: Path, model: str) -> tuple[list[str], bool | None]:
    """Specialists vs layer-matched random heads (the ablate stage): does removing them hurt more?

    One sentence per selection criterion; the verdict rests on the head-scoring module's criterion
    (``heads_score``, the heads the C4 rule judges) when the stage ran it, else on the first one."""
    parts, ok = [], None
    for folder, (summary, chosen) in stage_tables(run_dir, SPECIALISTS_VS_RANDOM, SPECIALISTS):
        if model not in set(summary.model):
            continue
        if "criterion" not in summary:  # tables written before several criteria existed
            summary, chosen = summary.assign(criterion="heads_score"), chosen.assign(criterion="heads_score")
        criteria = list(dict.fromkeys(summary.criterion))
        decisive = "heads_score" if "heads_score" in criteria else criteria[0]
        for criterion in criteria:
            rows, picked = summary[summary.criterion == criterion], chosen[chosen.criterion == criterion]
            heads = ", ".join(f"{r.layer}.{r.head}" for r in picked.itertuples())
            margin, acc = rows[rows.metric == "margin"], rows[rows.metric == "accuracy"]
            row = margin.iloc[0] if not margin.empty else rows.iloc[0]
            if criterion == decisive:
                ok = bool(row.p_value < 0.05 and row.specialists_delta < row.random_mean_delta)
            text = (
                f"ablating the top-{len(picked)} {rows.relation.iloc[0]} heads chosen by {criterion} "
                f"({heads}, {row.method} ablation) "
                f"changes the agreement margin by {row.specialists_delta:+.3f} vs "
                f"{row.random_mean_delta:+.3f} for layer-matched random heads (effect size "
                f"{row.effect_size:.2f} SD, p = {row.p_value:.3g}, "
                f"difference CI [{row.diff_ci_low:+.3f}, {row.diff_ci_high:+.3f}])"
            )
            if not acc.empty:
                a = acc.iloc[0]
                text += f"; accuracy {a.specialists_delta:+.3f} vs {a.random_mean_delta:+.3f}"
            parts.append(text + f" ([table]({_rel(run_dir, folder / SPECIALISTS_VS_RANDOM.file)}))")
    return parts, ok


def _pct(x) -> str:
    return "n/a" if pd.isna(x) else f"{100 * float(x):.1f}%"


def _mediation_evidence(run_dir: Path, model: str) -> list[str]:
    """Causal mediation (the mediate stage): how much of each relation's counterfactual effect the
    attention specialists carry, which heads carry it (read from ``mediation_effects.csv``: all-positions
    effect, Holm p <= 0.05 over all heads, positive share), and whether attention predicts it. One
    sentence per relation, null results included."""
    parts = []
    for folder, (summary, effects) in stage_tables(run_dir, MEDIATION_SUMMARY, MEDIATION_EFFECTS):
        for r in summary[summary.model == model].itertuples():
            e = effects[
                (effects.model == model)
                & (effects.relation == r.relation)
                & (effects.effect_type == "all_positions")
                & (effects.p_holm <= 0.05)
                & (effects.share > 0)
            ].sort_values("share", ascending=False)
            carriers = ", ".join(
                f"{layer}.{head} ({_pct(share)})"
                for layer, head, share in e[["layer", "head", "share"]].head(6).itertuples(index=False)
            )
            if len(e) > 6:  # the rest in one phrase; every head is in mediation_effects.csv
                carriers += f" and {len(e) - 6} more ({_pct(e['share'].iloc[6:].sum())} together)"
            parts.append(
                f"mediation ({r.relation}, {r.readout}, {r.n_report} report pairs): total effect "
                f"{r.total_effect:+.3f} [{r.te_ci_low:+.3f}, {r.te_ci_high:+.3f}]; the top attention head "
                f"{r.top_attention_layer}.{r.top_attention_head} carries "
                f"{_pct(r.top_attention_share)} of it, the top-{r.k} "
                f"attention heads {_pct(r.share_attention_top)} (layer-matched random heads "
                f"{_pct(r.share_random_mean)}, "
                f"p = {r.p_attention_vs_random:.3g}), the top-{r.k} causal heads {_pct(r.share_causal_top)}; "
                f"heads that carry it (Holm over all heads): {carriers or 'none'}; attention vs causal share "
                f"Spearman {r.spearman:+.2f} (permutation p = {r.spearman_p_perm:.3g}) "
                f"([table]({_rel(run_dir, folder / MEDIATION_SUMMARY.file)}))"
            )
    return parts


def _apply_c4_rule(members: pd.DataFrame, against_random: bool) -> pd.DataFrame:
    """``members`` (one model's family, heads verdict rows) with ``testable, p_family, positional,
    new_rule`` added (the module docstring's rule; conditions 1-4, and 5 when ``against_random``)."""
    m = members.reset_index(drop=True).copy()
    testable = (m.layer.notna() & (m.n >= MIN_N) & m.p_offset.notna()).to_numpy()
    p_family = np.full(len(m), np.nan)
    p_family[testable] = holm(m.p_offset.to_numpy(dtype=np.float64)[testable])
    positional = (m.head_positional.astype("boolean").fillna(False).to_numpy(dtype=bool)) & (
        m.share_at_top_offset.to_numpy(dtype=np.float64) >= MOSTLY_AT_OFFSET
    )
    random_ok = (
        m.random_accuracy.isna() | (m.ci_low > m.random_accuracy)
        if against_random
        else pd.Series(True, index=m.index)
    ).to_numpy(dtype=bool)
    with np.errstate(invalid="ignore"):
        new = (
            testable
            & (p_family <= C4_ALPHA)
            & (m.p_perm.to_numpy(dtype=np.float64) < C4_ALPHA)
            & (m.delta.to_numpy(dtype=np.float64) >= SPECIALIST_MARGIN - 1e-12)
            & ~positional
            & random_ok
        )
    m["testable"], m["p_family"], m["positional"], m["new_rule"] = testable, p_family, positional, new
    m["old_rule"] = m.verdict.astype(str).str.startswith("specialist").to_numpy() & testable
    return m


def c4_rule_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The C4 rule, before and after: one row per (model, relation, data, direction) of the family.

    Reads every ``heads/*/verdicts.csv`` of the run; the rule is the module docstring's (and
    ``docs/methods/report.md``, "C4 rule"). Members without a testable head (no visible instances, an
    empty split side, n < `MIN_N`) are listed with both rules False and are not in the family.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    pandas.DataFrame
        `C4_RULE_COLUMNS`: the dev-selected head and its numbers, ``p_family`` (Holm over the model's
        family), ``positional`` (excluded as positional), ``old_rule`` / ``new_rule``, the random-init
        model's member (``random_*``), the family sizes and the rule's false-positive rate on the
        random-init model (``random_fpr``: share of its family the new rule passes; ``random_fpr_old``:
        the old rule). Empty when the heads tables predate ``p_offset`` (rerun the heads stage).

    Examples
    --------
    >>> import tempfile
    >>> c4_rule_table(tempfile.mkdtemp()).columns.tolist() == C4_RULE_COLUMNS
    True
    """
    run_dir = Path(run_dir)
    frames = []
    for _folder, (table,) in stage_tables(run_dir, HEAD_VERDICTS):
        if HEAD_VERDICTS.missing(table.columns, _C4_NEEDS):
            return pd.DataFrame(columns=C4_RULE_COLUMNS)
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=C4_RULE_COLUMNS)
    allv = pd.concat(frames, ignore_index=True)
    allv = allv[allv.relation.isin(list(C4_RELATIONS)) & ~allv.direction.isin(["positional"])]
    keys = ["relation", "data", "direction"]
    rel_order = {r: i for i, r in enumerate(C4_RELATIONS)}
    out = []
    for model in sorted(m for m in set(allv.model) if not str(m).startswith("random:")):
        own = _apply_c4_rule(allv[allv.model == model], against_random=True)
        rnd = _apply_c4_rule(allv[allv.model == f"random:{model}"], against_random=False)
        r = rnd[[*keys, "layer", "head", "delta", "p_family", "old_rule", "new_rule"]].rename(
            columns={c: f"random_{c}" for c in ("layer", "head", "delta", "p_family", "old_rule", "new_rule")}
        )
        t = own.merge(r, on=keys, how="left")
        for c in ("random_old_rule", "random_new_rule"):
            t[c] = t[c].astype("boolean").fillna(False).astype(bool)
        n_rnd = int(rnd.testable.sum())
        t["family_size"] = int(own.testable.sum())
        t["random_family_size"] = n_rnd
        t["random_fpr"] = rnd.new_rule.sum() / n_rnd if n_rnd else np.nan
        t["random_fpr_old"] = rnd.old_rule.sum() / n_rnd if n_rnd else np.nan
        t["_order"] = t.relation.map(rel_order)
        out.append(t.sort_values(["_order", "data", "direction"], kind="stable"))
    table = pd.concat(out, ignore_index=True).reindex(columns=C4_RULE_COLUMNS)
    for c in ("layer", "head", "random_layer", "random_head"):
        table[c] = table[c].astype("Int64")
    return table


def _c4_rule_evidence(rule: pd.DataFrame) -> tuple[dict[str, bool], str]:
    """One model's rows of `c4_rule_table`: which relations pass the rule, and the sentence saying so."""

    def members(rows: pd.DataFrame, prefix: str = "") -> str:
        return ", ".join(
            f"{r.relation} ({r.data} {r.direction} {getattr(r, prefix + 'layer')}."
            f"{getattr(r, prefix + 'head')}, p_family {getattr(r, prefix + 'p_family'):.2g})"
            for r in rows.itertuples()
        )

    has = {r: bool(rule[rule.relation == r].new_rule.any()) for r in C4_RELATIONS}
    new, old = rule[rule.new_rule], rule[rule.old_rule]
    size, rsize = int(rule.family_size.iloc[0]), int(rule.random_family_size.iloc[0])
    rnew = rule[rule.random_new_rule]
    text = (
        f"C4 rule (written down before the numbers; Holm over this model's {size} relation × data × "
        "direction tests of the dev-selected head against the fixed-offset baseline on the held-out test "
        f"half, exact sign-flip p; dev maxT p < {C4_ALPHA}; >= {SPECIALIST_MARGIN:.2f} above the offset; "
        "not positional; CI above the random-init model's best head): "
        + (f"passes {members(new)}" if len(new) else "no member passes")
        + f"; the old rule (any member with an uncorrected 'specialist found') passed {len(old)}: "
        + (", ".join(dict.fromkeys(old.relation)) if len(old) else "none")
        + f"; on the random-init model the same rule passes {int(rule.random_new_rule.sum())} of {rsize} "
        f"tests (false-positive rate {rule.random_fpr.iloc[0]:.2f}; old rule "
        f"{rule.random_fpr_old.iloc[0]:.2f})" + (f": {members(rnew, 'random_')}" if len(rnew) else "")
    )
    return has, text


def verdict_c4(run_dir: str | os.PathLike) -> list[dict]:
    """C4 (one head per relation, another for positions) from ``heads/*/verdicts.csv`` by the C4 rule
    (`c4_rule_table`; the module docstring), with the ablation evidence of
    ``ablate/*/specialists_vs_random.csv`` and ``specialists.csv``. "supported" needs nsubj and amod to
    pass the rule, a positional head, and the ablation to hurt more than random heads.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    list of dict
        One row per (trained) model with a heads stage, in sorted model order.

    Examples
    --------
    >>> import tempfile
    >>> verdict_c4(tempfile.mkdtemp())
    []
    """
    run_dir = Path(run_dir)
    heads = list(stage_tables(run_dir, HEAD_VERDICTS))
    models = {m for _, (v,) in heads for m in v.model if not str(m).startswith("random:")}
    # every heads folder, whichever model it holds (as the report has always listed them)
    tables = ", ".join(
        _rel(run_dir, d / HEAD_VERDICTS.file)
        for d in stage_folders(run_dir, cast(str, HEAD_VERDICTS.stage))  # a stage table: stage is set
    )
    rule = c4_rule_table(run_dir)
    rows = []
    for model in sorted(models):
        found, parts = _heads_evidence(run_dir, heads, model)
        positional = any(
            spec.get(r, "").startswith("only positional") for spec in found.values() for r in POSITIONAL
        )
        mine = rule[rule.model == model]
        if mine.empty:  # heads tables written before p_offset: only the old rule can be applied
            has = {
                r: any(spec.get(r, "").startswith("specialist") for spec in found.values())
                for r in C4_RELATIONS
            }
            parts.append(
                "the C4 rule needs p_offset in heads/*/verdicts.csv, which these tables predate (rerun the "
                "heads stage); this verdict uses the old rule (any data set x direction, uncorrected)"
            )
        else:
            has, text = _c4_rule_evidence(mine)
            parts.append(text + f" ([table]({C4_RULE_FILE}))")
        causal_parts, causal_ok = _ablation_evidence(run_dir, model)
        parts += causal_parts
        parts += _mediation_evidence(run_dir, model)
        if has["nsubj"] and has["amod"] and positional and causal_ok:
            verdict = "supported"
        elif any(has.values()) or positional:
            verdict = "partly supported"
            missing = [C4_RELATIONS[r] for r in ("nsubj", "amod") if not has[r]]
            if missing:
                parts.append(
                    "no specialist for " + " or ".join(missing) + " passes the C4 rule"
                    if not mine.empty
                    else "no specialist for " + " or ".join(missing) + " beat its fixed-offset baseline"
                )
            if causal_ok is False:
                parts.append(
                    "ablating the top heads did not hurt agreement more than layer-matched random heads"
                )
        else:
            verdict = "not supported"
        rows.append(
            _row("C4", model, verdict, "; ".join(parts), tables + (f", {C4_RULE_FILE}" if len(mine) else ""))
        )
    return rows


def verdict_c5(run_dir: str | os.PathLike) -> list[dict]:
    """C5 (behaviour depends on the relations: minimal-pair accuracy) from ``score/*/minimal_pairs.csv``;
    a model the score stage skipped for lacking a language-model head (``manifest.json``) is
    'not testable'.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    list of dict
        One row per scored model (sorted), then one per skipped model.

    Examples
    --------
    >>> import tempfile
    >>> verdict_c5(tempfile.mkdtemp())
    []
    """
    run_dir = Path(run_dir)
    scored = list(stage_tables(run_dir, MINIMAL_PAIRS))
    # every score folder, whichever model it holds (as the report has always listed them)
    tables = ", ".join(
        _rel(run_dir, d / MINIMAL_PAIRS.file)
        for d in stage_folders(run_dir, cast(str, MINIMAL_PAIRS.stage))  # a stage table: stage is set
    )
    rows = []
    for model in sorted({f.model.iloc[0] for _, (f,) in scored}):
        parts, all_above, any_above = [], True, False
        for folder, (f,) in scored:
            if f.model.iloc[0] != model:
                continue
            f = f[f.paradigm != "all"]
            above = f.ci_low > 0.5
            all_above &= bool(above.all())
            any_above |= bool(above.any())
            worst = f.loc[
                cast(int, f.accuracy.idxmin())
            ]  # idxmin: an integer row label (a table read from CSV)
            parts.append(
                f"{f.data.iloc[0]}: accuracy {f.accuracy.min():.3f}–{f.accuracy.max():.3f} over "
                f"{len(f)} paradigms (lowest: {worst.paradigm} {worst.accuracy:.3f} "
                f"[{worst.ci_low:.3f}, {worst.ci_high:.3f}]) "
                f"([table]({_rel(run_dir, folder / MINIMAL_PAIRS.file)}))"
            )
        verdict = "supported" if all_above else "partly supported" if any_above else "not supported"
        rows.append(
            _row(
                "C5",
                model,
                verdict,
                "the model prefers the grammatical sentence of each minimal pair (sum "
                "of token log-probabilities, chance = 0.5): " + "; ".join(parts),
                tables,
            )
        )
    for note in dict.fromkeys(read_manifest(run_dir).get("skipped", [])):
        if note.startswith("score: ") and "language-model head" in note:
            model = note.split()[1]
            rows.append(
                _row(
                    "C5",
                    model,
                    "not testable in this model",
                    f"{model} has no trained language-model head (MiniLM is a sentence encoder whose MLM "
                    "head is random), so it assigns no meaningful probabilities to sentences",
                    "",
                )
            )
    return rows


#: the rules, in claim order
VERDICT_FUNCTIONS = (verdict_c1, verdict_c2, verdict_c3, verdict_c4, verdict_c5)


@dataclass(frozen=True)
class ClaimVerdicts:
    """The claim verdicts of one run folder.

    Attributes
    ----------
    rows
        One row per (claim, model): ``claim, model, verdict, evidence, tables``
        (`probekit.report.schema.CLAIM_VERDICTS`); empty for a run without claim analyses.
    c4_rule
        `c4_rule_table` of the run (``None`` or empty: no heads tables with ``p_offset``).
    """

    rows: pd.DataFrame
    c4_rule: pd.DataFrame | None = None

    def write(self, run_dir: str | os.PathLike) -> list[Path]:
        """Write ``verdicts.csv``, ``c4_rule.csv`` (when there is a C4 rule table) and ``REPORT.md`` into
        the run folder; return their paths (REPORT.md last)."""
        run_dir = Path(run_dir)
        written = [write_table(self.rows, run_dir / CLAIM_VERDICTS.file)]
        details = {}
        if self.c4_rule is not None and not self.c4_rule.empty:
            written.append(write_table(self.c4_rule, run_dir / C4_RULE_FILE))
            details["C4"] = c4_rule_markdown(self.c4_rule, C4_RULE_FILE)
        return [*written, write_report(run_dir, self.rows, CLAIMS, VERDICTS, details=details)]


def judge_claims(run_dir: str | os.PathLike) -> ClaimVerdicts:
    """Apply every rule of `VERDICT_FUNCTIONS` to a run folder.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    ClaimVerdicts
        The rows, in claim order.

    Examples
    --------
    >>> import tempfile
    >>> judge_claims(tempfile.mkdtemp()).rows.columns.tolist()
    ['claim', 'model', 'verdict', 'evidence', 'tables']
    """
    rows = [r for fn in VERDICT_FUNCTIONS for r in fn(run_dir)]
    return ClaimVerdicts(pd.DataFrame(rows, columns=list(CLAIM_VERDICTS.columns)), c4_rule_table(run_dir))


def build_report(run_dir: str | os.PathLike) -> Path:
    """Write ``verdicts.csv`` and ``REPORT.md`` of a run folder from its tables; return REPORT.md.

    What ``probekit report DIR`` and the end of `probekit.experiment.run_experiment` call.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    pathlib.Path
        ``run_dir / "REPORT.md"``.

    Examples
    --------
    >>> import tempfile
    >>> build_report(tempfile.mkdtemp()).name
    'REPORT.md'
    """
    return judge_claims(run_dir).write(run_dir)[-1]
