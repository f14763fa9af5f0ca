"""The claim verdicts C1-C5 of a run folder, decided from its tables alone.

Each rule ``verdict_cN(run_dir)`` reads the tables the stages wrote (through `probekit.report.read_table`
and the columns of `probekit.report.schema`) and returns one row per model: claim, model, verdict,
evidence, tables. `judge_claims` applies every rule; `build_report` writes ``verdicts.csv`` and
``REPORT.md`` (`probekit.report.write_report`). The rules and their thresholds are described in
``docs/methods/report.md``.

This module reads files only: it imports nothing of the experiment runner (config, stages), so
``probekit report`` rebuilds a report without running anything, and ``report`` never imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probekit.report.markdown import probe_sentence, probe_summaries, read_manifest, write_report
from probekit.report.schema import (
    BANK_CUE_SUMMARY,
    BANK_SUMMARY,
    CHECK_ATTENTION,
    CLAIM_VERDICTS,
    EXPLORED_SUMMARY,
    HEAD_VERDICTS,
    MINIMAL_PAIRS,
    SPECIALISTS,
    SPECIALISTS_VS_RANDOM,
)
from probekit.report.tables import check_columns, stage_folders, stage_tables, write_table

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
        for path, r in probe_summaries(run_dir, model, task="sense"):  # type: ignore[assignment]  # r reused for a summary row
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
            f"on {data}: " + "; ".join(bits) + f" ([summary]({_rel(run_dir, folder / 'summary.md')}))"
        )
    return found, parts


def _ablation_evidence(run_dir: Path, model: str) -> tuple[list[str], bool | None]:
    """Specialists vs layer-matched random heads (the ablate stage): does removing them hurt more?"""
    parts, ok = [], None
    for folder, (summary, chosen) in stage_tables(run_dir, SPECIALISTS_VS_RANDOM, SPECIALISTS):
        if model not in set(summary.model):
            continue
        heads = ", ".join(f"{r.layer}.{r.head}" for r in chosen.itertuples())
        margin = summary[summary.metric == "margin"]
        acc = summary[summary.metric == "accuracy"]
        row = margin.iloc[0] if not margin.empty else summary.iloc[0]
        ok = bool(row.p_value < 0.05 and row.specialists_delta < row.random_mean_delta)
        text = (
            f"ablating the top-{len(chosen)} {summary.relation.iloc[0]} heads ({heads}, "
            f"{row.method} ablation) "
            f"changes the agreement margin by {row.specialists_delta:+.3f} vs {row.random_mean_delta:+.3f} "
            f"for layer-matched random heads (effect size {row.effect_size:.2f} SD, p = {row.p_value:.3g}, "
            f"difference CI [{row.diff_ci_low:+.3f}, {row.diff_ci_high:+.3f}])"
        )
        if not acc.empty:
            a = acc.iloc[0]
            text += f"; accuracy {a.specialists_delta:+.3f} vs {a.random_mean_delta:+.3f}"
        parts.append(text + f" ([table]({_rel(run_dir, folder / SPECIALISTS_VS_RANDOM.file)}))")
    return parts, ok


def verdict_c4(run_dir: str | os.PathLike) -> list[dict]:
    """C4 (one head per relation, another for positions) from ``heads/*/verdicts.csv``, with the
    ablation evidence of ``ablate/*/specialists_vs_random.csv`` and ``specialists.csv``.

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
        for d in stage_folders(run_dir, HEAD_VERDICTS.stage)  # type: ignore[arg-type]  # a stage table: stage is set
    )
    rows = []
    for model in sorted(models):
        found, parts = _heads_evidence(run_dir, heads, model)
        has = {
            r: any(spec.get(r, "").startswith("specialist") for spec in found.values()) for r in C4_RELATIONS
        }
        positional = any(
            spec.get(r, "").startswith("only positional") for spec in found.values() for r in POSITIONAL
        )
        causal_parts, causal_ok = _ablation_evidence(run_dir, model)
        parts += causal_parts
        if has["nsubj"] and has["amod"] and positional and causal_ok:
            verdict = "supported"
        elif any(has.values()) or positional:
            verdict = "partly supported"
            missing = [C4_RELATIONS[r] for r in ("nsubj", "amod") if not has[r]]
            if missing:
                parts.append("no specialist for " + " or ".join(missing) + " beat its fixed-offset baseline")
            if causal_ok is False:
                parts.append(
                    "ablating the top heads did not hurt agreement more than layer-matched random heads"
                )
        else:
            verdict = "not supported"
        rows.append(_row("C4", model, verdict, "; ".join(parts), tables))
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
        for d in stage_folders(run_dir, MINIMAL_PAIRS.stage)  # type: ignore[arg-type]  # a stage table: stage is set
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
            worst = f.loc[f.accuracy.idxmin()]  # type: ignore[call-overload]  # idxmin: a row label
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
    """

    rows: pd.DataFrame

    def write(self, run_dir: str | os.PathLike) -> list[Path]:
        """Write ``verdicts.csv`` and ``REPORT.md`` into the run folder; return their paths."""
        run_dir = Path(run_dir)
        return [
            write_table(self.rows, run_dir / CLAIM_VERDICTS.file),
            write_report(run_dir, self.rows, CLAIMS, VERDICTS),
        ]


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
    return ClaimVerdicts(pd.DataFrame(rows, columns=list(CLAIM_VERDICTS.columns)))


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
