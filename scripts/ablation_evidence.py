"""Regenerate the evidence in results/ablation/ (SmolLM2-135M, CPU; about 30 minutes).

    .venv/bin/python scripts/ablation_evidence.py [stage ...]

Stages (default: all, in this order), each writing its own files into results/ablation/:

- ``score``: minimal-pair accuracy on every BLiMP paradigm in ../shared/data/blimp (all 1,000 pairs
  each) next to the published GPT-2 numbers -> ``blimp_smollm2.csv``, ``blimp_smollm2.md``; and on
  ``template:agreement?n=600`` by attractor type -> ``agreement_smollm2.csv``.
- ``sweep``: zero-ablation of every head (30 x 9) on the first 100 pairs of
  regular_plural_subject_verb_agreement_1 -> ``sweep_rp1_zero.csv``, ``sweep_rp1_zero.png`` (the margin's
  layers x heads heatmap).
- ``specialists``: top-5 "nsubj heads" by a simple criterion (mean word-level attention from the
  agreeing verb to its subject on 300 ``template:agreement_sentences`` with seed 1, via
  `probekit.activations.capture`), then `specialists_vs_random` on 120 ``template:agreement`` pairs (seed 0, a
  different draw of sentences) with 100 layer-matched random sets -> ``specialist_heads.csv``,
  ``specialists_vs_random.csv``, ``specialists_draws.csv``, plus the same 5 heads ablated jointly on
  the sentences (relation loss / attention knock-on) -> ``specialists_relation.csv``.
- ``patching``: exact activation patching (fast engine) vs attribution patching on clean/corrupted
  prompts from ``template:agreement?n=120`` (subject number swapped), all heads; TL's own
  ``get_act_patch_attn_head_out_all_pos`` on the first 12 prompts as an identity check ->
  ``patching_exact.csv``, ``patching_attribution.csv``, ``patching_compare.csv``.

Torch runs single-threaded (``torch.set_num_threads(1)``): on the shared 2-core machine this is both
faster and fairer to other jobs than 2 contended threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "results" / "ablation"  # where the evidence lives
BLIMP = REPO.parent / "shared" / "data" / "blimp"
RP1 = BLIMP / "regular_plural_subject_verb_agreement_1.jsonl"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_score(model) -> None:
    from probekit.analyses.scoring import published_table, score_pairs, summary_markdown
    from probekit.data import load_dataset
    from probekit.report import atomic_write_text, write_table

    t0 = time.time()
    data = load_dataset(f"blimp:{BLIMP}")
    summary = score_pairs(model, data, batch_size=64)
    table = published_table(summary)
    write_table(table, HERE / "blimp_smollm2.csv")
    atomic_write_text(HERE / "blimp_smollm2.md", summary_markdown(summary, model.name, f"blimp:{BLIMP.name}"))
    shown = table[["paradigm", "n", "accuracy", "ci_low", "ci_high", "published GPT-2"]]
    log(f"BLiMP scored in {time.time() - t0:.0f}s\n{shown}")
    t0 = time.time()
    agreement = load_dataset("template:agreement?n=600")
    summary = score_pairs(model, agreement, by="attractor", batch_size=64)
    write_table(summary, HERE / "agreement_smollm2.csv")
    shown = summary[["attractor", "n", "accuracy", "ci_low", "ci_high", "mean_margin"]]
    log(f"agreement scored in {time.time() - t0:.0f}s\n{shown}")


def stage_sweep(model) -> None:
    from probekit.analyses.interventions import ablate
    from probekit.data import load_dataset
    from probekit.report import write_table

    data = load_dataset(f"blimp:{RP1}", max_sentences=100)
    t0 = time.time()
    result = ablate(model, data, "all", method="zero", progress=False)
    df = result.frame
    write_table(df, HERE / "sweep_rp1_zero.csv")
    result.plot_heatmap(
        HERE / "sweep_rp1_zero.png",
        metric="margin",
        title=f"{model.name}: zero-ablation of each head, {RP1.stem} (100 pairs)",
    )
    worst = df[df.metric == "margin"].nsmallest(8, "delta")
    worst = worst[["heads", "clean", "ablated", "delta", "delta_ci_low", "delta_ci_high"]]
    log(f"sweep in {time.time() - t0:.0f}s ({result.forwards} forwards)\n{worst}")


def nsubj_heads(model, k: int = 5, n: int = 300, seed: int = 1) -> pd.DataFrame:
    """Mean word-level attention from the agreeing verb to its subject, per head (template sentences)."""
    from probekit.activations.capture import capture
    from probekit.data import load_dataset

    sents = load_dataset(f"template:agreement_sentences?n={n}", seed=seed)
    cap = capture(model, sents, attention=True, resid=(), cache=False, progress=False)
    scores = np.zeros((model.n_layers, model.n_heads))
    for i, s in enumerate(cap.sentences):
        att = cap.attention(i)  # [layer, head, from, to]
        scores += att[:, :, s.labels["verb_index"], s.labels["subject_index"]]
    scores /= len(cap.sentences)
    rows = [
        {"layer": layer, "head": h, "verb_to_subject_attention": scores[layer, h]}
        for layer in range(model.n_layers)
        for h in range(model.n_heads)
    ]
    df = pd.DataFrame(rows).sort_values("verb_to_subject_attention", ascending=False, kind="stable")
    df["rank"] = np.arange(1, len(df) + 1)
    return df.reset_index(drop=True)


def stage_specialists(model) -> None:
    from probekit.analyses.interventions import ablate_heads, specialists_vs_random
    from probekit.data import load_dataset
    from probekit.report import write_table

    t0 = time.time()
    ranking = nsubj_heads(model)
    write_table(ranking.head(20), HERE / "specialist_heads.csv")
    top = [(int(r.layer), int(r.head)) for r in ranking.head(5).itertuples()]
    log(f"top-5 verb->subject heads: {top} ({time.time() - t0:.0f}s)")
    t0 = time.time()
    pairs = load_dataset("template:agreement?n=120")
    result = specialists_vs_random(
        model, pairs, top, n_draws=100, seed=0, method="zero", metric=["accuracy", "margin"]
    )
    summary, draws = result.summary, result.draws
    write_table(summary, HERE / "specialists_vs_random.csv")
    write_table(draws, HERE / "specialists_draws.csv")
    log(f"specialists vs random in {time.time() - t0:.0f}s\n{summary.T}")
    t0 = time.time()
    sents = load_dataset("template:agreement_sentences?n=120")
    rel = pd.concat(
        [
            ablate_heads(
                model,
                sents,
                top,
                joint=True,
                relation="nsubj",
                metric=["relation_loss", "relation_attention"],
                preserve_patterns=pp,
            ).assign(preserve_patterns=pp)
            for pp in (False, True)
        ]
    )
    write_table(rel, HERE / "specialists_relation.csv")
    log(f"relation metrics in {time.time() - t0:.0f}s\n{rel}")


def stage_patching(model) -> None:
    from probekit.analyses.interventions import (
        attribution_patch,
        compare_patching,
        make_patch_pairs,
        patch_heads,
    )
    from probekit.data import load_dataset
    from probekit.report import write_table

    pp = make_patch_pairs(model, load_dataset("template:agreement?n=120"))
    log(f"{len(pp)} clean/corrupted prompt pairs (dropped: {pp.dropped})")
    t0 = time.process_time()
    exact = patch_heads(model, pp, "all", sweep="fast")
    exact.attrs["cpu_seconds"] = time.process_time() - t0
    t0 = time.process_time()
    attr = attribution_patch(model, pp, "all")
    attr.attrs["cpu_seconds"] = time.process_time() - t0
    write_table(exact, HERE / "patching_exact.csv")
    write_table(attr, HERE / "patching_attribution.csv")
    comp = compare_patching(exact, attr, k=10)
    comp["cpu_seconds_exact"] = exact.attrs["cpu_seconds"]
    comp["cpu_seconds_attribution"] = attr.attrs["cpu_seconds"]
    # identity check against transformer_lens.patching on a few prompts
    few = pp.head(12)
    t0 = time.process_time()
    tl = patch_heads(model, few, "all", sweep="tl")
    t_tl = time.process_time() - t0
    t0 = time.process_time()
    fast = patch_heads(model, few, "all", sweep="fast")
    t_fast = time.process_time() - t0
    comp["tl_check_prompts"] = len(few)
    comp["tl_vs_fast_max_abs_diff"] = float((tl["patched"] - fast["patched"]).abs().max())
    comp["tl_cpu_seconds"] = t_tl
    comp["fast_cpu_seconds_same_prompts"] = t_fast
    comp["n_prompts"] = len(pp)
    comp["dropped"] = json.dumps(pp.dropped)
    write_table(comp, HERE / "patching_compare.csv")
    log(f"patching\n{comp.T}\n{exact.nlargest(8, 'delta')[['layer', 'head', 'delta', 'recovered']]}")


STAGES = {
    "score": stage_score,
    "sweep": stage_sweep,
    "specialists": stage_specialists,
    "patching": stage_patching,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stages", nargs="*", help=f"stages to run, of {', '.join(STAGES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    import probekit as pk

    torch.set_num_threads(1)
    model = pk.load_model("smollm2-135m", device="cpu")
    for name in args.stages or list(STAGES):
        log(f"stage {name}")
        STAGES[name](model)


if __name__ == "__main__":
    main()
