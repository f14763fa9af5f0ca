"""Generated sentences with known answers: the ``template:NAME`` source.

Templates give controlled data where the gold structure is known by construction: every word's head,
relation and part of speech, and labels such as grammatical number. They are seeded and deterministic:
each generator takes ``(n, seed)`` and draws only from its own ``random.Random(seed)``.

Templates (``TEMPLATES``):

- ``svo_adj`` — "The curious cat explored the mysterious room." Subject (a person or animal) - verb -
  object (a thing), each noun with or without an adjective (even odds), singular or plural, past or
  present tense (present verbs agree with the subject). UD arcs: det -> noun, amod -> noun,
  nsubj -> verb, obj -> verb, punct -> verb, verb = root. Per-word labels ``number`` (``Sing``/``Plur``
  on nouns, as UD FEATS) and ``role`` (``subj``/``obj`` on the two nouns); sentence label ``tense``.
- ``agreement`` — subject-verb agreement `MinimalPair`s (after Linzen et al. 2016, "Assessing the
  Ability of LSTMs to Learn Syntax-Sensitive Dependencies", TACL 4): no attractor ("The key is old."),
  a prepositional-phrase attractor of the opposite number ("The key near the cabinets is old.") and a
  relative-clause attractor ("The key that the men lost is old."). ``good`` and ``bad`` differ only in
  the verb's number (is/are, was/were, has/have, or a regular -s verb). ``paradigm`` is
  ``agreement_none|pp|rc``; ``labels``: ``attractor``, ``number`` (``sg``/``pl``, of the subject),
  ``attractor_number``, ``verb_index``, ``verb_kind``. Attractor types and numbers are balanced.
- ``agreement_sentences`` — the ``good`` sentences of ``agreement`` (same ``n`` and seed give the same
  sentences, with the same ids) as `Sentence`s with gold UD arcs, so nsubj arcs exist for head scoring.
  Copular clauses follow UD: the predicate adjective is the head ("old" <-nsubj- "key", "is" -cop->).
- ``bank_sense`` — "bank" as a river bank or a financial bank, with the disambiguating cue word before
  or after it (balanced over the four cells). Sentence labels ``bank_sense`` (``river``/``finance``),
  ``cue_position`` (``before``/``after``), ``bank_index`` and ``cue_index``; per-word label ``sense``
  (the sense at "bank", None elsewhere). No gold arcs (``heads=None``).

Vocabulary lives in ``probekit/data/vocab/*.yaml`` (package data).
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import cast

import yaml

from probekit.data.schema import MinimalPair, Sentence
from probekit.errors import ProbekitError

DEFAULT_N = 200
_PUNCT = {".", ",", "?", "!", ";", ":"}


# --- vocabulary -----------------------------------------------------------------------------------
@functools.cache
def vocab(name: str = "english") -> dict:
    """The parsed ``probekit/data/vocab/{name}.yaml`` (cached; treat it as read-only)."""
    text = resources.files("probekit.data").joinpath("vocab", f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def number_swaps() -> dict[str, str]:
    """Each noun form of the template vocabulary -> its other-number form ("key" <-> "keys").

    The one map that flips a subject's number, for activation patching and causal mediation.

    Examples
    --------
    >>> swaps = number_swaps()
    >>> swaps[swaps["keys"]]
    'keys'
    """
    swaps = {}
    for noun in vocab()["nouns"]:
        if noun.get("sg") and noun.get("pl") and noun["sg"] != noun["pl"]:
            swaps[noun["sg"]] = noun["pl"]
            swaps[noun["pl"]] = noun["sg"]
    return swaps


def _animate(kind: str) -> bool:
    return kind in ("person", "animal")


def _fits(applies: str, kind: str) -> bool:
    """Whether a word tagged ``applies`` (any / animate / thing) can go with a noun of ``kind``."""
    return applies == "any" or applies == ("animate" if _animate(kind) else "thing")


# --- building sentences from named tokens ----------------------------------------------------------
@dataclass(frozen=True)
class _Tok:
    """One word of a template sentence; ``head`` names another token's ``key`` (None = root)."""

    word: str
    upos: str
    deprel: str | None
    head: str | None
    key: str | None
    labels: tuple[tuple[str, str], ...] = ()


def _tok(
    word: str, upos: str, deprel: str | None, head: str | None, key: str | None = None, **labels: str
) -> _Tok:
    return _Tok(word, upos, deprel, head, key, tuple(labels.items()))


def _build(
    sid: str, toks: list[_Tok], source: str, label_names: tuple[str, ...], **sentence_labels
) -> Sentence:
    """A `Sentence` from tokens whose heads are given by key; punctuation is attached without a space."""
    index = {t.key: i for i, t in enumerate(toks) if t.key is not None}
    words = [t.word for t in toks]
    words[0] = words[0][0].upper() + words[0][1:]
    deprels_full = tuple(t.deprel or "root" for t in toks)
    per_word = {name: [dict(t.labels).get(name) for t in toks] for name in label_names}
    return Sentence(
        id=sid,
        words=tuple(words),
        heads=tuple(-1 if t.head is None else index[t.head] for t in toks),
        deprels=tuple(d.split(":")[0] for d in deprels_full),
        deprels_full=deprels_full,
        upos=tuple(t.upos for t in toks),
        space_after=_spaces(words),
        labels={**per_word, **sentence_labels},
        source=source,
    )


def _spaces(words: list[str] | tuple[str, ...]) -> tuple[bool, ...]:
    """No space before punctuation, no space after the last word."""
    return tuple(i + 1 < len(words) and words[i + 1] not in _PUNCT for i in range(len(words)))


def _unique(
    make: Callable[[random.Random, int], object],
    key: Callable[..., str],  # called with what ``make`` returns
    n: int,
    rng: random.Random,
    name: str,
) -> list:
    """``n`` items from ``make(rng, i)`` (i = index of the item being made) with distinct ``key``s.

    Duplicates are redrawn: a sentence repeated on both sides of a split would leak.
    """
    items, seen = [], set()  # type: list, set[str]
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ProbekitError(
                f"template {name!r} could only make {len(items)} distinct sentences, {n} were asked for",
                where=f"template:{name}",
                fix=f"ask for fewer, e.g. template:{name}?n={len(items)}",
            )
        item = make(rng, len(items))
        if key(item) not in seen:
            seen.add(key(item))
            items.append(item)
    return items


# --- svo_adj -------------------------------------------------------------------------------------
def svo_adj(n: int = DEFAULT_N, seed: int = 0) -> list[Sentence]:
    """Subject-verb-object sentences with optional adjectives and gold UD arcs (see module docstring)."""
    v = vocab()
    subjects = [x for x in v["nouns"] if _animate(x["kind"])]
    objects = [x for x in v["nouns"] if x["kind"] == "thing"]
    rng = random.Random(seed)

    def make(rng: random.Random, i: int) -> tuple[list[_Tok], str]:
        subj, obj = rng.choice(subjects), rng.choice(objects)
        verb = rng.choice([x for x in v["verbs"] if x["agent"] == "any" or subj["kind"] == "person"])
        s_num, o_num = rng.choice(("sg", "pl")), rng.choice(("sg", "pl"))
        tense = rng.choice(("past", "present"))
        toks = [_tok("the", "DET", "det", "S")]
        if rng.random() < 0.5:
            toks.append(
                _tok(
                    rng.choice([a for a in v["adjectives"] if _fits(a["applies"], subj["kind"])])["word"],
                    "ADJ",
                    "amod",
                    "S",
                )
            )
        toks.append(_tok(subj[s_num], "NOUN", "nsubj", "V", key="S", number=_UD_NUMBER[s_num], role="subj"))
        toks.append(_tok(verb["past"] if tense == "past" else verb[s_num], "VERB", None, None, key="V"))
        toks.append(_tok("the", "DET", "det", "O"))
        if rng.random() < 0.5:
            toks.append(
                _tok(
                    rng.choice([a for a in v["adjectives"] if a["applies"] != "animate"])["word"],
                    "ADJ",
                    "amod",
                    "O",
                )
            )
        toks.append(_tok(obj[o_num], "NOUN", "obj", "V", key="O", number=_UD_NUMBER[o_num], role="obj"))
        toks.append(_tok(".", "PUNCT", "punct", "V"))
        return toks, tense

    made = _unique(make, lambda made: " ".join(t.word for t in made[0]), n, rng, "svo_adj")
    return [
        _build(f"svo_adj-{i:04d}", toks, "template:svo_adj", ("number", "role"), tense=tense)
        for i, (toks, tense) in enumerate(made)
    ]


_UD_NUMBER = {"sg": "Sing", "pl": "Plur"}
_OTHER = {"sg": "pl", "pl": "sg"}
_BE_PRESENT = {"sg": "is", "pl": "are"}
_BE_PAST = {"sg": "was", "pl": "were"}
_HAVE = {"sg": "has", "pl": "have"}


# --- agreement -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AgreementItem:
    toks: tuple[_Tok, ...]
    attractor: str
    number: str
    verb_index: int
    bad_verb: str
    verb_kind: str


def _agreement_items(n: int, seed: int) -> list[_AgreementItem]:
    """The shared generator behind ``agreement`` and ``agreement_sentences``."""
    v = vocab()
    rng = random.Random(seed)

    def make(rng: random.Random, i: int) -> _AgreementItem:
        attractor = ("none", "pp", "rc")[i % 3]
        number = ("sg", "pl")[(i // 3) % 2]
        attr_number = _OTHER[number]
        # in "The key that the men lost", the subject is the object of the relative clause: a thing
        pool = [x for x in v["nouns"] if attractor != "rc" or x["kind"] == "thing"]
        subj = rng.choice(pool)
        toks = [
            _tok("the", "DET", "det", "S"),
            _tok(subj[number], "NOUN", "nsubj", "P", key="S", number=_UD_NUMBER[number]),
        ]
        if attractor == "pp":
            attr = rng.choice([x for x in v["nouns"] if x is not subj])
            toks += [
                _tok(rng.choice(v["prepositions"]), "ADP", "case", "A"),
                _tok("the", "DET", "det", "A"),
                _tok(attr[attr_number], "NOUN", "nmod", "S", key="A", number=_UD_NUMBER[attr_number]),
            ]
        elif attractor == "rc":
            attr = rng.choice([x for x in v["nouns"] if x["kind"] == "person"])
            verb = rng.choice(v["verbs"])
            toks += [
                _tok("that", "PRON", "obj", "R"),
                _tok("the", "DET", "det", "A"),
                _tok(attr[attr_number], "NOUN", "nsubj", "R", key="A", number=_UD_NUMBER[attr_number]),
                _tok(verb["past"], "VERB", "acl:relcl", "S", key="R"),
            ]
        verb_kind = rng.choice(("be_present", "be_past", "have", "regular"))
        if verb_kind in ("be_present", "be_past"):  # UD copula: the adjective heads the clause
            forms = _BE_PRESENT if verb_kind == "be_present" else _BE_PAST
            adj = rng.choice([a for a in v["adjectives"] if _fits(a["applies"], subj["kind"])])["word"]
            toks += [_tok(forms[number], "AUX", "cop", "P", key="V"), _tok(adj, "ADJ", None, None, key="P")]
            bad = forms[attr_number]
        elif verb_kind == "have":
            toks += [
                _tok(_HAVE[number], "AUX", "aux", "P", key="V"),
                _tok(rng.choice(v["participles"]), "VERB", None, None, key="P"),
            ]
            bad = _HAVE[attr_number]
        else:
            verb = rng.choice([x for x in v["intransitive_verbs"] if _fits(x["applies"], subj["kind"])])
            toks += [
                _tok(verb[number], "VERB", None, None, key="P"),
                _tok(rng.choice(v["adverbs"]), "ADV", "advmod", "P"),
            ]
            bad = verb[attr_number]
        toks.append(_tok(".", "PUNCT", "punct", "P"))
        verb_index = next(k for k, t in enumerate(toks) if t.key in ("V", "P"))
        return _AgreementItem(tuple(toks), attractor, number, verb_index, bad, verb_kind)

    return _unique(make, lambda item: " ".join(t.word for t in item.toks), n, rng, "agreement")


def _agreement_sentence(k: int, item: _AgreementItem, source: str) -> Sentence:
    return _build(
        f"agreement_{item.attractor}-{k:04d}",
        list(item.toks),
        source,
        ("number",),
        attractor=item.attractor,
        subject_number=item.number,
        subject_index=1,
        verb_index=item.verb_index,
        verb_kind=item.verb_kind,
        paradigm=f"agreement_{item.attractor}",
    )


def agreement(n: int = DEFAULT_N, seed: int = 0) -> list[MinimalPair]:
    """Subject-verb agreement minimal pairs with no / PP / relative-clause attractors."""
    pairs = []
    for k, item in enumerate(_agreement_items(n, seed)):
        s = _agreement_sentence(k, item, "template:agreement")
        words = list(s.words)
        words[item.verb_index] = item.bad_verb
        bad = Sentence(id=s.id, words=tuple(words), space_after=s.space_after).text
        pairs.append(
            MinimalPair(
                id=s.id,
                paradigm=f"agreement_{item.attractor}",
                good=s.text,
                bad=bad,
                prefix=" ".join(s.words[: item.verb_index]),
                good_word=s.words[item.verb_index],
                bad_word=item.bad_verb,
                subject_index=1,
                labels={
                    "attractor": item.attractor,
                    "number": item.number,
                    "attractor_number": None if item.attractor == "none" else _OTHER[item.number],
                    "verb_index": item.verb_index,
                    "verb_kind": item.verb_kind,
                },
                source="template:agreement",
            )
        )
    return pairs


def agreement_sentences(n: int = DEFAULT_N, seed: int = 0) -> list[Sentence]:
    """The ``good`` sentences of `agreement` (same ``n``/``seed``, same ids) with gold UD arcs."""
    return [
        _agreement_sentence(k, item, "template:agreement_sentences")
        for k, item in enumerate(_agreement_items(n, seed))
    ]


# --- bank_sense ----------------------------------------------------------------------------------
_SLOT = re.compile(r"\{(\w+)\}")


def _bank_candidates(sense: str, position: str) -> list[tuple[tuple[str, ...], int]]:
    """Every sentence of one (sense, cue position) cell: (words, index of the cue word)."""
    v = vocab("bank_sense")
    out = []
    for frame in v["frames"][sense][position]:
        words = frame.split()
        slots = [  # filtered to matches
            (i, cast("re.Match[str]", _SLOT.fullmatch(w)).group(1))
            for i, w in enumerate(words)
            if _SLOT.fullmatch(w)
        ]
        for fill in itertools.product(*(v["fillers"][name] for _, name in slots)):
            filled = list(words)
            for (i, _), word in zip(slots, fill, strict=True):
                filled[i] = word
            out.append((tuple(filled), slots[0][0]))
    return out


def bank_sense(n: int = DEFAULT_N, seed: int = 0) -> list[Sentence]:
    """ "bank" in river vs finance contexts, cue before or after (see module docstring)."""
    rng = random.Random(seed)
    cells = [("river", "before"), ("river", "after"), ("finance", "before"), ("finance", "after")]
    pools = {}
    for cell in cells:
        pool = _bank_candidates(*cell)
        rng.shuffle(pool)
        pools[cell] = pool
    need = {cell: len(range(k, n, len(cells))) for k, cell in enumerate(cells)}
    for cell, pool in pools.items():
        if need[cell] > len(pool):
            most = min(len(p) for p in pools.values()) * len(cells)
            raise ProbekitError(
                f"template 'bank_sense' has {len(pool)} distinct {cell[0]}/{cell[1]} sentences, "
                f"{need[cell]} are needed for n={n}",
                where="template:bank_sense",
                fix=f"ask for at most n={most}",
            )
    out = []
    for i in range(n):
        sense, position = cells[i % len(cells)]
        words, cue_index = pools[(sense, position)][i // len(cells)]
        bank_index = words.index("bank")
        out.append(
            Sentence(
                id=f"bank_sense-{i:04d}",
                words=words,
                space_after=_spaces(words),
                labels={
                    "sense": [sense if k == bank_index else None for k in range(len(words))],
                    "bank_sense": sense,
                    "cue_position": position,
                    "bank_index": bank_index,
                    "cue_index": cue_index,
                    "cue_word": words[cue_index],
                },
                source="template:bank_sense",
            )
        )
    return out


#: name -> generator(n, seed)
TEMPLATES: dict[str, Callable[[int, int], list]] = {
    "svo_adj": svo_adj,
    "agreement": agreement,
    "agreement_sentences": agreement_sentences,
    "bank_sense": bank_sense,
}


def generate(name: str, n: int = DEFAULT_N, seed: int = 0) -> list:
    """The items of template ``name`` (``n`` of them, for ``seed``)."""
    if name not in TEMPLATES:
        raise ProbekitError(
            f"unknown template {name!r}", where=f"template:{name}", fix=f"use one of {sorted(TEMPLATES)}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ProbekitError(
            f"n is {n!r}; it must be a positive integer",
            where=f"template:{name}",
            fix=f"e.g. template:{name}?n=200",
        )
    return TEMPLATES[name](n, seed)
