"""Relation instances: which word should attend to which (head scoring), or is the head of which (probes).

A *relation instance* is a pair (src, tgt) of word indices in one sentence: ``src`` is the attending
word and ``tgt`` its gold partner. Attention-head analyses (Clark et al. 2019, "What Does BERT Look At?",
BlackboxNLP; Voita et al. 2019, ACL) ask, for each relation, how often a head's most-attended word from
``src`` is ``tgt``. Two families:

- **Word-pair relations** come from gold dependency arcs, by base deprel (``nsubj``, ``amod``, ...). Each
  arc gives one instance per direction: ``dep_to_head`` (src = dependent, tgt = head, "the subject looks
  at its verb") and ``head_to_dep`` (src = head, tgt = dependent, "the verb looks at its subject").
  A name with a colon (``nsubj:pass``) matches the full label instead.
- **Positional relations** (direction ``"positional"``) are the baselines every syntactic claim must
  beat: ``prev_word`` (tgt = src - 1), ``next_word`` (tgt = src + 1), ``self`` (tgt = src) and
  ``first_word`` (tgt = 0), generated for every word whose target exists.

``dobj`` (Stanford Dependencies / ClearNLP, and Clark et al.'s tables) is accepted as an alias of the UD
relation ``obj``; see `RELATION_ALIASES`. The ``relation`` column reports the name you asked for.

`relation_instances` is the one reader of relation arcs: head scoring and the probes' ``relation:R``
tasks (`probekit.analyses.probes.tasks`) both call it, so a relation name means the same arcs in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from probekit.data.dataset import Dataset
from probekit.errors import ProbekitError

if TYPE_CHECKING:
    import pandas as pd

#: Older names accepted for UD relations (name asked for -> UD base deprel in the data).
RELATION_ALIASES: dict[str, str] = {"dobj": "obj"}

#: Relations defined by position alone, with no parse needed.
POSITIONAL_RELATIONS: tuple[str, ...] = ("prev_word", "next_word", "self", "first_word")

#: Deprels left out when ``relations=None``: the root has no head word, and punctuation attachments
#: are a convention of the treebank rather than a syntactic relation a head could "find".
EXCLUDED_BY_DEFAULT: frozenset[str] = frozenset({"root", "punct"})

DIRECTIONS: tuple[str, ...] = ("dep_to_head", "head_to_dep")
COLUMNS = ("sentence_idx", "sentence_id", "relation", "direction", "src", "tgt", "offset")


def present_relations(dataset: Dataset) -> list[str]:
    """Base deprels that label at least one arc in ``dataset`` (root excluded), sorted."""
    found: set[str] = set()
    for s in dataset.sentences:
        if s.heads is not None and s.deprels is not None:
            found.update(d for h, d in zip(s.heads, s.deprels, strict=True) if h >= 0)
    return sorted(found)


def relation_instances(
    dataset: Dataset,
    relations: Iterable[str] | None = None,
    directions: Sequence[str] = DIRECTIONS,
) -> pd.DataFrame:
    """One row per (relation, direction, sentence, src word): the gold target ``tgt`` of ``src``.

    Parameters
    ----------
    dataset : the sentences to read (minimal pairs are ignored; sentence_idx counts `Dataset.sentences`).
    relations : names to generate; ``None`` means every base deprel present in the data except
        ``root``/``punct``, plus `POSITIONAL_RELATIONS`. A name that is neither positional nor present
        (after `RELATION_ALIASES`) raises `ProbekitError` listing the relations that are present.
    directions : for word-pair relations, any of ``"dep_to_head"``, ``"head_to_dep"``. Positional
        relations always have direction ``"positional"``.

    Returns
    -------
    DataFrame with columns ``sentence_idx, sentence_id, relation, direction, src, tgt, offset`` with
    ``offset = tgt - src``. Sentences without heads or without deprels give no word-pair rows.

    Examples
    --------
    >>> from probekit.data import load_dataset, relation_instances
    >>> r = relation_instances(load_dataset("seed:explored"), ["nsubj", "dobj"], directions="dep_to_head")
    >>> r[["relation", "src", "tgt"]].values.tolist()
    [['nsubj', 2, 3], ['dobj', 6, 3]]
    """
    import pandas as pd

    if isinstance(directions, str):
        directions = (directions,)
    for d in directions:
        if d not in DIRECTIONS:
            raise ProbekitError(
                f"unknown direction {d!r}",
                where="relation_instances(directions=...)",
                fix=f"use any of {list(DIRECTIONS)} (positional relations need no direction)",
            )
    present = present_relations(dataset)
    present_full = {f for s in dataset.sentences if s.heads is not None for f in (s.deprels_full or ())}
    if relations is None:
        names = [r for r in present if r not in EXCLUDED_BY_DEFAULT] + list(POSITIONAL_RELATIONS)
    else:
        if isinstance(relations, str):
            relations = [relations]
        names = list(dict.fromkeys(relations))  # unique, order kept
        for name in names:
            target = RELATION_ALIASES.get(name, name)
            if (
                name in POSITIONAL_RELATIONS
                or target in present
                or (":" in target and target in present_full)
            ):
                continue
            raise ProbekitError(
                f"relation {name!r} does not occur in dataset {dataset.spec!r}",
                where="relation_instances(relations=...)",
                fix=f"use one of the relations present: {present}, "
                f"or a positional one: {list(POSITIONAL_RELATIONS)}",
            )

    rows: list[tuple] = []
    sentences = dataset.sentences
    for name in names:
        if name in POSITIONAL_RELATIONS:
            for k, s in enumerate(sentences):
                for src, tgt in _positional_pairs(name, len(s.words)):
                    rows.append((k, s.id, name, "positional", src, tgt, tgt - src))
            continue
        target = RELATION_ALIASES.get(name, name)
        for direction in directions:
            for k, s in enumerate(sentences):
                labels = (s.deprels_full or s.deprels) if ":" in target else s.deprels
                if s.heads is None or labels is None:  # no tree, or a tree without relation labels
                    continue
                for dep, head in enumerate(s.heads):
                    if head < 0 or labels[dep] != target:
                        continue
                    src, tgt = (dep, head) if direction == "dep_to_head" else (head, dep)
                    rows.append((k, s.id, name, direction, src, tgt, tgt - src))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _positional_pairs(name: str, n: int) -> Iterable[tuple[int, int]]:
    """(src, tgt) for a positional relation in an n-word sentence, for every src whose tgt exists."""
    if name == "prev_word":
        return ((i, i - 1) for i in range(1, n))
    if name == "next_word":
        return ((i, i + 1) for i in range(n - 1))
    if name == "self":
        return ((i, i) for i in range(n))
    return ((i, 0) for i in range(n))  # first_word
