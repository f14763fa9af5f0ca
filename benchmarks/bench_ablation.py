"""Benchmark 3: the head-ablation sweep and head patching — naive loops versus probekit's fast engine.

Two workloads on the same model (``smollm2-135m``; ``tiny-llama`` with ``quick``):

- **sweep**: zero-ablate heads one at a time on the first pairs of BLiMP
  ``regular_plural_subject_verb_agreement_1`` (`SWEEP_PAIRS` pairs; 4 with ``quick``) and read accuracy,
  margin and sentence log-prob difference. ``naive`` is the reference loop (one ``run_with_hooks`` forward per
  head over the whole batch, the way ``transformer_lens.patching`` works); ``fast`` is
  `probekit.analyses.interventions.engine`'s engine (restart at the ablated layer with earlier blocks
  skipped, ablated copies stacked along the batch, sequences cut after the last scored token, prefix-trie
  packing, unembedding only where read); ``fast-unpacked`` is the same engine without prefix-trie packing
  (``EngineOptions(pack=False)``), whose values equal the loop's bit for bit where packing's do not (a packed
  position's softmax and attention-weighted sum run over keys with the other branch's masked keys in
  between, so float32 sums associate differently). Heads: all 9 heads of every `LAYER_STEP`-th layer (45 of
  270; mean layer 12, slightly *harder* for the fast engine than all heads, mean 14.5); all heads with
  ``quick``. The
  layer groups are interleaved (`probekit.bench.interleaved_chunks`) so load from other jobs hits both
  alike. ``max_abs_diff`` is the largest per-pair difference between the two, over all metrics.
  With ``PROBEKIT_BENCH_ABLATION_ALL=1`` each fast-engine optimisation is also switched off once
  (variants ``fast-no-*``, one repetition, ``options=EngineOptions(<name>=False)``) to show what it buys.
  Goal (issue 19): the exact sweep at least `GOAL_SPEEDUP` × faster than the per-head loop with every value
  within `GOAL_DIFF`; the notes say MET or NOT MET from the measurement. **Work**: each sweep variant runs
  once more, untimed, under ``torch.utils.flop_counter.FlopCounterMode``, which counts the matmul FLOPs
  (linear layers, attention, unembedding) a variant executes; the loop's count over a variant's is the
  speed-up that variant would get from doing less arithmetic alone, at equal FLOP rate.
- **patching**: exact activation patching of each head, clean -> corrupted (subject number swapped,
  ``template:agreement``; `PATCH_PAIRS` prompt pairs, 6 with ``quick``): ``tl-exact``
  (`transformer_lens.patching.get_act_patch_attn_head_out_all_pos`), ``fast-exact`` (probekit's engine,
  same numbers) and ``attribution`` (2 forwards + 1 backward for all heads). ``spearman`` and
  ``topk_overlap`` (k=10, by |effect|) compare attribution with exact patching.

Ratios (``speedup_vs_naive``, ``speedup_vs_tl``) are per repeat; the harness reports medians. Nothing is
asserted about speed. The full mode was cut (from 16 pairs, 90 heads and the ``fast-no-*`` runs: 29 min) to
fit about 10 minutes on 2 cores; the ratios keep their meaning (same engine, same kind of workload).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pandas as pd

from probekit import bench

BLIMP_RP1 = bench.EWT_DEV.parents[1] / "blimp" / "regular_plural_subject_verb_agreement_1.jsonl"
SWEEP_PAIRS = 8
PATCH_PAIRS = 8
LAYER_STEP = 6
#: issue 19: exact sweep / per-head loop speed-up, and the largest allowed difference
GOAL_SPEEDUP = 6.0
GOAL_DIFF = 1e-4
SWEEP_VARIANTS = ("naive", "fast", "fast-unpacked")


def _gflop(fn) -> float:
    """Matmul GFLOPs ``fn`` executes (`torch.utils.flop_counter`; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def _heads(model, quick: bool) -> list[tuple[int, int]]:
    layers = range(model.n_layers) if quick else range(0, model.n_layers, LAYER_STEP)
    return [(layer, h) for layer in layers for h in range(model.n_heads)]


def _pairs(n: int):
    from probekit.data import load_dataset

    if BLIMP_RP1.exists():
        return load_dataset(f"blimp:{BLIMP_RP1}", max_sentences=n), f"blimp:{BLIMP_RP1.name}"
    return load_dataset(f"template:agreement?n={n}"), "template:agreement"


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    import probekit.analyses.interventions as A  # noqa: N812 (the module as a short name)
    from probekit.analyses.scoring import encode_pair
    from probekit.models import load_model

    ctx = ctx or bench.BenchContext(quick=quick)
    model_name = "tiny-llama" if quick else "smollm2-135m"
    model = load_model(model_name, device="cpu")
    repeats = ctx.n_repeats
    rows: list[dict] = []

    # ---- sweep: naive vs fast, interleaved per layer group
    data, source = _pairs(4 if quick else SWEEP_PAIRS)
    heads = _heads(model, quick)
    groups = [
        [h for h in heads if h[0] in set(chunk)]
        for chunk in np.array_split(sorted({h[0] for h in heads}), 1 if quick else 3)
    ]
    n_tokens = sum(len(e.good_ids) + len(e.bad_ids) for e in (encode_pair(model, p) for p in data))
    results: dict[tuple[str, int], dict] = {}

    def sweep_of(name: str, group):
        options = A.EngineOptions(pack=False) if name == "fast-unpacked" else A.EngineOptions()
        sweep = "naive" if name == "naive" else "fast"
        return A.ablate_head_sets(model, data, [[h] for h in group], sweep=sweep, options=options).ablated

    def variant(name: str, k: int, group):
        def go():
            results[(name, k)] = sweep_of(name, group)

        return go

    ctx.say(f"ablation: sweep of {len(heads)} heads on {len(data)} pairs of {source} ({model_name})")
    timed = bench.interleaved_chunks(
        [{name: variant(name, k, g) for name in SWEEP_VARIANTS} for k, g in enumerate(groups)],
        repeats,
        log=ctx.say,
        label="ablation sweep",
    )
    diffs = {
        name: max(
            float(np.abs(results[(name, k)][m] - results[("naive", k)][m]).max())
            for k in range(len(groups))
            for m in results[(name, k)]
        )
        for name in SWEEP_VARIANTS
    }
    gflop = {name: _gflop(lambda name=name: [sweep_of(name, g) for g in groups]) for name in SWEEP_VARIANTS}
    ctx.say("ablation: matmul GFLOP per sweep " + ", ".join(f"{k} {v:.0f}" for k, v in gflop.items()))
    sweep = pd.DataFrame(timed)
    sweep["speedup_vs_naive"] = (
        1.0 / bench.per_repeat_ratio(sweep.assign(model=model_name), "naive").to_numpy()
    )
    for r in sweep.itertuples(index=False):
        rows.append(
            {
                "variant": r.variant,
                "repeat": r.repeat,
                "seconds": r.seconds,
                "workload": "sweep",
                "speedup_vs_naive": r.speedup_vs_naive,
                "max_abs_diff": diffs[r.variant],
                "gflop": gflop[r.variant],
                "work_ratio_vs_naive": gflop["naive"] / gflop[r.variant],
                "heads": len(heads),
                "n_items": len(data),
                "n_tokens": n_tokens,
            }
        )
    if not quick and os.environ.get("PROBEKIT_BENCH_ABLATION_ALL"):  # what each optimisation buys
        for opt in (f.name for f in dataclasses.fields(A.EngineOptions)):
            options = A.EngineOptions(**{opt: False})
            start = time.perf_counter()
            for g in groups:
                A.ablate_head_sets(model, data, [[h] for h in g], sweep="fast", options=options)
            seconds = time.perf_counter() - start
            naive_median = sweep[sweep.variant == "naive"]["seconds"].median()
            rows.append(
                {
                    "variant": f"fast-no-{opt.replace('_', '-')}",
                    "repeat": 0,
                    "seconds": seconds,
                    "workload": "sweep",
                    "speedup_vs_naive": naive_median / seconds,
                    "heads": len(heads),
                    "n_items": len(data),
                    "n_tokens": n_tokens,
                }
            )
            ctx.say(f"ablation sweep without {opt}: {seconds:.1f} s")

    # ---- patching: TL exact vs fast exact vs attribution
    from probekit.data import load_dataset

    pp = A.make_patch_pairs(model, load_dataset(f"template:agreement?n={6 if quick else PATCH_PAIRS}"))
    frames: dict[str, pd.DataFrame] = {}

    def patch(name: str):
        def go():
            if name == "attribution":
                frames[name] = A.attribution_patch(model, pp, heads, n_boot=10)
            else:
                frames[name] = A.patch_heads(
                    model, pp, heads, sweep="tl" if name == "tl-exact" else "fast", n_boot=10
                )

        return go

    ctx.say(f"ablation: patching {len(heads)} heads on {len(pp)} prompt pairs")
    timed = pd.DataFrame(
        bench.interleaved(
            {n: patch(n) for n in ("tl-exact", "fast-exact", "attribution")},
            repeats,
            log=ctx.say,
            label="patching",
        )
    )
    timed["speedup_vs_tl"] = (
        1.0 / bench.per_repeat_ratio(timed.assign(model=model_name), "tl-exact").to_numpy()
    )
    comp = A.compare_patching(frames["fast-exact"], frames["attribution"], k=min(10, len(heads)))
    tl_diff = float((frames["tl-exact"]["patched"] - frames["fast-exact"]["patched"]).abs().max())
    for r in timed.itertuples(index=False):
        rows.append(
            {
                "variant": r.variant,
                "repeat": r.repeat,
                "seconds": r.seconds,
                "workload": "patching",
                "speedup_vs_tl": r.speedup_vs_tl,
                "max_abs_diff": tl_diff if r.variant == "fast-exact" else np.nan,
                "spearman": comp["spearman"].iloc[0] if r.variant == "attribution" else np.nan,
                "topk_overlap": comp["topk_overlap"].iloc[0] if r.variant == "attribution" else np.nan,
                "heads": len(heads),
                "n_items": len(pp),
                "n_tokens": sum(len(x) for x in pp.corrupted),
            }
        )

    out = bench.item_frame(rows, "ablation", model_name, ctx.threads)
    med = out.groupby("variant")["seconds"].median()
    tl_vs_fast = med.get("tl-exact", np.nan) / med.get("fast-exact", np.nan)
    tl_vs_attribution = med.get("tl-exact", np.nan) / med.get("attribution", np.nan)
    sweep_rows = out[out.workload == "sweep"]
    speedups = {
        name: (med.get("naive", np.nan) / med.get(name, np.nan), sweep_rows[sweep_rows.variant == name])
        for name in SWEEP_VARIANTS[1:]
    }
    met = [n for n, (x, _) in speedups.items() if x >= GOAL_SPEEDUP and diffs[n] <= GOAL_DIFF]
    verdict = f"**MET** ({', '.join(met)})" if met else "**NOT MET**"
    recomputed = float(np.mean([(model.n_layers - layer) / model.n_layers for layer, _ in heads]))
    notes = [
        f"Sweep: {len(heads)} heads x {len(data)} pairs of `{source}`, zero ablation, metrics "
        "accuracy/margin/logprob_diff. "
        + "; ".join(
            f"{name} vs naive: median {x:.2f}x faster (per repetition {g.speedup_vs_naive.min():.2f}-"
            f"{g.speedup_vs_naive.max():.2f}x), max |difference| over all per-pair values {diffs[name]:.2g}"
            for name, (x, g) in speedups.items()
        )
        + f". Goal (at least {GOAL_SPEEDUP:.0f}x with every value within {GOAL_DIFF:g}): {verdict}. "
        "Before (previous report, same workload): fast 2.69x, max |difference| 2.3e-4.",
        "Why not 6x: the arithmetic. Matmul work per sweep (FLOP counter): naive "
        f"{gflop['naive']:.0f} GFLOP, fast {gflop['fast']:.0f} ({gflop['naive'] / gflop['fast']:.2f}x less), "
        f"fast-unpacked {gflop['fast-unpacked']:.0f} ({gflop['naive'] / gflop['fast-unpacked']:.2f}x less); "
        "the measured speed-ups are "
        + ", ".join(f"{x / (gflop['naive'] / gflop[name]):.2f}x" for name, (x, _) in speedups.items())
        + " those work ratios (a ratio above 1: the stacked copies' larger matrices ran at a higher FLOP "
        "rate than the loop's). An exact ablation of a head of layer l must recompute every position of "
        f"blocks l..{model.n_layers - 1} (all of them see the changed output), on average "
        f"{recomputed:.0%} of the blocks for these heads, so restarting alone saves at most "
        f"{1 / recomputed:.2f}x; packing computes a pair's shared prefix "
        "once and the unembedding runs only at scored positions. 6x would need a sixth of the loop's "
        "arithmetic; for whole-sentence metrics over short pairs, whose tokens nearly all differ after "
        "the first few, no exact recomputation gets there on this machine's one thread. Exactness: "
        "packing is the only optimisation that changes a value (without it the engine equals the loop "
        "bit for bit); a packed position's softmax and attention-weighted sum run over keys with the "
        "other branch's masked keys in between, so float32 sums associate differently, and a sentence "
        "log-prob sums a dozen token log-probs.",
        f"Patching: {len(heads)} heads x {len(pp)} prompt pairs. Fast exact vs TL exact: "
        f"{tl_vs_fast:.2f}x (max |difference| {tl_diff:.2g}); "
        f"attribution vs TL exact: {tl_vs_attribution:.1f}x; attribution "
        f"vs exact: Spearman {comp['spearman'].iloc[0]:.3f}, top-{comp['k'].iloc[0]} overlap "
        f"{comp['topk_overlap'].iloc[0]:.2f} (chance {comp['chance_overlap'].iloc[0]:.2f}).",
    ]
    offs = out[out.variant.str.startswith("fast-no-")]
    if len(offs):
        notes.append(
            "Without one optimisation (one repetition each): "
            + ", ".join(f"{r.variant[8:]} {r.speedup_vs_naive:.2f}x" for r in offs.itertuples())
            + "."
        )
    out.attrs["notes"] = "\n\n".join(notes)
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    bench.set_threads(1)
    frame = run(quick="--quick" in sys.argv)
    print(frame.to_string())
    print(frame.attrs["notes"])
