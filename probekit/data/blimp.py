"""Read BLiMP minimal pairs (JSON Lines) into `MinimalPair`s: the ``blimp:PATH`` source.

BLiMP (Warstadt et al. 2020, "BLiMP: The Benchmark of Linguistic Minimal Pairs for English", TACL 8)
ships one ``.jsonl`` file per paradigm, 1,000 pairs each. A line looks like::

    {"sentence_good": "Paula references Robert.", "sentence_bad": "Paula reference Robert.",
     "one_prefix_prefix": "Paula", "one_prefix_word_good": "references", "one_prefix_word_bad": "reference",
     "UID": "regular_plural_subject_verb_agreement_1", "pairID": "0", ...}

Fields used: ``sentence_good``, ``sentence_bad``, ``UID`` (-> ``paradigm``), ``pairID`` (-> ``id`` =
``UID-pairID``) and the critical word:

- *one-prefix* paradigms give ``one_prefix_prefix`` and ``one_prefix_word_good``/``_bad``: the shared
  prefix and the two words that may follow it. They map to ``prefix``, ``good_word``, ``bad_word``.
- *two-prefix* paradigms (e.g. ``regular_plural_subject_verb_agreement_2``: "The students perform." vs
  "The student perform.") instead give ``two_prefix_prefix_good``/``_bad`` and a shared
  ``two_prefix_word``. The prefixes differ in one word (the subject); ``prefix`` is the words they share
  and ``good_word``/``bad_word`` the differing words. ``labels["method"]`` says which kind a pair is.

Every pair is checked: ``prefix + " " + good_word`` must start ``sentence_good`` (and likewise bad).
``field``, ``linguistics_term`` and ``lexically_identical`` are kept in ``labels``.
"""

from __future__ import annotations

import json
from pathlib import Path

from probekit.data.schema import MinimalPair
from probekit.data.ud import read_text
from probekit.errors import ProbekitError

REQUIRED = ("sentence_good", "sentence_bad", "UID", "pairID")
ONE_PREFIX = ("one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad")
TWO_PREFIX = ("two_prefix_prefix_good", "two_prefix_prefix_bad", "two_prefix_word")
KEPT_LABELS = ("field", "linguistics_term", "lexically_identical")


def blimp_files(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every ``*.jsonl`` in the directory, sorted by name."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ProbekitError(
            "BLiMP path not found", where=str(p), fix="give a BLiMP .jsonl file or a directory of them"
        )
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise ProbekitError(
                "the directory has no *.jsonl files",
                where=str(p),
                fix="point at a directory of BLiMP .jsonl files",
            )
        return files
    return [p]


def load_blimp(path: str | Path, *, max_pairs: int | None = None) -> list[MinimalPair]:
    """The minimal pairs of a BLiMP ``.jsonl`` file, or of every ``*.jsonl`` in a directory (sorted)."""
    pairs: list[MinimalPair] = []
    for file in blimp_files(path):
        for lineno, line in enumerate(read_text(file, "BLiMP").splitlines(), start=1):
            if max_pairs is not None and len(pairs) >= max_pairs:
                return pairs
            if line.strip():
                pairs.append(_pair(json_record(file, lineno, line), file, lineno))
    if not pairs:
        raise ProbekitError(
            "no BLiMP pairs found", where=str(path), fix="check that the files have one JSON object per line"
        )
    return pairs


def json_record(file: Path, lineno: int, line: str) -> dict:
    """One JSON object from one line, or a `ProbekitError` naming file:line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ProbekitError(
            f"invalid JSON: {e.msg} (column {e.colno})",
            where=f"{file}:{lineno}",
            fix="each line must be one JSON object",
        ) from None
    if not isinstance(record, dict):
        raise ProbekitError(
            f"the line is a JSON {type(record).__name__}, not an object",
            where=f"{file}:{lineno}",
            fix="each line must be one JSON object",
        )
    return record


def _json_type(value) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "array", type(None): "null"}.get(type(value), type(value).__name__)


def _field(record: dict, name: str, file: Path, lineno: int) -> str:
    value = record.get(name)
    if value is None:
        raise ProbekitError(
            f"the BLiMP record has no {name!r} field",
            where=f"{file}:{lineno}",
            fix=f"add {name!r} to the line (BLiMP records have {', '.join(REQUIRED + ONE_PREFIX)})",
        )
    allowed = (str, int) if name == "pairID" else (str,)  # BLiMP files write pairID as "0" or 0
    if not isinstance(value, allowed) or isinstance(value, bool):
        raise ProbekitError(
            f"field {name!r} is a {_json_type(value)} ({value!r}), not a string",
            where=f"{file}:{lineno}, field {name!r}",
            fix=f'write {name!r} as a JSON string, e.g. "{name}": "{value}"',
        )
    if str(value).strip() == "":
        raise ProbekitError(
            f"field {name!r} is empty; it must be a non-empty string",
            where=f"{file}:{lineno}, field {name!r}",
            fix=f"fill in {name!r} on this line",
        )
    return str(value)


def _pair(record: dict, file: Path, lineno: int) -> MinimalPair:
    good, bad, uid, pair_id = (_field(record, name, file, lineno) for name in REQUIRED)
    if all(name in record for name in TWO_PREFIX) and not all(name in record for name in ONE_PREFIX):
        prefix_good, prefix_bad, _ = (_field(record, name, file, lineno) for name in TWO_PREFIX)
        prefix, good_word, bad_word = _split_two_prefix(prefix_good, prefix_bad, file, lineno)
        method = "two_prefix"
    else:  # the one-prefix fields are the default; a missing one is reported by name
        prefix, good_word, bad_word = (_field(record, name, file, lineno) for name in ONE_PREFIX)
        method = "one_prefix"
    for sentence, word, which in ((good, good_word, "good"), (bad, bad_word, "bad")):
        if not sentence.startswith(f"{prefix} {word}"):
            raise ProbekitError(
                f"prefix + ' ' + {which} word ({prefix + ' ' + word!r}) "
                f"does not start sentence_{which} ({sentence!r})",
                where=f"{file}:{lineno}",
                fix="check the prefix and critical-word fields of this line",
            )
    labels = {"method": method, **{k: record[k] for k in KEPT_LABELS if k in record}}
    return MinimalPair(
        id=f"{uid}-{pair_id}",
        paradigm=uid,
        good=good,
        bad=bad,
        prefix=prefix,
        good_word=good_word,
        bad_word=bad_word,
        labels=labels,
        source=f"{file}:{lineno}",
    )


def _split_two_prefix(prefix_good: str, prefix_bad: str, file: Path, lineno: int) -> tuple[str, str, str]:
    """Shared words and the one differing word of two prefixes: "The students"/"The student"."""
    g, b = prefix_good.split(), prefix_bad.split()
    if (
        len(g) != len(b)
        or len(g) < 2
        or sum(x != y for x, y in zip(g, b, strict=True)) != 1
        or g[-1] == b[-1]
    ):
        raise ProbekitError(
            f"two-prefix record: {prefix_good!r} and {prefix_bad!r} must differ in exactly their last word, "
            "after a shared start",
            where=f"{file}:{lineno}",
            fix="this loader represents a pair by a shared prefix and one critical word",
        )
    return " ".join(g[:-1]), g[-1], b[-1]
