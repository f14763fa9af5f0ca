"""The data schema every analysis consumes: `Sentence` (words + gold arcs) and `MinimalPair`.

Conventions
-----------
- Word indices are 0-based. ``heads[i]`` is the index of word i's syntactic head, ``-1`` for the root.
- ``deprels[i]`` is the *base* relation (``nsubj`` for ``nsubj:pass``); ``deprels_full`` keeps the label.
- ``space_after[i]`` says whether word i is followed by a space in the running text; it lets tokenizers
  see "don't" or "cat." as they appear in text. ``None`` means "a space after every word but the last".
- ``labels`` holds extra annotations. A value that is a list/tuple of ``len(words)`` items is a per-word
  label (e.g. ``labels["number"] = [None, "Sing", ...]``); anything else is sentence-level
  (e.g. ``labels["bank_sense"] = "river"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from probekit.errors import ProbekitError


@dataclass(frozen=True)
class Sentence:
    """One sentence of words with optional gold annotation (0-based ``heads``, -1 for the root).

    Examples
    --------
    >>> import probekit as pk
    >>> s = pk.Sentence("s1", ("The", "cat", "sat", "."), heads=(1, 2, -1, 2),
    ...                 deprels=("det", "nsubj", "root", "punct"))
    >>> s.text
    'The cat sat .'
    """

    id: str
    words: tuple[str, ...]
    heads: tuple[int, ...] | None = None
    deprels: tuple[str, ...] | None = None
    deprels_full: tuple[str, ...] | None = None
    upos: tuple[str, ...] | None = None
    space_after: tuple[bool, ...] | None = None
    labels: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""

    def __post_init__(self):
        # normalise sequences to tuples so sentences are hashable and immutable
        for name in ("words", "heads", "deprels", "deprels_full", "upos", "space_after"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        where = f"sentence {self.id!r}" + (f" from {self.source}" if self.source else "")
        if len(self.words) == 0:
            raise ProbekitError("a sentence has no words", where=where, fix="drop empty sentences")
        for i, w in enumerate(self.words):
            if not isinstance(w, str) or w == "" or any(c.isspace() for c in w):
                raise ProbekitError(
                    f"word {i} is {w!r}; words must be non-empty strings without whitespace",
                    where=where,
                    fix="split the text into words first (one word per list item)",
                )
        n = len(self.words)
        for name in ("heads", "deprels", "deprels_full", "upos", "space_after"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ProbekitError(
                    f"{name} has {len(value)} items but the sentence has {n} words",
                    where=where,
                    fix=f"give exactly one {name} entry per word",
                )
        if self.heads is not None:
            _check_tree(self.heads, where)

    @property
    def text(self) -> str:
        """The running text, with spaces where ``space_after`` says."""
        spaces = self.space_after or tuple(i < len(self.words) - 1 for i in range(len(self.words)))
        return "".join(
            w + (" " if s and i < len(self.words) - 1 else "")
            for i, (w, s) in enumerate(zip(self.words, spaces, strict=True))
        )

    def space_before(self, i: int) -> bool:
        """Whether word i is preceded by a space in the running text (never for word 0)."""
        if i == 0:
            return False
        return True if self.space_after is None else bool(self.space_after[i - 1])

    def __len__(self) -> int:
        return len(self.words)


def _check_tree(heads: tuple[int, ...], where: str) -> None:
    """Heads must be in range and acyclic (every word reaches a root by following heads)."""
    n = len(heads)
    for i, h in enumerate(heads):
        if not isinstance(h, int) or h < -1 or h >= n or h == i:
            raise ProbekitError(
                f"word {i} has head {h!r}, outside -1..{n - 1} (or pointing at itself)",
                where=where,
                fix="heads are 0-based word indices, -1 for the root",
            )
    cycle = find_cycle(heads)
    if cycle is not None:
        raise ProbekitError(
            f"the heads form a cycle through words {sorted(cycle)}",
            where=where,
            fix="check the head column; a dependency tree has no cycles",
        )


def find_cycle(heads: Sequence[int]) -> list[int] | None:
    """A cycle of the head graph (0-based heads, ``-1`` for a root), or None if every word reaches a root.

    Follows heads from each word in turn, marking the words on the current path; reaching a word of the
    current path again closes a cycle. Linear in the number of words. Heads must be in range (``-1`` or
    a word index); `Sentence` checks that before calling it.

    Parameters
    ----------
    heads
        ``heads[i]`` is the head of word i, ``-1`` for a root (plain ints walk faster than numpy scalars;
        pass ``array.tolist()``).

    Returns
    -------
    list of int or None
        The words of the first cycle found, in the order the walk meets them (starting where it enters
        the cycle), or None when the heads form a forest.

    Examples
    --------
    >>> find_cycle([1, 2, -1]) is None
    True
    >>> find_cycle([-1, 2, 3, 1])
    [1, 2, 3]
    """
    n = len(heads)
    state = [0] * n  # 0 unvisited, 1 on the current path, 2 known to reach a root
    for start in range(n):
        path, i = [], start
        while i != -1 and state[i] == 0:
            state[i] = 1
            path.append(i)
            i = heads[i]
        if i != -1 and state[i] == 1:
            return path[path.index(i) :]
        for j in path:
            state[j] = 2
    return None


@dataclass(frozen=True)
class MinimalPair:
    """A BLiMP-style minimal pair: ``good`` and ``bad`` differ in one critical word.

    ``prefix`` is the shared text before the critical word; ``good_word``/``bad_word`` are the critical
    words (``prefix + " " + good_word`` starts ``good``). ``subject_index`` optionally gives the word index of
    the agreeing subject in ``good``.

    Examples
    --------
    >>> import probekit as pk
    >>> pair = pk.load_dataset("template:agreement?n=2")[0]
    >>> pair.good.startswith(pair.prefix + " " + pair.good_word)
    True
    """

    id: str
    paradigm: str
    good: str
    bad: str
    prefix: str
    good_word: str
    bad_word: str
    subject_index: int | None = None
    labels: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""
