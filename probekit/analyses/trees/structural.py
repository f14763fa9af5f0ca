"""Structural probes (Hewitt & Manning 2019): tree distance and tree depth as squared distances and squared
norms under a learned rank-k linear map, on every residual-stream layer, next to their baselines.

- `DistanceProbe`: ``d_B(h_i, h_j)^2 = ||B (h_i - h_j)||^2`` fitted to the tree distance (path length) of
  every word pair; `DepthProbe`: ``||B h_i||^2`` fitted to the depth of every word (root = 0). Both are
  scikit-learn-style estimators over a *list of sentences* (``X[s]  # [n_s, d]``), trained with torch in
  float64 (Adam, L1 loss normalised by the sentence length squared / the length, early stopping on a dev
  part, deterministic seeds).
- Metrics (`structural_metrics`): UUAS of the minimum spanning tree of the predicted distances
  (punctuation excluded), DSpr. (Spearman of distances per word, averaged per sentence length 5-50 and
  then over lengths), root accuracy (the shallowest non-punctuation word is the gold root) and NSpr.
  (Spearman of depths, averaged the same way).
- `fit_structural_probes`: both probes on every layer of a model, for the gold trees and a control
  structure (uniform random trees with the gold lengths), plus the random-init model and the
  linear-position baseline, as a `StructuralProbeResult`. The efficient path streams one layer at a time
  from the capture cache and trains all probes of a layer together on padded ``[batch, words, d]``
  tensors; ``engine="loop"`` is the plain reference loop (one sentence and one probe at a time).

Method and references: ``docs/methods/structural_probes.md`` (Hewitt & Manning 2019, NAACL; Hewitt &
Liang 2019 for selectivity; Belinkov 2022 for the random-init baseline).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import scipy.stats
from sklearn.base import BaseEstimator

from probekit.errors import ProbekitError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DepthProbe",
    "DistanceProbe",
    "StructuralProbeResult",
    "fit_structural_probes",
    "random_tree_heads",
    "structural_metrics",
    "tree_depths",
    "tree_distances",
]

#: sentence lengths over which DSpr. and NSpr. are averaged (Hewitt & Manning 2019)
SPEARMAN_LENGTHS: tuple[int, int] = (5, 50)
#: a dev loss counts as better only if below ``best * (1 - _IMPROVE_RTOL)`` (so rounding cannot decide)
_IMPROVE_RTOL = 1e-9
_PROBES = ("distance", "depth")
_COLUMNS = [
    "model",
    "model_kind",
    "data",
    "layer",
    "probe",
    "target",
    "baseline",
    "rank",
    "seed",
    "n_train",
    "n_dev",
    "n_sentences",
    "epochs",
    "best_epoch",
    "dev_loss",
    "uuas",
    "uuas_ci_low",
    "uuas_ci_high",
    "dspr",
    "root_acc",
    "root_acc_ci_low",
    "root_acc_ci_high",
    "nspr",
]


# ==================================================================================================
# Trees
# ==================================================================================================


def tree_distances(heads: Sequence[int] | np.ndarray) -> np.ndarray:
    """Path lengths between all word pairs of a tree given by ``heads`` (0-based, -1 for the root).

    Parameters
    ----------
    heads : one head index per word; a forest (several roots) gives ``inf`` between its trees.

    Returns
    -------
    np.ndarray of float, ``[n, n]``: the number of arcs between words i and j.

    Examples
    --------
    >>> tree_distances([1, -1, 1]).astype(int).tolist()
    [[0, 1, 2], [1, 0, 1], [2, 1, 0]]
    """
    heads = np.asarray(heads, dtype=int)
    n = len(heads)
    depth = tree_depths(heads)
    ancestors = np.eye(n)  # [n, n]: ancestors[i, a] = 1 if a is i or an ancestor of i
    for i in np.argsort(depth, kind="stable"):  # a head comes before its dependents
        if heads[i] >= 0:
            ancestors[i] += ancestors[heads[i]]
    common = ancestors @ ancestors.T  # [n, n] shared ancestors = depth of the lowest one + 1
    dist = (depth[:, None] + depth[None, :] - 2 * (common - 1)).astype(np.float64)
    dist[common == 0] = np.inf  # different trees of a forest
    return dist


def tree_depths(heads: Sequence[int] | np.ndarray) -> np.ndarray:
    """The depth of every word: the number of arcs to its root (the root has depth 0).

    Examples
    --------
    >>> tree_depths([1, -1, 1, 2]).tolist()
    [1, 0, 1, 2]
    """
    heads = np.asarray(heads, dtype=int)
    depth = np.full(len(heads), -1, dtype=np.int64)
    for start in range(len(heads)):
        path, i = [], start
        while i != -1 and depth[i] < 0:
            path.append(i)
            i = heads[i]
        d = -1 if i == -1 else depth[i]
        for j in reversed(path):
            d += 1
            depth[j] = d
    return depth


def random_tree_heads(n: int, seed: int | str = 0) -> tuple[int, ...]:
    """A uniformly random labelled tree on ``n`` words (a random Prüfer sequence), rooted at a uniformly
    random word: the control structure of `fit_structural_probes`.

    Parameters
    ----------
    n : the number of words.
    seed : an int or a string (e.g. ``"0:<sentence id>"``); it seeds `numpy.random.default_rng` through
        SHA-256, so a sentence's tree does not depend on the other sentences.

    Returns
    -------
    tuple of int: ``heads`` (0-based, -1 for the root).

    Examples
    --------
    >>> heads = random_tree_heads(6, seed="0:s1")
    >>> heads == random_tree_heads(6, seed="0:s1"), sorted(heads).count(-1)
    (True, 1)
    """
    rng = np.random.default_rng(int(hashlib.sha256(str(seed).encode()).hexdigest()[:16], 16))
    if n == 1:
        return (-1,)
    edges = _prufer_edges(rng.integers(0, n, size=n - 2).tolist(), n)
    adjacency: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adjacency[a].append(b)
        adjacency[b].append(a)
    root = int(rng.integers(0, n))
    heads = [-2] * n
    heads[root] = -1
    queue = [root]
    for i in queue:  # breadth first from the root
        for j in sorted(adjacency[i]):
            if heads[j] == -2:
                heads[j] = i
                queue.append(j)
    return tuple(heads)


def _prufer_edges(sequence: list[int], n: int) -> list[tuple[int, int]]:
    """The n-1 edges of the tree with Prüfer ``sequence`` (length n-2): the textbook O(n^2) decoding."""
    degree = [1] * n
    for x in sequence:
        degree[x] += 1
    edges = []
    for x in sequence:
        leaf = degree.index(1)
        edges.append((leaf, x))
        degree[leaf] -= 1
        degree[x] -= 1
    u, v = (i for i in range(n) if degree[i] == 1)
    edges.append((u, v))
    return edges


# ==================================================================================================
# Metrics
# ==================================================================================================


def _uuas_hits(pred_dist: np.ndarray, heads: Sequence[int], ignore: Sequence[int]) -> np.ndarray:
    """One value per gold arc between kept words: 1 if the minimum spanning tree of ``pred_dist  # [n, n]``
    over the kept words has it (`mst_undirected` of the negated distances, `uuas`)."""
    from probekit.analyses.trees.mst import mst_undirected, uuas

    n_kept = len(heads) - len(set(ignore))
    edges = mst_undirected(-pred_dist, ignore=ignore) if n_kept >= 2 else []
    hits, total = uuas(edges, heads, ignore=ignore)
    return np.r_[np.ones(hits), np.zeros(total - hits)]


def _row_spearman(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``pred`` with the same row of ``gold`` (``[m, n]`` each):
    the Pearson correlation of average ranks, which is what `scipy.stats.spearmanr` computes; a row
    with a constant side gives NaN."""
    rp = scipy.stats.rankdata(pred, axis=1)
    rg = scipy.stats.rankdata(gold, axis=1)
    rp -= rp.mean(axis=1, keepdims=True)
    rg -= rg.mean(axis=1, keepdims=True)
    den = np.sqrt((rp * rp).sum(axis=1) * (rg * rg).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * rg).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _length_averaged(per_length: dict[int, list[np.ndarray]], lengths=SPEARMAN_LENGTHS) -> float:
    """Mean over lengths lo..hi of each length's mean correlation (NaNs from constant rows skipped)."""
    lo, hi = lengths
    means = []
    for n in sorted(per_length):
        if lo <= n <= hi:
            values = np.concatenate(per_length[n])
            if np.isfinite(values).any():
                means.append(float(np.nanmean(values)))
    return float(np.mean(means)) if means else float("nan")


def structural_metrics(
    heads: Sequence[Sequence[int]],
    *,
    distances: Sequence[np.ndarray] | None = None,
    depths: Sequence[np.ndarray] | None = None,
    ignore: Sequence[Sequence[int]] | None = None,
    sentence_ids: Sequence[str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Hewitt & Manning's (2019) metrics of predicted tree distances and depths against gold trees.

    - ``uuas``: the minimum spanning tree of the predicted distances over the non-punctuation words of
      each sentence, scored against the gold arcs between non-punctuation words; hits over all arcs of
      all sentences (micro average). Interval: cluster bootstrap over sentences.
    - ``dspr``: the Spearman correlation of each word's row of predicted distances with its gold row
      (all words), averaged over all rows of the sentences of one length, then over the lengths 5-50.
    - ``root_acc``: the share of sentences whose shallowest predicted non-punctuation word is the gold
      root. Interval: bootstrap over sentences.
    - ``nspr``: the Spearman correlation of predicted and gold depths (all words) per sentence, averaged
      per length, then over the lengths 5-50.

    Parameters
    ----------
    heads : the gold (or control) trees, one ``heads`` per sentence (0-based, -1 for the root).
    distances : predicted ``[n, n]`` distances per sentence (None: no ``uuas``/``dspr``).
    depths : predicted ``[n]`` depths per sentence (None: no ``root_acc``/``nspr``).
    ignore : per sentence, the words left out of ``uuas`` and ``root_acc`` (e.g. its
        `probekit.analyses.trees.mst.punctuation_words`); None: none.
    sentence_ids : bootstrap units (default: the sentence's position).
    n_boot, ci, seed : the bootstrap.

    Returns
    -------
    dict with ``uuas, uuas_ci_low, uuas_ci_high, dspr, root_acc, root_acc_ci_low, root_acc_ci_high,
    nspr`` (NaN where not computed).

    Examples
    --------
    >>> heads = [[1, -1, 1, 2, 3]]  # a chain hanging off word 1
    >>> gold = tree_distances(heads[0])
    >>> m = structural_metrics(heads, distances=[gold], depths=[tree_depths(heads[0])], n_boot=10)
    >>> m["uuas"], m["dspr"], m["root_acc"], m["nspr"]
    (1.0, 1.0, 1.0, 1.0)
    """
    from probekit.stats import bootstrap_ci

    n_sent = len(heads)
    ignore = [[] for _ in heads] if ignore is None else [[int(i) for i in x] for x in ignore]
    units = np.asarray(sentence_ids if sentence_ids is not None else np.arange(n_sent)).astype(str)
    out = dict.fromkeys(_COLUMNS[_COLUMNS.index("uuas") :], float("nan"))
    if distances is not None:
        hits, groups = [], []
        rows: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # length -> (pred, gold) [n, n] each
        for s, (h, dist) in enumerate(zip(heads, distances, strict=True)):
            sent_hits = _uuas_hits(np.asarray(dist, dtype=np.float64), h, ignore[s])
            hits.append(sent_hits)
            groups.append(np.full(len(sent_hits), units[s]))
            if len(h) >= 2:
                rows.setdefault(len(h), []).append((np.asarray(dist, dtype=np.float64), tree_distances(h)))
        hits_all, groups_all = np.concatenate(hits), np.concatenate(groups)
        if hits_all.size:
            out["uuas"] = float(hits_all.mean())
            if len(np.unique(groups_all)) > 1:
                out["uuas_ci_low"], out["uuas_ci_high"] = bootstrap_ci(
                    hits_all, groups_all, n_boot=n_boot, ci=ci, seed=seed
                )
        out["dspr"] = _length_averaged(
            {
                n: [
                    _row_spearman(
                        np.concatenate([p for p, _ in pairs]), np.concatenate([g for _, g in pairs])
                    )
                ]
                for n, pairs in rows.items()
            }
        )
    if depths is not None:
        correct = []
        per_length: dict[int, list[np.ndarray]] = {}
        for s, (h, dep) in enumerate(zip(heads, depths, strict=True)):
            dep = np.asarray(dep, dtype=np.float64)
            keep = np.setdiff1d(np.arange(len(h)), ignore[s])
            gold_depth = tree_depths(h)
            roots = np.flatnonzero(np.asarray(h) == -1)
            if keep.size:
                correct.append(float(keep[np.argmin(dep[keep])] in roots))
            if len(h) >= 2:
                per_length.setdefault(len(h), []).append(_row_spearman(dep[None], gold_depth[None]))
        if correct:
            out["root_acc"] = float(np.mean(correct))
            if len(correct) > 1:
                out["root_acc_ci_low"], out["root_acc_ci_high"] = bootstrap_ci(
                    correct, n_boot=n_boot, ci=ci, seed=seed
                )
        out["nspr"] = _length_averaged(per_length)
    return out


# ==================================================================================================
# Training (torch, float64)
# ==================================================================================================


@dataclass(frozen=True)
class _Settings:
    rank: int
    lr: float
    max_epochs: int
    patience: int
    batch_size: int
    seed: int


@dataclass
class _Fit:
    """One trained probe: ``W  # [d, rank]`` (float64) at its best dev epoch, and its training record."""

    W: np.ndarray
    epochs: int
    best_epoch: int
    dev_loss: float
    history: list[float] = field(default_factory=list)


class _Stopper:
    """Early stopping on the dev loss: keeps the best weights; stops after ``patience`` epochs without a
    relative improvement of more than `_IMPROVE_RTOL`."""

    W: np.ndarray | None  # the best weights so far; None before the first update
    history: list[float]

    def __init__(self, patience: int):
        self.patience = patience
        self.best, self.best_epoch, self.W, self.bad, self.history = np.inf, 0, None, 0, []

    def update(self, epoch: int, loss: float, W) -> bool:
        """Record the dev loss of ``epoch`` (1-based); True when training should stop."""
        self.history.append(loss)
        if loss < self.best * (1 - _IMPROVE_RTOL) or self.W is None:
            self.best, self.best_epoch, self.W, self.bad = loss, epoch, W.detach().numpy().copy(), 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def result(self) -> _Fit:
        # W is set by the first update(); result() is called after at least one epoch
        return _Fit(
            cast(np.ndarray, self.W), len(self.history), self.best_epoch, float(self.best), list(self.history)
        )


def _init_weights(d: int, s: _Settings):
    import torch

    gen = torch.Generator().manual_seed(int(s.seed))
    a = np.sqrt(3.0 / (d * s.rank))  # uniform(-a, a): E ||W^T x||^2 = 1 for features of mean square 1
    W = torch.empty(d, s.rank, dtype=torch.float64).uniform_(-a, a, generator=gen)
    return W.requires_grad_(True)


def _batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Sentence indices in batches of similar length (sorted by length, stable), so padding is small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _epoch_order(n_batches: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_batches)


def _sentence_loss(kind: str, z, target):
    """Hewitt & Manning's L1 loss of one sentence, ``z  # [n, k]`` = the projected words:
    ``sum_ij |d_ij - t_ij| / n^2`` (distance) or ``sum_i |d_i - t_i| / n`` (depth)."""
    n = z.shape[0]
    if kind == "distance":
        diff = z[:, None, :] - z[None, :, :]  # [n, n, k]
        return (diff.pow(2).sum(-1) - target).abs().sum() / (n * n)
    return (z.pow(2).sum(-1) - target).abs().sum() / n


def _batch_loss(kind: str, z, target, batch: _Padded):
    """The summed per-sentence losses of a padded batch: ``z  # [B, L, k]``, target ``[B, L, L]`` or
    ``[B, L]``; the same numbers as `_sentence_loss` (the diagonal is left out: 0 - 0)."""
    if kind == "distance":
        sq = z.pow(2).sum(-1)  # [B, L]
        pred = sq[:, :, None] + sq[:, None, :] - 2 * (z @ z.transpose(1, 2))  # [B, L, L]
        err = ((pred - target).abs() * batch.pairs).sum((1, 2)) / batch.lengths.pow(2)
    else:
        err = ((z.pow(2).sum(-1) - target).abs() * batch.mask).sum(1) / batch.lengths
    return err.sum()


@dataclass
class _Padded:
    """A padded batch: ``h  # [B, L, d]`` float64, ``mask  # [B, L]`` (1.0 on words), ``pairs  # [B, L, L]``
    (1.0 on pairs of distinct words), ``lengths  # [B]`` and the targets of every probe (``[B, L, L]`` or
    ``[B, L]``)."""

    h: torch.Tensor
    mask: torch.Tensor
    pairs: torch.Tensor
    lengths: torch.Tensor
    targets: dict


def _pad(X: Sequence[np.ndarray], idx: np.ndarray, targets: dict[tuple[str, str], list]) -> _Padded:
    import torch

    n = np.array([X[i].shape[0] for i in idx])
    L, d = int(n.max()), X[idx[0]].shape[1]
    h = np.zeros((len(idx), L, d), dtype=np.float64)
    mask = np.zeros((len(idx), L), dtype=bool)
    padded = {}
    for key in targets:
        shape = (len(idx), L, L) if key[0] == "distance" else (len(idx), L)
        padded[key] = np.zeros(shape, dtype=np.float64)
    for b, i in enumerate(idx):
        h[b, : n[b]] = X[i]
        mask[b, : n[b]] = True
        for key, values in targets.items():
            if key[0] == "distance":
                padded[key][b, : n[b], : n[b]] = values[i]
            else:
                padded[key][b, : n[b]] = values[i]
    pairs = mask[:, :, None] & mask[:, None, :] & ~np.eye(L, dtype=bool)[None]  # [B, L, L]
    return _Padded(
        torch.from_numpy(h),
        torch.from_numpy(mask.astype(np.float64)),
        torch.from_numpy(pairs.astype(np.float64)),
        torch.from_numpy(n.astype(np.float64)),
        {k: torch.from_numpy(v) for k, v in padded.items()},
    )


def _train_batched(
    X_train: Sequence[np.ndarray],
    X_dev: Sequence[np.ndarray],
    targets_train: dict[tuple[str, str], list],
    targets_dev: dict[tuple[str, str], list],
    s: _Settings,
) -> dict[tuple[str, str], _Fit]:
    """Train every probe in ``targets_train`` (keys ``(kind, target)``) together on padded batches.

    All probes share one projection ``h @ [W_1 .. W_P]`` per batch; their losses are summed, and as no
    weight enters another probe's loss, each gets exactly its own gradient (Adam's state is per weight),
    so this equals training them one by one. A probe whose early stopping has ended leaves the batch."""
    import torch

    keys = list(targets_train)
    d = X_train[0].shape[1]
    train = [_pad(X_train, idx, targets_train) for idx in _batches(_lengths(X_train), s.batch_size)]
    dev = [_pad(X_dev, idx, targets_dev) for idx in _batches(_lengths(X_dev), s.batch_size)]
    weights = {k: _init_weights(d, s) for k in keys}
    opt = torch.optim.Adam(list(weights.values()), lr=s.lr, foreach=False)
    stoppers = {k: _Stopper(s.patience) for k in keys}
    active = list(keys)
    for epoch in range(1, s.max_epochs + 1):
        for b in _epoch_order(len(train), s.seed, epoch):
            batch = train[b]
            opt.zero_grad(set_to_none=True)
            proj = batch.h @ torch.cat([weights[k] for k in active], dim=1)  # [B, L, P*k]
            loss = sum(
                _batch_loss(k[0], proj[..., j * s.rank : (j + 1) * s.rank], batch.targets[k], batch)
                for j, k in enumerate(active)
            ) / len(batch.lengths)
            loss.backward()
            opt.step()
        with torch.no_grad():
            W = torch.cat([weights[k] for k in active], dim=1)
            totals = dict.fromkeys(active, 0.0)
            for batch in dev:
                proj = batch.h @ W
                for j, k in enumerate(active):
                    z = proj[..., j * s.rank : (j + 1) * s.rank]
                    totals[k] += float(_batch_loss(k[0], z, batch.targets[k], batch))
        active = [k for k in active if not stoppers[k].update(epoch, totals[k] / len(X_dev), weights[k])]
        if not active:
            break
    return {k: stoppers[k].result() for k in keys}


def _train_loop(
    X_train: Sequence[np.ndarray],
    X_dev: Sequence[np.ndarray],
    targets_train: dict[tuple[str, str], list],
    targets_dev: dict[tuple[str, str], list],
    s: _Settings,
) -> dict[tuple[str, str], _Fit]:
    """The plain reference: one probe at a time, one sentence at a time (same batches, order, seeds and
    loss as `_train_batched`)."""
    import torch

    d = X_train[0].shape[1]
    h_train = [torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in X_train]
    h_dev = [torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in X_dev]
    batches = _batches(_lengths(X_train), s.batch_size)
    out = {}
    for key, values in targets_train.items():
        t_train = [torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in values]
        t_dev = [torch.from_numpy(np.asarray(v, dtype=np.float64)) for v in targets_dev[key]]
        W = _init_weights(d, s)
        opt = torch.optim.Adam([W], lr=s.lr, foreach=False)
        stopper = _Stopper(s.patience)
        for epoch in range(1, s.max_epochs + 1):
            for b in _epoch_order(len(batches), s.seed, epoch):
                opt.zero_grad(set_to_none=True)
                loss = sum(_sentence_loss(key[0], h_train[i] @ W, t_train[i]) for i in batches[b])
                (loss / len(batches[b])).backward()
                opt.step()
            with torch.no_grad():
                dev_loss = sum(
                    float(_sentence_loss(key[0], h @ W, t)) for h, t in zip(h_dev, t_dev, strict=True)
                )
            if stopper.update(epoch, dev_loss / len(X_dev), W):
                break
        out[key] = stopper.result()
    return out


_ENGINES = {"batched": _train_batched, "loop": _train_loop}


def _feature_scale(X: Sequence[np.ndarray]) -> np.ndarray:
    """The root mean square of every feature over the words of ``X`` (float64 ``[d]``; 1 where it is 0).

    The probes see ``h / scale``: a rescaling of each feature, so ``B`` on the scaled features is the
    linear map ``B diag(1/scale)`` on the raw ones (the same family of probes, Hewitt & Manning's), but the
    few huge "massive activation" features of a decoder's residual stream (Sun et al. 2024) no longer
    swamp the squared distances at the start of training."""
    total = np.zeros(X[0].shape[1])
    for x in X:
        total += np.square(x, dtype=np.float64).sum(axis=0)
    rms = np.sqrt(total / sum(x.shape[0] for x in X))
    return np.where(rms > 0, rms, 1.0)


def _lengths(X: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([x.shape[0] for x in X])


def _predict(kind: str, X: Sequence[np.ndarray], W: np.ndarray) -> list[np.ndarray]:
    """Predicted squared distances ``[n, n]`` or squared norms ``[n]`` per sentence (float64)."""
    import scipy.spatial.distance

    out = []
    for x in X:
        z = np.asarray(x, dtype=np.float64) @ W  # [n, k]
        out.append(
            scipy.spatial.distance.cdist(z, z, "sqeuclidean") if kind == "distance" else (z * z).sum(1)
        )
    return out


# ==================================================================================================
# Estimators
# ==================================================================================================


class _StructuralProbe(BaseEstimator):
    """The shared estimator of `DistanceProbe` and `DepthProbe` (``_kind`` says which)."""

    _kind = ""

    def __init__(
        self, rank=64, lr=1e-3, max_epochs=30, patience=3, batch_size=20, dev_size=0.1, scale=True, seed=0
    ):
        self.rank = rank
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.dev_size = dev_size
        self.scale = scale
        self.seed = seed

    def fit(self, X, y, X_dev=None, y_dev=None):
        """Fit on sentences ``X`` (a list of ``[n_s, d]`` arrays) and their targets ``y``; returns self.

        Without ``X_dev``/``y_dev`` a ``dev_size`` share of the sentences (`holdout_mask`, by ``seed``) is
        held out for early stopping; the weights of the best dev epoch are kept.
        """
        from probekit.data.dataset import holdout_mask

        where = f"{type(self).__name__}.fit"
        settings = self._settings(where)
        X, y = self._check_xy(X, y, where)
        if X_dev is None:
            if len(X) < 2:
                raise _input_error("need at least 2 sentences to hold out a dev part", where)
            dev = holdout_mask(
                np.arange(len(X)), self.dev_size, self.seed, order="permutation", what="sentence", where=where
            )
            X_dev, y_dev = (
                [x for x, m in zip(X, dev, strict=True) if m],
                [t for t, m in zip(y, dev, strict=True) if m],
            )
            X, y = (
                [x for x, m in zip(X, dev, strict=True) if not m],
                [t for t, m in zip(y, dev, strict=True) if not m],
            )
        else:
            X_dev, y_dev = self._check_xy(X_dev, y_dev, where, d=X[0].shape[1])
        key = (self._kind, "gold")
        scale = _feature_scale(X) if self.scale else np.ones(X[0].shape[1])  # [d]
        X, X_dev = [x / scale for x in X], [x / scale for x in X_dev]
        fit = _train_batched(X, X_dev, {key: y}, {key: y_dev}, settings)[key]
        self.scale_ = scale
        self.coef_ = fit.W / scale[:, None]  # [d, rank], in the original feature space
        self.n_features_in_ = int(X[0].shape[1])
        self.n_epochs_, self.best_epoch_, self.dev_loss_ = fit.epochs, fit.best_epoch, fit.dev_loss
        self.dev_loss_curve_ = np.asarray(fit.history)
        return self

    def predict(self, X) -> list[np.ndarray]:
        """Predicted squared distances ``[n, n]`` (`DistanceProbe`) or squared norms ``[n]``
        (`DepthProbe`), one array per sentence."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "coef_")
        X = self._check_x(X, f"{type(self).__name__}.predict", d=self.n_features_in_)
        return _predict(self._kind, X, self.coef_)

    def score(self, X, y) -> float:
        """Minus the mean normalised L1 loss over the sentences (higher is better, as in scikit-learn)."""
        pred = self.predict(X)
        y = [np.asarray(t, dtype=np.float64) for t in y]
        scale = 2 if self._kind == "distance" else 1
        return -float(np.mean([np.abs(p - t).sum() / len(t) ** scale for p, t in zip(pred, y, strict=True)]))

    def _settings(self, where: str) -> _Settings:
        for name in ("rank", "max_epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise _input_error(f"{name} must be a positive integer, got {value!r}", where)
        if isinstance(self.lr, bool) or not isinstance(self.lr, Real) or not self.lr > 0:  # type: ignore[operator]  # typeshed's numbers.Real has no __gt__
            raise _input_error(f"lr must be a positive number, got {self.lr!r}", where)
        if not isinstance(self.seed, Integral):
            raise _input_error(f"seed must be an integer, got {self.seed!r}", where)
        return _Settings(
            int(self.rank),
            float(self.lr),
            int(self.max_epochs),
            int(self.patience),
            int(self.batch_size),
            int(self.seed),
        )

    def _check_x(self, X, where: str, d: int | None = None) -> list[np.ndarray]:
        if isinstance(X, np.ndarray) and X.ndim == 2:
            raise _input_error(
                "X is one 2-D array; a structural probe needs the words grouped by sentence",
                where,
                fix="pass a list of [n_words, d] arrays, one per sentence",
            )
        X = [np.asarray(x) for x in X]
        if not X:
            raise _input_error("X has no sentences", where)
        for i, x in enumerate(X):
            if x.ndim != 2 or x.shape[0] < 1 or not np.issubdtype(x.dtype, np.number):
                raise _input_error(f"sentence {i} of X has shape {x.shape}; need [n_words, d] numbers", where)
            if x.shape[1] != (d if d is not None else X[0].shape[1]):
                raise _input_error(f"sentence {i} has {x.shape[1]} features, not {d or X[0].shape[1]}", where)
            if not np.isfinite(x).all():
                raise _input_error(f"sentence {i} of X has NaN or infinite values", where)
        return X

    def _check_xy(self, X, y, where: str, d: int | None = None):
        X = self._check_x(X, where, d)
        y = [np.asarray(t, dtype=np.float64) for t in y] if y is not None else None
        if y is None or len(y) != len(X):
            raise _input_error(
                f"need one target per sentence: {len(X)} sentences, {'no' if y is None else len(y)} targets",
                where,
            )
        for i, (x, t) in enumerate(zip(X, y, strict=True)):
            n = x.shape[0]
            want = (n, n) if self._kind == "distance" else (n,)
            if t.shape != want:
                raise _input_error(
                    f"target {i} has shape {t.shape}; a {self._kind} target of a {n}-word sentence is {want}",
                    where,
                    fix="tree_distances(heads)" if self._kind == "distance" else "tree_depths(heads)",
                )
        return X, y


class DistanceProbe(_StructuralProbe):
    """Hewitt & Manning's (2019) structural distance probe: ``||B (h_i - h_j)||^2`` ≈ tree distance.

    ``B`` is a rank-``rank`` linear map (``coef_ = Bᵀ  # [d, rank]``), fitted with Adam on the L1 loss
    ``sum_ij |d_B(h_i, h_j)^2 - d_T(i, j)| / n^2`` averaged over the sentences of a batch, in float64
    (deterministic at any thread count), from ``uniform(-a, a)`` weights seeded by ``seed``
    (``a = sqrt(3 / (d * rank))``, so the initial squared norms are about 1 on RMS-scaled features);
    batches hold sentences of similar length, visited in a seeded order every epoch. Training stops when
    the dev loss has not improved for ``patience`` epochs (or after ``max_epochs``) and the best dev
    epoch's weights are kept. A scikit-learn estimator (``clone``, ``get_params``, ``Pipeline``), but
    ``X`` is a list of sentences, ``X[s]  # [n_s, d]``, and ``y[s]  # [n_s, n_s]`` their tree distances
    (`tree_distances`).

    Parameters
    ----------
    rank : the rank k of ``B``.
    lr : Adam's learning rate.
    max_epochs, patience : the epoch limit and the early-stopping patience (epochs).
    batch_size : sentences per step.
    dev_size : share of the sentences held out for early stopping when ``fit`` gets no ``X_dev``.
    scale : divide every feature by its root mean square over the training words before training (a
        rescaling, so the probe is still a linear map of the raw vectors; it keeps the few huge features
        of a decoder's residual stream from swamping the distances). ``coef_`` is in the raw space.
    seed : initial weights, batch order and the dev part.

    Attributes
    ----------
    coef_ : ``[d, rank]``, float64, in the raw feature space (``z = x @ coef_``).
    scale_ : ``[d]``, the feature scale used (ones without ``scale``).
    n_features_in_ : d.
    n_epochs_, best_epoch_ : epochs run, best epoch (1-based).
    dev_loss_ : the best dev loss; dev_loss_curve_ : the dev loss of every epoch.

    Examples
    --------
    >>> import numpy as np
    >>> from probekit.analyses.trees.structural import DistanceProbe, tree_distances
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.normal(size=(5, 8)) for _ in range(12)]
    >>> y = [tree_distances([1, -1, 1, 2, 3]) for _ in X]
    >>> probe = DistanceProbe(rank=4, max_epochs=2).fit(X, y)
    >>> probe.coef_.shape, probe.predict(X[:1])[0].shape
    ((8, 4), (5, 5))
    """

    _kind = "distance"


class DepthProbe(_StructuralProbe):
    """Hewitt & Manning's (2019) structural depth probe: ``||B h_i||^2`` ≈ the depth of word i.

    Trained like `DistanceProbe` with the loss ``sum_i |‖B h_i‖^2 - depth_i| / n``; ``y[s]  # [n_s]`` are
    the depths (`tree_depths`). Parameters and attributes as in `DistanceProbe`.

    Examples
    --------
    >>> import numpy as np
    >>> from probekit.analyses.trees.structural import DepthProbe, tree_depths
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.normal(size=(5, 8)) for _ in range(12)]
    >>> probe = DepthProbe(rank=4, max_epochs=2).fit(X, [tree_depths([1, -1, 1, 2, 3]) for _ in X])
    >>> probe.predict(X[:1])[0].shape
    (5,)
    """

    _kind = "depth"


def _input_error(what: str, where: str, fix: str | None = None) -> ProbekitError:
    return _StructuralInputError(what, where=where, fix=fix)


class _StructuralInputError(ProbekitError, ValueError):
    """Bad input to a structural probe: a `ProbekitError` that is also a ``ValueError`` (for scikit-learn)."""


# ==================================================================================================
# Every layer of a model: fit_structural_probes
# ==================================================================================================


@dataclass(frozen=True)
class _Part:
    """The sentences of one part (train, dev or test) of one capture: their capture rows and targets."""

    sentences: list
    rows: list[slice]


@dataclass
class StructuralProbeResult:
    """The result of `fit_structural_probes`: one row per (model, layer, probe, target) in ``frame``.

    ``table()`` is the tidy frame, ``selectivity()`` the gold-minus-control differences and
    ``write(folder)`` writes ``structural_probes`` and ``structural_selectivity`` (CSV, Markdown,
    LaTeX) and ``structural_probes.png`` (UUAS, DSpr., root accuracy and NSpr. against layer).
    ``split`` describes the train/dev/test parts.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"model": "m", "model_kind": "trained", "layer": [3, 3], "probe": "distance",
    ...                       "target": ["gold", "control"], "uuas": [0.8, 0.3], "dspr": [0.9, 0.5]})
    >>> StructuralProbeResult(frame).selectivity()[["metric", "selectivity"]].round(2).values.tolist()
    [['uuas', 0.5], ['dspr', 0.4]]
    """

    frame: pd.DataFrame
    title: str = ""
    split: str = ""

    def table(self) -> pd.DataFrame:
        """The tidy table (a copy): columns ``model, model_kind, data, layer, probe, target, baseline,
        rank, seed, n_train, n_dev, n_sentences, epochs, best_epoch, dev_loss, uuas, uuas_ci_low,
        uuas_ci_high, dspr, root_acc, root_acc_ci_low, root_acc_ci_high, nspr``. ``model_kind`` is
        ``trained``, ``random-init`` or ``linear-position`` (no layer, no training); ``target`` is ``gold`` or
        ``control``; ``baseline`` names the row in one column (``none``: the trained model on gold trees;
        ``control``, ``random-init``, ``random-init, control``, ``linear-position``, ...);
        ``n_sentences`` counts the test sentences scored."""
        return self.frame.copy()

    def selectivity(self) -> pd.DataFrame:
        """Gold minus control per (model, model_kind, layer, probe) and metric (Hewitt & Liang 2019).

        Columns ``model, model_kind, layer, probe, metric, gold, control, selectivity``."""
        metrics = {"distance": ["uuas", "dspr"], "depth": ["root_acc", "nspr"]}
        keys = ["model", "model_kind", "layer", "probe"]
        rows = []
        frame = self.frame
        for key, g in frame.groupby(keys, sort=False, dropna=False):
            by_target = g.set_index("target")
            if not {"gold", "control"} <= set(by_target.index):
                continue
            for metric in metrics[cast(str, key[3])]:  # key: (model, model_kind, layer, probe)
                # one row per target in a group: .loc[target, metric] is a number
                gold = float(cast(float, by_target.loc["gold", metric]))
                control = float(cast(float, by_target.loc["control", metric]))
                rows.append(
                    {
                        **dict(zip(keys, key, strict=True)),
                        "metric": metric,
                        "gold": gold,
                        "control": control,
                        "selectivity": gold - control,
                    }
                )
        out = pd.DataFrame(rows, columns=[*keys, "metric", "gold", "control", "selectivity"])
        out["layer"] = out["layer"].astype("Int64")
        return out

    def write(self, folder: str | Path) -> list[Path]:
        """Write the two tables (`probekit.report.write_tables`) and the figure into ``folder``; return
        the paths."""
        from probekit.report.tables import write_tables

        folder = Path(folder)
        tables = {"structural_probes": self.table(), "structural_selectivity": self.selectivity()}
        write_tables(tables, folder)
        figure = plot_structural_probes(self.frame, folder / "structural_probes.png", title=self.title)
        return [folder / f"{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")] + [figure]


def plot_structural_probes(frame: pd.DataFrame, path, title: str = "") -> Path:
    """UUAS, DSpr., root accuracy and NSpr. against layer: the trained model (solid), its control
    structure (dashed), the random-init model (dotted) and the linear-position baseline (grey line)."""
    from probekit.report.figures import pyplot, save_fig

    plt = pyplot()
    panels = [
        ("distance", "uuas", "UUAS"),
        ("distance", "dspr", "DSpr."),
        ("depth", "root_acc", "root acc."),
        ("depth", "nspr", "NSpr."),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), squeeze=False)
    for ax, (probe, metric, label) in zip(axes[0], panels, strict=True):
        f = frame[frame.probe == probe]
        for kind, target, style, color in (
            ("trained", "gold", "-", "C0"),
            ("trained", "control", "--", "C1"),
            ("random-init", "gold", ":", "C0"),
        ):
            g = f[(f.model_kind == kind) & (f.target == target)].sort_values("layer")
            if not g.empty:
                ax.plot(
                    g.layer.astype(float),
                    g[metric],
                    style,
                    color=color,
                    marker=".",
                    label=f"{kind}, {target} trees",
                )
        line = f[(f.model_kind == "linear-position") & (f.target == "gold")]
        if not line.empty:
            ax.axhline(float(line[metric].iloc[0]), color="grey", linestyle="-.", label="linear position")
        ax.set_xlabel("residual-stream layer (0 = embeddings)")
        ax.set_ylabel(label)
        ax.set_ylim(min(0.0, float(np.nanmin(f[metric])) if f[metric].notna().any() else 0.0), 1.02)
        ax.set_title(f"{probe} probe: {label}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_fig(fig, path)


def fit_structural_probes(
    model,
    dataset: Iterable,
    *,
    layers: str | int | Sequence[int] | None = None,
    rank: int = 64,
    control: bool = True,
    random_model=None,
    test_size: float = 0.2,
    dev_size: float = 0.1,
    seed: int = 0,
    lr: float = 1e-3,
    max_epochs: int = 30,
    patience: int = 3,
    batch_size: int = 20,
    engine: str = "batched",
    capture=None,
    random_capture=None,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> StructuralProbeResult:
    """Structural distance and depth probes (Hewitt & Manning 2019) on every residual-stream layer.

    The sentences with gold trees are split by sentence (`probekit.data.Dataset.split`, hash of the
    sentence id and ``seed``) into test (``test_size``, default 20%), dev (``dev_size``, 10%) and train
    (the rest, 70%). On each layer a `DistanceProbe` and a `DepthProbe` are trained on the train part
    (early stopping on the dev part) for the gold trees and, with ``control``, for the control structure
    (`random_tree_heads`: a uniform random tree of the same length per sentence, seeded by the sentence
    id), and scored on the test part with `structural_metrics`. Baselines: layer 0 (the embeddings) is a
    row like any layer; the random-init model (``random:<model>``) is run the same way; the
    linear-position baseline predicts ``|i - j|`` and depth ``i`` (no training). ``docs/methods/
    structural_probes.md`` describes the method.

    Layers are read one at a time from the capture (memory-mapped), so only one layer's word vectors are
    in memory. ``engine="batched"`` (default) trains all probes of a layer together on padded
    ``[batch, words, d]`` tensors; ``engine="loop"`` is the plain reference loop, one probe and one
    sentence at a time, with the same batches, seeds and loss (the same numbers to rounding).

    Parameters
    ----------
    model : a loaded model or a model name (only its name is used when ``capture`` is given).
    dataset : iterable of `Sentence`; those without ``heads`` or with a single word are left out.
    layers : None or "all" (every layer), or residual-stream layers 0..n_layers.
    rank, lr, max_epochs, patience, batch_size : the probes' settings (`DistanceProbe`).
    control : also train and score the control structure (``target="control"``).
    random_model : the random-init model or its name; None means ``"random:<model name>"``; False leaves
        it out.
    test_size, dev_size : shares of the sentences in the test and dev parts.
    seed : the split, the control trees, the probes' initialisation and batch order, the bootstrap.
    engine : ``"batched"`` or ``"loop"``.
    capture, random_capture : existing captures (``.stream(l)``, ``.stream_layers``, ``.sentence_ids``,
        ``.offsets``) of the two models; else they are captured here (`capture_streams`).
    n_boot, ci : the bootstrap intervals of UUAS and root accuracy (over test sentences).

    Returns
    -------
    StructuralProbeResult

    Examples
    --------
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.trees.structural import fit_structural_probes
    >>> data = load_dataset("template:svo_adj?n=30")
    >>> result = fit_structural_probes("tiny-bert", data, layers=[0, 2], rank=4, max_epochs=2,
    ...                                random_model=False, n_boot=50)
    >>> result.table()[["layer", "probe", "target"]].head(3).values.tolist()
    [[0, 'distance', 'gold'], [0, 'distance', 'control'], [0, 'depth', 'gold']]
    """
    from probekit.analyses.probes.layers import trained_and_random_runs
    from probekit.analyses.probes.streams import capture_streams, load_if_name, resolve_layers
    from probekit.data.dataset import Dataset

    where = "fit_structural_probes"
    if engine not in _ENGINES:
        raise ProbekitError(f"engine must be one of {list(_ENGINES)}, got {engine!r}", where=where)
    settings = DistanceProbe(
        rank=rank, lr=lr, max_epochs=max_epochs, patience=patience, batch_size=batch_size, seed=seed
    )._settings(where)
    layers = "all" if layers is None else layers
    sentences = [s for s in dataset if getattr(s, "heads", None) is not None and len(s.words) >= 2]
    data_name = str(getattr(dataset, "name", None) or getattr(dataset, "spec", None) or "unnamed")
    if len(sentences) < 3:
        raise ProbekitError(
            f"{data_name} has {len(sentences)} sentences with a tree of 2+ words; need at least 3",
            where=where,
            fix="use a dataset with gold trees (ud:, template:svo_adj)",
        )
    rest, test = Dataset(data_name, tuple(sentences)).split(test_size=test_size, seed=seed)
    train, dev = rest.split(test_size=dev_size / (1 - test_size), seed=seed)
    parts = {"train": list(train.sentences), "dev": list(dev.sentences), "test": list(test.sentences)}
    targets = ["gold", "control"] if control else ["gold"]
    trees = {
        "gold": {s.id: tuple(s.heads) for s in sentences},
        "control": {s.id: random_tree_heads(len(s.words), f"{seed}:{s.id}") for s in sentences},
    }

    runs = trained_and_random_runs(
        model,
        capture,
        random_model,
        random_capture,
        where=where,
        fix="pass random_model=load_model('random:<name>') or random_model=False",
    )

    records = []
    for kind, m, cap in runs:
        if cap is None:
            m = load_if_name(m)
            cap = capture_streams(m, sentences, layers)
        model_name = m if isinstance(m, str) else getattr(m, "name", type(m).__name__)
        found = {p: _in_capture(ss, cap, where) for p, ss in parts.items()}  # part -> (sentences, rows)
        y = {p: _targets(ss, trees, targets) for p, (ss, _) in found.items()}
        for layer in resolve_layers(layers, cap):
            stream = np.asarray(cap.stream(layer))  # [n_words_total, d]: this layer only
            scale = _feature_scale([stream[r] for r in found["train"][1]])  # [d], train words only
            X = {p: [stream[r] / scale for r in rows] for p, (_, rows) in found.items()}
            fits = _ENGINES[engine](X["train"], X["dev"], y["train"], y["dev"], settings)
            test_ss = found["test"][0]
            for (probe, target), fit in fits.items():
                pred = _predict(probe, X["test"], fit.W)
                metrics = _score(probe, pred, test_ss, trees[target], n_boot, ci, seed)
                records.append(
                    {
                        "model": model_name,
                        "model_kind": kind,
                        "data": data_name,
                        "layer": int(layer),
                        "probe": probe,
                        "target": target,
                        "rank": settings.rank,
                        "seed": seed,
                        "n_train": len(X["train"]),
                        "n_dev": len(X["dev"]),
                        "n_sentences": len(test_ss),
                        "epochs": fit.epochs,
                        "best_epoch": fit.best_epoch,
                        "dev_loss": fit.dev_loss,
                        **metrics,
                    }
                )
            del stream, X
    test_ss = parts["test"]
    for probe in _PROBES:
        for target in targets:
            pred = [_linear_prediction(probe, len(s.words)) for s in test_ss]
            records.append(
                {
                    "model": "linear-position",
                    "model_kind": "linear-position",
                    "data": data_name,
                    "layer": pd.NA,
                    "probe": probe,
                    "target": target,
                    "seed": seed,
                    "n_sentences": len(test_ss),
                    **_score(probe, pred, test_ss, trees[target], n_boot, ci, seed),
                }
            )
    frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
    frame["baseline"] = [_baseline(k, t) for k, t in zip(frame.model_kind, frame.target, strict=True)]
    for col in ("layer", "rank", "n_train", "n_dev", "epochs", "best_epoch"):
        frame[col] = frame[col].astype("Int64")
    split = (
        f"{len(parts['train'])} train / {len(parts['dev'])} dev / {len(parts['test'])} test sentences "
        f"(Dataset.split, seed {seed})"
    )
    return StructuralProbeResult(frame, title=f"structural probes, {data_name}", split=split)


def _baseline(model_kind: str, target: str) -> str:
    """What a row is a baseline of, in one word set: ``none`` (the trained model on the gold trees),
    ``control`` (its control structure), ``random-init`` (+ ``control``), ``linear-position``."""
    if model_kind == "linear-position":
        return "linear-position" if target == "gold" else "linear-position, control"
    kind = "none" if model_kind == "trained" else model_kind
    return kind if target == "gold" else ("control" if kind == "none" else f"{kind}, control")


def _in_capture(sentences: list, cap, where: str) -> tuple[list, list[slice]]:
    """The sentences found in the capture (by id, words checked) and their rows of ``cap.stream(l)``."""
    ids = [str(x) for x in cap.sentence_ids]
    if len(set(ids)) != len(ids):
        raise ProbekitError(
            "the capture has duplicate sentence ids",
            where=where,
            fix="capture each sentence once (sentence ids must be unique)",
        )
    index = {sid: i for i, sid in enumerate(ids)}
    words = cap.meta["words"] if hasattr(cap, "meta") else None
    kept, rows, missing = [], [], 0
    for s in sentences:
        i = index.get(str(s.id))
        if i is None:
            missing += 1
            continue
        if words is not None and list(words[i]) != list(s.words):
            raise ProbekitError(
                f"the capture's words of sentence {s.id!r} do not match the dataset",
                where=where,
                fix="capture this dataset (or pass capture=None)",
            )
        kept.append(s)
        rows.append(slice(int(cap.offsets[i]), int(cap.offsets[i + 1])))
    if missing:
        warnings.warn(
            f"{where}: {missing} sentences are not in the capture (e.g. too long for the model) and are "
            "skipped",
            stacklevel=3,
        )
    if not kept:
        raise ProbekitError(
            "the capture contains none of the sentences",
            where=where,
            fix="pass the capture made from this dataset, or capture=None",
        )
    return kept, rows


def _targets(sentences: list, trees: dict, targets: list[str]) -> dict[tuple[str, str], list]:
    out = {}
    for target in targets:
        heads = [trees[target][s.id] for s in sentences]
        out["distance", target] = [tree_distances(h) for h in heads]
        out["depth", target] = [tree_depths(h).astype(np.float64) for h in heads]
    return {k: out[k] for k in sorted(out, key=lambda k: (_PROBES.index(k[0]), targets.index(k[1])))}


def _score(probe: str, pred: list, sentences: list, trees: dict, n_boot: int, ci: float, seed: int) -> dict:
    from probekit.analyses.trees.mst import punctuation_words

    kwargs = {"distances": pred} if probe == "distance" else {"depths": pred}
    return structural_metrics(
        [trees[s.id] for s in sentences],
        ignore=[punctuation_words(s) for s in sentences],
        sentence_ids=[s.id for s in sentences],
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        **kwargs,
    )


def _linear_prediction(probe: str, n: int) -> np.ndarray:
    pos = np.arange(n, dtype=np.float64)
    return np.abs(pos[:, None] - pos[None, :]) if probe == "distance" else pos
