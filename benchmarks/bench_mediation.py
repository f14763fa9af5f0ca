"""Benchmark 6: exact per-head mediation patching — probekit's engine versus the `transformer_lens.patching`
per-head loop, same numbers.

Workload: the indirect effect of each head at all positions (its ``hook_z`` from the counterfactual run
written into the clean run, `probekit.analyses.mediation.head_effects`, effect ``all_positions``) on
subject-verb counterfactual pairs (`probekit.analyses.mediation.make_pairs`, ``agreement``:
``template:agreement`` prefixes and BLiMP two-prefix pairs), metric ``log p(correct) - log p(wrong)`` of
the next token. ``tl-loop`` is `transformer_lens.patching.generic_activation_patch` with the setter and
activation of ``get_act_patch_attn_head_out_all_pos`` and an ``index_df`` of the chosen heads (one
forward of every pair per head; prompts grouped by token length, no padding); ``probekit`` is the fast
engine (restart at the patched layer, patched copies stacked, prefix tries, unembedding only where read).
``max_abs_diff`` is the largest per-pair difference.

Sizing. The issue asks for 200 pairs and all 270 heads of SmolLM2; the TL loop at that size runs over an
hour on this machine's CPU (about 10 s per head for 186 pairs, measured), so the full mode asks for 200
pairs (186 remain after duplicate prompts and unequal token lengths are dropped) and patches the 9 heads
of layer 15 (the middle layer; all heads' mean is 14.5), one timed repetition unless ``--repeats`` says more
after a warm-up on 8 pairs: about 2.5 minutes in all. ``quick`` runs ``tiny-llama`` with 8 pairs and all
heads. The ratio is measured in one run (both variants interleaved). probekit's cost has a fixed part
(the counterfactual run, the clean and counterfactual metrics) that more heads amortise. Nothing is
asserted about speed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from probekit import bench


def _tl_effects(model, pp, heads) -> np.ndarray:
    """``[head, pair]``: the TL loop's patched metric (cf -> clean) for each head."""
    from transformer_lens import patching

    n = len(pp)
    out = np.zeros((len(heads), n))
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(pp.clean):
        groups.setdefault(len(seq), []).append(i)
    index = pd.DataFrame({"layer": [h[0] for h in heads], "head": [h[1] for h in heads]})
    progress_bar = patching.tqdm
    patching.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        for _, idx in sorted(groups.items()):
            clean = torch.tensor([pp.clean[i] for i in idx], device=model.device)
            cf = torch.tensor([pp.corrupted[i] for i in idx], device=model.device)
            good = torch.tensor([pp.good[i] for i in idx], device=model.device)
            bad = torch.tensor([pp.bad[i] for i in idx], device=model.device)

            def metric(logits, good=good, bad=bad):
                lp = torch.log_softmax(logits[:, -1].float(), dim=-1)
                rows = torch.arange(lp.shape[0])
                return lp[rows, good] - lp[rows, bad]

            with torch.inference_mode():
                _, cache = model.bridge.run_with_cache(cf, names_filter=lambda name: name.endswith("hook_z"))
                # get_act_patch_attn_head_out_all_pos with an index_df of the chosen heads
                res = patching.generic_activation_patch(
                    model.bridge,
                    clean,
                    cache,
                    metric,
                    patch_setter=patching.layer_head_vector_patch_setter,
                    activation_name="z",
                    index_df=index,
                    reduce="none",
                )
            vals = getattr(res, "values", res).cpu().numpy().reshape(len(heads), len(idx))
            out[:, idx] = vals
    finally:
        patching.tqdm = progress_bar
    return out


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    from probekit.analyses.mediation import head_effects, make_pairs
    from probekit.models import load_model

    ctx = ctx or bench.BenchContext(quick=quick)
    model_name = "tiny-llama" if quick else "smollm2-135m"
    model = load_model(model_name, device="cpu")
    pp = make_pairs(model, "agreement", n=8 if quick else 200)
    if quick:
        heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    else:
        heads = [(15, h) for h in range(model.n_heads)]
    warm = pp.head(8)
    results: dict[str, np.ndarray] = {}

    def probekit_run():
        res = head_effects(model, pp, range(len(pp)), [[h] for h in heads], effects=["all_positions"])
        results["probekit"] = res.patched["all_positions"]

    def tl_run():
        results["tl-loop"] = _tl_effects(model, pp, heads)

    ctx.say(f"mediation: {len(heads)} heads x {len(pp)} counterfactual pairs ({model_name})")
    warmup = {
        "tl-loop": lambda: _tl_effects(model, warm, heads),
        "probekit": lambda: head_effects(model, warm, range(len(warm)), [[h] for h in heads]),
    }
    repeats = ctx.repeats if ctx.repeats is not None else 1
    timed = pd.DataFrame(
        bench.interleaved(
            {"tl-loop": tl_run, "probekit": probekit_run},
            repeats,
            warmup=warmup,
            log=ctx.say,
            label="mediation",
        )
    )
    diff = float(np.abs(results["probekit"] - results["tl-loop"]).max())
    timed["speedup_vs_tl"] = (
        1.0 / bench.per_repeat_ratio(timed.assign(model=model_name), "tl-loop").to_numpy()
    )
    n_tokens = sum(len(s) for s in pp.clean)
    rows = [
        {
            "variant": r.variant,
            "repeat": r.repeat,
            "seconds": r.seconds,
            "speedup_vs_tl": r.speedup_vs_tl,
            "max_abs_diff": diff,
            "heads": len(heads),
            "n_items": len(pp),
            "n_tokens": n_tokens,
        }
        for r in timed.itertuples(index=False)
    ]
    out = bench.item_frame(rows, "mediation", model_name, ctx.threads)
    med = out.groupby("variant")["seconds"].median()
    ratio = med.get("tl-loop", np.nan) / med.get("probekit", np.nan)
    sizing = (
        "quick: tiny-llama, all heads"
        if quick
        else f"full: {len(pp)} pairs on the 9 heads of layer 15, {repeats} timed repetition(s) (the TL "
        "loop on all 270 heads would take over an hour on this CPU)"
    )
    out.attrs["notes"] = (
        f"Exact per-head mediation patching (counterfactual -> clean, all positions), {len(heads)} heads x "
        f"{len(pp)} pairs ({sizing}). probekit vs the transformer_lens.patching loop: median "
        f"{ratio:.2f}x faster, max |difference| over all per-pair values {diff:.2g} (required <= 1e-4)."
    )
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    bench.set_threads(1)
    frame = run(quick="--quick" in sys.argv)
    print(frame.to_string())
    print(frame.attrs["notes"])
