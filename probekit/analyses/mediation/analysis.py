"""`mediate`: do the heads that attend along a relation carry its behaviour? Causal mediation per head.

For each relation (`probekit.analyses.mediation.pairs.RELATIONS`) the counterfactual pairs are split
into *selection* and *report* items (`probekit.data.dataset.holdout_mask`, by unordered prompt pair;
disjointness of the prompts is checked with `check_disjoint`). Heads are chosen on the selection items
(the top-k of an attribution
screen over all heads, Nanda 2023 / Syed et al. 2023; encoders: exact patching of all heads) and on
the heads analysis' attention scores; effects are reported on the report items only:

- per head: indirect effect at all positions, at the critical position, and path-specific from the
  source to the critical position (`probekit.analyses.mediation.effects`), with a percentile bootstrap
  CI over items, an exact/Monte-Carlo sign-flip p-value (at least ``2 * n_heads / ALPHA`` sign patterns,
  so its resolution is finer than Holm's smallest threshold) and Holm's correction over *all* heads of
  the model (heads not patched exactly enter the family with p = 1);
- per head set (patched together, all positions): the top-k attention specialists, the top-k causal
  heads of the screen, the top-k positional (previous-word / self) heads and layer-matched random sets;
  ``share = effect / total effect``;
- the question itself: Spearman between attention score and causal share over all heads, with a
  permutation null; top-k overlap; exact vs attribution agreement on the same items.

See ``docs/methods/mediation.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from probekit.analyses.interventions.attribution import attribution_patch, compare_patching
from probekit.analyses.interventions.heads import Head, matched_random_sets
from probekit.analyses.interventions.patching import PatchPairs
from probekit.analyses.interventions.specialists import check_disjoint
from probekit.analyses.mediation.effects import EFFECTS, ProbeReadout, head_effects, residuals
from probekit.analyses.mediation.pairs import RELATIONS, make_pairs, masked_agreement_pairs
from probekit.errors import ProbekitError

#: the level at which a head is named as carrying the effect (Holm-adjusted over all heads)
ALPHA = 0.05
#: A per-item change of the read-out within this fraction of its magnitude (at least of 1) is rounding;
#: a head with no larger change gets p = 1 (`beyond_rounding`, `_stats`).
READOUT_RESOLUTION = 1e-4
#: the head analysis' positional relations used as the control set
POSITIONAL = ("prev_word", "self")


@dataclass
class _Text:
    """A prompt as `check_disjoint` reads it."""

    text: str


@dataclass
class MediationResult:
    """`mediate`'s tables. ``summary``: one row per relation; ``effects``: one row per relation, effect
    and exactly patched head; ``sets``: one row per relation and head set; ``heads``: one row per
    relation and head (attention score, screen and all-heads causal share).

    Examples
    --------
    >>> import tempfile
    >>> empty = pd.DataFrame()
    >>> paths = MediationResult(empty, empty, empty, empty, title="nothing").write(tempfile.mkdtemp())
    >>> sorted(p.name for p in paths)[-2:]
    ['mediation_summary.tex', 'summary.md']
    """

    summary: pd.DataFrame
    effects: pd.DataFrame
    sets: pd.DataFrame
    heads: pd.DataFrame
    title: str = ""
    seconds: float = 0.0
    n_layers: int = 0
    n_heads: int = 0
    meta: dict = field(default_factory=dict)

    def write(self, folder) -> list[Path]:
        """``mediation_summary``, ``mediation_effects``, ``mediation_sets``, ``mediation_heads`` (CSV,
        Markdown, LaTeX), per relation ``mediation_heatmap_<relation>.png`` (causal share next to the
        attention score, layers x heads) and ``mediation_scatter.png``, and ``summary.md``."""
        from probekit.report import atomic_write_text, write_tables

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tables = {
            "mediation_summary": self.summary,
            "mediation_effects": self.effects,
            "mediation_sets": self.sets,
            "mediation_heads": self.heads,
        }
        write_tables(tables, folder)
        paths = [folder / f"{n}.{ext}" for n in tables for ext in ("csv", "md", "tex")]
        paths += _plots(self, folder)
        paths.append(atomic_write_text(folder / "summary.md", mediation_markdown(self.summary, self.title)))
        return paths


def _label(h: Head) -> str:
    """``L.H``, as `probekit.analyses.interventions.head_label` writes one head."""
    return f"{int(h[0])}.{int(h[1])}"


def _holm_all(p: dict[Head, float], n_layers: int, n_heads: int) -> dict[Head, float]:
    """Holm over every head of the model; heads without a p-value count as p = 1."""
    from probekit.stats import holm

    order = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    adj = holm(np.array([p.get(x, 1.0) for x in order]))
    return {x: float(a) for x, a in zip(order, adj, strict=True) if x in p}


def signflip_p(d: np.ndarray, n_perm: int, seed: int) -> float:
    """Two-sided sign-flip p-value of ``mean(d) = 0`` (`scipy.stats.permutation_test`, exact for
    small n).

    Examples
    --------
    >>> round(signflip_p(np.array([1.0, 2.0, 3.0]), 1000, 0), 3)   # 2 of the 8 sign patterns
    0.25
    """
    from scipy.stats import permutation_test

    d = np.asarray(d, dtype=float)
    if d.size < 2 or np.allclose(d, 0):
        return 1.0
    res = permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        n_resamples=n_perm,
        alternative="two-sided",
        vectorized=True,
        random_state=seed,
    )
    return float(res.pvalue)


def spearman_perm(a: np.ndarray, b: np.ndarray, n_perm: int, seed: int) -> tuple[float, float]:
    """Spearman's rho of ``a`` and ``b`` and its two-sided permutation p-value (``b`` shuffled,
    `probekit.stats.empirical_p` with the +1 correction).

    Examples
    --------
    >>> rho, p = spearman_perm(np.arange(6.0), np.arange(6.0), 999, 0)
    >>> rho, p <= 2 * 2 / 1000
    (1.0, True)
    """
    from scipy.stats import spearmanr

    from probekit.stats import empirical_p

    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    rho = float(spearmanr(a, b).statistic)
    rng = np.random.default_rng(seed)
    null = np.array([spearmanr(a, rng.permutation(b)).statistic for _ in range(n_perm)])
    return rho, empirical_p(abs(rho), np.abs(null), alternative="greater")


def attention_scores(heads: pd.DataFrame, relation: str, direction: str | None) -> pd.Series:
    """``(layer, head) -> attention``: the mean word-level attention along the relation's arcs over the
    heads analysis' dev and test halves (`probekit.analyses.interventions.select_heads`' definition)."""
    from probekit.analyses.interventions.specialists import select_heads

    fam = heads[(heads.relation == relation) & ((heads.direction == direction) if direction else True)]
    fam = fam[~fam.model.astype(str).str.startswith("random:")]
    if fam.empty:
        raise ProbekitError(
            f"the heads table has no rows for {relation}/{direction}",
            where="mediate",
            fix="score the heads on data with that relation (score_heads)",
        )
    # several data sets: average the attention over them
    sel = pd.concat(
        [select_heads(g, "attention", len(g)) for _, g in fam.groupby("data", sort=True)], ignore_index=True
    )
    return sel.groupby(["layer", "head"])["attention"].mean()


def _split(pp: PatchPairs, seed: int) -> tuple[list[int], list[int]]:
    from probekit.data.dataset import holdout_mask

    # the unit is the unordered {clean, counterfactual} prompt pair: "The man" -> "The men" and "The men"
    # -> "The man" are one unit, so no prompt is both a selection and a report prompt
    units = [repr(sorted((pp.clean[i], pp.corrupted[i]))) for i in range(len(pp))]
    report = holdout_mask(units, 0.5, seed, what="pair", where="mediate")
    return [i for i in range(len(pp)) if not report[i]], [i for i in range(len(pp)) if report[i]]


def _texts(model, pp: PatchPairs, items) -> list[_Text]:
    tok = model.tokenizer
    return [_Text(tok.decode(list(s))) for i in items for s in (pp.clean[i], pp.corrupted[i])]


def _swapped(pp: PatchPairs, items) -> PatchPairs:
    """Pairs for `attribution_patch`: its "corrupted" run is our clean prompt, its donor our
    counterfactual."""
    return PatchPairs(
        [pp.ids[i] for i in items],
        [pp.corrupted[i] for i in items],
        [pp.clean[i] for i in items],
        [pp.good[i] for i in items],
        [pp.bad[i] for i in items],
        [pp.labels[i] for i in items],
        dict(pp.dropped),
    )


def beyond_rounding(patched: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per item: did the read-out change by more than rounding? ``|patched - clean|`` above
    `READOUT_RESOLUTION` of the read-out's magnitude (at least 1).

    A read-out is a float32 logit difference (or probe logit) of order 1-10. Two forward passes that
    only split their sums differently (another batch, another CPU model) already move it by up to
    ~2e-5, so a head without any effect shows per-item "effects" of that size. A sign-flip test on them
    tests rounding: one such head (mean effect 3e-7) got p = 0.81 on one CPU model and 0.46 on
    another. `_stats` therefore gives p = 1 to a head none of whose items changes beyond rounding, and
    tests every other head on its raw differences, so no power is lost where an effect exists.

    Examples
    --------
    >>> beyond_rounding(np.array([5.00001, 5.5, -2.0]), np.array([5.0, 5.0, -2.00002])).tolist()
    [False, True, False]
    """
    patched, clean = np.asarray(patched, dtype=float), np.asarray(clean, dtype=float)
    floor = READOUT_RESOLUTION * np.maximum(1.0, np.maximum(np.abs(patched), np.abs(clean)))
    return np.abs(patched - clean) > floor


def _stats(patched: np.ndarray, clean: np.ndarray, te: float, n_boot: int, n_perm: int, seed: int) -> dict:
    """Mean effect ``patched - clean`` over items, its bootstrap CI, share of the total effect, and the
    sign-flip p-value (1 where no item changed beyond rounding, `beyond_rounding`)."""
    from probekit.stats import bootstrap_ci

    d = np.asarray(patched, dtype=float) - np.asarray(clean, dtype=float)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed) if d.size > 1 else (np.nan, np.nan)
    mean = float(np.mean(d))
    return {
        "n": int(d.size),
        "effect": mean,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "share": mean / te if te != 0 else np.nan,
        "p": signflip_p(d, n_perm, seed) if beyond_rounding(patched, clean).any() else 1.0,
    }


def mediate(
    model,
    relations=("agreement",),
    *,
    pairs: dict[str, PatchPairs] | None = None,
    heads: pd.DataFrame | None = None,
    heads_data=None,
    n_pairs: int = 60,
    top_k: int = 5,
    n_random: int = 10,
    exact: str = "topk",
    probe_layer: int | None = None,
    agreement=None,
    blimp=None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> MediationResult:
    """Causal mediation of each head's role (Vig et al. 2020; Finlayson et al. 2021).

    Parameters
    ----------
    model : probekit.Model. Causal LMs read ``log p(correct) - log p(wrong)`` of the next word;
        encoders read a logistic number probe (Elazar et al. 2021) trained on the masked verb's residual
        at ``probe_layer`` (default: the last block's output) on the selection items (agreement only).
    relations : names in `RELATIONS` (``agreement``, ``binding``, ``det_noun``).
    pairs : ``{relation: PatchPairs}`` to use instead of building them (`make_pairs`).
    heads : the heads analysis' table (`probekit.score_heads`) with the relations' UD labels and the
        positional ``prev_word``/``self``; default: scored here on ``heads_data``.
    heads_data : sentences to score heads on (default ``template:svo_adj?n=100`` with seed ``seed+1``);
        checked to share no sentence with the evaluated prompts.
    n_pairs : pairs per relation (half select, half report).
    top_k, n_random : size of each head set; layer-matched random sets.
    exact : ``"topk"`` (exact patching on the selected heads only) or ``"all"`` (every head).
    agreement, blimp : the agreement pairs dataset and BLiMP folder (`make_pairs`).
    n_boot, n_perm, seed : bootstrap replicates, permutations, seed.

    Returns
    -------
    MediationResult

    Examples
    --------
    >>> import probekit as pk
    >>> res = pk.mediate(pk.load_model("tiny-llama"), ["agreement"], n_pairs=8, top_k=2, n_random=2,
    ...                  n_boot=20, n_perm=20, heads_data=pk.load_dataset("template:svo_adj?n=8"))
    >>> sorted(set(res.effects.effect_type)) == sorted(EFFECTS), res.summary.relation.tolist()
    (True, ['agreement'])
    """
    t0 = time.perf_counter()
    relations = [relations] if isinstance(relations, str) else list(relations)
    for rel in relations:
        if rel not in RELATIONS:
            raise ProbekitError(
                f"unknown relation {rel!r}", where="mediate", fix=f"use {', '.join(RELATIONS)}"
            )
    if exact not in ("topk", "all"):
        raise ProbekitError(f"exact must be 'topk' or 'all', not {exact!r}", where="mediate")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ProbekitError(f"top_k must be a positive integer, got {top_k!r}", where="mediate")
    if not model.is_causal and relations != ["agreement"]:
        raise ProbekitError(
            f"{model.name} is an encoder: only the agreement relation has a probe read-out",
            where="mediate",
            fix="use relations=['agreement']",
        )
    if heads is None:
        from probekit.analyses.heads.score import score_heads
        from probekit.data import load_dataset

        heads_data = (
            heads_data if heads_data is not None else load_dataset("template:svo_adj?n=100", seed=seed + 1)
        )
        labels = sorted({RELATIONS[r][0] for r in relations})
        heads = score_heads(
            model,
            heads_data,
            relations=[*labels, *POSITIONAL],
            n_boot=100,
            n_perm=10,
            seed=seed,
            progress=progress,
        )
    all_heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    pos_scores = [attention_scores(heads, r, None) for r in POSITIONAL if r in set(heads.relation)]
    positional = pd.concat(pos_scores, axis=1).max(axis=1) if pos_scores else pd.Series(dtype=float)
    summaries, effect_rows, set_rows, head_rows = [], [], [], []
    for rel in relations:
        ud, direction = RELATIONS[rel]
        if pairs is not None and rel in pairs:
            pp = pairs[rel]
        elif model.is_causal:
            pp = make_pairs(model, rel, agreement=agreement, blimp=blimp, n=n_pairs, seed=seed)
        else:
            from probekit.data import load_dataset

            data = (
                agreement
                if agreement is not None
                else load_dataset(f"template:agreement?n={n_pairs}", seed=seed)
            )
            pp = masked_agreement_pairs(model, data)
        pp = pp.head(n_pairs)
        sel, rep = _split(pp, seed)
        if heads_data is not None:
            check_disjoint(heads_data, _texts(model, pp, rep), where=f"mediate({rel}): heads_data")
        check_disjoint(
            _texts(model, pp, sel), _texts(model, pp, rep), where=f"mediate({rel}): selection items"
        )
        if len(sel) < 2 or len(rep) < 2:
            raise ProbekitError(
                f"{rel}: too few pairs ({len(pp)}) to split", where="mediate", fix="raise n_pairs"
            )
        readout = None
        probe_acc = np.nan
        if not model.is_causal:
            from probekit.analyses.probes.estimators import LogisticProbe

            layer = model.n_layers if probe_layer is None else probe_layer
            y_sel = np.array([pp.labels[i]["label"] for i in sel])
            X = np.vstack([residuals(model, pp, sel, layer), residuals(model, pp, sel, layer, True)])
            probe = LogisticProbe().fit(X, np.concatenate([y_sel, 1 - y_sel]))
            y_rep = np.array([pp.labels[i]["label"] for i in rep])
            Xr = np.vstack([residuals(model, pp, rep, layer), residuals(model, pp, rep, layer, True)])
            probe_acc = float(np.mean(probe.predict(Xr) == np.concatenate([y_rep, 1 - y_rep])))
            readout = ProbeReadout(probe, layer)
        att = attention_scores(heads, ud, direction).reindex(all_heads)
        pos = positional.reindex(all_heads) if len(positional) else pd.Series(np.nan, index=all_heads)
        # -- screen on the selection items
        screen_exact = exact == "all" or not model.is_causal
        if screen_exact:
            scr = head_effects(
                model, pp, sel, [[h] for h in all_heads], effects=["all_positions"], readout=readout
            )
            te_sel = float(np.mean(scr.counterfactual - scr.clean))
            screen = (scr.patched["all_positions"] - scr.clean).mean(axis=1) / te_sel
        else:
            fr = attribution_patch(model, _swapped(pp, sel), "all", n_boot=10, seed=seed)
            te_sel = float(fr["clean"].iloc[0] - fr["corrupted"].iloc[0])
            screen = fr.set_index(["layer", "head"])["delta"].reindex(all_heads).to_numpy() / te_sel
        screen_s = pd.Series(screen, index=pd.MultiIndex.from_tuples(all_heads))
        k = min(top_k, len(all_heads))
        causal_top = [all_heads[j] for j in np.argsort(-screen, kind="stable")[:k]]
        attention_top = [tuple(x) for x in att.sort_values(ascending=False, kind="stable").index[:k]]
        positional_top = (
            [tuple(x) for x in pos.sort_values(ascending=False, kind="stable").index[:k]]
            if len(positional)
            else []
        )
        randoms = matched_random_sets(model, attention_top, n_random, seed=seed) if n_random else []
        roles: dict[Head, list[str]] = {}
        for name, hs in (
            ("attention_top", attention_top),
            ("causal_top", causal_top),
            ("positional", positional_top),
        ):
            for h in hs:
                roles.setdefault((int(h[0]), int(h[1])), []).append(name)
        exact_heads = all_heads if exact == "all" or not model.is_causal else sorted(roles)
        # -- exact effects on the report items
        res = head_effects(model, pp, rep, [[h] for h in exact_heads], readout=readout)
        d_te = res.counterfactual - res.clean
        te = float(np.mean(d_te))
        # the sign-flip tests need a resolution finer than Holm's smallest threshold over all heads
        n_flip = max(n_perm, int(np.ceil(2 * len(all_heads) / ALPHA)))
        te_stats = _stats(res.counterfactual, res.clean, te, n_boot, n_flip, seed)
        exact_share: dict[Head, float] = {}
        for effect in EFFECTS:
            p_of, rows = {}, []
            for j, h in enumerate(exact_heads):
                st = _stats(res.patched[effect][j], res.clean, te, n_boot, n_flip, seed)
                p_of[h] = st["p"]
                rows.append({"layer": h[0], "head": h[1], **st})
                if effect == "all_positions":
                    exact_share[h] = st["share"]
            adj = _holm_all(p_of, model.n_layers, model.n_heads)
            for row in rows:
                h = (row["layer"], row["head"])
                effect_rows.append(
                    {
                        "model": model.name,
                        "relation": rel,
                        "effect_type": effect,
                        "layer": h[0],
                        "head": h[1],
                        "roles": ";".join(roles.get(h, [])),
                        "attention": float(att.get(h, np.nan)),
                        **{c: row[c] for c in ("n", "effect", "ci_low", "ci_high", "share", "p")},
                        "p_holm": adj[h],
                    }
                )
        # -- all heads: the causal share over every head (attribution on the report items, or exact)
        if exact == "all" or not model.is_causal:
            share_all = np.array([exact_share[h] for h in all_heads])
            all_method = "exact"
            agree = {"attr_exact_spearman": np.nan, "attr_exact_topk": np.nan}
        else:
            fr = attribution_patch(model, _swapped(pp, rep), "all", n_boot=10, seed=seed)
            share_all = fr.set_index(["layer", "head"])["delta"].reindex(all_heads).to_numpy() / te
            all_method = "attribution"
            ex = pd.DataFrame(
                [{"layer": h[0], "head": h[1], "delta": exact_share[h] * te} for h in exact_heads]
            )
            if len(ex) >= 3:
                cmp = compare_patching(ex, fr, k=min(top_k, len(ex)))
                agree = {
                    "attr_exact_spearman": float(cmp["spearman"].iloc[0]),
                    "attr_exact_topk": float(cmp["topk_overlap"].iloc[0]),
                }
            else:
                agree = {"attr_exact_spearman": np.nan, "attr_exact_topk": np.nan}
        for j, h in enumerate(all_heads):
            head_rows.append(
                {
                    "model": model.name,
                    "relation": rel,
                    "layer": h[0],
                    "head": h[1],
                    "attention": float(att.iloc[j]),
                    "positional_score": float(pos.iloc[j]),
                    "screen_share": float(screen_s.iloc[j]),
                    "share": float(share_all[j]),
                    "share_method": all_method,
                }
            )
        rho, rho_p = spearman_perm(att.to_numpy(dtype=float), share_all, n_perm, seed)
        from probekit.stats import empirical_p, topk_overlap

        ok = ~np.isnan(att.to_numpy(dtype=float))
        overlap = topk_overlap(att.to_numpy(dtype=float)[ok], share_all[ok], k) if ok.sum() >= k else np.nan
        # -- head sets, patched together
        named = [("attention_top", attention_top), ("causal_top", causal_top)]
        if positional_top:
            named.append(("positional", positional_top))
        named += [(f"random_{d}", list(s)) for d, s in enumerate(randoms)]
        sres = head_effects(
            model, pp, rep, [list(s) for _, s in named], effects=["all_positions"], readout=readout
        )
        set_share = {}
        for j, (name, hs) in enumerate(named):
            st = _stats(sres.patched["all_positions"][j], sres.clean, te, n_boot, n_perm, seed)
            set_share[name] = st["share"]
            set_rows.append(
                {
                    "model": model.name,
                    "relation": rel,
                    "set": name,
                    "heads": ",".join(_label(h) for h in hs),
                    **{c: st[c] for c in ("n", "effect", "ci_low", "ci_high", "share", "p")},
                }
            )
        rand = np.array([v for n, v in set_share.items() if n.startswith("random_")])
        top1 = attention_top[0]
        carriers = [
            r
            for r in effect_rows
            if r["relation"] == rel
            and r["effect_type"] == "all_positions"
            and r["p_holm"] <= ALPHA
            and r["share"] > 0
        ]
        carriers.sort(key=lambda r: -r["share"])
        summaries.append(
            {
                "model": model.name,
                "relation": rel,
                "attention_relation": f"{ud}/{direction}",
                "readout": "logit_diff" if readout is None else f"probe@{readout.layer}",
                "probe_accuracy": probe_acc,
                "n_select": len(sel),
                "n_report": len(rep),
                "dropped": "; ".join(f"{k_}: {v}" for k_, v in sorted(pp.dropped.items())),
                "clean": float(np.mean(res.clean)),
                "counterfactual": float(np.mean(res.counterfactual)),
                "total_effect": te,
                "te_ci_low": te_stats["ci_low"],
                "te_ci_high": te_stats["ci_high"],
                "te_p": te_stats["p"],
                "top_attention_layer": int(top1[0]),
                "top_attention_head": int(top1[1]),
                "top_attention_share": exact_share.get(top1, np.nan),
                "share_attention_top": set_share["attention_top"],
                "share_causal_top": set_share["causal_top"],
                "share_positional": set_share.get("positional", np.nan),
                "share_random_mean": float(rand.mean()) if rand.size else np.nan,
                "share_random_sd": float(rand.std(ddof=1)) if rand.size > 1 else np.nan,
                "p_attention_vs_random": empirical_p(set_share["attention_top"], rand, "greater")
                if rand.size
                else np.nan,
                "attention_heads": ",".join(_label(h) for h in attention_top),
                "causal_heads": ",".join(_label((r["layer"], r["head"])) for r in carriers),
                "spearman": rho,
                "spearman_p_perm": rho_p,
                "share_method": all_method,
                "k": k,
                "topk_overlap": overlap,
                "topk_chance": k / len(all_heads),
                **agree,
            }
        )
    return MediationResult(
        pd.DataFrame(summaries),
        pd.DataFrame(effect_rows),
        pd.DataFrame(set_rows),
        pd.DataFrame(head_rows),
        title=f"{model.name}: causal mediation of head roles",
        seconds=time.perf_counter() - t0,
        n_layers=model.n_layers,
        n_heads=model.n_heads,
    )


def _grid(frame: pd.DataFrame, column: str, n_layers: int, n_heads: int) -> np.ndarray:
    grid = np.full((n_layers, n_heads), np.nan)
    grid[frame["layer"].to_numpy(dtype=int), frame["head"].to_numpy(dtype=int)] = frame[column].to_numpy(
        float
    )
    return grid


def _plots(res: MediationResult, folder: Path) -> list[Path]:
    from probekit.report import HeadPanel, plot_head_heatmap, pyplot, save_fig

    paths: list[Path] = []
    if res.heads.empty:
        return paths
    n_layers = res.n_layers or int(res.heads["layer"].max()) + 1
    n_heads = res.n_heads or int(res.heads["head"].max()) + 1
    rels = list(dict.fromkeys(res.heads.relation))
    for rel in rels:
        h = res.heads[res.heads.relation == rel]
        method = h.share_method.iloc[0]
        paths.append(
            plot_head_heatmap(
                [
                    HeadPanel(
                        _grid(h, "share", n_layers, n_heads), f"{rel}: share of total effect ({method})"
                    ),
                    HeadPanel(_grid(h, "attention", n_layers, n_heads), "attention score"),
                ],
                folder / f"mediation_heatmap_{rel}.png",
                shared_colorbar=False,
                suptitle=res.title,
            )
        )
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rels), figsize=(4 * len(rels), 3.4), squeeze=False)
    for ax, rel in zip(axes[0], rels, strict=True):
        h = res.heads[res.heads.relation == rel]
        ax.scatter(h.attention, h.share, s=10, alpha=0.7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("attention score")
        ax.set_ylabel("share of total effect")
        ax.set_title(rel)
    fig.suptitle(res.title)
    fig.tight_layout()
    paths.append(save_fig(fig, folder / "mediation_scatter.png"))
    return paths


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def mediation_markdown(summary: pd.DataFrame, title: str = "") -> str:
    """``summary.md``: one paragraph per relation, every number from the summary table.

    Examples
    --------
    >>> print(mediation_markdown(pd.DataFrame()).strip())
    # Causal mediation of head roles
    <BLANKLINE>
    No relation was analysed.
    """
    lines = [f"# {title or 'Causal mediation of head roles'}", ""]
    if summary.empty:
        return "\n".join([*lines, "No relation was analysed.", ""])
    for rec in summary.to_dict("records"):
        r = SimpleNamespace(**{str(k): v for k, v in rec.items()})
        lines.append(f"## {r.relation} ({r.readout}; attention from {r.attention_relation})")
        lines.append("")
        lines.append(
            f"- items: {r.n_select} selection, {r.n_report} report (disjoint); dropped: {r.dropped or 'none'}"
        )
        lines.append(
            f"- total effect {_fmt(r.total_effect, '+.3f')} [{_fmt(r.te_ci_low, '+.3f')}, "
            f"{_fmt(r.te_ci_high, '+.3f')}] (clean {_fmt(r.clean, '.3f')}, counterfactual "
            f"{_fmt(r.counterfactual, '.3f')}; sign-flip p {_fmt(r.te_p, '.3g')})"
        )
        lines.append(
            f"- top attention head {r.top_attention_layer}.{r.top_attention_head} carries "
            f"{_fmt(100 * r.top_attention_share, '.1f')}% of the total effect (all positions); "
            f"the top-{r.k} attention heads together "
            f"{_fmt(100 * r.share_attention_top, '.1f')}%, the top-{r.k} causal heads of the screen "
            f"{_fmt(100 * r.share_causal_top, '.1f')}%, the positional heads "
            f"{_fmt(100 * r.share_positional, '.1f')}%, "
            f"layer-matched random heads {_fmt(100 * r.share_random_mean, '.1f')}% on average "
            f"(p attention > random {_fmt(r.p_attention_vs_random, '.3g')})"
        )
        lines.append(
            f"- heads with a Holm-significant positive effect (all heads, alpha {ALPHA}): "
            f"{r.causal_heads or 'none'}"
        )
        lines.append(
            f"- attention score vs causal share over all heads ({r.share_method}): Spearman "
            f"{_fmt(r.spearman, '+.2f')} (permutation p {_fmt(r.spearman_p_perm, '.3g')}); "
            f"top-{r.k} overlap "
            f"{_fmt(r.topk_overlap)} (chance {_fmt(r.topk_chance)})"
        )
        if not np.isnan(r.attr_exact_spearman):
            lines.append(
                f"- attribution vs exact patching on the same items: Spearman "
                f"{_fmt(r.attr_exact_spearman, '+.2f')}, "
                f"top-{r.k} overlap {_fmt(r.attr_exact_topk)}"
            )
        if not np.isnan(r.probe_accuracy):
            lines.append(f"- number probe accuracy on the report items: {_fmt(r.probe_accuracy, '.3f')}")
        lines.append("")
    return "\n".join(lines)
