"""Whole trees from attention (probekit.analyses.trees): MST/UUAS/UAS by hand, baselines, the attention
probe, determinism, and the stage/CLI on tiny random models."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest

import probekit as pk
from probekit.analyses.trees import (
    gold_edges,
    heads_from_edges,
    mst_directed,
    mst_undirected,
    mst_undirected_batch,
    split_parts,
    uas,
    uuas,
)
from probekit.analyses.trees.attention import head_trees
from probekit.analyses.trees.baselines import chain_heads, offset_heads
from probekit.analyses.trees.words_probe import argmax_heads, fit_words_probe, pair_features, probe_scores
from probekit.errors import ProbekitError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.conllu"

# A hand-worked 5-word sentence: "the old dog chased cats" with gold heads
#   the->dog (0->2), old->dog (1->2), dog->chased (2->3), chased = root (3), cats->chased (4->3).
GOLD = [2, 2, 3, -1, 3]
# Scores (row = dependent, column = candidate head). Symmetrised, the strongest pairs are
#   0-1: 9+0 = 9, 2-3: 8+0 = 8, 3-4: 0+7 = 7, 1-2: 6+0 = 6, 0-2: 5+0 = 5, the rest 1 or 0.
SCORES = np.array(
    [
        [0, 9, 5, 1, 0],
        [0, 0, 6, 0, 0],
        [0, 0, 0, 8, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 7, 0],
    ],
    dtype=float,
)


def test_mst_and_uuas_on_a_hand_worked_tree():
    # Kruskal by hand: take 0-1 (9), 2-3 (8), 3-4 (7), 1-2 (6) -> 4 edges span 5 words; 0-2 (5) would close
    # a cycle. Gold edges: 0-2, 1-2, 2-3, 3-4. Recovered: 1-2, 2-3, 3-4 = 3 of 4 -> UUAS 0.75.
    edges = mst_undirected(SCORES)
    assert edges == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert gold_edges(GOLD) == [(0, 2), (1, 2), (2, 3), (3, 4)]
    assert uuas(edges, GOLD) == (3, 4)
    # oriented from the gold root 3: 2->3, 4->3, 1->2, 0->1; heads [1, 2, 3, -1, 3]; gold heads of 0,1,2,4
    # are 2,2,3,3 -> correct for 1, 2, 4 -> UAS 3/4.
    heads = heads_from_edges(edges, root=3, n=5)
    assert heads.tolist() == [1, 2, 3, -1, 3]
    assert uas(heads, GOLD) == (3, 4)
    # punctuation: ignoring word 1 drops gold edge 1-2 (3 gold edges left) and the MST over {0,2,3,4}
    # is 2-3 (8), 3-4 (7), 0-2 (5): all three are gold -> 3 of 3.
    assert mst_undirected(SCORES, ignore=[1]) == [(0, 2), (2, 3), (3, 4)]
    assert uuas(mst_undirected(SCORES, ignore=[1]), GOLD, ignore=[1]) == (3, 3)


def test_directed_mst_with_fixed_root_by_hand():
    # Directed, root 3: each word's best head: 0 -> 1 (9), 1 -> 2 (6), 2 -> 3 (8), 4 -> 3 (7); no cycle,
    # so that is the arborescence. UAS: 1, 2, 4 right, 0 wrong -> 3 of 4.
    heads = mst_directed(SCORES, root=3)
    assert heads.tolist() == [1, 2, 3, -1, 3]
    assert uas(heads, GOLD) == (3, 4)
    # a cycle: 0 and 1 prefer each other; Chu-Liu/Edmonds breaks it at the cheaper entry from the root
    s = np.array([[0, 5, 1], [5, 0, 2], [0, 0, 0]], dtype=float)
    assert mst_directed(s, root=2).tolist() == [1, 2, -1]


def test_find_cycle_is_the_one_walk_of_sentences_and_chu_liu_edmonds():
    # one function for both: Sentence's check and the contraction step of mst_directed
    from probekit.analyses.trees import mst
    from probekit.data.schema import find_cycle

    assert mst.find_cycle is find_cycle
    # the walk from word 0 goes 0 -> 3 -> 1 -> 2 -> 3: the cycle in walk order, entered at 3
    assert find_cycle([3, 2, 3, 1, -1]) == [3, 1, 2]
    assert find_cycle([1, 2, -1, 2]) is None
    assert find_cycle([]) is None
    with pytest.raises(ProbekitError, match=r"cycle through words \[1, 2, 3\]"):
        pk.Sentence("s", ("a", "b", "c", "d"), heads=(-1, 3, 1, 2))


def test_mst_matches_networkx_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 10))
        s = rng.random((n, n))
        root = int(rng.integers(n))
        g = nx.DiGraph()
        g.add_weighted_edges_from((h, d, s[d, h]) for d in range(n) for h in range(n) if d != h and d != root)
        ref = sum(s[d, h] for h, d in nx.maximum_spanning_arborescence(g).edges)
        heads = mst_directed(s, root)
        assert sum(s[d, heads[d]] for d in range(n) if d != root) == pytest.approx(ref)
        u = nx.Graph()
        u.add_weighted_edges_from((i, j, s[i, j] + s[j, i]) for i in range(n) for j in range(i + 1, n))
        ref_u = sum(w for *_, w in nx.maximum_spanning_tree(u).edges(data="weight"))
        assert sum(s[i, j] + s[j, i] for i, j in mst_undirected(s)) == pytest.approx(ref_u)
        batch = mst_undirected_batch(np.stack([s, s.T]))
        assert (batch[0] == batch[1]).all()  # the symmetrised scores are the same


def test_bad_inputs_raise():
    with pytest.raises(ProbekitError):
        mst_undirected(np.zeros((2, 3)))
    with pytest.raises(ProbekitError):
        mst_directed(SCORES, root=1, ignore=[1])
    with pytest.raises(ProbekitError):
        uas([0, 1], GOLD)
    with pytest.raises(ProbekitError):
        split_parts(["a", "b", "c"], (0.5, 0.5, 0.5))


def test_chain_and_offset_baselines_by_hand():
    # right chain on GOLD: heads [1, 2, 3, 4, -1]: correct for 1 (->2) and 2 (->3) -> UAS 2/4;
    # undirected path 0-1, 1-2, 2-3, 3-4 vs gold 0-2, 1-2, 2-3, 3-4 -> UUAS 3/4.
    right = chain_heads(5, range(5), "right")
    assert right.tolist() == [1, 2, 3, 4, -1]
    assert uas(right, GOLD) == (2, 4)
    assert uuas([(i, int(h)) for i, h in enumerate(right) if h >= 0], GOLD) == (3, 4)
    left = chain_heads(5, range(5), "left")
    assert uas(left, GOLD) == (1, 4)  # only 4 -> 3
    # offset +2 skips punctuation word 1: kept [0, 2, 3, 4] -> 0 -> 3, 2 -> 4, 3 and 4 have no partner
    assert offset_heads(5, [0, 2, 3, 4], 2).tolist() == [3, -2, 4, -1, -1]


def test_head_trees_causal_uses_leftward_attention():
    # a causal head whose words attend to their gold head on the left: tree and orientation are exact
    gold = [-1, 0, 1, 1]
    att = np.zeros((1, 4, 4))
    for d, h in enumerate(gold):
        if h >= 0:
            att[0, d, h] = 1.0
    t = head_trees(att, gold, [], causal=True)
    assert t.undirected.all() and t.directed.all() and t.reverse.all()
    # an encoder head attending from head to dependent is right only in the reverse direction
    t = head_trees(att.transpose(0, 2, 1), gold, [], causal=False)
    assert t.undirected.all() and t.reverse.all() and not t.directed.all()


def _synthetic(n_sent, seed, gold_head_index=3, k=5):
    """Sentences whose attention head `gold_head_index` puts all dependent weight on the gold head."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sent):
        n = int(rng.integers(4, 9))
        heads = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]  # a random projective-ish tree
        att = rng.random((k, n, n)) * 0.5
        att[gold_head_index] = 0.0
        for d, h in enumerate(heads):
            if h >= 0:
                att[gold_head_index, d, h] = 1.0
        out.append((att, heads))
    return out


def _features(sents):
    xs, gs, ys, g = [], [], [], 0
    for att, heads in sents:
        for d, h in enumerate(heads):
            if h < 0:
                continue
            x, cand = pair_features(att, range(len(heads)), [d])
            xs.append(x)
            gs.append(np.full(len(cand), g))
            ys.append(cand == h)
            g += 1
    return np.concatenate(xs), np.concatenate(gs), np.concatenate(ys)


def test_words_probe_learns_the_gold_head_and_is_deterministic():
    train, test = _synthetic(40, 0), _synthetic(20, 1)
    theta = fit_words_probe(*_features(train))
    assert int(np.argmax(theta)) == 3  # the weight w of the gold-attending head
    hits = total = 0
    for att, heads in test:
        deps = [d for d, h in enumerate(heads) if h >= 0]
        pred = argmax_heads(probe_scores(att, theta), range(len(heads)), deps)
        hits += int(sum(p == heads[d] for p, d in zip(pred, deps, strict=True)))
        total += len(deps)
    assert hits == total  # UAS 1.0 on held-out sentences
    assert np.array_equal(theta, fit_words_probe(*_features(train)))


def test_split_parts_are_disjoint_and_sized():
    ids = [f"s{i}" for i in range(100)]
    parts = split_parts(ids, (0.5, 0.2, 0.3), seed=0)
    assert (parts == "test").sum() == 30 and (parts == "dev").sum() == 20 and (parts == "train").sum() == 50
    assert (split_parts(ids, (0.5, 0.2, 0.3), seed=0) == parts).all()


@pytest.fixture(scope="module")
def fixture_data():
    return pk.load_dataset(f"ud:{FIXTURE}")


def test_analyze_trees_tables_and_determinism(tiny_model, fixture_data, tmp_path):
    res = pk.analyze_trees(tiny_model, fixture_data, n_boot=50, progress=False)
    methods = set(res.summary.method)
    assert {"best_head", "words_probe", "words_probe_tree", "chain_head_right", "best_offset"} <= methods
    lh = tiny_model.n_layers * tiny_model.n_heads
    assert len(res.heads) == lh and res.heads.best_on_dev.sum() == 1
    assert set(res.layers.layer) == set(range(tiny_model.n_layers))
    assert res.parts.n_sentences.sum() > 0
    assert res.summary[["uuas", "uas"]].apply(lambda c: c.between(0, 1)).all().all()
    if tiny_model.is_causal:  # the directed tree is the undirected one oriented from the gold root
        assert (res.heads.uas == res.heads.uas_reverse).all()
    a, b = tmp_path / "a", tmp_path / "b"
    res.write(a)
    pk.analyze_trees(tiny_model, fixture_data, n_boot=50, progress=False).write(b)
    for name in ("trees_summary", "trees_heads", "trees_layers", "trees_relations", "trees_parts"):
        assert (a / f"{name}.csv").read_bytes() == (b / f"{name}.csv").read_bytes(), name
    assert (a / "trees_layers.png").exists()


def test_cli_trees_writes_tables(tmp_path, capsys):
    from probekit.cli import main

    base = ["trees", "--model", "tiny-llama", "--data", f"ud:{FIXTURE}", "--quiet", "--n-boot", "100"]
    out = tmp_path / "o"
    assert main([*base, "--out", str(out), "--random-baseline"]) == 0
    summary = pd.read_csv(out / "trees_summary.csv")
    assert {"tiny-llama", "random:tiny-llama"} <= set(summary.model)
    assert main([*base, "--out", str(tmp_path / "x"), "--split", "0.5,0.5"]) == 2
    assert "not three numbers" in capsys.readouterr().err


def test_trees_stage_and_report_section(tmp_path):
    from probekit.experiment import run_experiment, validate_config
    from probekit.report.markdown import TREES_TITLE

    cfg = validate_config(
        {
            "name": "t",
            "seed": 0,
            "out": str(tmp_path / "run"),
            "models": ["tiny-bert"],
            "data": {"tiny": f"ud:{FIXTURE}"},
            "analyses": {"trees": {"data": "tiny", "n_boot": 100, "random_baseline": False}},
        }
    )
    run = run_experiment(cfg, out=tmp_path / "run", progress=False)
    assert (run / "trees" / "tiny-bert__tiny" / "trees_summary.csv").exists()
    report = (run / "REPORT.md").read_text()
    assert f"## {TREES_TITLE}" in report and "attention probe UAS" in report


def test_report_section_renders_the_structural_probes_when_present(tmp_path):
    from probekit.report import write_table
    from probekit.report.markdown import TREES_TITLE, trees_section

    folder = tmp_path / "trees" / "m__d"
    common = {"model": "m", "data": "d", "detail": "", "n_sentences": 5, "n_arcs": 50}
    summary = pd.DataFrame(
        [
            {**common, "method": "best_head", "uuas": 0.6, "uuas_low": 0.55, "uuas_high": 0.65}
            | {"uas": 0.5, "uas_low": 0.45, "uas_high": 0.55},
            {**common, "method": "chain_head_right", "uuas": 0.4, "uuas_low": 0.35, "uuas_high": 0.45}
            | {"uas": 0.3, "uas_low": 0.25, "uas_high": 0.35},
        ]
    )
    write_table(summary, folder / "trees_summary.csv")
    parts = pd.DataFrame({"part": ["test"], "fraction": [0.3], "n_sentences": [5]})
    write_table(parts, folder / "trees_parts.csv")
    assert "Hewitt & Manning" not in "\n".join(trees_section(tmp_path))
    structural = pd.DataFrame(
        {"model": ["m", "m"], "layer": [1, 2], "probe": "distance", "baseline": "none", "uuas": [0.5, 0.7]}
    )
    write_table(structural, folder / "structural_probes.csv")
    text = "\n".join(trees_section(tmp_path))
    assert text.startswith(f"## {TREES_TITLE}")
    assert "Hewitt & Manning" in text and "| m | distance | gold | none | 2 | 0.7 |" in text  # the best layer
    assert "- **m**: best distance-probe layer 2, UUAS 0.700." in text
    assert "UUAS 0.600 [0.550, 0.650] vs 0.400 [0.350, 0.450] (+0.200; above it, the intervals apart)" in text
