"""Exact activation patching of head outputs, clean -> corrupted (Vig et al. 2020; Meng et al. 2022).

Run the *corrupted* prompt and write one head's output from the *clean* prompt into it (all positions);
the metric is ``logit_diff = log p(good) - log p(bad)`` of the next token. ``sweep="tl"`` calls
`transformer_lens.patching.get_act_patch_attn_head_out_all_pos`; ``fast``/``naive`` use probekit's engine
with the `Patch` intervention (same numbers). See ``docs/methods/interventions.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from probekit.activations import hooks
from probekit.analyses.interventions.engine import DEFAULT_OPTIONS, EngineOptions, run_sweep
from probekit.analyses.interventions.heads import Head, parse_heads
from probekit.analyses.interventions.interventions import Patch, ZeroAblation
from probekit.analyses.interventions.plan import Entry, Plan
from probekit.analyses.scoring import as_pairs, check_scorable
from probekit.data.templates import number_swaps
from probekit.errors import ProbekitError


def _count(counter: dict[str, int], reason: str) -> None:
    counter[reason] = counter.get(reason, 0) + 1


@dataclass
class PatchPairs:
    """Clean and corrupted prompts of equal token length, and the two answer tokens.

    The metric is ``logit_diff = log p(good) - log p(bad)`` of the next token after the prompt
    (the first token of each answer word). ``dropped`` counts the pairs left out, by reason.
    """

    ids: list[str]
    clean: list[tuple[int, ...]]
    corrupted: list[tuple[int, ...]]
    good: list[int]
    bad: list[int]
    labels: list[dict] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int | None) -> PatchPairs:
        """The first ``n`` pairs (all for None)."""
        if n is None or n >= len(self):
            return self
        return PatchPairs(
            self.ids[:n],
            self.clean[:n],
            self.corrupted[:n],
            self.good[:n],
            self.bad[:n],
            self.labels[:n],
            dict(self.dropped),
        )

    @classmethod
    def from_strings(
        cls,
        model,
        clean: Sequence[str],
        corrupted: Sequence[str],
        good: Sequence[str],
        bad: Sequence[str],
        ids: Sequence[str] | None = None,
        labels: Sequence[dict] | None = None,
    ) -> PatchPairs:
        """Build from prompt strings (the sink token is prepended) and answer words (a leading space is
        added for space-prefix tokenizers). Pairs whose prompts differ in token length, or whose
        answers share their first token, are dropped and counted.

        Examples
        --------
        >>> import probekit as pk
        >>> model = pk.load_model("tiny-llama")
        >>> pp = PatchPairs.from_strings(model, ["The key"], ["The keys"], ["is"], ["are"])
        >>> len(pp), len(pp.clean[0]) == len(pp.corrupted[0])
        (1, True)
        """
        if not model.is_causal:
            check_scorable(model)
        if not (len(clean) == len(corrupted) == len(good) == len(bad)):
            raise ProbekitError("clean, corrupted, good and bad must have the same length")
        tok = model.tokenizer
        space = " " if model.space_prefix else ""
        ids = list(ids) if ids is not None else [f"p{i}" for i in range(len(clean))]
        labels = list(labels) if labels is not None else [{} for _ in clean]
        out = cls([], [], [], [], [], [], {})
        for pid, c, x, g, b, lab in zip(ids, clean, corrupted, good, bad, labels, strict=True):
            c_ids = (model.sink_token_id, *tok(c, add_special_tokens=False).input_ids)
            x_ids = (model.sink_token_id, *tok(x, add_special_tokens=False).input_ids)
            g_ids = tok(space + g, add_special_tokens=False).input_ids
            b_ids = tok(space + b, add_special_tokens=False).input_ids
            if len(c_ids) != len(x_ids):
                _count(out.dropped, "different token length")
                continue
            if not g_ids or not b_ids or g_ids[0] == b_ids[0]:
                _count(out.dropped, "answers share their first token")
                continue
            out.ids.append(pid)
            out.clean.append(c_ids)
            out.corrupted.append(x_ids)
            out.good.append(int(g_ids[0]))
            out.bad.append(int(b_ids[0]))
            out.labels.append(dict(lab))
        if not out.ids:
            raise ProbekitError(
                f"no usable clean/corrupted pairs (dropped: {out.dropped})",
                fix="clean and corrupted prompts need the same number of tokens",
            )
        return out


def make_patch_pairs(
    model, dataset, *, swap: dict[str, str] | None = None, max_pairs: int | None = None
) -> PatchPairs:
    """Clean/corrupted prompts from subject-verb agreement pairs (``template:agreement``).

    Clean prompt: the pair's prefix ("The key near the cabinets"); corrupted: the same with the subject
    (word ``subject_index``) in the other number ("The keys near the cabinets"); answers: the good and
    bad verb.

    Parameters
    ----------
    model : probekit.Model (causal).
    dataset : minimal pairs with ``subject_index`` (``template:agreement``).
    swap : maps each noun form to the other number (default: the template vocabulary).
    max_pairs : use the first N pairs.

    Returns
    -------
    PatchPairs
        Pairs without ``subject_index``, with a subject not in ``swap`` or with prompts of different
        token length are dropped (counted in ``dropped``).

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> pp = make_patch_pairs(model, pk.load_dataset("template:agreement?n=6"))
    >>> len(pp) + sum(pp.dropped.values())
    6
    """
    pairs = as_pairs(dataset)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    swap = swap if swap is not None else number_swaps()
    clean, corrupted, good, bad, ids, labels = [], [], [], [], [], []
    dropped: dict[str, int] = {}
    for p in pairs:
        words = p.prefix.split()
        si = p.subject_index
        if si is None or not 0 <= si < len(words):
            _count(dropped, "no subject_index")
            continue
        subj = words[si]
        other = swap.get(subj) or swap.get(subj.lower())
        if other is None:
            _count(dropped, "subject has no other-number form")
            continue
        corr = list(words)
        corr[si] = other
        clean.append(p.prefix)
        corrupted.append(" ".join(corr))
        good.append(p.good_word)
        bad.append(p.bad_word)
        ids.append(p.id)
        labels.append(
            {"paradigm": p.paradigm, **{k: v for k, v in p.labels.items() if isinstance(v, str | int)}}
        )
    if not ids:
        raise ProbekitError(
            f"no pair could be turned into clean/corrupted prompts (dropped: {dropped})",
            fix="use template:agreement or pairs with subject_index and nouns in the vocabulary",
        )
    out = PatchPairs.from_strings(model, clean, corrupted, good, bad, ids=ids, labels=labels)
    for k, v in dropped.items():
        out.dropped[k] = out.dropped.get(k, 0) + v
    return out


def as_patch_pairs(model, data, max_pairs: int | None = None) -> PatchPairs:
    """``data`` if it is `PatchPairs` (its first ``max_pairs``), else `make_patch_pairs` of it."""
    if isinstance(data, PatchPairs):
        return data.head(max_pairs)
    return make_patch_pairs(model, data, max_pairs=max_pairs)


def patch_plan(
    model,
    pp: PatchPairs,
    prompts: list[tuple[int, ...]],
    items: Sequence[int] | None = None,
    kind: str = "patch",
) -> Plan:
    """One item per pair ``i`` of ``items`` (default: all), on ``prompts[i]``, read at its last position:
    ``logit_diff`` of the pair's good and bad answer."""
    plan = Plan(model, ["logit_diff"], kind)
    for k, i in enumerate(range(len(prompts)) if items is None else items):
        seq = prompts[i]
        plan.seqs.append(seq)
        plan.item_rows.append([k])
        t = len(seq) - 1
        plan.entries.append(
            [Entry(k, t, pp.good[i], {"logit_diff": 1.0}), Entry(k, t, pp.bad[i], {"logit_diff": -1.0})]
        )
        plan.attn_terms.append([])
    return plan


def patch_heads(
    model,
    data,
    heads="all",
    *,
    sweep: str = "fast",
    max_pairs: int | None = None,
    batch_size: int | None = None,
    max_tokens: int = 2048,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
    options: EngineOptions = DEFAULT_OPTIONS,
) -> pd.DataFrame:
    """Exact activation patching of each head's output (all positions), clean -> corrupted.

    Parameters
    ----------
    model : probekit.Model (causal).
    data : a `PatchPairs` or a minimal-pair dataset (`make_patch_pairs`).
    heads : ``"all"`` or heads (`parse_heads`).
    sweep : ``"fast"``, ``"naive"`` or ``"tl"``
        (`transformer_lens.patching.get_act_patch_attn_head_out_all_pos`, prompts grouped by length so
        no padding is needed); all give the same numbers.
    max_pairs, batch_size, max_tokens, options : as in `probekit.analyses.interventions.ablate`.
    n_boot, seed : the bootstrap CI of ``delta`` over pairs.

    Returns
    -------
    pandas.DataFrame
        One row per head: ``model, layer, head, method="patch", metric="logit_diff", clean, corrupted,
        patched, delta (= patched - corrupted), recovered (= delta / (clean - corrupted)), delta_ci_low,
        delta_ci_high, n``; ``attrs``: ``seconds``, ``sweep``, ``dropped``.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> frame = patch_heads(model, pk.load_dataset("template:agreement?n=6"), "0.1,1.2", n_boot=10)
    >>> frame[["layer", "head", "method"]].values.tolist()
    [[0, 1, 'patch'], [1, 2, 'patch']]
    """
    pp = as_patch_pairs(model, data, max_pairs)
    hs = parse_heads(model, heads)
    t0 = time.perf_counter()
    if sweep == "tl":
        clean_m, corr_m, patched = _patch_tl(model, pp, hs, batch_size or 64)
    else:
        plan = patch_plan(model, pp, pp.corrupted)
        patch = Patch.from_clean(model, pp.clean, [layer for layer, _ in hs])
        res = run_sweep(
            model,
            plan,
            [[h] for h in hs],
            patch,
            sweep=sweep,
            batch_items=batch_size,
            max_tokens=max_tokens,
            progress=progress,
            options=options,
        )
        corr_m = res.clean["logit_diff"]
        patched = np.stack([a["logit_diff"] for a in res.ablated])
        clean_plan = patch_plan(model, pp, pp.clean)
        clean_m = run_sweep(model, clean_plan, [], ZeroAblation(), sweep="naive").clean["logit_diff"]
    seconds = time.perf_counter() - t0
    df = patch_frame(model, hs, clean_m, corr_m, patched, "patch", n_boot, seed)
    df.attrs.update({"seconds": seconds, "sweep": sweep, "dropped": dict(pp.dropped)})
    return df


def _tl_metric(good: torch.Tensor, bad: torch.Tensor):
    def metric(logits):
        lp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        rows = torch.arange(lp.shape[0])
        return lp[rows, good.to(lp.device)] - lp[rows, bad.to(lp.device)]

    return metric


def _patch_tl(model, pp: PatchPairs, hs: list[Head], batch_size: int):
    """`transformer_lens.patching` on groups of prompts of equal length: ``(clean, corrupted, patched)``."""
    from transformer_lens import patching

    n = len(pp)
    clean_m, corr_m = np.zeros(n), np.zeros(n)
    patched = np.zeros((len(hs), n))
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(pp.clean):
        groups.setdefault(len(seq), []).append(i)
    progress_bar = patching.tqdm  # TL draws a bar per sweep; silence it for the duration
    patching.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        for _, members in sorted(groups.items()):
            for s in range(0, len(members), batch_size):
                idx = members[s : s + batch_size]
                clean = torch.tensor([pp.clean[i] for i in idx], device=model.device)
                corr = torch.tensor([pp.corrupted[i] for i in idx], device=model.device)
                metric = _tl_metric(
                    torch.tensor([pp.good[i] for i in idx]), torch.tensor([pp.bad[i] for i in idx])
                )
                with torch.inference_mode():
                    clean_logits, cache = model.bridge.run_with_cache(clean, names_filter=hooks.is_z)
                    clean_m[idx] = metric(clean_logits).cpu().numpy()
                    corr_m[idx] = metric(model.bridge(corr)).cpu().numpy()
                    res = patching.get_act_patch_attn_head_out_all_pos(
                        model.bridge, corr, cache, metric, reduce="none"
                    )
                vals = res.values.cpu().numpy()  # type: ignore[attr-defined]  # [layer, head, batch]; a result object (reduce="none")
                for k, (layer, h) in enumerate(hs):
                    patched[k, idx] = vals[layer, h]
    finally:
        patching.tqdm = progress_bar
    return clean_m, corr_m, patched


def patch_frame(
    model, hs: list[Head], clean_m, corr_m, patched, method: str, n_boot: int, seed: int
) -> pd.DataFrame:
    """The patching frame (one row per head) from per-pair values: ``clean_m``, ``corr_m``  # [pair];
    ``patched``  # [head, pair]."""
    from probekit.stats import bootstrap_ci

    gap = float(np.mean(clean_m) - np.mean(corr_m))
    rows = []
    for k, (layer, h) in enumerate(hs):
        delta = patched[k] - corr_m
        lo, hi = bootstrap_ci(delta, n_boot=n_boot, seed=seed) if delta.size > 1 else (np.nan, np.nan)
        rows.append(
            {
                "model": model.name,
                "layer": layer,
                "head": h,
                "method": method,
                "metric": "logit_diff",
                "clean": float(np.mean(clean_m)),
                "corrupted": float(np.mean(corr_m)),
                "patched": float(np.mean(patched[k])),
                "delta": float(np.mean(delta)),
                "recovered": float(np.mean(delta)) / gap if gap != 0 else np.nan,
                "delta_ci_low": lo,
                "delta_ci_high": hi,
                "n": int(delta.size),
            }
        )
    return pd.DataFrame(rows)
