"""Tree baselines that read no model: chains and the best fixed-offset parser.

All of them work on the *kept* words (punctuation dropped, see `probekit.analyses.trees.mst`), in
sentence order, so that "the next word" skips punctuation exactly as the trees from attention do.

- ``chain_head_right``: every kept word's head is the next kept word (the last one is the root). This
  is the "right-branching" baseline of Clark et al. (2019, §5: the head is always to the right), which
  scores 26 UAS on PTB in their Table 3.
- ``chain_head_left``: every kept word's head is the previous kept word (the first one is the root).
  Both chains are the same undirected path, so they have the same UUAS; only UAS tells them apart.
- ``best_offset``: every kept word's head is the kept word ``k`` positions away (no head when that falls
  outside the sentence), with ``k`` in ``±1..±max_offset`` chosen on the *train* part by UAS (Clark et
  al. 2019's fixed-offset baseline, here as a parser). For ``|k| > 1`` the arcs are not a tree; UUAS
  counts the gold edges among the predicted arcs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from probekit.analyses.trees.mst import NO_HEAD

#: offsets tried by the best fixed-offset parser: -MAX_OFFSET..-1, 1..MAX_OFFSET
MAX_OFFSET = 5


def offset_heads(n: int, kept: Sequence[int], offset: int) -> np.ndarray:
    """Heads [n] of the fixed-offset parser: kept word at position p -> kept word at position p + offset.

    Words with no such partner get -1 (they are roots of their fragment); ignored words get `NO_HEAD`.

    Examples
    --------
    >>> offset_heads(5, [0, 1, 3, 4], 1).tolist()   # word 2 is punctuation
    [1, 3, -2, 4, -1]
    >>> offset_heads(4, [0, 1, 2, 3], -2).tolist()
    [-1, -1, 0, 1]
    """
    heads = np.full(n, NO_HEAD, dtype=np.int64)
    kept = list(kept)
    for p, w in enumerate(kept):
        q = p + offset
        heads[w] = kept[q] if 0 <= q < len(kept) else -1
    return heads


def chain_heads(n: int, kept: Sequence[int], direction: str) -> np.ndarray:
    """Heads of a chain over the kept words: ``"right"`` (head = next kept word) or ``"left"``.

    Examples
    --------
    >>> chain_heads(4, [0, 1, 2, 3], "right").tolist()
    [1, 2, 3, -1]
    >>> chain_heads(4, [0, 1, 2, 3], "left").tolist()
    [-1, 0, 1, 2]
    """
    return offset_heads(n, kept, 1 if direction == "right" else -1)


def offsets() -> list[int]:
    """The offsets the best fixed-offset parser chooses from, in the order ties are broken.

    Examples
    --------
    >>> offsets()[:4]
    [1, -1, 2, -2]
    """
    return [s * k for k in range(1, MAX_OFFSET + 1) for s in (1, -1)]


def edges_of(heads: np.ndarray) -> list[tuple[int, int]]:
    """The undirected arcs ``(min, max)`` of a head array (roots and ignored words give none).

    Examples
    --------
    >>> edges_of(np.array([1, -1, 1, -2]))
    [(0, 1), (1, 2)]
    """
    return sorted((min(i, int(h)), max(i, int(h))) for i, h in enumerate(heads) if h >= 0)
