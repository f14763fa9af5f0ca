"""Head specialization: does one attention head handle one relation (subject-verb, adjective-noun, ...)?

Every head is scored per (relation, direction) on word-level attention (Clark et al. 2019, "What Does
BERT Look At?": argmax accuracy and attention mass), the best head is chosen on dev and reported on
test, next to the best fixed offset (Clark et al.), chance, a random-init model, a permutation null
over heads (Westfall-Young maxT), sentence-clustered bootstrap CIs and a clustered sign-flip test.
The method, every column and the reasons for each baseline: ``docs/methods/heads.md``.
"""

from __future__ import annotations

import time

import pandas as pd

from probekit.analyses.heads.collect import (
    capture_attention,
    check_arguments,
    check_capture,
    collect,
    families,
    instances,
)
from probekit.analyses.heads.positional import detector_scores, positional_frame
from probekit.analyses.heads.result import HeadAnalysis
from probekit.analyses.heads.rules import specificity, verdicts
from probekit.analyses.heads.table import attach_random, best_offset, head_table, offset_share
from probekit.analyses.heads.weighting import check_weighting, weighted_attention
from probekit.data import Dataset
from probekit.data.relations import DIRECTIONS, POSITIONAL_RELATIONS, RELATION_ALIASES, present_relations
from probekit.errors import ProbekitError

#: Word-pair relations scored by default (those present in the data).
CORE_RELATIONS: tuple[str, ...] = ("nsubj", "obj", "amod", "det")
#: Universal Dependencies v2 base relations (a name "x:y" is accepted when x is one of them).
UD_RELATIONS: frozenset[str] = frozenset(
    (  # noqa: SIM905 (37 names read better as one string than as a 37-line list)
        "acl advcl advmod amod appos aux case cc ccomp clf compound conj cop csubj dep det discourse "
        "dislocated expl fixed flat goeswith iobj list mark nmod nsubj nummod obj obl orphan parataxis punct "
        "reparandum root vocative xcomp"
    ).split()
)


def score_heads(
    model,
    dataset: Dataset,
    relations=None,
    directions=DIRECTIONS,
    capture=None,
    batch_size: int = 16,
    seed: int = 0,
    n_boot: int = 1000,
    n_perm: int = 200,
    random_baseline: bool = False,
    progress: bool = True,
    test_size: float = 0.5,
    weighting: str = "raw",
) -> pd.DataFrame:
    """Score every head on every relation: the tidy ``heads`` frame of `analyze_heads`.

    Parameters
    ----------
    model, dataset, relations, directions, capture, batch_size, seed, n_boot, n_perm, random_baseline,
    progress, test_size, weighting : as in `analyze_heads` (the TransformerLens detector is not run).

    Returns
    -------
    pandas.DataFrame
        One row per (model, relation, direction, layer, head) with test-split ``n, accuracy,
        attention_mass, ci_low, ci_high``, dev-split ``n_dev, dev_accuracy, dev_attention_mass``,
        ``best_on_dev``, the relation's best-offset baseline (``offset``, ``offset_accuracy``),
        ``delta``, ``p_offset``/``p_holm`` (vs the offset baseline), ``dev_p_maxT`` (permutation null
        over heads) and the head's Voita positional flag (`HEAD_COLUMNS`). With
        ``random_baseline=True`` the random-init model's rows follow, under its own ``model`` name.

    Examples
    --------
    >>> import probekit as pk
    >>> heads = pk.score_heads(pk.load_model("tiny-bert"), pk.load_dataset("template:svo_adj?n=12"),
    ...                        relations=["nsubj", "prev_word"], n_boot=20, n_perm=10, progress=False)
    >>> sorted(set(heads.relation)), len(heads) == 3 * 2 * 4   # 3 relation/directions x 2 layers x 4 heads
    (['nsubj', 'prev_word'], True)
    """
    return analyze_heads(
        model,
        dataset,
        relations=relations,
        directions=directions,
        capture=capture,
        batch_size=batch_size,
        seed=seed,
        n_boot=n_boot,
        n_perm=n_perm,
        random_baseline=random_baseline,
        progress=progress,
        test_size=test_size,
        detector=False,
        weighting=weighting,
    ).heads


def analyze_heads(
    model,
    dataset: Dataset,
    relations=None,
    directions=DIRECTIONS,
    capture=None,
    batch_size: int = 16,
    seed: int = 0,
    n_boot: int = 1000,
    n_perm: int = 200,
    random_baseline: bool = False,
    progress: bool = True,
    test_size: float = 0.5,
    detector: bool = True,
    detector_texts: int = 30,
    random_model=None,
    data_label: str | None = None,
    weighting: str = "raw",
) -> HeadAnalysis:
    """Score heads, baselines, permutation null, verdicts and positional heads (``docs/methods/heads.md``).

    Parameters
    ----------
    model : a `probekit.Model` (only ``name`` and ``is_causal`` are read when ``capture`` is given).
    dataset : a `Dataset` with gold trees (positional relations need none).
    relations : names (list or comma-separated string); ``None`` = `CORE_RELATIONS` present in the
        data + the positional relations. ``dobj`` is an alias of ``obj``; ``x:y`` subtypes work.
    directions : word-pair directions, any of ``dep_to_head``, ``head_to_dep``.
    capture : an existing capture of ``dataset`` (anything with ``attention(i)``, ``n_words``,
        ``sentences``, ``attn_layers``, ``n_heads``); default: `probekit.activations.capture` (disk-cached).
    batch_size, progress : passed to the capture.
    seed : split, bootstrap and permutation seed.
    n_boot, n_perm : bootstrap resamples / permutation-null draws.
    random_baseline : also score ``random:<model name>`` (``random_model`` if given, e.g. one already
        loaded by an experiment run).
    test_size : share of the sentences in the test split.
    detector : also run TransformerLens ``detect_head`` on the first ``detector_texts`` sentences.
    data_label : the name written in the ``data`` columns and the summary title (default
        ``dataset.spec``; an experiment passes the spec without machine-specific paths).
    weighting : the attention the heads are scored on (`WEIGHTINGS`): ``raw`` (default, the pattern),
        ``norm`` (Kobayashi et al. 2020: ``alpha_ij * ||f_h(x_j)||``, rows renormalised to 1) or
        ``rollout`` (Abnar & Zuidema 2020, per head), computed by
        `probekit.analyses.heads.weighting.weighted_attention` for the model and the random-init model;
        ``capture`` must then be such an object of the same weighting (or None). The detector always
        reads the raw pattern. See ``docs/methods/weighting.md``.

    Returns
    -------
    HeadAnalysis
        ``heads``, ``baselines``, ``verdicts``, ``counts``, ``positional``, ``specificity``;
        ``.write(folder)`` writes them all.

    Examples
    --------
    >>> import probekit as pk
    >>> res = pk.analyze_heads(pk.load_model("tiny-bert"), pk.load_dataset("template:svo_adj?n=12"),
    ...                        relations=["nsubj"], n_boot=20, n_perm=10, progress=False, detector=False)
    >>> res.verdicts[["relation", "direction"]].values.tolist()
    [['nsubj', 'dep_to_head'], ['nsubj', 'head_to_dep']]
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    check_arguments(dataset, n_boot, n_perm, test_size)
    weighting = check_weighting(weighting)
    names = resolve_relations(dataset, relations)
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    causal = bool(model.is_causal)
    label = dataset.spec if data_label is None else data_label
    inst, counts = instances(dataset, names, directions, causal, test_size, seed)
    counts.insert(0, "model", model.name)
    fams = families(names, directions)

    cap = capture if capture is not None else attention_of(model, dataset, batch_size, progress, weighting)
    check_capture(cap, dataset)
    check_capture_weighting(cap, weighting)
    timings["capture"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    scored = collect(cap, inst, causal, progress, desc=f"score heads {model.name}")
    timings["score"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    heads, fam = head_table(model.name, label, scored, inst, fams, n_boot, n_perm, seed, test_size)
    positional = positional_frame(model.name, scored)
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
        rcap = attention_of(rmodel, dataset, batch_size, progress, weighting)
        rscored = collect(rcap, inst, causal, progress, desc=f"score heads {rname}")
        rheads, rfam = head_table(rname, label, rscored, inst, fams, n_boot, n_perm, seed, test_size)
        baselines = attach_random(fam, rfam)
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
    settings = {
        "relations": names,
        "directions": list(directions),
        "seed": seed,
        "test_size": test_size,
        "n_boot": n_boot,
        "n_perm": n_perm,
        "random_baseline": random_baseline,
        "causal": causal,
        "layers": list(cap.attn_layers),
        "n_heads": int(cap.n_heads),
    }
    if weighting != "raw":  # absent under the default, so the default's outputs are unchanged
        settings["weighting"] = weighting
    return HeadAnalysis(
        model=model.name,
        data=label,
        n_sentences=len(dataset.sentences),
        heads=heads,
        baselines=baselines,
        verdicts=verdict_df,
        counts=counts,
        positional=positional,
        specificity=spec_df,
        settings=settings,
        timings=timings,
    )


def attention_of(model, dataset, batch_size, progress, weighting):
    """The word attention to score: the disk-cached capture (``raw``) or `weighted_attention`."""
    if weighting == "raw":
        return capture_attention(model, dataset, batch_size, progress)
    return weighted_attention(model, dataset, weighting, batch_size=batch_size, progress=progress)


def check_capture_weighting(cap, weighting: str) -> None:
    """Raise `ProbekitError` when ``cap`` holds another weighting than ``weighting`` (a plain capture
    holds ``raw``)."""
    held = getattr(cap, "weighting", "raw")
    if held != weighting:
        raise ProbekitError(
            f"the capture holds {held!r} attention but weighting={weighting!r} was asked for",
            where="score_heads(capture=...)",
            fix=f"pass weighted_attention(model, dataset, {weighting!r}) or capture=None",
        )


def resolve_relations(dataset: Dataset, relations=None) -> list[str]:
    """The relation names to score, validated: unknown names and names absent from the data raise.

    Parameters
    ----------
    dataset : the sentences to score (with gold trees for word-pair relations).
    relations : names (list or comma-separated string), or ``None`` for `CORE_RELATIONS` present in the
        data + the positional relations.

    Returns
    -------
    list of str
        The names, deduplicated in order.

    Examples
    --------
    >>> import probekit as pk
    >>> resolve_relations(pk.load_dataset("template:svo_adj?n=4"))
    ['nsubj', 'obj', 'amod', 'det', 'prev_word', 'next_word', 'self', 'first_word']
    >>> resolve_relations(pk.load_dataset("template:svo_adj?n=4"), "dobj,prev_word")
    ['dobj', 'prev_word']
    """
    if not dataset.sentences:
        raise ProbekitError(
            f"dataset {dataset.spec!r} holds no sentences",
            where="score_heads",
            fix="use sentences with gold trees, e.g. ud:FILE or template:svo_adj",
        )
    present = set(present_relations(dataset))
    if relations is None:
        return [r for r in CORE_RELATIONS if RELATION_ALIASES.get(r, r) in present] + list(
            POSITIONAL_RELATIONS
        )
    if isinstance(relations, str):
        relations = relations.split(",")
    names = list(dict.fromkeys(str(r).strip() for r in relations if str(r).strip()))
    if not names:
        raise ProbekitError(
            "no relations were given",
            where="score_heads(relations=...)",
            fix=f"e.g. {','.join(CORE_RELATIONS)}",
        )
    for name in names:
        if name in POSITIONAL_RELATIONS:
            continue
        target = RELATION_ALIASES.get(name, name)
        if target.split(":")[0] not in UD_RELATIONS or target == "root":
            raise ProbekitError(
                f"unknown relation {name!r}",
                where="score_heads(relations=...)",
                fix=f"use a Universal Dependencies relation (e.g. {', '.join(CORE_RELATIONS)}, nmod:poss; "
                f"'dobj' = 'obj'; not 'root') or a positional one: {', '.join(POSITIONAL_RELATIONS)}",
            )
        full = {f for s in dataset.sentences if s.heads is not None for f in (s.deprels_full or ())}
        if (":" in target and target not in full) or (":" not in target and target not in present):
            raise ProbekitError(
                f"relation {name!r} does not occur in dataset {dataset.spec!r}",
                where="score_heads(relations=...)",
                fix="use relations present in the data: "
                f"{sorted(present - {'root'}) or 'none (no gold trees)'}, "
                f"or positional ones: {', '.join(POSITIONAL_RELATIONS)}",
            )
    return names


def offset_baselines(
    dataset: Dataset,
    relations=None,
    directions=DIRECTIONS,
    *,
    causal: bool = False,
    test_size: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Clark et al.'s (2019) best fixed offset per relation/direction: k chosen on dev, accuracy on test.

    Parameters
    ----------
    dataset : sentences with gold trees (no model is needed).
    relations, directions : as in `analyze_heads`.
    causal : apply the causal visibility rule (partner at or before the source).
    test_size, seed : the dev/test split (`Dataset.split`).

    Returns
    -------
    pandas.DataFrame
        ``relation, direction, n, n_dev, offset, offset_dev_accuracy, offset_accuracy``.

    Examples
    --------
    >>> import probekit as pk
    >>> ob = offset_baselines(pk.load_dataset("template:svo_adj?n=20"), ["amod"], ["dep_to_head"])
    >>> ob[["relation", "offset"]].values.tolist()
    [['amod', 1]]
    """
    check_arguments(dataset, 1, 1, test_size)
    names = resolve_relations(dataset, relations)
    directions = (directions,) if isinstance(directions, str) else tuple(directions)
    inst, _ = instances(dataset, names, directions, causal, test_size, seed)
    rows = []
    for rel, direction in families(names, directions):
        sub = inst[(inst.relation == rel) & (inst.direction == direction)]
        dev, test = sub[~sub.is_test].offset.to_numpy(), sub[sub.is_test].offset.to_numpy()
        k = best_offset(dev)
        rows.append(
            {
                "relation": rel,
                "direction": direction,
                "n": len(test),
                "n_dev": len(dev),
                "offset": k,
                "offset_dev_accuracy": offset_share(dev, k),
                "offset_accuracy": offset_share(test, k),
            }
        )
    return pd.DataFrame(rows)
