"""REPORT.md: claim verdicts with their evidence, rebuilt from a run's CSVs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from probekit.report.figures import *  # noqa: F403  (temporary, until the verdicts move out)
from probekit.report.tables import atomic_write_text, markdown_table, write_table

# --------------------------------------------------------------------------------------------------
# REPORT.md: claim verdicts with their evidence, rebuilt from the CSVs alone

CLAIMS = {
    "C1": "An attention weight is softmax(q·k/√d_k); each head has its own W_Q, W_K, W_V.",
    "C2": "'bank' near 'river' attends to river/steep; 'bank' near 'deposit' attends to deposit/money.",
    "C3": "In 'The curious cat explored the mysterious room.', 'explored' attends to 'cat' (0.45) and 'room' (0.28).",
    "C4": "One head handles subject-verb relations, another adjective-noun, another positions.",
    "C5": "The model's behaviour depends on these relations (loss / minimal-pair accuracy).",
}
VERDICTS = ("supported", "partly supported", "not supported", "not testable in this model")


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _stage_dirs(run_dir: Path, analysis: str) -> list[Path]:
    root = run_dir / analysis
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def _rel(run_dir: Path, path: Path) -> str:
    return str(path.relative_to(run_dir))


def verdict_c1(run_dir: Path) -> list[dict]:
    rows = []
    for d in _stage_dirs(run_dir, "check_attention"):
        df = _read(d / "check_attention.csv")
        if df is None:
            continue
        worst = float(df.max_abs_diff.max())
        gqa = int(df.n_kv_heads.iloc[0]) < int(df.n_heads.iloc[0])
        ok = worst <= 1e-5
        verdict = ("partly supported" if gqa else "supported") if ok else "not supported"
        evidence = (f"recomputed softmax(q·k/√{df.scale.iloc[0].split('(')[-1].rstrip(')')}) from "
                    f"`{df.q_hook.iloc[0]}`/`{df.k_hook.iloc[0]}` matches `hook_pattern` in all {len(df)} layers "
                    f"(max abs diff {worst:.1e})")
        if gqa:
            evidence += (f"; but W_K/W_V are shared: {df.n_heads.iloc[0]} query heads use {df.n_kv_heads.iloc[0]} "
                         "key/value heads (GQA), so heads do not each have their own W_K, W_V")
        if df.q_hook.iloc[0] == "hook_rot_q":
            evidence += "; q and k are taken after rotary position embedding"
        rows.append({"claim": "C1", "model": df.model.iloc[0], "verdict": verdict, "evidence": evidence,
                     "tables": _rel(run_dir, d / "check_attention.csv")})
    return rows


def verdict_c2(run_dir: Path) -> list[dict]:
    rows = []
    for d in _stage_dirs(run_dir, "claims"):
        seed, cue = _read(d / "bank_summary.csv"), _read(d / "bank_cue_summary.csv")
        if seed is None or cue is None:
            continue
        model, c = seed.model.iloc[0], cue.iloc[0]
        parts = []
        for r in seed.itertuples():
            if r.testable:
                parts.append(f"'bank' #{r.bank} ({r.sense}): {r.heads_own_gt_other}/{r.n_heads} heads weight the "
                             f"own-sense cues above the other ones (mean {r.mean_own:.3f} vs {r.mean_other:.3f})")
            else:
                parts.append(f"'bank' #{r.bank} ({r.sense}): " + (
                    "no cue word is visible (all come later; causal mask)" if not r.own_cues_visible
                    and not r.other_cues_visible else
                    "only the *other* sense's cues are visible (causal mask)" if r.other_cues_visible
                    else "only its own cues are visible"))
        if bool(seed.testable.any()):
            parts.append("in the seed sentence each 'bank' is also nearer its own cues, so that comparison is "
                         "confounded by distance")
        parts.append(f"template:bank_sense ({int(c.n_sentences)} sentences with a visible cue): best head "
                     f"{c.best_head} gives the cue word {c.best_cue_attention:.3f} vs {c.its_random_word_attention:.3f} "
                     f"for the other words and {c.its_offset_matched_attention:.3f} for non-cue words at the same "
                     f"offset (median head {c.median_head_cue_attention:.3f}; best-of-heads null "
                     f"{c.null_best_mean:.3f}, p = {c.p_value:.3g}); {int(c.heads_cue_gt_offset)}/{int(c.n_heads)} "
                     "heads attend to the cue more than to other words at its offset (the cue is always a content "
                     "word and many of the others are function words, so this shows cue-seeking, not sense as such)")
        testable = bool(seed.testable.all())
        cue_effect = c.p_value < 0.05 and c.best_cue_attention > c.its_offset_matched_attention + 0.05
        typical = c.heads_cue_gt_offset > c.n_heads / 2
        if not testable:
            verdict = "partly supported" if cue_effect else "not testable in this model"
            parts.append("the seed sentence's claim needs forward attention, which a causal model lacks; "
                         "only cues *before* 'bank' can be tested")
        elif cue_effect and typical:
            verdict = "supported"
        elif cue_effect:
            verdict = "partly supported"
            parts.append("some heads attend to the sense cue beyond distance, most do not: a property of "
                         "particular heads, not of 'the' attention")
        else:
            verdict = "not supported"
        tables = [_rel(run_dir, d / "bank_summary.csv"), _rel(run_dir, d / "bank_cue_heads.csv")]
        for p, r in _probe_summaries(run_dir, model, task="sense"):
            parts.append(probe_sentence(r))
            tables.append(_rel(run_dir, p))
        rows.append({"claim": "C2", "model": model, "verdict": verdict, "evidence": "; ".join(parts),
                     "tables": ", ".join(tables)})
    return rows


def _probe_summaries(run_dir: Path, model: str | None = None, task: str | None = None):
    """(path, row) for every row of every ``probes/*/probes_summary.csv``, optionally filtered."""
    for d in _stage_dirs(run_dir, "probes"):
        f = _read(d / "probes_summary.csv")
        if f is None:
            continue
        for r in f.itertuples(index=False):
            if (model is None or r.model == model) and (task is None or r.task == task):
                yield d / "probes_summary.csv", r


def probe_sentence(r) -> str:
    """One sentence on a probe's layer curve, from a `probekit.probes.probe_summary` row."""
    baselines = [] if pd.isna(r.layer0_accuracy) else [f"layer 0 (embeddings) {r.layer0_accuracy:.3f}"]
    baselines.append(f"control task {r.control_accuracy:.3f} (selectivity {r.selectivity:+.3f})"
                     if not pd.isna(r.control_accuracy) else "no control task (undefined for a single word type, "
                     "or not run)")
    baselines.append(f"majority {r.majority_accuracy:.3f}")
    text = (f"{r.task} probe on {r.data} ({r.split} split, {int(r.n_seeds)} seed(s)): best layer {int(r.best_layer)} "
            f"at {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], within 1 point of that from layer "
            f"{int(r.first_layer_within)}; " + ", ".join(baselines))
    if not pd.isna(getattr(r, "random_init_accuracy", float("nan"))):
        text += f", random-init model {r.random_init_accuracy:.3f} (its best layer {int(r.random_init_best_layer)})"
        if r.accuracy - r.random_init_accuracy < 0.02:
            text += " — the random-init model decodes it as well, so the probe reads surface/lexical cues"
    return text


def verdict_c3(run_dir: Path) -> list[dict]:
    rows = []
    for d in _stage_dirs(run_dir, "claims"):
        s = _read(d / "explored_summary.csv")
        if s is None:
            continue
        s = s.iloc[0]
        causal = "mean_room_to_explored" in s.index and not pd.isna(s.get("mean_room_to_explored"))
        ev = (f"'explored' → 'cat' averages {s.mean_explored_to_cat:.3f} over {int(s.n_heads)} heads (max "
              f"{s.max_explored_to_cat:.3f}); 'cat' is the most-attended other word in {int(s.heads_argmax_cat)} heads; "
              f"closest head {s.closest_head} gives cat {s.closest_cat:.3f}")
        if causal:
            ev += (f"; 'room' comes after 'explored' and is invisible to it (causal mask): 'room' → 'explored' "
                   f"averages {s.mean_room_to_explored:.3f} (max {s.max_room_to_explored:.3f})")
        else:
            ev += f", room {s.closest_room:.3f}; 'explored' → 'room' averages {s.mean_explored_to_room:.3f}"
        ev += f"; on average {s.mean_explored_to_sink:.2f} of 'explored''s attention goes to the sink/special tokens"
        within = int(s["heads_within_0.1"])
        if causal:
            verdict = "not testable in this model" if within == 0 else "partly supported"
            ev += f"; {within} heads put 0.45±0.1 on 'cat'"
        else:
            verdict = "partly supported" if within > 0 else "not supported"
            ev += f"; {within} heads come within 0.1 of (0.45, 0.28)"
        ev += ". The figures describe at most particular heads, not the model"
        rows.append({"claim": "C3", "model": s.model, "verdict": verdict, "evidence": ev,
                     "tables": _rel(run_dir, d / "explored_weights.csv")})
    return rows


C4_RELATIONS = {"nsubj": "subject-verb", "amod": "adjective-noun", "det": "determiner-noun", "obj": "verb-object"}
POSITIONAL = ("prev_word", "next_word", "self", "first_word")


def _heads_evidence(run_dir: Path, model: str) -> tuple[dict, list[str]]:
    """Per data set: which relations have a specialist head, which are only positional."""
    found, parts = {}, []
    for d in _stage_dirs(run_dir, "heads"):
        v = _read(d / "verdicts.csv")
        if v is None or model not in set(v.model):
            continue
        v = v[v.model == model]
        data = str(v.data.iloc[0])
        rel = v.drop_duplicates("relation").set_index("relation").relation_verdict
        spec = {r: str(rel[r]) for r in rel.index}
        found[data] = spec
        bits = []
        for r, label in C4_RELATIONS.items():
            if r in spec:
                rows = v[(v.relation == r) & v.verdict.str.startswith("specialist")]
                detail = "; ".join(f"{x.direction} {x.layer:.0f}.{x['head']:.0f}: {x.accuracy:.2f} vs offset "
                                   f"{x.offset_accuracy:.2f} [CI {x.ci_low:.2f}-{x.ci_high:.2f}]"
                                   + (f", also passes {x.also_passes}" if isinstance(x.also_passes, str) else "")
                                   for _, x in rows.iterrows())
                bits.append(f"{label} ({r}): {spec[r]}" + (f" — {detail}" if detail else ""))
        pos = [f"{r}: {spec[r]}" for r in POSITIONAL if r in spec and spec[r].startswith("only positional")]
        if pos:
            bits.append("positional heads: " + ", ".join(pos))
        rnd = _read(d / "verdicts.csv")
        rnd = rnd[rnd.model == f"random:{model}"]
        if not rnd.empty:
            n_spec = int(rnd.verdict.str.startswith("specialist").sum())
            bits.append(f"random-init model: {n_spec} specialist(s)")
        parts.append(f"on {data}: " + "; ".join(bits) + f" ([summary]({_rel(run_dir, d / 'summary.md')}))")
    return found, parts


def verdict_c4(run_dir: Path) -> list[dict]:
    models = set()
    for d in _stage_dirs(run_dir, "heads"):
        v = _read(d / "verdicts.csv")
        if v is not None:
            models |= {m for m in v.model if not str(m).startswith("random:")}
    rows = []
    for model in sorted(models):
        found, parts = _heads_evidence(run_dir, model)
        has = {r: any(spec.get(r, "").startswith("specialist") for spec in found.values()) for r in C4_RELATIONS}
        positional = any(spec.get(r, "").startswith("only positional") for spec in found.values() for r in POSITIONAL)
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
                parts.append("ablating the top heads did not hurt agreement more than layer-matched random heads")
        else:
            verdict = "not supported"
        rows.append({"claim": "C4", "model": model, "verdict": verdict, "evidence": "; ".join(parts),
                     "tables": ", ".join(_rel(run_dir, d / "verdicts.csv") for d in _stage_dirs(run_dir, "heads"))})
    return rows


def _ablation_evidence(run_dir: Path, model: str) -> tuple[list[str], bool | None]:
    """Specialists vs layer-matched random heads (the ablate stage): does removing them hurt more?"""
    parts, ok = [], None
    for d in _stage_dirs(run_dir, "ablate"):
        summary, chosen = _read(d / "specialists_vs_random.csv"), _read(d / "specialists.csv")
        if summary is None or chosen is None or model not in set(summary.model):
            continue
        heads = ", ".join(f"{r.layer}.{r.head}" for r in chosen.itertuples())
        margin = summary[summary.metric == "margin"]
        acc = summary[summary.metric == "accuracy"]
        row = margin.iloc[0] if not margin.empty else summary.iloc[0]
        ok = bool(row.p_value < 0.05 and row.specialists_delta < row.random_mean_delta)
        text = (f"ablating the top-{len(chosen)} {summary.relation.iloc[0]} heads ({heads}, {row.method} ablation) "
                f"changes the agreement margin by {row.specialists_delta:+.3f} vs {row.random_mean_delta:+.3f} "
                f"for layer-matched random heads (effect size {row.effect_size:.2f} SD, p = {row.p_value:.3g}, "
                f"difference CI [{row.diff_ci_low:+.3f}, {row.diff_ci_high:+.3f}])")
        if not acc.empty:
            a = acc.iloc[0]
            text += f"; accuracy {a.specialists_delta:+.3f} vs {a.random_mean_delta:+.3f}"
        parts.append(text + f" ([table]({_rel(run_dir, d / 'specialists_vs_random.csv')}))")
    return parts, ok


def verdict_c5(run_dir: Path) -> list[dict]:
    rows, seen = [], set()
    for d in _stage_dirs(run_dir, "score"):
        f = _read(d / "minimal_pairs.csv")
        if f is None:
            continue
        seen.add(f.model.iloc[0])
    for model in sorted(seen):
        parts, all_above, any_above = [], True, False
        for d in _stage_dirs(run_dir, "score"):
            f = _read(d / "minimal_pairs.csv")
            if f is None or f.model.iloc[0] != model:
                continue
            f = f[f.paradigm != "all"]
            above = f.ci_low > 0.5
            all_above &= bool(above.all())
            any_above |= bool(above.any())
            worst = f.loc[f.accuracy.idxmin()]
            parts.append(f"{f.data.iloc[0]}: accuracy {f.accuracy.min():.3f}–{f.accuracy.max():.3f} over "
                         f"{len(f)} paradigms (lowest: {worst.paradigm} {worst.accuracy:.3f} "
                         f"[{worst.ci_low:.3f}, {worst.ci_high:.3f}]) ([table]({_rel(run_dir, d / 'minimal_pairs.csv')}))")
        verdict = "supported" if all_above else "partly supported" if any_above else "not supported"
        rows.append({"claim": "C5", "model": model, "verdict": verdict,
                     "evidence": "the model prefers the grammatical sentence of each minimal pair (sum of token "
                                 "log-probabilities, chance = 0.5): " + "; ".join(parts),
                     "tables": ", ".join(_rel(run_dir, d / "minimal_pairs.csv") for d in _stage_dirs(run_dir, "score"))})
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        for note in dict.fromkeys(json.loads(manifest.read_text()).get("skipped", [])):
            if note.startswith("score: ") and "language-model head" in note:
                model = note.split()[1]
                rows.append({"claim": "C5", "model": model, "verdict": "not testable in this model",
                             "evidence": f"{model} has no trained language-model head (MiniLM is a sentence "
                                         "encoder whose MLM head is random), so it assigns no meaningful "
                                         "probabilities to sentences", "tables": ""})
    return rows


VERDICT_FUNCTIONS = [verdict_c1, verdict_c2, verdict_c3, verdict_c4, verdict_c5]


def build_report(run_dir: Path) -> Path:
    """Write ``REPORT.md`` for a run folder from its CSVs and plots."""
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    name = run_dir.name
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        name = meta.get("name", name)
    rows = [r for fn in VERDICT_FUNCTIONS for r in fn(run_dir)]
    verdicts = pd.DataFrame(rows, columns=["claim", "model", "verdict", "evidence", "tables"])
    write_table(verdicts, run_dir / "verdicts.csv")
    if verdicts.empty:  # a run without claim analyses (e.g. probes only)
        lines = [f"# {name}", "", "Numbers come from the CSV tables linked below; `probekit report` rebuilds "
                 "this file from them.", ""]
    else:
        lines = [f"# {name}: claim verdicts", "",
                 "Each claim of the source document, measured on each model. Verdicts: " + ", ".join(VERDICTS) + ".",
                 "Numbers come from the CSV tables linked in each row; `probekit report` rebuilds this file from them.",
                 "", "## Claims", ""]
        lines += [f"- **{k}** — {v}" for k, v in CLAIMS.items()]
        lines += ["", "## Verdicts", "", markdown_table(verdicts.drop(columns="tables")), ""]
    if manifest.exists():
        skipped = json.loads(manifest.read_text()).get("skipped", [])
        if skipped:
            lines += ["Not run: " + "; ".join(dict.fromkeys(skipped)) + ".", ""]
    for claim in CLAIMS:
        sub = verdicts[verdicts.claim == claim]
        if sub.empty:
            continue
        lines += [f"## {claim}", "", f"> {CLAIMS[claim]}", ""]
        for r in sub.itertuples():
            lines += [f"- **{r.model}: {r.verdict}.** {r.evidence}. Tables: "
                      + ", ".join(f"[{t.strip()}]({t.strip()})" for t in r.tables.split(",") if t.strip())]
        lines.append("")
    probe_rows = list(_probe_summaries(run_dir))
    if probe_rows:
        lines += ["## Probes", "", "Per-layer linear probes (`probekit.analyses.probes.layers`), summarised over seeds "
                  "(`probe_summary`); the curves are in the plots below and every row in the linked tables.", ""]
        lines += [f"- **{r.model}** — {probe_sentence(r)}. Table: [{_rel(run_dir, p)}]({_rel(run_dir, p)})"
                  for p, r in probe_rows]
        lines.append("")
    pngs = sorted(run_dir.rglob("*.png"))
    if pngs:
        lines += ["## Plots", ""]
        lines += [f"![{_rel(run_dir, p)}]({_rel(run_dir, p)})" for p in pngs]
        lines.append("")
    tables = sorted(p for p in run_dir.rglob("*.csv") if p.parent != run_dir)
    if tables:
        lines += ["## All tables", ""] + [f"- [{_rel(run_dir, p)}]({_rel(run_dir, p)})" for p in tables] + [""]
    return atomic_write_text(run_dir / "REPORT.md", "\n".join(lines))


def compare_runs(run_dirs: list[Path], out: Path) -> Path:
    """One Markdown table of every run's verdicts, side by side."""
    frames = []
    for d in run_dirs:
        f = _read(Path(d) / "verdicts.csv")
        if f is not None:
            f.insert(0, "run", Path(d).name)
            frames.append(f)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "claim", "model", "verdict"])
    pivot = table.pivot_table(index=["claim", "model"], columns="run", values="verdict", aggfunc="first").reset_index()
    return atomic_write_text(out, "# Comparison of runs\n\n" + markdown_table(pivot))
