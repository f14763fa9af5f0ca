"""Counterfactual pairs for causal mediation (Vig et al. 2020; Finlayson et al. 2021, arXiv:2106.06087).

Each relation gives `PatchPairs` (``probekit.analyses.interventions.patching``): a *clean* prompt, a
*counterfactual* prompt of the same token length that changes one thing (the subject's number, the two
adjectives, the determiner's number), and the clean prompt's correct and wrong next word. The metric is
``log p(correct) - log p(wrong)`` of the first token of each word at the prompt's last position: a
causal LM predicts the verb (noun, colour) *there*, before the word itself. Pairs whose prompts differ
in token length, or whose two words share their first token, are dropped and counted (``dropped``).

- ``agreement``: ``template:agreement`` prefixes; the counterfactual swaps the subject's number ("The
  key near the cabinets" -> "The keys near the cabinets"); plus BLiMP's two-prefix subject-verb
  paradigms (``*subject_verb_agreement_2``), whose good and bad prefixes *are* such a pair; the wrong
  verb form is derived by `other_verb_form`.
- ``binding``: "The red box and the green ball are here. The ball is" -> " green" vs " red"; the
  counterfactual swaps the two adjectives (`binding_pairs`).
- ``det_noun``: BLiMP ``determiner_noun_agreement_with_adjective_1`` ("those good" -> " documentaries"
  vs " documentary"); the counterfactual flips the determiner's number (this/these, that/those).
See ``docs/methods/mediation.md``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from probekit.analyses.interventions.patching import PatchPairs, make_patch_pairs
from probekit.data.templates import number_swaps
from probekit.errors import ProbekitError

#: the relations `make_pairs` builds, and the heads-analysis relation whose attention score each is
#: compared with (UD label, direction from the later word to the earlier one)
RELATIONS = {
    "agreement": ("nsubj", "head_to_dep"),
    "binding": ("amod", "head_to_dep"),
    "det_noun": ("det", "head_to_dep"),
}
COLOURS = ("red", "green", "blue", "black", "white", "brown", "pink", "gray", "yellow")
OBJECTS = (
    "box",
    "ball",
    "cup",
    "hat",
    "book",
    "car",
    "bag",
    "chair",
    "key",
    "lamp",
    "shirt",
    "bottle",
    "pen",
)
_IRREGULAR_VERBS = {
    "is": "are",
    "was": "were",
    "has": "have",
    "does": "do",
    "isn't": "aren't",
    "wasn't": "weren't",
    "hasn't": "haven't",
    "doesn't": "don't",
}
_IRREGULAR_VERBS.update({v: k for k, v in list(_IRREGULAR_VERBS.items())})
_DETERMINERS = {"this": "these", "these": "this", "that": "those", "those": "that"}


def other_verb_form(verb: str) -> str:
    """The verb in the other number: a table for be/have/do, else English -s inflection.

    Examples
    --------
    >>> [other_verb_form(v) for v in ["perform", "performs", "isn't", "watch", "watches", "cry", "cries"]]
    ['performs', 'perform', "aren't", 'watches', 'watch', 'cries', 'cry']
    """
    if verb in _IRREGULAR_VERBS:
        return _IRREGULAR_VERBS[verb]
    if verb.endswith("ies") and len(verb) > 4:
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes", "zes")):
        return verb[:-2]
    if verb.endswith("s") and not verb.endswith("ss"):
        return verb[:-1]
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    if verb.endswith(("ch", "sh", "ss", "x", "z")):
        return verb + "es"
    return verb + "s"


def _merge(parts: list[PatchPairs], relation: str) -> PatchPairs:
    """One `PatchPairs` from several, duplicate clean prompts dropped (a prompt must not be both a
    selection and a report item), every item labelled with its ``relation``."""
    out = PatchPairs([], [], [], [], [], [], {})
    seen: set[tuple[int, ...]] = set()
    for pp in parts:
        for k, v in pp.dropped.items():
            out.dropped[k] = out.dropped.get(k, 0) + v
        for i in range(len(pp)):
            if pp.clean[i] in seen:
                out.dropped["duplicate clean prompt"] = out.dropped.get("duplicate clean prompt", 0) + 1
                continue
            seen.add(pp.clean[i])
            out.ids.append(pp.ids[i])
            out.clean.append(pp.clean[i])
            out.corrupted.append(pp.corrupted[i])
            out.good.append(pp.good[i])
            out.bad.append(pp.bad[i])
            out.labels.append({"relation": relation, **pp.labels[i]})
    return out


def _blimp_rows(folder, pattern: str) -> list[dict]:
    rows = []
    for path in sorted(Path(folder).glob(pattern)):
        with path.open(encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def blimp_agreement_pairs(model, folder, max_pairs: int | None = None) -> PatchPairs:
    """Subject-verb pairs from BLiMP's two-prefix paradigms (``*subject_verb_agreement_2.jsonl``).

    Clean: ``two_prefix_prefix_good`` ("The students"); counterfactual: ``two_prefix_prefix_bad`` ("The
    student"); correct word ``two_prefix_word`` ("perform"), wrong word its `other_verb_form`. The
    one-prefix paradigms (``_1``) change the verb, not the subject, so they give no counterfactual.

    Examples
    --------
    >>> import probekit as pk
    >>> from probekit.data.bundled import BLIMP_DIR
    >>> pp = blimp_agreement_pairs(pk.load_model("tiny-llama"), BLIMP_DIR, max_pairs=4)
    >>> len(pp) <= 4, pp.labels[0]["paradigm"].endswith("subject_verb_agreement_2")
    (True, True)
    """
    rows = _blimp_rows(folder, "*subject_verb_agreement_2.jsonl")
    if not rows:
        raise ProbekitError(
            f"no *subject_verb_agreement_2.jsonl in {folder}", fix="point to a BLiMP folder (data/blimp)"
        )
    rows = rows[:max_pairs] if max_pairs is not None else rows
    return PatchPairs.from_strings(
        model,
        [r["two_prefix_prefix_good"] for r in rows],
        [r["two_prefix_prefix_bad"] for r in rows],
        [r["two_prefix_word"] for r in rows],
        [other_verb_form(r["two_prefix_word"]) for r in rows],
        ids=[f"{r['UID']}-{r['pairID']}" for r in rows],
        labels=[{"paradigm": r["UID"], "source": "blimp"} for r in rows],
    )


def det_noun_pairs(model, folder, max_pairs: int | None = None) -> PatchPairs:
    """Determiner-noun agreement across an adjective (BLiMP ``determiner_noun_agreement_with_adjective_1``).

    Clean: ``one_prefix_prefix`` ("Rebecca was criticizing those good"); counterfactual: the determiner
    (the word before the adjective) in the other number ("... that good"); correct / wrong word: the
    pair's good / bad noun. Pairs whose determiner is not this/these/that/those are dropped and counted.

    Examples
    --------
    >>> import probekit as pk
    >>> from probekit.data.bundled import BLIMP_DIR
    >>> pp = det_noun_pairs(pk.load_model("tiny-llama"), BLIMP_DIR, max_pairs=6)
    >>> len(pp) + sum(pp.dropped.values())
    6
    """
    rows = _blimp_rows(folder, "determiner_noun_agreement_with_adjective_1.jsonl")
    if not rows:
        raise ProbekitError(
            f"no determiner_noun_agreement_with_adjective_1.jsonl in {folder}",
            fix="point to a BLiMP folder (data/blimp)",
        )
    rows = rows[:max_pairs] if max_pairs is not None else rows
    clean, cf, good, bad, ids, labels = [], [], [], [], [], []
    dropped: dict[str, int] = {}
    for r in rows:
        words = r["one_prefix_prefix"].split()
        det = words[-2].lower() if len(words) >= 2 else ""
        if det not in _DETERMINERS:
            dropped["determiner not this/these/that/those"] = (
                dropped.get("determiner not this/these/that/those", 0) + 1
            )
            continue
        flipped = _DETERMINERS[det]
        words_cf = [*words[:-2], flipped.capitalize() if words[-2][0].isupper() else flipped, words[-1]]
        clean.append(" ".join(words))
        cf.append(" ".join(words_cf))
        good.append(r["one_prefix_word_good"])
        bad.append(r["one_prefix_word_bad"])
        ids.append(f"{r['UID']}-{r['pairID']}")
        labels.append({"paradigm": r["UID"], "source": "blimp"})
    out = PatchPairs.from_strings(model, clean, cf, good, bad, ids=ids, labels=labels)
    for k, v in dropped.items():
        out.dropped[k] = out.dropped.get(k, 0) + v
    return out


def binding_pairs(model, n: int = 100, seed: int = 0) -> PatchPairs:
    """Attribute binding: "The red box and the green ball are here. The ball is" -> " green" vs " red".

    The counterfactual swaps the two colours ("The green box and the red ball ..."), so the correct
    colour becomes the wrong one. The queried object alternates between the first and the second.
    Seeded (``random.Random(seed)``); duplicate prompts are not generated.

    Examples
    --------
    >>> import probekit as pk
    >>> pp = binding_pairs(pk.load_model("tiny-llama"), n=4)
    >>> len(pp), len(pp.clean[0]) == len(pp.corrupted[0])
    (4, True)
    """
    rng = random.Random(seed)
    clean: list[str] = []
    cf: list[str] = []
    good: list[str] = []
    bad: list[str] = []
    ids: list[str] = []
    labels: list[dict] = []
    seen: set[str] = set()
    tries = 0
    while len(clean) < n and tries < 100 * n:
        tries += 1
        a, b = rng.sample(COLOURS, 2)
        x, y = rng.sample(OBJECTS, 2)
        first = len(clean) % 2 == 0
        q = x if first else y
        text = f"The {a} {x} and the {b} {y} are here. The {q} is"
        if text in seen:
            continue
        seen.add(text)
        clean.append(text)
        cf.append(f"The {b} {x} and the {a} {y} are here. The {q} is")
        good.append(a if first else b)
        bad.append(b if first else a)
        ids.append(f"binding-{len(ids):04d}")
        labels.append({"paradigm": "binding", "queried": "first" if first else "second"})
    return PatchPairs.from_strings(model, clean, cf, good, bad, ids=ids, labels=labels)


def make_pairs(
    model, relation: str, *, agreement=None, blimp=None, n: int = 100, seed: int = 0
) -> PatchPairs:
    """The counterfactual pairs of one relation (`RELATIONS`), at most ``n``.

    Parameters
    ----------
    model : probekit.Model (causal).
    relation : ``"agreement"``, ``"binding"`` or ``"det_noun"``.
    agreement : ``template:agreement`` pairs (a dataset; default ``template:agreement?n=n``).
    blimp : a BLiMP folder (default: the bundled ``data/blimp``); None-able for ``binding``.
    n, seed : how many pairs; the seed of generated data.

    Returns
    -------
    PatchPairs
        Labels carry ``relation`` and ``paradigm``; ``dropped`` counts what was left out.

    Examples
    --------
    >>> import probekit as pk
    >>> pp = make_pairs(pk.load_model("tiny-llama"), "agreement", n=10)
    >>> sorted(set(lab["relation"] for lab in pp.labels)), len(pp) <= 10
    (['agreement'], True)
    """
    from probekit.data import load_dataset
    from probekit.data.bundled import BLIMP_DIR

    if relation not in RELATIONS:
        raise ProbekitError(f"unknown relation {relation!r}", fix=f"use one of {', '.join(RELATIONS)}")
    folder = blimp if blimp is not None else BLIMP_DIR
    if relation == "agreement":
        data = agreement if agreement is not None else load_dataset(f"template:agreement?n={n}", seed=seed)
        parts = [make_patch_pairs(model, data)]
        if Path(folder).exists() and any(Path(folder).glob("*subject_verb_agreement_2.jsonl")):
            parts.append(blimp_agreement_pairs(model, folder, max_pairs=n))
        pp = _merge(parts, relation)
        # interleave the two sources so that the first n hold both
        order = sorted(range(len(pp)), key=lambda i: (pp.labels[i].get("source") == "blimp", i))
        tem = [i for i in order if pp.labels[i].get("source") != "blimp"]
        bli = [i for i in order if pp.labels[i].get("source") == "blimp"]
        mixed = [i for pair in zip(tem, bli, strict=False) for i in pair]
        mixed += tem[len(mixed) // 2 :] if len(tem) > len(bli) else bli[len(mixed) // 2 :]
        return _take(pp, mixed[:n])
    if relation == "binding":
        return _merge([binding_pairs(model, n, seed)], relation)
    return _merge([det_noun_pairs(model, folder)], relation).head(n)


def _take(pp: PatchPairs, idx: list[int]) -> PatchPairs:
    return PatchPairs(
        [pp.ids[i] for i in idx],
        [pp.clean[i] for i in idx],
        [pp.corrupted[i] for i in idx],
        [pp.good[i] for i in idx],
        [pp.bad[i] for i in idx],
        [pp.labels[i] for i in idx],
        dict(pp.dropped),
    )


def masked_agreement_pairs(model, dataset, *, swap: dict[str, str] | None = None) -> PatchPairs:
    """Agreement pairs for an encoder: the whole ``good`` sentence with the verb masked.

    Clean: "[CLS] The key near the cabinets [MASK] old . [SEP]"; counterfactual: the subject in the other
    number. ``labels``: ``crit`` (the mask's token position, read by the probe), ``label`` (1 if the clean
    subject is plural) and ``relation="agreement"``; ``good``/``bad`` are unused (0). With the verb
    masked, number at the verb position can only come from the context.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-bert")
    >>> pp = masked_agreement_pairs(model, pk.load_dataset("template:agreement?n=4"))
    >>> pp.clean[0][pp.labels[0]["crit"]] == model.tokenizer.mask_token_id
    True
    """
    from probekit.analyses.scoring import as_pairs

    swap = swap if swap is not None else number_swaps()
    tok = model.tokenizer
    mask = tok.mask_token
    if mask is None or model.is_causal:
        raise ProbekitError(
            f"{model.name} has no mask token", fix="use masked_agreement_pairs with an encoder"
        )
    clean, cf, ids, labels = [], [], [], []
    dropped: dict[str, int] = {}
    seen: set[tuple[int, ...]] = set()
    for p in as_pairs(dataset):
        vi, si = p.labels.get("verb_index"), p.subject_index
        words = p.good.replace(".", " .").split()
        other = swap.get(words[si]) if si is not None and si < len(words) else None
        if vi is None or si is None or other is None:
            dropped["no verb_index or no other-number subject"] = (
                dropped.get("no verb_index or no other-number subject", 0) + 1
            )
            continue
        words[vi] = mask
        c = (
            model.cls_token_id,
            *tok(" ".join(words), add_special_tokens=False).input_ids,
            model.sep_token_id,
        )
        words[si] = other
        x = (
            model.cls_token_id,
            *tok(" ".join(words), add_special_tokens=False).input_ids,
            model.sep_token_id,
        )
        if len(c) != len(x):
            dropped["different token length"] = dropped.get("different token length", 0) + 1
            continue
        if c in seen:
            dropped["duplicate clean prompt"] = dropped.get("duplicate clean prompt", 0) + 1
            continue
        seen.add(c)
        clean.append(c)
        cf.append(x)
        ids.append(p.id)
        labels.append(
            {
                "relation": "agreement",
                "paradigm": p.paradigm,
                "crit": c.index(tok.mask_token_id),
                "label": int(p.labels.get("number") == "pl"),
            }
        )
    if not ids:
        raise ProbekitError(f"no usable masked agreement pairs (dropped: {dropped})")
    return PatchPairs(ids, clean, cf, [0] * len(ids), [0] * len(ids), labels, dropped)
