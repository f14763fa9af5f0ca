"""Spanning trees from word-by-word scores, and the two tree scores (UUAS, UAS).

Conventions (shared with the structural probes in `probekit.analyses.trees`)
---------------------------------------------------------------------------
- ``scores`` is a ``[n_words, n_words]`` array. For an **undirected** tree only ``scores + scores.T``
  matters (the matrix is symmetrised first). For a **directed** tree ``scores[d, h]`` is the score of
  word ``h`` being the head of word ``d`` (row = dependent, column = head), the orientation of
  ``Sentence.heads`` and of a dependent's attention row.
- Gold heads are 0-based with ``-1`` for the root, as in `probekit.data.schema.Sentence`.
- ``ignore`` lists word indices left out of the evaluation. Following Hewitt & Manning (2019), the
  trees are built over the *kept* words only and the gold arcs are the arcs between two kept words
  (the arc to the root is not an edge). probekit drops punctuation (`punctuation_words`: UPOS
  ``PUNCT``, else relation ``punct``) everywhere: heads, probe, baselines and structural probes.
- UUAS (Hewitt & Manning 2019) = gold undirected edges recovered / gold edges; UAS = kept dependents
  whose predicted head is the gold head / the same arcs. Both share one denominator, so they are
  directly comparable; each function returns ``(hits, total)`` so that corpus scores are ratios of sums.

Algorithms
----------
- Undirected: Prim's maximum spanning tree, vectorised over a batch of matrices (`mst_undirected_batch`
  builds every head's tree of a sentence in one loop of ``n_words`` numpy steps). scipy's
  `minimum_spanning_tree` and networkx's `maximum_spanning_tree` give the same trees (the unit tests
  check both) but take one Python call per matrix, too slow for heads x sentences.
- Directed: the Chu-Liu/Edmonds maximum spanning arborescence (Chu & Liu 1965; Edmonds 1967) with the
  root fixed in advance (Htut et al. 2019 fix the gold root the same way), written with numpy here
  because networkx's `maximum_spanning_arborescence` is pure Python and ~100x slower for the
  heads x sentences calls an analysis makes; the unit tests check this one against networkx.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from probekit.data.schema import find_cycle
from probekit.errors import ProbekitError

#: head value given to words left out of a directed tree (``ignore``); the root gets -1
NO_HEAD = -2

Edge = tuple[int, int]


def _square(scores, where: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ProbekitError(
            f"scores have shape {s.shape}, not [n_words, n_words]", where=where, fix="pass a square matrix"
        )
    if not np.all(np.isfinite(s)):
        raise ProbekitError("scores contain NaN or inf", where=where, fix="pass finite scores")
    return s


def _kept(n: int, ignore: Iterable[int] | None) -> np.ndarray:
    drop = {int(i) for i in (ignore or ())}
    return np.array([i for i in range(n) if i not in drop], dtype=np.int64)


def mst_undirected(scores, ignore: Iterable[int] | None = None) -> list[Edge]:
    """Maximum spanning tree of the symmetrised scores over the kept words.

    Parameters
    ----------
    scores : array [n_words, n_words]
        Pairwise scores; ``scores + scores.T`` is used (the diagonal is ignored).
    ignore : iterable of int, optional
        Words left out of the tree (e.g. punctuation).

    Returns
    -------
    list of (i, j)
        ``n_kept - 1`` edges with ``i < j`` in the original word indices, sorted.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[0, 5, 1], [0, 0, 4], [0, 0, 0]])
    >>> mst_undirected(s)
    [(0, 1), (1, 2)]
    >>> mst_undirected(s, ignore=[1])
    [(0, 2)]
    """
    s = _square(scores, "mst_undirected")
    parents = mst_undirected_batch(s[None], ignore)[0]
    return sorted((min(i, int(p)), max(i, int(p))) for i, p in enumerate(parents) if p >= 0)


def mst_undirected_batch(scores, ignore: Iterable[int] | None = None) -> np.ndarray:
    """Maximum spanning trees of B score matrices at once (Prim's algorithm, vectorised over B).

    Parameters
    ----------
    scores : array [B, n_words, n_words]
        B score matrices over the same words (e.g. every head of a model); ``S + S.T`` is used.
    ignore : iterable of int, optional
        Words left out of every tree.

    Returns
    -------
    numpy.ndarray of int [B, n_words]
        Each kept word's neighbour towards the first kept word (where Prim starts, -1 there); the edges
        are ``(i, parents[b, i])``; ignored words get `NO_HEAD`. Ties go to the lowest word index.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[[0, 5, 1], [0, 0, 4], [0, 0, 0]], [[0, 1, 5], [0, 0, 4], [0, 0, 0]]])
    >>> mst_undirected_batch(s).tolist()
    [[-1, 0, 1], [-1, 2, 0]]
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or s.shape[1] != s.shape[2] or not np.all(np.isfinite(s)):
        raise ProbekitError(
            f"scores have shape {s.shape} (or non-finite values), not finite [B, n_words, n_words]",
            where="mst_undirected_batch",
            fix="pass finite square matrices stacked on the first axis",
        )
    b, n = s.shape[0], s.shape[1]
    keep = _kept(n, ignore)
    parents = np.full((b, n), NO_HEAD, dtype=np.int64)
    if len(keep) == 0:
        return parents
    sym = s[:, keep][:, :, keep]
    sym = sym + sym.transpose(0, 2, 1)  # [B, k, k]
    k, rows = len(keep), np.arange(b)
    in_tree = np.zeros((b, k), dtype=bool)
    in_tree[:, 0] = True
    best = sym[:, 0, :].copy()  # [B, k] best score linking each word to the tree so far
    link = np.zeros((b, k), dtype=np.int64)  # [B, k] the tree word giving that score
    par = np.full((b, k), -1, dtype=np.int64)
    for _ in range(k - 1):
        cand = np.where(in_tree, -np.inf, best)
        v = np.argmax(cand, axis=1)  # [B]
        par[rows, v] = link[rows, v]
        in_tree[rows, v] = True
        new = sym[rows, v, :]  # [B, k]
        better = new > best
        best = np.where(better, new, best)
        link = np.where(better, v[:, None], link)
    parents[:, keep] = np.where(par >= 0, keep[np.maximum(par, 0)], -1)
    return parents


def mst_directed(scores, root: int, ignore: Iterable[int] | None = None) -> np.ndarray:
    """Maximum spanning arborescence (Chu-Liu/Edmonds) with ``root`` fixed, over the kept words.

    Parameters
    ----------
    scores : array [n_words, n_words]
        ``scores[d, h]`` = score of ``h`` being the head of ``d``.
    root : int
        The word that gets no head (e.g. the gold root, as in Htut et al. 2019).
    ignore : iterable of int, optional
        Words left out of the tree; they get head `NO_HEAD` (-2).

    Returns
    -------
    numpy.ndarray of int [n_words]
        The head of each word, -1 for ``root``.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.array([[0, 9, 1], [1, 0, 2], [1, 8, 0]])   # row = dependent, column = head
    >>> mst_directed(s, root=1).tolist()
    [1, -1, 1]
    """
    s = _square(scores, "mst_directed")
    n = len(s)
    keep = _kept(n, ignore)
    if not 0 <= int(root) < n or int(root) not in set(keep.tolist()):
        raise ProbekitError(
            f"root {root} is not one of the kept words", where="mst_directed", fix="pass a kept word as root"
        )
    heads = np.full(n, NO_HEAD, dtype=np.int64)
    sub = s[np.ix_(keep, keep)]
    r = int(np.flatnonzero(keep == root)[0])
    sub_heads = _chu_liu_edmonds(sub, r)
    heads[keep] = np.where(sub_heads >= 0, keep[np.maximum(sub_heads, 0)], -1)
    return heads


def _chu_liu_edmonds(scores: np.ndarray, root: int) -> np.ndarray:
    """heads[d] for the maximum arborescence rooted at ``root``; ``scores[d, h]``, float64 [n, n]."""
    n = len(scores)
    s = scores.copy()
    np.fill_diagonal(s, -np.inf)
    s[root, :] = -np.inf  # the root has no head
    if n == 1:
        return np.array([-1])
    heads = np.argmax(s, axis=1)  # first maximum: ties go to the lowest index
    heads[root] = -1
    cycle = find_cycle(heads.tolist())  # plain ints: faster to walk than numpy scalars
    if cycle is None:
        return heads
    in_cycle = np.zeros(n, dtype=bool)
    in_cycle[cycle] = True
    rest = np.flatnonzero(~in_cycle)  # includes the root
    m = len(rest)  # contracted graph: rest (0..m-1) + the cycle node c = m
    c = m
    cs = np.full((m + 1, m + 1), -np.inf)
    cs[:m, :m] = s[rest][:, rest]
    cyc = np.asarray(cycle)
    # an arc from outside h into the cycle, entering at d, breaks the cycle arc into d
    gain = s[cyc][:, rest] - s[cyc, heads[cyc]][:, None]  # [len(cyc), m]
    enter = np.argmax(gain, axis=0)  # which cycle word each outside head would enter at
    cs[c, :m] = gain[enter, np.arange(m)]
    # an arc from the cycle to an outside dependent leaves from its best cycle word
    out = s[rest][:, cyc]  # [m, len(cyc)]
    leave = np.argmax(out, axis=1)
    cs[:m, c] = out[np.arange(m), leave]
    sub = _chu_liu_edmonds(cs, int(np.flatnonzero(rest == root)[0]))
    result = heads.copy()
    # sub's heads in the original numbering: -1 stays, the cycle node -> the cycle word the arc leaves
    safe = np.where((sub[:m] >= 0) & (sub[:m] < m), sub[:m], 0)
    result[rest] = np.where(sub[:m] == -1, -1, np.where(sub[:m] == c, cyc[leave], rest[safe]))
    h_in = sub[c]  # the outside head of the cycle
    d_in = cyc[enter[h_in]]
    result[d_in] = rest[h_in]  # the other cycle words keep their heads
    return result


def gold_edges(gold_heads: Sequence[int], ignore: Iterable[int] | None = None) -> list[Edge]:
    """The gold undirected edges ``(min, max)`` between two kept words, sorted.

    Examples
    --------
    >>> gold_edges([1, 2, -1, 2], ignore=[3])
    [(0, 1), (1, 2)]
    """
    drop = {int(i) for i in (ignore or ())}
    return sorted(
        (min(i, int(h)), max(i, int(h)))
        for i, h in enumerate(gold_heads)
        if h >= 0 and i not in drop and int(h) not in drop
    )


def uuas(pred_edges: Iterable[Edge], gold_heads: Sequence[int], ignore=None) -> tuple[int, int]:
    """Undirected unlabelled attachment: ``(gold edges recovered, gold edges)`` (Hewitt & Manning 2019).

    Examples
    --------
    >>> uuas([(0, 1), (0, 2), (2, 3)], [1, 2, -1, 2])   # gold edges 0-1, 1-2, 2-3
    (2, 3)
    """
    gold = set(gold_edges(gold_heads, ignore))
    pred = {(min(int(a), int(b)), max(int(a), int(b))) for a, b in pred_edges}
    return len(gold & pred), len(gold)


def uas(pred_heads: Sequence[int], gold_heads: Sequence[int], ignore=None) -> tuple[int, int]:
    """Unlabelled attachment over the gold arcs between kept words: ``(correct heads, arcs)``.

    The root word is not counted (its arc is to no word), so a fixed gold root gives no free points.

    Examples
    --------
    >>> uas([1, 2, -1, 1], [1, 2, -1, 2])
    (2, 3)
    """
    if len(pred_heads) != len(gold_heads):
        raise ProbekitError(
            f"{len(pred_heads)} predicted heads for {len(gold_heads)} words",
            where="uas",
            fix="predict one head per word",
        )
    drop = {int(i) for i in (ignore or ())}
    arcs = [(i, int(h)) for i, h in enumerate(gold_heads) if h >= 0 and i not in drop and int(h) not in drop]
    return sum(int(pred_heads[i]) == h for i, h in arcs), len(arcs)


def heads_from_edges(edges: Iterable[Edge], root: int, n: int) -> np.ndarray:
    """Orient an undirected tree away from ``root``: heads [n], -1 for the root, `NO_HEAD` off the tree.

    Examples
    --------
    >>> heads_from_edges([(0, 1), (1, 2)], root=2, n=4).tolist()
    [1, 2, -1, -2]
    """
    nbrs: dict[int, list[int]] = {}
    for a, b in edges:
        nbrs.setdefault(int(a), []).append(int(b))
        nbrs.setdefault(int(b), []).append(int(a))
    heads = np.full(n, NO_HEAD, dtype=np.int64)
    heads[root] = -1
    stack = [int(root)]
    while stack:
        u = stack.pop()
        for v in sorted(nbrs.get(u, ())):
            if heads[v] == NO_HEAD and v != root:
                heads[v] = u
                stack.append(v)
    return heads


def punctuation_words(sentence) -> list[int]:
    """Indices of punctuation words (UPOS ``PUNCT``; else relation ``punct``; else none).

    Examples
    --------
    >>> import probekit as pk
    >>> s = pk.Sentence("s", ("Hi", "there", "!"), heads=(-1, 0, 0), upos=("INTJ", "ADV", "PUNCT"))
    >>> punctuation_words(s)
    [2]
    """
    if sentence.upos is not None:
        return [i for i, u in enumerate(sentence.upos) if u == "PUNCT"]
    if sentence.deprels is not None:
        return [i for i, r in enumerate(sentence.deprels) if r == "punct"]
    return []
