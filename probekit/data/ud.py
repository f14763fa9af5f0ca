"""Read Universal Dependencies treebanks (CoNLL-U) into `Sentence`s: the ``ud:PATH`` source.

Format: https://universaldependencies.org/format.html. Each word line has 10 tab-separated columns
``ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC``; sentences are separated by blank lines and
may start with ``# key = value`` comments.

What we keep, and how:

- **Words** are the lines with an integer ID. Multi-word token ranges (``3-4 don't``) are surface
  tokens, not syntactic words, and empty nodes (``5.1``, enhanced-graph ellipsis) are not in the basic
  tree: both are skipped. A range's ``SpaceAfter=No`` applies to its last word; the words inside a
  range are written without spaces between them.
- **Heads** become 0-based word indices: CoNLL-U HEAD ``h`` (1-based, 0 = root) -> ``h - 1``, root
  -> ``-1``. Because empty nodes and ranges are not counted, word ``k`` (ID ``k``) is index ``k - 1``.
- **Deprels**: ``deprels_full`` keeps the label (``nsubj:pass``), ``deprels`` the base before ``:``.
- **space_after** is False where MISC has ``SpaceAfter=No``.
- **id** is ``# sent_id``, else ``PATH#n`` (n counts sentences from 1).
- **labels["number"]** is the FEATS ``Number`` value per word (``Sing``, ``Plur``, ...; None if absent),
  used by the grammatical-number probe.
- A sentence whose words all have HEAD and DEPREL ``_`` has no tree (``heads=None``).

Parsing uses the `conllu` library. It is lenient (it accepts short lines, for instance), so each line
is validated here first and errors name the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import conllu
from conllu.exceptions import ParseException

from probekit.data.schema import Sentence, find_cycle
from probekit.errors import ProbekitError

_INT_ID = re.compile(r"[1-9][0-9]*")
_RANGE_ID = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)")
_EMPTY_ID = re.compile(r"[0-9]+\.[1-9][0-9]*")
_HEAD = re.compile(r"0|[1-9][0-9]*")


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``, or a `ProbekitError` saying why it cannot be read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ProbekitError(
            f"{what} file not found",
            where=str(p),
            fix="check the path (relative paths start at the working directory)",
        )
    if p.is_dir():
        raise ProbekitError(
            f"{what} path is a directory, not a file", where=str(p), fix=f"point at a {what} file"
        )
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ProbekitError(
            f"{what} file is not valid UTF-8 ({e.reason} at byte {e.start})",
            where=str(p),
            fix="re-save the file as UTF-8",
        ) from None
    except OSError as e:
        raise ProbekitError(
            f"cannot read {what} file: {e.strerror}", where=str(p), fix="check the file's permissions"
        ) from None


def load_conllu(path: str | Path, *, max_sentences: int | None = None) -> list[Sentence]:
    """Sentences of the CoNLL-U file at ``path`` (the first ``max_sentences`` if given), in file order."""
    text = read_text(path, "CoNLL-U")
    sentences = []  # type: list[Sentence]
    for block in _blocks(text.splitlines()):
        if max_sentences is not None and len(sentences) >= max_sentences:
            break
        if all(line.startswith("#") for _, line in block):
            continue  # a comment block with no words (e.g. a file header): nothing to read
        sentences.append(_sentence(block, path, len(sentences) + 1))
    if not sentences:
        raise ProbekitError(
            "the CoNLL-U file has no sentences", where=str(path), fix="check that this is a CoNLL-U file"
        )
    return sentences


def _blocks(lines: list[str]) -> list[list[tuple[int, str]]]:
    """Group lines into sentences (separated by blank lines), keeping 1-based line numbers."""
    blocks, current = [], []
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            current.append((lineno, line.rstrip("\r\n")))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _malformed(path, lineno: int, what: str) -> ProbekitError:
    return ProbekitError(
        f"malformed CoNLL-U line: {what}",
        where=f"{path}:{lineno}",
        fix="each word line needs 10 tab-separated columns "
        "ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC "
        "(see https://universaldependencies.org/format.html)",
    )


def _validate_line(path, lineno: int, line: str) -> tuple[str, list[str]]:
    """Check one token line; return its kind ("word", "range" or "empty") and its columns."""
    cols = line.split("\t")
    if len(cols) != 10:
        raise _malformed(path, lineno, f"{len(cols)} tab-separated columns instead of 10")
    tid, form, head, deprel = cols[0], cols[1], cols[6], cols[7]
    if _EMPTY_ID.fullmatch(tid):
        return "empty", cols
    m = _RANGE_ID.fullmatch(tid)
    if m:
        if int(m.group(2)) <= int(m.group(1)):
            raise _malformed(path, lineno, f"token range {tid!r} does not increase")
        return "range", cols
    if not _INT_ID.fullmatch(tid):
        raise _malformed(
            path, lineno, f"ID {tid!r} is not an integer, a range like 3-4 or an empty node like 5.1"
        )
    if not form or form.isspace():
        raise _malformed(path, lineno, "the FORM column is empty")
    if not (_HEAD.fullmatch(head) or head == "_"):
        raise _malformed(path, lineno, f"HEAD {head!r} is not a non-negative integer")
    if (head == "_") != (deprel == "_") or not deprel:
        raise _malformed(
            path, lineno, f"HEAD {head!r} and DEPREL {deprel!r} must both be given (or both be _)"
        )
    return "word", cols


def _check_conllu_tree(heads: list[int], words: list[str], word_lines: list[int], path, where: str) -> None:
    """Self-loops and cycles, reported with CoNLL-U IDs (1-based; HEAD 0 is the root) and the word's line.

    ``heads`` are 0-based (-1 for the root), as `Sentence` stores them."""
    for i, h in enumerate(heads):
        if h == i:
            raise ProbekitError(
                f"word ID {i + 1} ({words[i]!r}) has itself as HEAD",
                where=f"{path}:{word_lines[i]} ({where})",
                fix="HEAD must be 0 (root) or the ID of another word of the sentence",
            )
    cycle = find_cycle(heads)
    if cycle is not None:
        cycle = sorted(cycle)
        raise ProbekitError(
            f"the HEAD column forms a cycle through word IDs {', '.join(str(j + 1) for j in cycle)}",
            where=f"{path}:{word_lines[cycle[0]]} ({where})",
            fix="check the HEAD column of these words; a dependency tree has no cycles",
        )


def _sentence(block: list[tuple[int, str]], path, number: int) -> Sentence:
    """Validate one sentence block, parse it with `conllu`, and build a `Sentence`."""
    first_line = block[0][0]
    word_lines: list[int] = []  # line number of each word, for error messages
    range_ends: dict[int, int] = {}  # last word ID of a range -> its line number
    for lineno, line in block:
        if line.startswith("#"):
            continue
        kind, cols = _validate_line(path, lineno, line)
        if kind == "range":
            range_ends[int(cols[0].split("-")[1])] = lineno
        elif kind == "word":
            expected = len(word_lines) + 1
            if int(cols[0]) != expected:
                raise _malformed(
                    path, lineno, f"word ID {cols[0]} where {expected} was expected (IDs count 1, 2, 3, ...)"
                )
            word_lines.append(lineno)
    try:
        tokenlist = conllu.parse("\n".join(line for _, line in block))[0]
    except ParseException as e:
        raise ProbekitError(
            f"the conllu library could not parse this sentence: {e}",
            where=f"{path}:{first_line}",
            fix="check the sentence's columns",
        ) from None

    sent_id = tokenlist.metadata.get("sent_id") or f"{path}#{number}"
    where = f"sentence {sent_id!r}"
    upos: list[str | None] | None  # None: the sentence has no UPOS column
    words, heads, deprels_full, upos, space_after, number_feats = [], [], [], [], [], []
    range_space: dict[int, bool] = {}
    n = len(word_lines)
    for token in tokenlist:
        tid = token["id"]
        misc = token["misc"] or {}
        if isinstance(tid, tuple):
            if tid[1] == "-":  # multi-word token: its SpaceAfter belongs to its last word
                range_space[tid[2]] = misc.get("SpaceAfter") != "No"
                for inner in range(tid[0], tid[2]):
                    range_space[inner] = False
            continue  # empty node
        head = token["head"]
        if head is not None and head > n:
            raise ProbekitError(
                f"word {tid} has HEAD {head}, but the sentence has only {n} words",
                where=f"{path}:{word_lines[tid - 1]} ({where})",
                fix="HEAD must be 0 (root) or the ID of a word in the same sentence",
            )
        words.append(token["form"])
        heads.append(None if head is None else head - 1)
        deprels_full.append(token["deprel"])
        upos.append(token["upos"])
        space_after.append(misc.get("SpaceAfter") != "No")
        number_feats.append((token["feats"] or {}).get("Number"))
    for word_id, space in range_space.items():
        if 1 <= word_id <= n:
            space_after[word_id - 1] = space

    has_tree = any(h is not None for h in heads)
    if has_tree and None in heads:
        missing = heads.index(None) + 1
        raise ProbekitError(
            f"word {missing} has HEAD _ but other words of the sentence have heads",
            where=f"{path}:{word_lines[missing - 1]} ({where})",
            fix="give every word a HEAD and DEPREL, or none of them (a sentence without a tree)",
        )
    if has_tree:
        _check_conllu_tree(
            cast(list[int], heads), words, word_lines, path, where
        )  # no None here (checked above)
    if all(u is None for u in upos):
        upos = None
    try:
        return Sentence(
            id=sent_id,
            words=tuple(words),
            heads=tuple(cast(list[int], heads)) if has_tree else None,  # has_tree: no None (checked above)
            deprels=tuple(d.split(":")[0] for d in deprels_full) if has_tree else None,
            deprels_full=tuple(deprels_full) if has_tree else None,
            upos=tuple(u or "X" for u in upos) if upos else None,
            space_after=tuple(space_after),
            labels={"number": number_feats},
            source=str(path),
        )
    except ProbekitError as e:  # cycles, words with spaces: say which file and line
        raise ProbekitError(e.what, where=f"{path}:{first_line} ({where})", fix=e.fix) from None
