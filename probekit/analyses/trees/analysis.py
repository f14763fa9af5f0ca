"""`analyze_trees`: whole dependency trees from attention heads, a learned mix of heads, and baselines.

One pass over the captured word attention (sentence by sentence, from the capture cache) builds every
head's undirected and directed tree on the dev and test parts (`head_trees`) and collects the
attention-probe features of the train part (`pair_features`); the probe is fitted on train, once on all
heads and once per layer; a second pass scores it on test. Heads are selected on dev and reported on
test; the best fixed offset is chosen on train. The method: ``docs/methods/trees.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from probekit.analyses.trees.attention import head_trees
from probekit.analyses.trees.baselines import chain_heads, edges_of, offset_heads, offsets
from probekit.analyses.trees.mst import mst_directed, mst_undirected_batch, punctuation_words
from probekit.analyses.trees.result import TreesResult
from probekit.analyses.trees.words_probe import (
    DEFAULT_L2,
    argmax_heads,
    fit_words_probe,
    pair_features,
    probe_probabilities,
    probe_scores,
)
from probekit.data import Dataset, Sentence
from probekit.data.dataset import holdout_mask
from probekit.errors import ProbekitError
from probekit.stats import bootstrap_ci

#: default (train, dev, test) fractions of the usable sentences
DEFAULT_SPLIT: tuple[float, float, float] = (0.5, 0.2, 0.3)
PARTS = ("train", "dev", "test")


@dataclass(frozen=True)
class Item:
    """One usable sentence: its dataset index, kept words, gold arcs between kept words and part."""

    index: int
    sentence_id: str
    n: int
    ignore: tuple[int, ...]
    kept: tuple[int, ...]
    deps: np.ndarray  # [n_arcs]
    heads: np.ndarray  # [n_arcs] gold head of each dep
    deprels: tuple[str, ...]  # [n_arcs]
    root: int
    part: str


def split_parts(ids, split=DEFAULT_SPLIT, seed: int = 0) -> np.ndarray:
    """Assign each sentence to train/dev/test with `holdout_mask` (the project's one split function).

    Sentences are ranked by ``sha256(f"{seed}:{id}:{k}")``; the first ``test`` fraction is the test
    part, then the dev part is cut from the rest the same way.

    Parameters
    ----------
    ids : sequence of str
        Sentence ids (repeated ids are told apart by their count k).
    split : (train, dev, test) fractions summing to 1.
    seed : int

    Returns
    -------
    numpy.ndarray of str
        ``"train"``, ``"dev"`` or ``"test"`` per sentence.

    Examples
    --------
    >>> split_parts([f"s{i}" for i in range(10)], (0.5, 0.2, 0.3)).tolist().count("test")
    3
    """
    train, dev, test = (float(x) for x in split)
    if min(train, dev, test) <= 0 or abs(train + dev + test - 1) > 1e-9:
        raise ProbekitError(
            f"split {tuple(split)} must be three positive fractions (train, dev, test) summing to 1",
            where="analyze_trees",
            fix="e.g. split=(0.5, 0.2, 0.3)",
        )
    seen: dict[str, int] = {}
    keys = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        keys.append(f"{i}:{seen[i] - 1}")
    if len(keys) < 3:
        raise ProbekitError(
            f"{len(keys)} usable sentences cannot make train, dev and test parts",
            where="analyze_trees",
            fix="use more sentences (with gold trees, within max_words)",
        )
    parts = np.full(len(keys), "train", dtype=object)
    is_test = holdout_mask(keys, test, seed, what="sentence", where="analyze_trees")
    parts[is_test] = "test"
    rest = np.flatnonzero(~is_test)
    is_dev = holdout_mask([keys[i] for i in rest], dev / (train + dev), seed, what="sentence")
    parts[rest[is_dev]] = "dev"
    return parts.astype(str)


def usable_items(dataset: Dataset, max_words: int, split, seed: int, max_sentences=None) -> list[Item]:
    """The first ``max_sentences`` (all if None) sentences with a gold tree, 2..max_words words and at
    least one arc between kept words, each assigned to its part."""
    # (dataset index, sentence, ignored words, arcs (dep, head), root, deprels)
    chosen: list[tuple[int, Sentence, tuple[int, ...], list[tuple[int, int]], int, tuple[str, ...]]] = []
    for idx, s in enumerate(dataset.sentences):
        if max_sentences is not None and len(chosen) >= max_sentences:
            break
        if s.heads is None or not 2 <= len(s.words) <= max_words:
            continue
        ignore = tuple(punctuation_words(s))
        drop = set(ignore)
        arcs = [(i, h) for i, h in enumerate(s.heads) if h >= 0 and i not in drop and h not in drop]
        roots = [i for i, h in enumerate(s.heads) if h == -1]
        if not arcs or roots[0] in drop:
            continue
        rels = tuple((s.deprels[d] if s.deprels else "?") for d, _ in arcs)
        chosen.append((idx, s, ignore, arcs, roots[0], rels))
    parts: np.ndarray | list[str] = split_parts([c[1].id for c in chosen], split, seed) if chosen else []
    return [
        Item(
            index=idx,
            sentence_id=s.id,
            n=len(s.words),
            ignore=ignore,
            kept=tuple(i for i in range(len(s.words)) if i not in set(ignore)),
            deps=np.array([d for d, _ in arcs], dtype=np.int64),
            heads=np.array([h for _, h in arcs], dtype=np.int64),
            deprels=rels,
            root=root,
            part=str(part),
        )
        for (idx, s, ignore, arcs, root, rels), part in zip(chosen, parts, strict=True)
    ]


def analyze_trees(
    model,
    dataset: Dataset,
    *,
    split=DEFAULT_SPLIT,
    max_words: int = 40,
    max_sentences: int | None = None,
    probe_sentences: int = 300,
    l2: float = DEFAULT_L2,
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 16,
    random_model=None,
    progress: bool = True,
    data_label: str | None = None,
    n_drawn: int = 3,
) -> TreesResult:
    """Whole trees from attention: every head's MST, Clark et al.'s attention probe, and baselines.

    Parameters
    ----------
    model : probekit.Model
    dataset : Dataset
        Sentences with gold heads (``ud:``); punctuation is dropped from trees and scores.
    split : (train, dev, test)
        Fractions of the usable sentences (`split_parts`): the probe and the best offset are fitted on
        train, heads are selected on dev, everything is reported on test.
    max_words : int
        Sentences longer than this are skipped (the rest of the data is still captured whole, so the
        capture cache of the ``heads`` stage is reused).
    max_sentences : int, optional
        Use only the first N usable sentences (the whole data is still captured, as with ``max_words``).
    probe_sentences : int
        At most this many train sentences feed the probe (its features are held in memory).
    l2 : float
        The probe's L2 penalty.
    seed : int
        Seed of the split and the bootstrap.
    n_boot : int
        Bootstrap resamples over test sentences for the CIs.
    batch_size : int
        Sentences per forward pass when capturing.
    random_model : probekit.Model, optional
        The random-init baseline (e.g. ``load_model("random:<name>")``), run the same way.
    progress : bool
    data_label : str, optional
        How the tables name the data (default: the dataset's spec).
    n_drawn : int
        Test sentences whose best-head tree is drawn against the gold tree.

    Returns
    -------
    TreesResult

    Examples
    --------
    >>> import probekit as pk
    >>> data = pk.load_dataset("template:svo_adj?n=12")
    >>> res = pk.analyze_trees(pk.load_model("tiny-bert"), data, n_boot=50, progress=False)
    >>> sorted(set(res.summary.method))[:3]
    ['best_head', 'best_head_directed', 'best_offset']
    """
    if not isinstance(dataset, Dataset):
        raise ProbekitError(
            f"expected a probekit Dataset, got {type(dataset).__name__}",
            where="analyze_trees",
            fix="load one with probekit.load_dataset(spec)",
        )
    for name, v in (("max_words", max_words), ("probe_sentences", probe_sentences), ("n_boot", n_boot)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ProbekitError(f"{name} must be a positive integer, got {v!r}", where="analyze_trees")
    if max_sentences is not None and (
        isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 3
    ):
        raise ProbekitError(
            f"max_sentences must be an integer >= 3, got {max_sentences!r}", where="analyze_trees"
        )
    items = usable_items(dataset, max_words, split, seed, max_sentences)
    label = data_label or dataset.spec
    base = _baselines(items)
    runs = [_run_model(model, dataset, items, probe_sentences, l2, batch_size, progress)]
    if random_model is not None:
        runs.append(_run_model(random_model, dataset, items, probe_sentences, l2, batch_size, progress))
    return _assemble(runs, base, items, label, split, seed, n_boot, n_drawn)


# --------------------------------------------------------------------------------------------------
# one model


@dataclass
class ModelRun:
    """What one model's passes produced (per-arc hits are bool ``[n_arcs, n_heads]``, layer-major)."""

    name: str
    causal: bool
    layers: list[int]
    n_heads: int
    hits: dict  # part -> {"undirected"|"directed"|"reverse": [n_arcs, LH]}
    probe: dict  # "argmax"|"tree_directed"|"tree_undirected"|"argmax_undirected" -> [n_test_arcs]
    layer_probe: dict  # "uuas"|"uas" -> [n_layers] test scores of the per-layer probes
    drawn: list  # (item, parents [LH, n]) of the drawn sentences (filled in later)
    theta: np.ndarray
    capture: Any  # what `capture_attention` returns (untyped): .attention(i), .sentences


def _run_model(model, dataset, items, probe_sentences, l2, batch_size, progress) -> ModelRun:
    from probekit.analyses.heads.collect import capture_attention

    cap = capture_attention(model, dataset, batch_size, progress)
    causal = bool(model.is_causal)
    layers, n_heads = list(cap.attn_layers), int(cap.n_heads)
    lh = len(layers) * n_heads
    acc: dict[str, dict[str, list[np.ndarray]]] = {
        p: {"undirected": [], "directed": [], "reverse": []} for p in ("dev", "test")
    }
    feats, groups, gold = [], [], []
    n_groups, n_train = 0, 0
    name = getattr(model, "name", str(model))
    for it in tqdm(items, desc=f"trees {name}", unit="sent", disable=not progress, leave=False):
        if it.part == "train" and n_train >= probe_sentences:
            continue
        att = np.asarray(cap.attention(it.index), dtype=np.float32).reshape(lh, it.n, it.n)
        if it.part == "train":
            n_train += 1
            for d, h in zip(it.deps, it.heads, strict=True):
                x, cand = pair_features(att, it.kept, [d])
                feats.append(x)
                groups.append(np.full(len(cand), n_groups, dtype=np.int64))
                gold.append(cand == h)
                n_groups += 1
            continue
        t = head_trees(att, _gold_heads(it), it.ignore, causal=causal)
        acc[it.part]["undirected"].append(t.undirected)
        acc[it.part]["directed"].append(t.directed)
        acc[it.part]["reverse"].append(t.reverse)
    hits = {
        p: {k: (np.concatenate(v) if v else np.zeros((0, lh), bool)) for k, v in d.items()}
        for p, d in acc.items()
    }
    x = np.concatenate(feats) if feats else np.zeros((0, 2 * lh), np.float32)
    g = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    y = np.concatenate(gold) if gold else np.zeros(0, bool)
    theta = fit_words_probe(x, g, y, l2=l2)
    per_layer = []
    for li in range(len(layers)):
        cols = np.r_[li * n_heads : (li + 1) * n_heads, lh + li * n_heads : lh + (li + 1) * n_heads]
        per_layer.append(fit_words_probe(x[:, cols], g, y, l2=l2))
    del x, g, y, feats
    probe, layer_probe = _probe_test(cap, items, lh, layers, n_heads, theta, per_layer)
    return ModelRun(name, causal, layers, n_heads, hits, probe, layer_probe, [], theta, cap)


def _gold_heads(it: Item) -> np.ndarray:
    heads = np.full(it.n, -2, dtype=np.int64)
    heads[it.root] = -1
    heads[it.deps] = it.heads
    return heads


def _probe_test(cap, items, lh, layers, n_heads, theta, per_layer):
    """Second pass: the fitted probes on the test part. UAS: each dependent's argmax head (Clark et al.);
    UUAS: the undirected MST of the probe's probabilities; ``tree_*``: its Chu-Liu/Edmonds tree."""
    found: dict[str, list[np.ndarray]] = {
        "argmax": [],
        "mst_undirected": [],
        "tree_directed": [],
        "tree_undirected": [],
    }
    lay = {"uuas": np.zeros(len(layers)), "uas": np.zeros(len(layers))}
    total = 0
    for it in items:
        if it.part != "test":
            continue
        att = np.asarray(cap.attention(it.index), dtype=np.float64).reshape(lh, it.n, it.n)
        scores = probe_scores(att, theta)  # [n, n]
        found["argmax"].append(argmax_heads(scores, it.kept, it.deps) == it.heads)
        parents = mst_undirected_batch(probe_probabilities(scores, it.kept)[None], ignore=it.ignore)[0]
        found["mst_undirected"].append(_undirected_hits(parents, it))
        tree = mst_directed(scores, it.root, ignore=it.ignore)
        found["tree_directed"].append(tree[it.deps] == it.heads)
        found["tree_undirected"].append(_undirected_hits(tree, it))
        total += len(it.deps)
        probs = []
        for li in range(len(layers)):
            sc = probe_scores(att[li * n_heads : (li + 1) * n_heads], per_layer[li])
            lay["uas"][li] += np.sum(argmax_heads(sc, it.kept, it.deps) == it.heads)
            probs.append(probe_probabilities(sc, it.kept))
        parents = mst_undirected_batch(np.stack(probs), ignore=it.ignore)  # [n_layers, n]
        lay["uuas"] += ((parents[:, it.deps] == it.heads) | (parents[:, it.heads] == it.deps)).sum(axis=1)
    out = {k: (np.concatenate(v) if v else np.zeros(0, bool)) for k, v in found.items()}
    lay = {k: v / max(total, 1) for k, v in lay.items()}
    return out, lay


def _undirected_hits(heads: np.ndarray, it: Item) -> np.ndarray:
    """Per gold arc of ``it``: is its edge in the tree given by ``heads`` (either orientation)?"""
    return (heads[it.deps] == it.heads) | (heads[it.heads] == it.deps)


# --------------------------------------------------------------------------------------------------
# baselines (no model)


def _baselines(items: list[Item]) -> dict:
    """Per test arc hits of the chains and the best offset (chosen on train by UAS)."""
    train_uas = {}
    for k in offsets():
        hit = tot = 0
        for it in items:
            if it.part == "train":
                heads = offset_heads(it.n, it.kept, k)
                hit += int(np.sum(heads[it.deps] == it.heads))
                tot += len(it.deps)
        train_uas[k] = hit / max(tot, 1)
    best = max(offsets(), key=lambda k: train_uas[k])  # first maximum in offsets() order
    out = {}
    for method, fn in (
        ("chain_head_right", lambda it: chain_heads(it.n, it.kept, "right")),
        ("chain_head_left", lambda it: chain_heads(it.n, it.kept, "left")),
        ("best_offset", lambda it: offset_heads(it.n, it.kept, best)),
    ):
        und, dirs = [], []
        for it in items:
            if it.part != "test":
                continue
            heads = fn(it)
            edges = set(edges_of(heads))
            dirs.append(heads[it.deps] == it.heads)
            und.append(
                np.array([(min(d, h), max(d, h)) in edges for d, h in zip(it.deps, it.heads, strict=True)])
            )
        out[method] = {
            "undirected": np.concatenate(und) if und else np.zeros(0, bool),
            "directed": np.concatenate(dirs) if dirs else np.zeros(0, bool),
            "detail": f"offset {best:+d}" if method == "best_offset" else "",
        }
    return out


# --------------------------------------------------------------------------------------------------
# tables


def _assemble(runs, base, items, label, split, seed, n_boot, n_drawn) -> TreesResult:
    test = [it for it in items if it.part == "test"]
    sent_of_arc: np.ndarray | list[int] = (
        np.concatenate([np.full(len(it.deps), k) for k, it in enumerate(test)]) if test else []
    )
    rels = [r for it in test for r in it.deprels]
    n_sent = {p: sum(it.part == p for it in items) for p in PARTS}
    n_arcs_test = int(sum(len(it.deps) for it in test))

    def ci(values):
        values = np.asarray(values, dtype=float)
        if len(values) == 0 or len(set(sent_of_arc)) < 2:
            return (np.nan, np.nan)
        return bootstrap_ci(values, groups=sent_of_arc, n_boot=n_boot, seed=seed)

    def row(model, method, detail, und, dirs):
        ul, uh = ci(und)
        al, ah = ci(dirs)
        return {
            "model": model,
            "data": label,
            "method": method,
            "detail": detail,
            "n_sentences": len(test),
            "n_arcs": n_arcs_test,
            "uuas": float(np.mean(und)) if len(und) else np.nan,
            "uuas_low": ul,
            "uuas_high": uh,
            "uas": float(np.mean(dirs)) if len(dirs) else np.nan,
            "uas_low": al,
            "uas_high": ah,
        }

    summary, heads_rows, layer_rows, rel_rows = [], [], [], []
    for run in runs:
        lh = len(run.layers) * run.n_heads
        dev, tst = run.hits["dev"], run.hits["test"]

        dev_u, dev_d, dev_r = (_mean(dev[k], lh) for k in ("undirected", "directed", "reverse"))
        t_u, t_d, t_r = (_mean(tst[k], lh) for k in ("undirected", "directed", "reverse"))
        best = int(np.nanargmax(dev_u)) if lh else 0
        dev_dir = np.concatenate([dev_d, dev_r])  # [2 * LH]: dep_to_head then head_to_dep
        best_dir = int(np.nanargmax(dev_dir))
        bd_head, bd_rev = best_dir % lh, best_dir >= lh
        for k in range(lh):
            li, h = divmod(k, run.n_heads)
            heads_rows.append(
                {
                    "model": run.name,
                    "data": label,
                    "layer": run.layers[li],
                    "head": h,
                    "n_sentences": len(test),
                    "n_arcs": n_arcs_test,
                    "uuas": t_u[k],
                    "uas": t_d[k],
                    "uas_reverse": t_r[k],
                    "dev_uuas": dev_u[k],
                    "dev_uas": dev_d[k],
                    "dev_uas_reverse": dev_r[k],
                    "best_on_dev": k == best,
                }
            )
        name_of = functools.partial(_head_name, run.layers, run.n_heads)
        summary.append(
            row(run.name, "best_head", name_of(best), tst["undirected"][:, best], tst["directed"][:, best])
        )
        col = tst["reverse"] if bd_rev else tst["directed"]
        summary.append(
            row(
                run.name,
                "best_head_directed",
                f"{name_of(bd_head)} {_direction(run.causal, bd_rev)}",
                tst["undirected"][:, bd_head],
                col[:, bd_head],
            )
        )
        summary.append(
            row(run.name, "words_probe", "argmax; MST", run.probe["mst_undirected"], run.probe["argmax"])
        )
        summary.append(
            row(
                run.name,
                "words_probe_tree",
                "gold root",
                run.probe["tree_undirected"],
                run.probe["tree_directed"],
            )
        )
        for li, layer in enumerate(run.layers):
            ks = np.arange(li * run.n_heads, (li + 1) * run.n_heads)
            kb = int(ks[np.nanargmax(dev_u[ks])])
            layer_rows.append(
                {
                    "model": run.name,
                    "layer": layer,
                    "method": "best_head",
                    "detail": name_of(kb),
                    "uuas": t_u[kb],
                    "uas": t_d[kb],
                }
            )
            layer_rows.append(
                {
                    "model": run.name,
                    "layer": layer,
                    "method": "words_probe_layer",
                    "detail": "argmax; MST",
                    "uuas": run.layer_probe["uuas"][li],
                    "uas": run.layer_probe["uas"][li],
                }
            )
        for method, und, dirs in (
            ("best_head", tst["undirected"][:, best], tst["directed"][:, best]),
            ("words_probe_tree", run.probe["tree_undirected"], run.probe["tree_directed"]),
        ):
            rel_rows += _relations(run.name, method, rels, und, dirs)
        run.drawn = _drawn(run, test, best, n_drawn)
    first = runs[0].name
    for method in ("chain_head_right", "chain_head_left", "best_offset"):
        b = base[method]
        summary.append(row(first, method, b["detail"], b["undirected"], b["directed"]))
        if method == "chain_head_right":
            rel_rows += _relations(first, method, rels, b["undirected"], b["directed"])
    parts = pd.DataFrame(
        [
            {"part": p, "fraction": float(f), "n_sentences": n_sent[p]}
            for p, f in zip(PARTS, split, strict=True)
        ]
    )
    return TreesResult(
        model=first,
        data=label,
        parts=parts,
        summary=pd.DataFrame(summary),
        heads=pd.DataFrame(heads_rows),
        layers=pd.DataFrame(layer_rows),
        relations=pd.DataFrame(rel_rows),
        drawings=[d for run in runs[:1] for d in run.drawn],
    )


def _direction(causal: bool, reverse: bool) -> str:
    if causal:
        return "A+A^T oriented from the gold root"
    return "head_to_dep" if reverse else "dep_to_head"


def _mean(a: np.ndarray, lh: int) -> np.ndarray:
    return a.mean(axis=0) if len(a) else np.full(lh, np.nan)


def _head_name(layers: list[int], n_heads: int, k: int) -> str:
    return f"L{layers[k // n_heads]}.H{k % n_heads}"


def _relations(model, method, rels, und, dirs) -> list[dict]:
    frame = pd.DataFrame({"relation": rels, "und": np.asarray(und, bool), "dir": np.asarray(dirs, bool)})
    out = []
    for rel, g in frame.groupby("relation", sort=True):
        out.append(
            {
                "model": model,
                "method": method,
                "relation": rel,
                "n": len(g),
                "recall_undirected": float(g.und.mean()),
                "recall_directed": float(g.dir.mean()),
            }
        )
    return out


def _drawn(run: ModelRun, test: list[Item], best: int, n_drawn: int) -> list[dict]:
    """The best head's undirected tree on the first ``n_drawn`` test sentences of 5..15 words."""
    lh = len(run.layers) * run.n_heads
    out: list[dict] = []
    for it in test:
        if len(out) >= n_drawn:
            break
        if not 5 <= it.n <= 15:
            continue
        att = np.asarray(run.capture.attention(it.index), dtype=np.float32).reshape(lh, it.n, it.n)
        t = head_trees(att[best : best + 1], _gold_heads(it), it.ignore, causal=run.causal, directed=False)
        parents = t.parents[0]
        out.append(
            {
                "model": run.name,
                "head": f"L{run.layers[best // run.n_heads]}.H{best % run.n_heads}",
                "sentence_id": it.sentence_id,
                "words": list(run.capture.sentences[it.index].words),
                "gold": [(int(d), int(h)) for d, h in zip(it.deps, it.heads, strict=True)],
                "pred": sorted((min(i, int(p)), max(i, int(p))) for i, p in enumerate(parents) if p >= 0),
            }
        )
    return out
