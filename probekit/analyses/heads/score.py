"""Head specialization: does one attention head handle one relation (subject-verb, adjective-noun, ...)?

The claim "one head handles subject-verb relations, another adjective-noun, another positions" is
measured per (layer, head, relation, direction) on word-level attention and only accepted when it
beats the baselines a sceptical reviewer would ask for.

Command line::

    probekit heads --model smollm2-135m --data ud:../shared/data/ud-en-ewt/en_ewt-ud-dev.conllu \\
        --random-baseline --out results/heads/smollm2-135m__ewt-dev
    probekit heads --model minilm-l6 --data template:svo_adj --relations nsubj,amod,det,obj --out runs/h

Python::

    import probekit as pk
    model, data = pk.load_model("minilm-l6"), pk.load_dataset("template:svo_adj")
    heads = pk.score_heads(model, data)              # tidy frame, one row per relation/direction/layer/head
    res = analyze_heads(model, data, random_baseline=True)   # everything: .heads .baselines .verdicts
    res.write("runs/heads")                          # heads.csv, baselines.csv, verdicts.csv, summary.md, PNGs

Scores (Clark et al. 2019, "What Does BERT Look At?")
-----------------------------------------------------
Word attention comes from `probekit.activations.capture` (to = sum over a word's tokens, from = mean; the sink /
[CLS] / [SEP] columns are dropped, so a row sums to 1 - special_mass). A *relation instance* is a
(source word, gold partner) pair from `probekit.data.relation_instances`.

- ``accuracy``: share of instances where the source's most-attended **other** word (argmax over the
  visible words, self excluded) is the gold partner. For the ``self`` relation the argmax *includes*
  the source word (otherwise it could never be right). Ties go to the leftmost word.
- ``attention_mass``: mean attention weight (not renormalised) the source sends to its gold partner.
- Visibility: an instance is scored only when its partner is visible; in a causal model the partner
  must be at or before the source (``dep_to_head`` only when the head comes earlier, ``next_word``
  never). ``first_word`` from the first word itself is its own partner and is dropped (self excluded).
  ``counts`` reports, per relation and direction, all / visible / dev / test instance counts.

Relations: word-pair relations (default the `CORE_RELATIONS` present in the data: nsubj, obj, amod,
det) in both directions, ``dep_to_head`` (the dependent attends to its head) and ``head_to_dep``, and the
positional ones ``prev_word``, ``next_word``, ``self``, ``first_word`` (direction ``positional``).

Split, baselines and statistics (all on the *same* instances, seeded by ``seed``)
-------------------------------------------------------------------------------
- **Split**: `Dataset.split` by sentence (``test_size=0.5``). The best head of every
  (relation, direction) is chosen on dev (highest dev accuracy, ties by dev attention mass, then by
  lowest layer/head) and *reported on test*; no selection happens on test.
- **Best fixed offset** (Clark et al.): always predict the word k places away; k is the most frequent
  gold offset on dev (ties: smallest |k|, then the negative one), its accuracy is the share of test
  instances at offset k. Restricted to the visible instances, so in a causal model k <= 0.
- **Chance**: ``chance_accuracy`` (in ``baselines``) is the expected test accuracy of picking a uniformly
  random visible word, the mean of 1 / #candidates.
- **Random-init model** (``random_baseline=True``): ``load_model("random:<name>")`` is scored the same
  way (its own dev-selected head reported on test), in ``heads``/``verdicts`` under its own model name
  and as ``random_*`` columns in ``baselines``.
- **Permutation null for "best of all heads"** (dev split): every instance's gold partner is replaced by
  a uniformly random word among the source's visible candidates (a shuffle of its candidate list;
  self excluded unless the relation is ``self``), all heads are scored and the maximum over heads is
  kept; ``n_perm`` times. ``p_perm`` = (1 + #null maxima >= observed best dev accuracy) / (1 + n_perm)
  (`probekit.stats.empirical_p`). Per head, ``dev_p_maxT`` is the same max-statistic p-value of that
  head's dev accuracy (Westfall-Young single-step maxT: family-wise over heads).
- **Bootstrap CIs**: 95% percentile cluster bootstrap over *sentences* (``n_boot`` resamples, shared
  across heads) for every head's test accuracy: `probekit.stats.cluster_bootstrap_ci`, which draws the
  same resamples as `probekit.stats.bootstrap_ci` with ``groups`` (vectorised over heads).
- **Per-head test vs the offset baseline** (test split): paired, clustered sign-flip test. With
  d_s = sum over sentence s of (head correct - offset correct), under H0 (head and offset predictions
  exchangeable within each sentence) the signs of d_s are symmetric; ``p_offset`` is the one-sided
  normal approximation of that randomisation distribution, 1 - Phi(sum d_s / sqrt(sum d_s^2)) (1 when
  every d_s is 0). ``p_holm``: Holm over all heads x word-pair relations x directions of the model
  (positional relations, whose offset baseline is exact by construction, are left out of the family).

Positional heads
----------------
- `positional_heads` (Voita et al. 2019): a head is positional when its argmax (self *included*, over
  visible words) falls on one fixed relative position for >= 90% of words. Words with a single visible
  candidate (the first word of a causal model) are not counted; ``top_offset`` is the most frequent
  argmax offset and ``share`` its count over ``n_valid``, the counted words for which that offset lies
  inside the sentence (EWT sentences are short: the first word has no previous word, ~8% of words). ``special_mass`` is the mean attention
  the head sends to the sink/[CLS]/[SEP] (a head with ~1.0 is mostly a no-op whose word argmax is noise).
- `detector_scores` runs TransformerLens' own `transformer_lens.head_detector.detect_head` on the
  bridge (``previous_token_head``, ``duplicate_token_head``, ``induction_head``). It works on *tokens*
  with the bridge's own tokenization (``to_tokens``: Llama gets ``<|im_start|>`` as BOS, not probekit's
  sink; BERT gets [CLS]/[SEP]), so it is fed text: the first ``detector_texts`` sentences, each repeated
  twice (``"text text"``: duplicate/induction patterns need repeats), one forward per text shared by
  the three patterns. ``exclude_bos=True`` (BOS/[CLS] attention dropped, as the sink is at word
  level); the score is the share of the remaining attention on the pattern, averaged over texts.

Verdicts (per relation and direction, on test; `verdicts`)
----------------------------------------------------------
The dev-selected head *passes* when its test accuracy beats the best-offset baseline by >= 10 points
(Voita et al.) **and** its 95% CI lower bound is above the baseline **and** it beats the permutation
null for the best of all heads on dev (``p_perm`` = its ``dev_p_maxT`` < 0.05) **and**, when the
random-init model was scored, its CI lower bound is above that model's best head (``random_accuracy``).
The last two conditions are ours: where a relation's offsets are spread out (long-range arcs, or random
trees in the unit tests) the best fixed offset can be *below* chance, and a noise head then "beats" it;
and untrained models already have structure (Clark's to = *sum* pooling favours multi-token words,
position embeddings favour neighbours), which the random-partner null does not capture. Then:

- ``specialist found (L.H)`` (0-based layer.head) - it passes;
- ``only positional (L.H)`` - it passes, but is itself a Voita-positional head and >= 50% of the
  relation's test instances sit at that head's offset ("positional, not relational"). For the
  positional relations (whose offset baseline is exact, so nothing can beat it by 10 points) this is
  the verdict when the head reaches >= 90% test accuracy (Voita's threshold; the offset rule would let
  an untrained model's ``first_word`` head through, since no fixed offset predicts the first word);
- ``none`` - otherwise; ``n/a (...)`` when no instance is visible, one split side is empty, or there are
  fewer than 30 test instances (a percentile bootstrap of 11/11 correct is [1, 1]: no real interval).

``relation_verdict`` combines the directions (any specialist > only positional > none). Specificity:
``also_passes`` lists the other relation/directions on which the same head also passes, and
`specificity` gives the chosen head's test accuracy on every relation/direction.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
from tqdm.auto import tqdm

from probekit.data import Dataset
from probekit.data.relations import (
    DIRECTIONS,
    POSITIONAL_RELATIONS,
    RELATION_ALIASES,
    present_relations,
    relation_instances,
)
from probekit.errors import ProbekitError
from probekit.stats import cluster_bootstrap_ci, cluster_sums, empirical_p, holm

#: Word-pair relations scored by default (those present in the data).
CORE_RELATIONS: tuple[str, ...] = ("nsubj", "obj", "amod", "det")
#: Universal Dependencies v2 base relations (a name "x:y" is accepted when x is one of them).
UD_RELATIONS: frozenset[str] = frozenset(
    "acl advcl advmod amod appos aux case cc ccomp clf compound conj cop csubj dep det discourse dislocated "
    "expl fixed flat goeswith iobj list mark nmod nsubj nummod obj obl orphan parataxis punct reparandum root "
    "vocative xcomp".split())
SPECIALIST_MARGIN = 0.10   # Voita et al.: >= 10 points above the offset baseline
POSITIONAL_SHARE = 0.90    # Voita et al.: argmax on one relative position for >= 90% of words
MOSTLY_AT_OFFSET = 0.50    # "the relation is mostly at that offset"
ALPHA = 0.05               # the permutation null's level in the specialist rule
MIN_N = 30                 # fewer test instances: no verdict (a percentile bootstrap of 11/11 is [1, 1])
POSITIONAL = "positional"
DETECTOR_PATTERNS = ("previous_token_head", "duplicate_token_head", "induction_head")

HEAD_COLUMNS = [
    "model", "data", "relation", "direction", "layer", "head", "n", "accuracy", "attention_mass",
    "ci_low", "ci_high", "n_dev", "dev_accuracy", "dev_attention_mass", "best_on_dev", "offset",
    "offset_accuracy", "delta", "p_offset", "p_holm", "dev_p_maxT", "head_positional", "head_top_offset",
    "share_at_top_offset", "split_seed", "test_size",
]


# --------------------------------------------------------------------------------------------------
# public API


@dataclass
class HeadAnalysis:
    """Everything `analyze_heads` measured; every frame is tidy and deterministic.

    - ``heads``: one row per (model, relation, direction, layer, head) - see `HEAD_COLUMNS`.
    - ``baselines``: one row per (model, relation, direction): offset baseline, best head, permutation
      null, random-init model (``random_*`` columns).
    - ``verdicts``: one row per (model, relation, direction), see the module docstring.
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
        """Write CSVs, ``summary.md`` and one heatmap PNG per relation into ``out``."""
        return write_report(self, out, heatmaps=heatmaps)


def score_heads(model, dataset: Dataset, relations=None, directions=DIRECTIONS, capture=None,
                batch_size: int = 16, seed: int = 0, n_boot: int = 1000, n_perm: int = 200,
                random_baseline: bool = False, progress: bool = True, test_size: float = 0.5) -> pd.DataFrame:
    """Score every head on every relation: the tidy ``heads`` frame of `analyze_heads`.

    One row per (model, relation, direction, layer, head) with test-split ``n, accuracy,
    attention_mass, ci_low, ci_high``, dev-split ``n_dev, dev_accuracy, dev_attention_mass``,
    ``best_on_dev``, the relation's best-offset baseline (``offset``, ``offset_accuracy``), ``delta``,
    ``p_offset``/``p_holm`` (vs the offset baseline), ``dev_p_maxT`` (permutation null over heads) and the
    head's Voita positional flag. With ``random_baseline=True`` the random-init model's rows follow,
    under its own ``model`` name. Use `analyze_heads` for baselines, verdicts and positional heads too.
    """
    return analyze_heads(model, dataset, relations=relations, directions=directions, capture=capture,
                         batch_size=batch_size, seed=seed, n_boot=n_boot, n_perm=n_perm,
                         random_baseline=random_baseline, progress=progress, test_size=test_size,
                         detector=False).heads


def analyze_heads(model, dataset: Dataset, relations=None, directions=DIRECTIONS, capture=None,
                  batch_size: int = 16, seed: int = 0, n_boot: int = 1000, n_perm: int = 200,
                  random_baseline: bool = False, progress: bool = True, test_size: float = 0.5,
                  detector: bool = True, detector_texts: int = 30, random_model=None) -> HeadAnalysis:
    """Score heads, baselines, permutation null, verdicts and positional heads (see module docstring).

    Args:
        model: a `probekit.Model` (only ``name`` and ``is_causal`` are read when ``capture`` is given).
        dataset: a `Dataset` with gold trees (positional relations need none).
        relations: names (list or comma-separated string); ``None`` = `CORE_RELATIONS` present in the
            data + the positional relations. ``dobj`` is an alias of ``obj``; ``x:y`` subtypes work.
        directions: word-pair directions, any of ``dep_to_head``, ``head_to_dep``.
        capture: an existing capture of ``dataset`` (anything with ``attention(i)``, ``n_words``,
            ``sentences``, ``attn_layers``, ``n_heads``); default: `probekit.activations.capture` (disk-cached).
        seed: split, bootstrap and permutation seed. n_boot / n_perm: resamples / null draws.
        random_baseline: also score ``random:<model name>`` (``random_model`` if given, e.g. one already
            loaded by an experiment run).
        detector: also run TransformerLens ``detect_head`` on the first ``detector_texts`` sentences.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _check_args(dataset, n_boot, n_perm, test_size)
    names = resolve_relations(dataset, relations)
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    causal = bool(model.is_causal)
    inst, counts = _instances(dataset, names, directions, causal, test_size, seed)
    counts.insert(0, "model", model.name)
    families = _families(names, directions)

    cap = capture if capture is not None else _capture(model, dataset, batch_size, progress)
    _check_capture(cap, dataset)
    timings["capture"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    scored = _collect(cap, inst, causal, progress, desc=f"score heads {model.name}")
    timings["score"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    heads, fam = _head_table(model.name, dataset.spec, scored, inst, families, n_boot, n_perm, seed, test_size)
    positional = _positional_frame(model.name, scored)
    timings["stats"] = time.perf_counter() - t2

    baselines = fam
    verdict_frames = []
    if random_baseline:
        t3 = time.perf_counter()
        rname = model.name if model.name.startswith("random:") else f"random:{model.name}"
        if random_model is None:
            from probekit.models import load_model

            random_model = load_model(rname, device="cpu")
        rmodel, rname = random_model, random_model.name
        rcap = _capture(rmodel, dataset, batch_size, progress)
        rscored = _collect(rcap, inst, causal, progress, desc=f"score heads {rname}")
        rheads, rfam = _head_table(rname, dataset.spec, rscored, inst, families, n_boot, n_perm, seed, test_size)
        baselines = _attach_random(fam, rfam)
        verdict_frames.append(verdicts(rheads, rfam))
        heads_main = heads
        heads = pd.concat([heads, rheads], ignore_index=True)
        timings["random_baseline"] = time.perf_counter() - t3
        del rmodel
    main_verdicts = verdicts(heads_main if random_baseline else heads, baselines)
    verdict_df = pd.concat([main_verdicts, *verdict_frames], ignore_index=True)
    spec_df = specificity(heads)

    if detector:
        t4 = time.perf_counter()
        det = detector_scores(model, [s.text for s in dataset.sentences[:detector_texts]])
        positional = positional.merge(det, on=["layer", "head"], how="left")
        timings["detector"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    settings = {"relations": names, "directions": list(directions), "seed": seed, "test_size": test_size,
                "n_boot": n_boot, "n_perm": n_perm, "random_baseline": random_baseline,
                "causal": causal, "layers": list(cap.attn_layers), "n_heads": int(cap.n_heads)}
    return HeadAnalysis(model=model.name, data=dataset.spec, n_sentences=len(dataset.sentences), heads=heads,
                        baselines=baselines, verdicts=verdict_df, counts=counts, positional=positional,
                        specificity=spec_df, settings=settings, timings=timings)


def resolve_relations(dataset: Dataset, relations=None) -> list[str]:
    """The relation names to score, validated: unknown names and names absent from the data raise."""
    if not dataset.sentences:
        raise ProbekitError(f"dataset {dataset.spec!r} holds no sentences", where="score_heads",
                            fix="use sentences with gold trees, e.g. ud:FILE or template:svo_adj")
    present = set(present_relations(dataset))
    if relations is None:
        return [r for r in CORE_RELATIONS if RELATION_ALIASES.get(r, r) in present] + list(POSITIONAL_RELATIONS)
    if isinstance(relations, str):
        relations = relations.split(",")
    names = list(dict.fromkeys(str(r).strip() for r in relations if str(r).strip()))
    if not names:
        raise ProbekitError("no relations were given", where="score_heads(relations=...)",
                            fix=f"e.g. {','.join(CORE_RELATIONS)}")
    for name in names:
        if name in POSITIONAL_RELATIONS:
            continue
        target = RELATION_ALIASES.get(name, name)
        if target.split(":")[0] not in UD_RELATIONS or target == "root":
            raise ProbekitError(
                f"unknown relation {name!r}", where="score_heads(relations=...)",
                fix=f"use a Universal Dependencies relation (e.g. {', '.join(CORE_RELATIONS)}, nmod:poss; "
                    f"'dobj' = 'obj'; not 'root') or a positional one: {', '.join(POSITIONAL_RELATIONS)}")
        full = {f for s in dataset.sentences if s.heads is not None for f in (s.deprels_full or ())}
        if (":" in target and target not in full) or (":" not in target and target not in present):
            raise ProbekitError(
                f"relation {name!r} does not occur in dataset {dataset.spec!r}", where="score_heads(relations=...)",
                fix=f"use relations present in the data: {sorted(present - {'root'}) or 'none (no gold trees)'}, "
                    f"or positional ones: {', '.join(POSITIONAL_RELATIONS)}")
    return names


def offset_baselines(dataset: Dataset, relations=None, directions=DIRECTIONS, *, causal: bool = False,
                     test_size: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Clark et al.'s best fixed offset per relation/direction: k chosen on dev, accuracy on test.

    Needs only the treebank. ``causal`` applies the causal visibility rule (partner at or before the
    source). Columns: ``relation, direction, n, n_dev, offset, offset_dev_accuracy, offset_accuracy``.
    """
    _check_args(dataset, 1, 1, test_size)
    names = resolve_relations(dataset, relations)
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    inst, _ = _instances(dataset, names, directions, causal, test_size, seed)
    rows = []
    for rel, direction in _families(names, directions):
        sub = inst[(inst.relation == rel) & (inst.direction == direction)]
        dev, test = sub[~sub.is_test].offset.to_numpy(), sub[sub.is_test].offset.to_numpy()
        k = _best_offset(dev)
        rows.append({"relation": rel, "direction": direction, "n": len(test), "n_dev": len(dev),
                     "offset": k, "offset_dev_accuracy": _share(dev, k), "offset_accuracy": _share(test, k)})
    return pd.DataFrame(rows)


def positional_heads(model, dataset: Dataset, capture=None, threshold: float = POSITIONAL_SHARE,
                     batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Voita et al.'s positional heads: ``model, layer, head, top_offset, share, positional, n_words,
    special_mass``; ``positional`` = argmax (self included) on one relative offset for >= ``threshold``
    of words."""
    cap = capture if capture is not None else _capture(model, dataset, batch_size, progress)
    _check_capture(cap, dataset)
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                          [("sentence_idx", int), ("src", int), ("tgt", int), ("self_ok", bool)]})
    scored = _collect(cap, empty, bool(model.is_causal), progress, desc=f"positional heads {model.name}")
    return _positional_frame(model.name, scored, threshold)


def detector_scores(model, texts: list[str], patterns=DETECTOR_PATTERNS) -> pd.DataFrame:
    """TransformerLens ``detect_head`` scores per head (``layer, head, <pattern>...``), run on the bridge.

    Every text is repeated twice (``"text text"``, so duplicate and induction patterns exist) and run
    once through the bridge; ``detect_head`` scores all patterns from that cache. ``exclude_bos=True``;
    mean over texts. Texts too long for the context are skipped.
    """
    import torch
    from transformer_lens.head_detector import detect_head

    bridge = model.bridge
    if not texts:
        raise ProbekitError("no texts for detect_head", where="detector_scores", fix="pass at least one sentence")
    n_ctx = int(bridge.cfg.n_ctx)

    def fits(t):
        return 1 < bridge.to_tokens(t).shape[-1] < n_ctx

    doubled = [f"{t} {t}" for t in texts if fits(f"{t} {t}")]
    if not doubled:
        raise ProbekitError("every text is too long for detect_head", where="detector_scores")
    sums: dict[str, Any] = {}
    with torch.inference_mode():
        for text in doubled:   # one forward per text, shared by the three patterns
            _, cache = bridge.run_with_cache(bridge.to_tokens(text), remove_batch_dim=True,
                                             names_filter=lambda name: name.endswith("attn.hook_pattern"))
            for pattern in patterns:
                score = detect_head(bridge, text, pattern, cache=cache, exclude_bos=True).float().cpu().numpy()
                sums[pattern] = sums.get(pattern, 0) + score / len(doubled)
            del cache
    out = {p.removesuffix("_head"): sums[p] for p in patterns}
    n_layers, n_heads = next(iter(out.values())).shape
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    frame = {"layer": layer.ravel(), "head": head.ravel()}
    frame.update({f"tl_{k}": v.ravel().astype(float) for k, v in out.items()})
    return pd.DataFrame(frame)


def verdicts(heads: pd.DataFrame, baselines: pd.DataFrame | None = None,
             margin: float = SPECIALIST_MARGIN) -> pd.DataFrame:
    """One verdict per (model, relation, direction) from a ``heads`` frame (see the module docstring).

    ``baselines`` (optional, the per-family frame of `analyze_heads`) supplies ``p_perm``, the counts of
    families without scored rows (reported as ``n/a``) and, when present, ``random_accuracy``: the
    random-init model's best head, which a specialist's CI lower bound must then also exceed.
    """
    rows = []
    keys = ["model", "relation", "direction"]
    fam_rows = baselines.to_dict("records") if baselines is not None else [
        dict(zip(keys, k, strict=True)) for k in heads[keys].drop_duplicates().itertuples(index=False)]
    random_acc = {(f["relation"], f["direction"]): f.get("random_accuracy", np.nan) for f in fam_rows}
    for fam in fam_rows:
        sub = heads[(heads.model == fam["model"]) & (heads.relation == fam["relation"])
                    & (heads.direction == fam["direction"])]
        row = {"model": fam["model"], "data": heads.data.iloc[0] if len(heads) else "",
               "relation": fam["relation"], "direction": fam["direction"]}
        best = sub[sub.best_on_dev]
        if best.empty:
            n_vis = fam.get("n", 0) + fam.get("n_dev", 0)
            row.update({"n": fam.get("n", 0), "n_dev": fam.get("n_dev", 0),
                        "verdict": "n/a (no visible instances)" if n_vis == 0 else "n/a (one split side is empty)"})
            rows.append(row)
            continue
        b = next(best.itertuples())
        tag = f"{int(b.layer)}.{int(b.head)}"
        r_acc = random_acc.get((b.relation, b.direction), np.nan)
        passes = _passes(b, margin, r_acc)
        mostly_at = (bool(b.head_positional) and b.share_at_top_offset >= MOSTLY_AT_OFFSET)
        if b.n < MIN_N:
            verdict = f"n/a (n={int(b.n)} < {MIN_N} test instances)"
        elif fam["direction"] == POSITIONAL:
            verdict = f"only positional ({tag})" if b.accuracy >= POSITIONAL_SHARE else "none"
        elif passes:
            verdict = f"only positional ({tag})" if mostly_at else f"specialist found ({tag})"
        else:
            verdict = "none"
        others = heads[(heads.model == b.model) & (heads.layer == b.layer) & (heads["head"] == b.head)
                       & (heads.direction != POSITIONAL)
                       & ~((heads.relation == b.relation) & (heads.direction == b.direction))]
        also = [f"{o.relation}/{o.direction}" for o in others.itertuples()
                if _passes(o, margin, random_acc.get((o.relation, o.direction), np.nan))]
        row.update({"n": int(b.n), "n_dev": int(b.n_dev), "layer": int(b.layer), "head": int(b.head),
                    "dev_accuracy": b.dev_accuracy, "accuracy": b.accuracy, "ci_low": b.ci_low,
                    "ci_high": b.ci_high, "attention_mass": b.attention_mass, "offset": b.offset,
                    "offset_accuracy": b.offset_accuracy, "delta": b.delta, "random_accuracy": r_acc,
                    "passes_rule": bool(passes), "p_holm": b.p_holm, "p_perm": fam.get("p_perm", np.nan),
                    "head_positional": bool(b.head_positional), "head_top_offset": int(b.head_top_offset),
                    "share_at_top_offset": b.share_at_top_offset, "verdict": verdict,
                    "also_passes": ";".join(also)})
        rows.append(row)
    cols = ["model", "data", "relation", "direction", "n", "n_dev", "layer", "head", "dev_accuracy", "accuracy",
            "ci_low", "ci_high", "attention_mass", "offset", "offset_accuracy", "delta", "random_accuracy",
            "passes_rule", "p_holm", "p_perm", "head_positional", "head_top_offset", "share_at_top_offset",
            "verdict", "also_passes"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    for c in ("layer", "head", "head_top_offset"):
        out[c] = out[c].astype("Int64")
    out["relation_verdict"] = [_relation_verdict(out[(out.model == m) & (out.relation == r)].verdict)
                               for m, r in zip(out.model, out.relation, strict=True)]
    return out


def specificity(heads: pd.DataFrame, margin: float = SPECIALIST_MARGIN) -> pd.DataFrame:
    """For each (model, relation, direction)'s dev-selected head: its test accuracy on every relation/direction.

    Columns: ``model, relation, direction, layer, head, other_relation, other_direction, accuracy,
    offset_accuracy, delta, passes`` (``passes``: the specialist rule holds there too).
    """
    rows = []
    for b in heads[heads.best_on_dev].itertuples():
        same = heads[(heads.model == b.model) & (heads.layer == b.layer) & (heads["head"] == b.head)]
        for o in same.itertuples():
            rows.append({"model": b.model, "relation": b.relation, "direction": b.direction, "layer": b.layer,
                         "head": b.head, "other_relation": o.relation, "other_direction": o.direction,
                         "accuracy": o.accuracy, "offset_accuracy": o.offset_accuracy, "delta": o.delta,
                         "passes": bool(o.direction != POSITIONAL and _passes(o, margin))})
    return pd.DataFrame(rows, columns=["model", "relation", "direction", "layer", "head", "other_relation",
                                       "other_direction", "accuracy", "offset_accuracy", "delta", "passes"])


# --------------------------------------------------------------------------------------------------
# instances


def _check_args(dataset, n_boot, n_perm, test_size) -> None:
    if not isinstance(dataset, Dataset):
        raise ProbekitError(f"expected a probekit Dataset, got {type(dataset).__name__}",
                            fix="load one with probekit.load_dataset(spec)")
    for name, v in (("n_boot", n_boot), ("n_perm", n_perm)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ProbekitError(f"{name} must be a positive integer, got {v!r}", where="score_heads")
    if not 0 < test_size < 1:
        raise ProbekitError(f"test_size must lie in (0, 1), got {test_size!r}", where="score_heads")


def _families(names, directions) -> list[tuple[str, str]]:
    return [(n, POSITIONAL) if n in POSITIONAL_RELATIONS else (n, d) for n in names
            for d in ((POSITIONAL,) if n in POSITIONAL_RELATIONS else directions)]


def _instances(dataset, names, directions, causal, test_size, seed) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Visible instances (sorted by sentence) with ``is_test``/``self_ok``, and the counts table."""
    inst = relation_instances(dataset, names, directions)
    _, test = dataset.split(test_size=test_size, seed=seed)
    test_ids = {s.id for s in test.sentences}
    sent_is_test = np.array([s.id in test_ids for s in dataset.sentences], dtype=bool)
    inst["self_ok"] = inst.relation == "self"
    visible = (inst.src != inst.tgt) | inst.self_ok
    if causal:
        visible &= inst.tgt <= inst.src
    inst["visible"] = visible
    inst["is_test"] = sent_is_test[inst.sentence_idx.to_numpy()] if len(inst) else np.zeros(0, bool)
    counts = []
    for rel, direction in _families(names, directions):
        sub = inst[(inst.relation == rel) & (inst.direction == direction)]
        vis = sub[sub.visible]
        counts.append({"relation": rel, "direction": direction, "n_all": len(sub), "n_visible": len(vis),
                       "n_dev": int((~vis.is_test).sum()), "n_test": int(vis.is_test.sum()),
                       "sentences_test": int(vis[vis.is_test].sentence_idx.nunique())})
    inst = inst[inst.visible].sort_values("sentence_idx", kind="stable").reset_index(drop=True)
    return inst, pd.DataFrame(counts)


def _best_offset(offsets: np.ndarray) -> float:
    """Most frequent offset (ties: smallest |k|, then negative); NaN when there is none."""
    if len(offsets) == 0:
        return float("nan")
    values, counts = np.unique(offsets, return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], abs(values[i]), values[i]))
    return int(values[order[0]])


def _share(offsets: np.ndarray, k) -> float:
    return float(np.mean(offsets == k)) if len(offsets) and not pd.isna(k) else float("nan")


# --------------------------------------------------------------------------------------------------
# capture and the one pass over the attention


def _capture(model, dataset, batch_size, progress):
    from probekit.activations.capture import capture

    bridge = getattr(model, "bridge", None)
    hooks = getattr(bridge, "hook_dict", None) or {}
    if not any(name.endswith("attn.hook_pattern") for name in hooks):
        raise ProbekitError(f"model {getattr(model, 'name', model)!r} exposes no attention-pattern hooks "
                            "(blocks.L.attn.hook_pattern)", where="score_heads",
                            fix="load it with probekit.load_model, which uses eager attention")
    return capture(model, dataset, resid=(), attention=True, batch_size=batch_size, progress=progress)


def _check_capture(cap, dataset) -> None:
    if not list(getattr(cap, "attn_layers", []) or []):
        raise ProbekitError("the capture holds no attention", where="score_heads(capture=...)",
                            fix="capture(..., attention=True)")
    ids = [s.id for s in cap.sentences]
    if ids != [s.id for s in dataset.sentences]:
        raise ProbekitError("the capture was made from other sentences than the dataset",
                            where="score_heads(capture=...)", fix="capture this dataset, or pass capture=None")


@dataclass
class _Scored:
    layers: list[int]
    n_heads: int
    causal: bool
    pred: np.ndarray          # [n_inst, L*H] argmax word per instance (self excluded unless self_ok)
    mass: np.ndarray          # [n_inst, L*H] attention on the gold partner
    offset_hist: np.ndarray   # [L*H, 2*max_n - 1] Voita: argmax offset (self included) counts
    max_n: int
    n_rows: int               # words counted in offset_hist
    offset_valid: np.ndarray  # [2*max_n - 1] counted words for which each offset is inside the sentence
    special: np.ndarray       # [L*H] summed special mass over those words
    n_words: np.ndarray       # per sentence


def _collect(cap, inst: pd.DataFrame, causal: bool, progress: bool, desc: str) -> _Scored:
    """One pass over the sentences: masked argmax rows once per sentence for all heads, then gather."""
    n_words = np.asarray(cap.n_words, dtype=np.int64)
    n_sent = len(n_words)
    n_heads = int(cap.n_heads)
    lh = len(cap.attn_layers) * n_heads
    max_n = int(n_words.max())
    width = 2 * max_n - 1
    m = len(inst)
    pred = np.empty((m, lh), dtype=np.int16 if max_n < 32_000 else np.int32)
    mass = np.empty((m, lh), dtype=np.float32)
    hist = np.zeros(lh * width, dtype=np.int64)
    valid = np.zeros(width, dtype=np.int64)
    special = np.zeros(lh)
    n_rows = 0
    sidx = inst.sentence_idx.to_numpy(dtype=np.int64)
    src, tgt = inst.src.to_numpy(dtype=np.int64), inst.tgt.to_numpy(dtype=np.int64)
    self_ok = inst.self_ok.to_numpy(dtype=bool)
    bounds = np.searchsorted(sidx, np.arange(n_sent + 1))
    head_base = (np.arange(lh) * width)[:, None]
    has_special = hasattr(cap, "special_mass")
    for i in tqdm(range(n_sent), desc=desc, unit="sent", disable=not progress, leave=False):
        n = int(n_words[i])
        att = np.asarray(cap.attention(i), dtype=np.float32).reshape(lh, n, n)
        masked = np.where(np.tri(n, dtype=bool), att, np.float32(-1.0)) if causal else att.copy()
        pred_in = masked.argmax(-1)                          # [LH, n], self allowed
        diag = np.arange(n)
        masked[:, diag, diag] = -1.0
        pred_ex = masked.argmax(-1)                          # [LH, n], self excluded
        rows = diag[1:] if causal else (diag if n > 1 else diag[:0])
        if len(rows):
            off = pred_in[:, rows] - rows + (max_n - 1)
            hist += np.bincount((off + head_base).ravel(), minlength=lh * width)
            n_rows += len(rows)
            offs = diag[None, :] - rows[:, None]                 # every visible target - source
            valid += np.bincount((offs[offs <= 0] if causal else offs.ravel()) + (max_n - 1), minlength=width)
            if has_special:
                special += np.asarray(cap.special_mass(i), dtype=np.float64).reshape(lh, n)[:, rows].sum(-1)
        a, b = bounds[i], bounds[i + 1]
        if b > a:
            s, t = src[a:b], tgt[a:b]
            pred[a:b] = np.where(self_ok[a:b][None, :], pred_in[:, s], pred_ex[:, s]).T
            mass[a:b] = att[:, s, t].T
    return _Scored(layers=list(cap.attn_layers), n_heads=n_heads, causal=causal, pred=pred, mass=mass,
                   offset_hist=hist.reshape(lh, width), max_n=max_n, n_rows=n_rows, offset_valid=valid, special=special,
                   n_words=n_words)


def _positional_frame(model_name: str, sc: _Scored, threshold: float = POSITIONAL_SHARE) -> pd.DataFrame:
    """Top offset = the most frequent argmax offset; share = its count over the words where that offset
    lies inside the sentence (so a previous-word head is not penalised for the first word)."""
    top = sc.offset_hist.argmax(1)
    n_valid = sc.offset_valid[top]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n_valid > 0, sc.offset_hist.max(1) / np.maximum(n_valid, 1), np.nan)
    layer = np.repeat(sc.layers, sc.n_heads)
    head = np.tile(np.arange(sc.n_heads), len(sc.layers))
    return pd.DataFrame({
        "model": model_name, "layer": layer, "head": head, "top_offset": top - (sc.max_n - 1),
        "share": share, "positional": share >= threshold, "n_words": sc.n_rows, "n_valid": n_valid,
        "special_mass": sc.special / max(sc.n_rows, 1)})


# --------------------------------------------------------------------------------------------------
# statistics


def signflip_p(diff: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One-sided p-values (mean diff > 0) of a clustered paired sign-flip test, per column of ``diff``.

    ``diff  # [m, K]`` (e.g. head correct - baseline correct), ``codes`` the cluster of each row.
    Normal approximation of the randomisation distribution: z = sum d_s / sqrt(sum d_s^2).
    """
    _, c = np.unique(codes, return_inverse=True)
    d = cluster_sums(np.asarray(diff, dtype=np.float64), c.ravel(), int(c.max()) + 1)
    num, den = d.sum(0), np.sqrt((d**2).sum(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(den > 0, num / den, 0.0)
    p = scipy.stats.norm.sf(z)
    return np.where(den > 0, p, 1.0)


def _n_candidates(inst: pd.DataFrame, n_words: np.ndarray, causal: bool) -> np.ndarray:
    """Visible candidate words per instance (self only for the ``self`` relation)."""
    src = inst.src.to_numpy(dtype=np.int64)
    self_ok = inst.self_ok.to_numpy(dtype=bool)
    n = n_words[inst.sentence_idx.to_numpy(dtype=np.int64)]
    return (src + self_ok) if causal else (n - ~self_ok)


def _null_max(pred: np.ndarray, inst: pd.DataFrame, n_words: np.ndarray, causal: bool, n_perm: int,
              seed: int) -> np.ndarray:
    """``[n_perm, L*H]`` accuracies against random visible partners (see module docstring)."""
    src = inst.src.to_numpy(dtype=np.int64)
    self_ok = inst.self_ok.to_numpy(dtype=bool)
    n_cand = _n_candidates(inst, n_words, causal)
    rng = np.random.default_rng(seed)
    out = np.empty((n_perm, pred.shape[1]))
    for p in range(n_perm):
        r = rng.integers(0, n_cand)
        if not causal:
            r = r + ((~self_ok) & (r >= src))
        out[p] = (pred == r.astype(pred.dtype)[:, None]).mean(0)
    return out


def _head_table(model_name, data_spec, sc: _Scored, inst, families, n_boot, n_perm, seed, test_size):
    """Per-head rows and per-family baselines for one model."""
    lh = sc.pred.shape[1]
    layer = np.repeat(sc.layers, sc.n_heads)
    head = np.tile(np.arange(sc.n_heads), len(sc.layers))
    pos = _positional_frame(model_name, sc)
    top_offset = pos.top_offset.to_numpy()
    frames, fams = [], []
    rel_arr, dir_arr = inst.relation.to_numpy(), inst.direction.to_numpy()
    for rel, direction in families:
        rows_all = np.flatnonzero((rel_arr == rel) & (dir_arr == direction))
        sub = inst.iloc[rows_all]
        is_test = sub.is_test.to_numpy()
        dev_rows, test_rows = rows_all[~is_test], rows_all[is_test]
        off_dev = sub.offset.to_numpy()[~is_test]
        off_test = sub.offset.to_numpy()[is_test]
        k = _best_offset(off_dev)
        fam = {"model": model_name, "data": data_spec, "relation": rel, "direction": direction,
               "n": len(test_rows), "n_dev": len(dev_rows), "offset": k,
               "offset_dev_accuracy": _share(off_dev, k), "offset_accuracy": _share(off_test, k),
               "chance_accuracy": float(np.mean(1.0 / _n_candidates(inst.iloc[test_rows], sc.n_words, sc.causal)))
               if len(test_rows) else np.nan}
        if len(dev_rows) == 0 or len(test_rows) == 0:
            fams.append(fam)
            continue
        tgt = inst.tgt.to_numpy()
        corr_dev = sc.pred[dev_rows] == tgt[dev_rows, None]
        corr_test = sc.pred[test_rows] == tgt[test_rows, None]
        acc_dev, acc_test = corr_dev.mean(0), corr_test.mean(0)
        mass_dev, mass_test = sc.mass[dev_rows].mean(0), sc.mass[test_rows].mean(0)
        groups_test = inst.sentence_idx.to_numpy()[test_rows]
        low, high = cluster_bootstrap_ci(corr_test, groups_test, n_boot=n_boot, seed=seed)
        off_corr = (off_test == k).astype(float)
        p_off = signflip_p(corr_test - off_corr[:, None], groups_test)
        null = _null_max(sc.pred[dev_rows], inst.iloc[dev_rows], sc.n_words, sc.causal, n_perm, seed).max(1)
        best = int(np.lexsort((np.arange(lh), -mass_dev, -acc_dev))[0])
        p_maxT = np.array([empirical_p(a, null) for a in acc_dev])
        share_top = np.array([np.mean(off_test == o) for o in top_offset])
        frames.append(pd.DataFrame({
            "model": model_name, "data": data_spec, "relation": rel, "direction": direction,
            "layer": layer, "head": head, "n": len(test_rows), "accuracy": acc_test,
            "attention_mass": mass_test.astype(np.float64), "ci_low": low, "ci_high": high,
            "n_dev": len(dev_rows), "dev_accuracy": acc_dev, "dev_attention_mass": mass_dev.astype(np.float64),
            "best_on_dev": np.arange(lh) == best, "offset": k, "offset_accuracy": fam["offset_accuracy"],
            "delta": acc_test - fam["offset_accuracy"], "p_offset": p_off, "p_holm": np.nan,
            "dev_p_maxT": p_maxT, "head_positional": pos.positional.to_numpy(), "head_top_offset": top_offset,
            "share_at_top_offset": share_top, "split_seed": seed, "test_size": test_size}))
        fam.update({"best_layer": int(layer[best]), "best_head": int(head[best]),
                    "best_dev_accuracy": float(acc_dev[best]), "best_accuracy": float(acc_test[best]),
                    "best_ci_low": float(low[best]), "best_ci_high": float(high[best]),
                    "null_max_mean": float(null.mean()), "null_max_q95": float(np.quantile(null, 0.95)),
                    "p_perm": empirical_p(acc_dev[best], null), "n_perm": n_perm})
        fams.append(fam)
    heads = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HEAD_COLUMNS)
    word_pair = (heads.direction != POSITIONAL).to_numpy()
    if word_pair.any():
        heads.loc[word_pair, "p_holm"] = holm(heads.loc[word_pair, "p_offset"].to_numpy())
    fam_cols = ["model", "data", "relation", "direction", "n", "n_dev", "offset", "offset_dev_accuracy",
                "offset_accuracy", "chance_accuracy", "best_layer", "best_head", "best_dev_accuracy", "best_accuracy",
                "best_ci_low", "best_ci_high", "null_max_mean", "null_max_q95", "p_perm", "n_perm"]
    fam_df = pd.DataFrame(fams).reindex(columns=fam_cols)
    for c in ("best_layer", "best_head", "n_perm"):
        fam_df[c] = fam_df[c].astype("Int64")
    return heads[HEAD_COLUMNS], fam_df


def _attach_random(fam: pd.DataFrame, rfam: pd.DataFrame) -> pd.DataFrame:
    r = rfam[["relation", "direction", "model", "best_layer", "best_head", "best_accuracy", "best_ci_low",
              "best_ci_high"]].rename(columns={"model": "random_model", "best_layer": "random_best_layer",
                                               "best_head": "random_best_head", "best_accuracy": "random_accuracy",
                                               "best_ci_low": "random_ci_low", "best_ci_high": "random_ci_high"})
    return fam.merge(r, on=["relation", "direction"], how="left")


def _passes(row, margin, random_accuracy=np.nan) -> bool:
    """The specialist rule for one head row (see the module docstring)."""
    p = getattr(row, "dev_p_maxT", np.nan)
    return bool(row.n >= MIN_N and row.accuracy - row.offset_accuracy >= margin - 1e-12
                and row.ci_low > row.offset_accuracy and (pd.isna(p) or p < ALPHA)
                and (pd.isna(random_accuracy) or row.ci_low > random_accuracy))


def _relation_verdict(verdicts: pd.Series) -> str:
    v = [x for x in verdicts if isinstance(x, str)]
    spec = [x.split("(", 1)[1].rstrip(")") for x in v if x.startswith("specialist")]
    if spec:
        return f"specialist found ({', '.join(dict.fromkeys(spec))})"
    posn = [x.split("(", 1)[1].rstrip(")") for x in v if x.startswith("only positional")]
    if posn:
        return f"only positional ({', '.join(dict.fromkeys(posn))})"
    return "none" if any(x == "none" for x in v) else (v[0] if v else "none")


# --------------------------------------------------------------------------------------------------
# report


def write_report(res: HeadAnalysis, out: str | os.PathLike, heatmaps: bool = True) -> list[Path]:
    """``heads.csv``, ``baselines.csv``, ``verdicts.csv``, ``counts.csv``, ``positional.csv``,
    ``specificity.csv``, ``summary.md`` and ``heatmap_<relation>.png`` (deterministic CSVs). The summary
    tables (all but the per-head ``heads.csv``) also get LaTeX (booktabs) renderings, ``<name>.tex``."""
    from probekit.report import atomic_write_text, latex_table, write_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_table(res.heads, out / "heads.csv")]
    for name, frame in (("baselines", res.baselines), ("verdicts", res.verdicts), ("counts", res.counts),
                        ("positional", res.positional), ("specificity", res.specificity)):
        written += [write_table(frame, out / f"{name}.csv"), atomic_write_text(out / f"{name}.tex", latex_table(frame))]
    written.append(atomic_write_text(out / "summary.md", summary_markdown(res)))
    if heatmaps:
        written += plot_heatmaps(res.heads[res.heads.model == res.model], out)
    return written


def plot_heatmaps(heads: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """One PNG per relation: test accuracy over layers x heads, one panel per direction; the
    dev-selected head is boxed."""
    from probekit.report import pyplot, save_fig

    plt = pyplot()
    paths = []
    for rel in dict.fromkeys(heads.relation):
        sub = heads[heads.relation == rel]
        dirs = list(dict.fromkeys(sub.direction))
        n_layers, n_heads = int(sub.layer.max()) + 1, int(sub["head"].max()) + 1
        fig, axes = plt.subplots(1, len(dirs), figsize=(1.2 + 0.45 * n_heads * len(dirs), 1.5 + 0.22 * n_layers),
                                 squeeze=False)
        for ax, d in zip(axes[0], dirs, strict=True):
            s = sub[sub.direction == d]
            grid = np.full((n_layers, n_heads), np.nan)
            grid[s.layer.to_numpy(), s["head"].to_numpy()] = s.accuracy.to_numpy()
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            b = next(s[s.best_on_dev].itertuples())
            ax.add_patch(plt.Rectangle((b.head - 0.5, b.layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
            ax.set_title(f"{rel} {d}\nbest {int(b.layer)}.{int(b.head)}: {b.accuracy:.2f} "
                         f"vs offset {b.offset:+.0f}: {b.offset_accuracy:.2f}", fontsize=8)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(n_heads))
            ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test accuracy")
        paths.append(save_fig(fig, Path(out) / f"heatmap_{rel.replace(':', '_')}.png"))
    return paths


def summary_markdown(res: HeadAnalysis) -> str:
    """Best head per relation vs its baselines, counts and positional heads, as Markdown."""
    from probekit.report import markdown_table

    s = res.settings
    lines = [f"# Head specialization: {res.model} on `{res.data}`", "",
             f"{res.n_sentences} sentences, split by sentence into dev/test (test_size={s.get('test_size')}, "
             f"seed={s.get('seed')}). Best head chosen on dev, reported on test; 95% cluster-bootstrap CI over "
             f"sentences ({s.get('n_boot')} resamples); permutation null over all heads on dev "
             f"({s.get('n_perm')} draws). Layer/head indices are 0-based. Specialist rule: test accuracy >= "
             f"offset + {SPECIALIST_MARGIN:.2f}, CI low > offset, p_perm < {ALPHA}, (when scored) CI low > the "
             f"random-init model's best head, and n >= {MIN_N} test instances; a passing head that is Voita-positional with the relation mostly "
             "at its offset is 'only positional' (see `probekit.analyses.heads.score`).", "", "## Verdicts", ""]
    v = res.verdicts.copy()
    b = res.baselines
    show = v[["model", "relation", "direction", "n", "layer", "head", "accuracy", "ci_low", "ci_high", "offset",
              "offset_accuracy", "random_accuracy", "p_holm", "p_perm", "verdict"]].copy()
    show = show.merge(b[["model", "relation", "direction", "chance_accuracy", "null_max_q95"]],
                      on=["model", "relation", "direction"], how="left")
    lines += [markdown_table(show), ""]
    rel = v[["model", "relation", "relation_verdict"]].drop_duplicates()
    lines += ["## Per relation", "", markdown_table(rel), ""]
    also = v[v.also_passes.fillna("") != ""][["model", "relation", "direction", "layer", "head", "also_passes"]]
    if len(also):
        lines += ["Chosen heads that also pass the rule on other relations (specificity):", "",
                  markdown_table(also), ""]
    lines += ["## Instance counts (visible = partner visible to the source)", "", markdown_table(res.counts), ""]
    pos = res.positional[res.positional.positional]
    lines += [f"## Positional heads (Voita: argmax on one relative offset for >= {POSITIONAL_SHARE:.0%} of words)",
              "", markdown_table(pos) if len(pos) else "none", ""]
    tl_cols = [c for c in res.positional.columns if c.startswith("tl_")]
    if tl_cols:
        lines += ["## TransformerLens detect_head (token level, own tokenization, exclude_bos=True): top 3 heads",
                  ""]
        for c in tl_cols:
            top = res.positional.sort_values([c, "layer", "head"], ascending=[False, True, True]).head(3)
            lines.append(f"- {c}: " + ", ".join(f"{r.layer}.{r.head} = {getattr(r, c):.3f} (Voita top offset "
                                                 f"{r.top_offset:+d}, share {r.share:.2f})" for r in top.itertuples()))
        lines.append("")
    return "\n".join(lines)
