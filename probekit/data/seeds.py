"""The worked examples of the project's source document, with hand-written gold UD arcs: ``seed:NAME``.

- ``seed:bank`` — "The bank of the river was steep, and I also need to go to the bank to deposit money."
  One sentence, two senses of "bank": per-word label ``sense`` is ``river`` at the first "bank" (word 1)
  and ``finance`` at the second (word 16); ``labels["bank_indices"] == (1, 16)``.
- ``seed:explored`` — "The curious cat explored the mysterious room." (labels as ``template:svo_adj``).
- ``seed:all`` — both, in that order.

Words are tokenized the UD way (punctuation split off; no space before "," and "."). Arcs follow the
UD English guidelines as the EWT treebank applies them: the copula "was" is a ``cop`` dependent of the
predicate "steep", the second clause is a ``conj`` of the first, "to go" is an ``xcomp`` of "need",
"to the bank" an ``obl`` of "go" and "to deposit money" an ``advcl`` of "go".
"""

from __future__ import annotations

from probekit.data.schema import Sentence
from probekit.errors import ProbekitError


def _sentence(sid: str, rows: list[tuple[str, int, str, str]], labels: dict) -> Sentence:
    """Build from ``(word, head, deprel, upos)`` rows, heads 1-based as in CoNLL-U (0 = root)."""
    words = tuple(r[0] for r in rows)
    return Sentence(
        id=sid,
        words=words,
        heads=tuple(r[1] - 1 for r in rows),
        deprels=tuple(r[2].split(":")[0] for r in rows),
        deprels_full=tuple(r[2] for r in rows),
        upos=tuple(r[3] for r in rows),
        space_after=tuple(i + 1 < len(words) and words[i + 1] not in {",", "."} for i in range(len(words))),
        labels=labels,
        source=f"seed:{sid.removeprefix('seed-')}",
    )


def bank() -> Sentence:
    rows = [
        ("The", 2, "det", "DET"),  # 1
        ("bank", 7, "nsubj", "NOUN"),  # 2
        ("of", 5, "case", "ADP"),  # 3
        ("the", 5, "det", "DET"),  # 4
        ("river", 2, "nmod", "NOUN"),  # 5
        ("was", 7, "cop", "AUX"),  # 6
        ("steep", 0, "root", "ADJ"),  # 7
        (",", 12, "punct", "PUNCT"),  # 8
        ("and", 12, "cc", "CCONJ"),  # 9
        ("I", 12, "nsubj", "PRON"),  # 10
        ("also", 12, "advmod", "ADV"),  # 11
        ("need", 7, "conj", "VERB"),  # 12
        ("to", 14, "mark", "PART"),  # 13
        ("go", 12, "xcomp", "VERB"),  # 14
        ("to", 17, "case", "ADP"),  # 15
        ("the", 17, "det", "DET"),  # 16
        ("bank", 14, "obl", "NOUN"),  # 17
        ("to", 19, "mark", "PART"),  # 18
        ("deposit", 14, "advcl", "VERB"),  # 19
        ("money", 19, "obj", "NOUN"),  # 20
        (".", 7, "punct", "PUNCT"),  # 21
    ]
    n = len(rows)
    sense = [None] * n  # type: list[str | None]
    sense[1], sense[16] = "river", "finance"
    number = [("Sing" if r[3] == "NOUN" else None) for r in rows]
    return _sentence("seed-bank", rows, {"sense": sense, "number": number, "bank_indices": (1, 16)})


def explored() -> Sentence:
    rows = [
        ("The", 3, "det", "DET"),
        ("curious", 3, "amod", "ADJ"),
        ("cat", 4, "nsubj", "NOUN"),
        ("explored", 0, "root", "VERB"),
        ("the", 7, "det", "DET"),
        ("mysterious", 7, "amod", "ADJ"),
        ("room", 4, "obj", "NOUN"),
        (".", 4, "punct", "PUNCT"),
    ]
    labels = {
        "number": [None, None, "Sing", None, None, None, "Sing", None],
        "role": [None, None, "subj", None, None, None, "obj", None],
        "tense": "past",
    }
    return _sentence("seed-explored", rows, labels)


SEEDS = {"bank": bank, "explored": explored}


def load_seed(name: str) -> list[Sentence]:
    """The seed sentence(s) called ``name`` (``bank``, ``explored`` or ``all``)."""
    if name == "all":
        return [make() for make in SEEDS.values()]
    if name not in SEEDS:
        raise ProbekitError(
            f"unknown seed {name!r}", where=f"seed:{name}", fix=f"use one of {[*SEEDS, 'all']}"
        )
    return [SEEDS[name]()]
