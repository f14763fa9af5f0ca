"""Clark et al.'s (2019, §5) attention probe: a learned weighting of every head's attention, both ways.

For a dependent ``d`` and a candidate head ``h`` (both kept words, ``h != d``)::

    score(d, h) = sum_k  w_k * A_k[d, h]  +  u_k * A_k[h, d]          p(h | d) = softmax_h score(d, h)

over the K heads ``A_k`` of the model (or of one layer, for the per-layer probes). This is the
attention-only variant of Clark et al.'s probe (their "Attn" row); the "Attn + GloVe" variant adds a
bilinear word-embedding term, which probekit does not implement. For a causal model ``A_k[d, h]`` is
zero for ``h > d``, so the probe reads the leftward attention of whichever word comes later, which is
exactly the information the model has. The weights ``(w, u)`` are fitted by cross-entropy with a small
L2 penalty, full batch with L-BFGS (torch; float32 features, float64 weights and loss; zero start:
deterministic), on the *train*
part; predicted heads are the argmax per dependent (Clark et al.'s UAS), and for trees the
Chu-Liu/Edmonds arborescence of ``score`` with the gold root fixed.
"""

from __future__ import annotations

import numpy as np
import torch

from probekit.errors import ProbekitError

#: L2 penalty on the probe weights (per dependent; fixed, not tuned)
DEFAULT_L2 = 1e-3


def pair_features(att: np.ndarray, kept, deps) -> tuple[np.ndarray, np.ndarray]:
    """Features of every (dependent, candidate head) pair of one sentence.

    Parameters
    ----------
    att : array [K, n_words, n_words]
        Attention of K heads (row = from, column = to).
    kept : sequence of int
        The candidate heads (kept words).
    deps : sequence of int
        The dependents to score (kept words with a kept gold head).

    Returns
    -------
    (features [P, 2K] float32, candidates [P] int)
        Rows dependent by dependent, candidates in word order, the dependent itself excluded:
        ``[A_k[d, h] for k] + [A_k[h, d] for k]``.

    Examples
    --------
    >>> import numpy as np
    >>> att = np.arange(9, dtype=float).reshape(1, 3, 3)
    >>> x, cand = pair_features(att, [0, 1, 2], [1])
    >>> x.tolist(), cand.tolist()
    ([[3.0, 1.0], [5.0, 7.0]], [0, 2])
    """
    kept = np.asarray(list(kept), dtype=np.int64)
    rows, cands = [], []
    for d in deps:
        c = kept[kept != d]
        rows.append(np.concatenate([att[:, d, c].T, att[:, c, d].T], axis=1))  # [len(c), 2K]
        cands.append(c)
    if not rows:
        return np.zeros((0, 2 * att.shape[0]), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.float32), np.concatenate(cands)


def fit_words_probe(
    features: np.ndarray, groups: np.ndarray, gold: np.ndarray, *, l2: float = DEFAULT_L2, max_iter: int = 100
) -> np.ndarray:
    """Fit the probe's weights ``theta = [w; u]`` by softmax cross-entropy over each dependent's candidates.

    Parameters
    ----------
    features : array [P, F]
        One row per (dependent, candidate) pair (`pair_features`).
    groups : int array [P]
        The dependent (0..G-1) of each row.
    gold : bool array [P]
        Whether the candidate is the gold head; exactly one per group.
    l2 : float
        L2 penalty on ``theta``.
    max_iter : int
        L-BFGS iterations.

    Returns
    -------
    numpy.ndarray [F]
        float64 weights.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.5]])   # feature 0 marks the gold head
    >>> theta = fit_words_probe(x, np.array([0, 0, 1, 1]), np.array([True, False, True, False]))
    >>> bool(theta[0] > theta[1])
    True
    """
    groups = np.asarray(groups, dtype=np.int64)
    gold = np.asarray(gold, dtype=bool)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_groups == 0 or np.bincount(groups[gold], minlength=n_groups).min() != 1:
        raise ProbekitError(
            "the probe needs at least one dependent and exactly one gold head per dependent",
            where="fit_words_probe",
            fix="build the rows with pair_features from dependents whose gold head is a kept word",
        )
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))  # [P, F], float32 to save memory
    g = torch.from_numpy(groups)
    gold_t = torch.from_numpy(gold)
    theta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        logits = (x @ theta.to(torch.float32)).to(torch.float64)  # [P]
        m = torch.full((n_groups,), -torch.inf, dtype=torch.float64)
        m = m.scatter_reduce(0, g, logits.detach(), reduce="amax")
        z = torch.zeros(n_groups, dtype=torch.float64).index_add(0, g, torch.exp(logits - m[g]))
        loss = (torch.log(z) + m).sum() - logits[gold_t].sum()
        loss = loss / n_groups + l2 * (theta * theta).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    return theta.detach().numpy().copy()


def probe_scores(att: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``score[d, h]`` of every word pair of one sentence: ``sum_k w_k A_k[d, h] + u_k A_k[h, d]``.

    Parameters
    ----------
    att : array [K, n_words, n_words]
    theta : array [2K]
        ``[w; u]`` from `fit_words_probe`.

    Returns
    -------
    numpy.ndarray [n_words, n_words]
        Row = dependent, column = candidate head (the orientation of `mst_directed`).

    Examples
    --------
    >>> import numpy as np
    >>> att = np.arange(9, dtype=float).reshape(1, 3, 3)
    >>> probe_scores(att, np.array([1.0, 0.0]))[1].tolist()
    [3.0, 4.0, 5.0]
    """
    k = att.shape[0]
    w, u = np.asarray(theta[:k], dtype=np.float64), np.asarray(theta[k:], dtype=np.float64)
    a = np.asarray(att, dtype=np.float64)
    return np.tensordot(w, a, axes=1) + np.tensordot(u, a, axes=1).T


def probe_probabilities(scores: np.ndarray, kept) -> np.ndarray:
    """``p(h | d)``: each kept dependent's softmax over the other kept words (zero elsewhere).

    The undirected MST of these (`mst_undirected_batch` symmetrises them) gives the probe's UUAS.

    Examples
    --------
    >>> import numpy as np
    >>> p = probe_probabilities(np.zeros((3, 3)), [0, 2])
    >>> p.tolist()
    [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """
    kept = np.asarray(list(kept), dtype=np.int64)
    n = scores.shape[0]
    sub = np.asarray(scores, dtype=np.float64)[np.ix_(kept, kept)].copy()  # [k, k]
    np.fill_diagonal(sub, -np.inf)
    sub = np.exp(sub - sub.max(axis=1, keepdims=True))
    out = np.zeros((n, n))
    out[np.ix_(kept, kept)] = sub / sub.sum(axis=1, keepdims=True)
    return out


def argmax_heads(scores: np.ndarray, kept, deps) -> np.ndarray:
    """Each dependent's highest-scoring kept word other than itself (ties: the lowest index).

    Examples
    --------
    >>> import numpy as np
    >>> argmax_heads(np.array([[9, 1, 2], [5, 9, 1], [0, 3, 9]]), [0, 1, 2], [0, 1, 2]).tolist()
    [2, 0, 1]
    """
    kept = np.asarray(list(kept), dtype=np.int64)
    out = []
    for d in deps:
        c = kept[kept != d]
        out.append(int(c[np.argmax(scores[d, c])]))
    return np.asarray(out, dtype=np.int64)
