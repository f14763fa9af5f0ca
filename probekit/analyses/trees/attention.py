"""One tree per attention head and sentence, from the captured word-level attention.

The attention of a sentence is ``A [head, from_word, to_word]`` (every layer's heads flattened,
layer-major; `probekit.capture`, Clark et al. 2019's word pooling). For each head:

- **Undirected tree** (UUAS): the maximum spanning tree of ``A + A^T`` over the kept words
  (`mst_undirected_batch`; punctuation dropped as in Hewitt & Manning 2019). For an encoder both
  directions of attention contribute; for a **causal** model ``A`` is lower-triangular (a word sees only
  itself and the words to its left), so ``A + A^T`` holds, for each pair, the one attention weight the
  model has: the later word's attention to the earlier one.
- **Directed tree** (UAS): the maximum spanning arborescence with the *gold* root fixed (Chu-Liu/Edmonds,
  `mst_directed`; Htut et al. 2019 fix the gold root the same way). For an encoder the score of
  ``h`` heading ``d`` is ``A[d, h]``, the dependent's attention to its head (``uas``), and separately
  ``A[h, d]``, the head's attention to its dependent (``uas_reverse``): Clark et al. (2019) found
  relations in both directions. For a causal model a dependent can attend to a head on its left
  (``A[d, h]``, h < d) but a head on its right is seen only by the head attending back (``A[h, d]``), so
  the score is the symmetric ``A + A^T`` and the directed tree is the undirected tree oriented away
  from the gold root: ``uas == uas_reverse``, and the direction carries no information from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit.analyses.trees.mst import heads_from_edges, mst_directed, mst_undirected_batch


@dataclass(frozen=True)
class HeadTrees:
    """Every head's trees for one sentence: per gold arc (dependent ``deps[a]``), whether each head got it.

    ``undirected`` / ``directed`` / ``reverse`` are bool ``[n_arcs, n_heads]``; ``parents`` the undirected
    trees ``[n_heads, n_words]`` (Prim's parent of each kept word, -1 at the start, -2 off the tree).
    """

    undirected: np.ndarray
    directed: np.ndarray
    reverse: np.ndarray
    parents: np.ndarray


def head_trees(att: np.ndarray, gold_heads, ignore, *, causal: bool, directed: bool = True) -> HeadTrees:
    """Score every head's undirected and directed tree of one sentence against the gold arcs.

    Parameters
    ----------
    att : array [n_heads, n_words, n_words]
        Word attention (row = from, column = to), every layer's heads flattened.
    gold_heads : sequence of int
        Gold heads, -1 for the root.
    ignore : sequence of int
        Words left out (punctuation).
    causal : bool
        Whether the model is causal (see the module docstring for the directed tree).
    directed : bool
        Also build the directed trees (False leaves ``directed``/``reverse`` all False).

    Returns
    -------
    HeadTrees

    Examples
    --------
    >>> import numpy as np
    >>> att = np.zeros((1, 3, 3)); att[0, 1, 0] = att[0, 2, 1] = 1.0   # each word attends to its left
    >>> t = head_trees(att, [-1, 0, 1], [], causal=True)
    >>> t.undirected[:, 0].tolist(), t.directed[:, 0].tolist()
    ([True, True], [True, True])
    """
    att = np.asarray(att, dtype=np.float64)
    n_heads, n = att.shape[0], att.shape[1]
    drop = {int(i) for i in ignore}
    arcs = [(i, int(h)) for i, h in enumerate(gold_heads) if h >= 0 and i not in drop and int(h) not in drop]
    deps = np.array([d for d, _ in arcs], dtype=np.int64)
    gheads = np.array([h for _, h in arcs], dtype=np.int64)
    parents = mst_undirected_batch(att, ignore=drop)  # [n_heads, n]
    if len(arcs):
        und = (parents[:, deps] == gheads[None, :]) | (parents[:, gheads] == deps[None, :])  # [H, arcs]
    else:
        und = np.zeros((n_heads, 0), dtype=bool)
    dirs = np.zeros((n_heads, len(arcs)), dtype=bool)
    rev = np.zeros((n_heads, len(arcs)), dtype=bool)
    roots = [i for i, h in enumerate(gold_heads) if h == -1 and i not in drop]
    if directed and len(arcs) and roots:
        root = roots[0]
        for k in range(n_heads):
            if causal:
                edges = [(i, int(p)) for i, p in enumerate(parents[k]) if p >= 0]
                pred = heads_from_edges(edges, root, n)
                dirs[k] = rev[k] = pred[deps] == gheads
            else:
                dirs[k] = mst_directed(att[k], root, ignore=drop)[deps] == gheads
                rev[k] = mst_directed(att[k].T, root, ignore=drop)[deps] == gheads
    return HeadTrees(undirected=und.T, directed=dirs.T, reverse=rev.T, parents=parents)
