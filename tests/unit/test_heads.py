"""Head specialization scoring on planted attention (fake captures) and on a tiny model (CLI)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from probekit.analyses.heads import (
    POSITIONAL_SHARE,
    analyze_heads,
    offset_baselines,
    positional_heads,
    score_heads,
    signflip_p,
    verdicts,
)
from probekit.data import Dataset, Sentence, relation_instances
from probekit.errors import ProbekitError
from probekit.stats import bootstrap_ci, cluster_bootstrap_ci

LABELS = ("nsubj", "obj", "amod", "det")
N_LAYERS, N_HEADS = 2, 3


class FakeCapture:
    """What score_heads reads from a capture: attention(i), n_words, sentences, attn_layers, n_heads."""

    def __init__(self, sentences, atts):
        self.sentences = list(sentences)
        self._atts = atts
        self.n_words = np.array([len(s.words) for s in self.sentences])
        self.attn_layers = list(range(atts[0].shape[0]))
        self.n_heads = atts[0].shape[1]

    def attention(self, i):
        return self._atts[i]


def random_dataset(n_sent=60, lengths=(15, 22), seed=0) -> Dataset:
    """Random trees (so no fixed offset explains a relation) with random labels from LABELS."""
    rng = np.random.default_rng(seed)
    sents = []
    for k in range(n_sent):
        n = int(rng.integers(*lengths))
        order = rng.permutation(n)
        heads = [-1] * n
        for j, w in enumerate(order[1:], start=1):
            heads[w] = int(order[rng.integers(0, j)])
        deprels = ["root" if h < 0 else LABELS[rng.integers(0, len(LABELS))] for h in heads]
        sents.append(
            Sentence(
                id=f"r{k}",
                words=tuple(f"w{i}" for i in range(n)),
                heads=tuple(heads),
                deprels=tuple(deprels),
                deprels_full=tuple(deprels),
            )
        )
    return Dataset("fake:random-trees", tuple(sents))


def planted(dataset: Dataset, causal=False, seed=0):
    """Head (0,0): dependent -> head (root -> itself); head (0,1): previous word (word 0 -> next);
    head (1,2) in causal mode: big weight on the *future* next word (must be masked); rest: noise."""
    rng = np.random.default_rng(seed)
    atts = []
    for s in dataset.sentences:
        n = len(s.words)
        att = rng.dirichlet(np.ones(n), size=(N_LAYERS, N_HEADS, n)).astype(np.float32) * 0.1
        for i, h in enumerate(s.heads):
            target = h if (h >= 0 and (not causal or h <= i)) else i
            att[0, 0, i, target] += 0.9
            att[0, 1, i, i - 1 if i > 0 else min(1, n - 1)] += 0.9
            if causal and i + 1 < n:
                att[1, 2, i, i + 1] += 5.0
        if causal:
            att = (
                att * np.tri(n, dtype=np.float32)
                + att
                * (1 - np.tri(n, dtype=np.float32))
                * (np.arange(N_HEADS) == 2)[None, :, None, None]
                * (np.arange(N_LAYERS) == 1)[:, None, None, None]
            )
        atts.append(att)
    return FakeCapture(dataset.sentences, atts)


def fake_model(causal=False):
    return SimpleNamespace(name="fake-causal" if causal else "fake", is_causal=causal)


@pytest.fixture(scope="module")
def data():
    return random_dataset()


@pytest.fixture(scope="module")
def encoder_result(data):
    return analyze_heads(
        fake_model(), data, capture=planted(data), n_boot=200, n_perm=50, progress=False, detector=False
    )


def _plain_offset_baseline(dataset, relation, direction, causal=False, seed=0):
    dev, test = dataset.split(seed=seed)

    def offsets(ds):
        out = []
        for s in ds.sentences:
            for dep, head in enumerate(s.heads):
                if head < 0 or s.deprels[dep] != relation:
                    continue
                src, tgt = (dep, head) if direction == "dep_to_head" else (head, dep)
                if causal and tgt > src:
                    continue
                out.append(tgt - src)
        return out

    d, t = offsets(dev), offsets(test)
    values = sorted(set(d), key=lambda k: (-d.count(k), abs(k), k))
    return values[0], sum(x == values[0] for x in t) / len(t), len(t)


def test_planted_dep_to_head_head_is_found(encoder_result):
    h = encoder_result.heads
    for rel in LABELS:
        best = h[(h.relation == rel) & (h.direction == "dep_to_head") & h.best_on_dev].iloc[0]
        assert (best.layer, best["head"]) == (0, 0)
        assert best.accuracy == 1.0 and best.ci_low == 1.0
        assert best.attention_mass > 0.9
    v = encoder_result.verdicts.set_index(["relation", "direction"])
    for rel in LABELS:
        assert v.loc[(rel, "dep_to_head"), "verdict"] == "specialist found (0.0)"
        assert v.loc[(rel, "dep_to_head"), "p_perm"] == pytest.approx(1 / 51)
        # Monte Carlo floor 1/(9_999 + 1), times Holm's 6 heads x 8 word-pair families: still < ALPHA / 2
        assert v.loc[(rel, "dep_to_head"), "p_holm"] == pytest.approx(48 / 10_000)
        assert v.loc[rel].relation_verdict.iloc[0].startswith("specialist found (0.0")
    # the same head also "passes" the other relations' dep_to_head: it is not relation-specific
    assert "obj/dep_to_head" in v.loc[("nsubj", "dep_to_head"), "also_passes"]


def test_columns_and_counts(encoder_result, data):
    h = encoder_result.heads
    for col in [
        "model",
        "data",
        "relation",
        "direction",
        "layer",
        "head",
        "n",
        "accuracy",
        "attention_mass",
        "ci_low",
        "ci_high",
        "n_dev",
        "dev_accuracy",
        "best_on_dev",
        "offset",
        "offset_accuracy",
    ]:
        assert col in h.columns
    assert len(h) == 12 * N_LAYERS * N_HEADS  # 4 relations x 2 directions + 4 positional
    assert (h.groupby(["relation", "direction"]).best_on_dev.sum() == 1).all()
    inst = relation_instances(data, ["nsubj"], ["dep_to_head"])
    c = encoder_result.counts.set_index(["relation", "direction"])
    assert c.loc[("nsubj", "dep_to_head"), "n_visible"] == len(inst)
    assert c.loc[("first_word", "positional"), "n_visible"] == sum(len(s.words) - 1 for s in data.sentences)
    assert c.loc[("self", "positional"), "n_visible"] == sum(len(s.words) for s in data.sentences)
    assert ((h.ci_low <= h.accuracy + 1e-12) & (h.accuracy <= h.ci_high + 1e-12)).all()


def test_offset_baseline_matches_plain_computation(encoder_result, data):
    b = encoder_result.baselines.set_index(["relation", "direction"])
    ob = offset_baselines(data).set_index(["relation", "direction"])
    for rel in LABELS:
        for direction in ("dep_to_head", "head_to_dep"):
            k, acc, n = _plain_offset_baseline(data, rel, direction)
            assert b.loc[(rel, direction), "offset"] == k == ob.loc[(rel, direction), "offset"]
            assert b.loc[(rel, direction), "offset_accuracy"] == pytest.approx(acc)
            assert ob.loc[(rel, direction), "offset_accuracy"] == pytest.approx(acc)
            assert b.loc[(rel, direction), "n"] == n
    assert b.loc[("prev_word", "positional"), "offset"] == -1
    assert b.loc[("prev_word", "positional"), "offset_accuracy"] == 1.0


def test_self_relation_includes_self_and_first_word_drops_word_zero(data):
    sents = data.sentences[:4]
    ds = Dataset("fake:self", tuple(sents))
    atts = []
    for s in sents:
        n = len(s.words)
        att = np.full((1, 1, n, n), 0.01, dtype=np.float32)
        att[0, 0, np.arange(n), np.arange(n)] = 0.9  # a pure self head
        atts.append(att)
    res = analyze_heads(
        fake_model(),
        ds,
        relations=["self", "first_word", "prev_word"],
        capture=FakeCapture(sents, atts),
        n_boot=50,
        n_perm=10,
        progress=False,
        detector=False,
    )
    h = res.heads.set_index("relation")
    assert h.loc["self", "accuracy"] == 1.0  # argmax includes self
    assert h.loc["prev_word", "accuracy"] < 0.5  # self excluded: ties among the rest go leftmost
    pos = res.positional.iloc[0]
    assert pos.top_offset == 0 and pos.share == 1.0 and pos.positional


def test_causal_visibility(data):
    res = analyze_heads(
        fake_model(causal=True),
        data,
        capture=planted(data, causal=True),
        n_boot=100,
        n_perm=20,
        progress=False,
        detector=False,
    )
    c = res.counts.set_index(["relation", "direction"])
    for rel in LABELS:
        inst = relation_instances(data, [rel])
        for direction in ("dep_to_head", "head_to_dep"):
            sub = inst[inst.direction == direction]
            assert c.loc[(rel, direction), "n_all"] == len(sub)
            assert c.loc[(rel, direction), "n_visible"] == int((sub.tgt < sub.src).sum())
        k, acc, _ = _plain_offset_baseline(data, rel, "dep_to_head", causal=True)
        b = res.baselines.set_index(["relation", "direction"]).loc[(rel, "dep_to_head")]
        assert b.offset == k and b.offset < 0 and b.offset_accuracy == pytest.approx(acc)
    assert c.loc[("next_word", "positional"), "n_visible"] == 0
    h = res.heads
    assert "next_word" not in set(h.relation)
    v = res.verdicts.set_index(["relation", "direction"])
    assert v.loc[("next_word", "positional"), "verdict"] == "n/a (no visible instances)"
    # the planted dep->head head is perfect on visible instances; the future-looking head (1,2) is masked
    best = h[(h.relation == "nsubj") & (h.direction == "dep_to_head") & h.best_on_dev].iloc[0]
    assert (best.layer, best["head"], best.accuracy) == (0, 0, 1.0)
    fut = h[(h.relation == "prev_word") & (h.layer == 1) & (h["head"] == 2)].iloc[0]
    assert fut.accuracy < 0.9
    assert (offset_baselines(data, causal=True).offset.dropna() <= 0).all()


def test_positional_heads_voita(data):
    pos = positional_heads(fake_model(), data, capture=planted(data), progress=False)
    assert list(pos.columns[:5]) == ["model", "layer", "head", "top_offset", "share"]
    prev = pos[(pos.layer == 0) & (pos["head"] == 1)].iloc[0]
    n_words = sum(len(s.words) for s in data.sentences)
    assert prev.top_offset == -1 and prev.positional
    assert prev.share == 1.0  # word 0 has no previous word: not counted
    assert prev.n_valid == n_words - len(data.sentences) and prev.n_words == n_words
    assert prev.share >= POSITIONAL_SHARE
    assert pos.positional.sum() == 1  # random-tree dep->head and noise heads are not positional


def test_permutation_null_is_calibrated_on_noise():
    ps = []
    for seed in range(6):
        ds = random_dataset(n_sent=30, lengths=(6, 12), seed=seed + 10)
        rng = np.random.default_rng(seed)
        atts = [
            rng.dirichlet(np.ones(len(s.words)), size=(N_LAYERS, N_HEADS, len(s.words))).astype(np.float32)
            for s in ds.sentences
        ]
        res = analyze_heads(
            fake_model(),
            ds,
            relations=["nsubj"],
            directions=["dep_to_head"],
            capture=FakeCapture(ds.sentences, atts),
            n_boot=50,
            n_perm=100,
            progress=False,
            detector=False,
            seed=seed,
        )
        ps.append(res.baselines.p_perm.iloc[0])
        assert not res.verdicts.verdict.iloc[0].startswith("specialist")
    assert np.median(ps) > 0.1


def test_cluster_bootstrap_matches_stats_bootstrap_ci():
    rng = np.random.default_rng(3)
    groups = np.sort(rng.integers(0, 40, size=300))
    values = (rng.random((300, 3)) < [0.2, 0.5, 0.9]).astype(float)
    low, high = cluster_bootstrap_ci(values, groups, n_boot=500, seed=7)
    for k in range(3):
        ref = bootstrap_ci(values[:, k], groups=groups, n_boot=500, seed=7)
        assert (low[k], high[k]) == pytest.approx(ref, abs=1e-12)


def test_signflip_p():
    codes = np.repeat(np.arange(20), 3)
    better = np.ones((60, 1))
    # 20 clusters: 2**20 > 9_999 + 1, so Monte Carlo; every draw but the identity is below T = 60
    assert signflip_p(better, codes)[0] == pytest.approx(1 / 10_000)
    assert signflip_p(np.zeros((60, 1)), codes)[0] == 1.0
    assert signflip_p(-better, codes)[0] == 1.0


def test_signflip_p_exact_by_hand():
    # clusters (sentences) 0, 1, 2 with d_s = 2, 1, -1 (column 0) and 0, 1, 1 (column 1); T = 2 and 2
    diff = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [-1.0, 1.0]])
    codes = np.array([0, 0, 1, 2])
    # column 0: the 8 sign patterns give T* = +-2 +-1 +-1 = 4, 2, 2, 0, 0, -2, -2, -4: 3 of 8 are >= 2.
    # column 1: cluster 0 is 0 there; T* over the 8 patterns = 2, 0, 0, -2 (each twice): 2 of 8 are >= 2.
    np.testing.assert_allclose(signflip_p(diff, codes), [3 / 8, 2 / 8])


def test_signflip_p_matches_scipy_permutation_test():
    import scipy.stats

    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(9), 4)
    diff = rng.integers(-1, 2, size=(36, 3)).astype(float) + np.array([0.0, 0.3, 0.6])  # [36, 3]
    d = np.stack([diff[codes == s].sum(0) for s in range(9)])  # [9, 3] cluster sums
    ref = scipy.stats.permutation_test(
        (d,),
        lambda x, axis: x.sum(axis),
        permutation_type="samples",
        vectorized=True,
        alternative="greater",
        axis=0,
        n_resamples=10_000,
    )
    np.testing.assert_allclose(signflip_p(diff, codes), ref.pvalue, rtol=1e-12)  # both exact (2**9)


def test_signflip_p_monte_carlo_is_seeded_and_never_zero():
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(40), 2)
    diff = rng.normal(0.2, 1.0, size=(80, 4))
    a = signflip_p(diff, codes, n_flips=999, seed=1)
    np.testing.assert_array_equal(a, signflip_p(diff, codes, n_flips=999, seed=1))
    assert (a >= 1 / 1000).all() and (a <= 1).all()
    huge = signflip_p(np.full((80, 1), 5.0), codes, n_flips=999)
    assert huge[0] == pytest.approx(1 / 1000)  # the old normal approximation gave ~1e-30 here


def test_verdict_rules():
    base = {
        "model": "m",
        "data": "d",
        "relation": "amod",
        "direction": "head_to_dep",
        "layer": 3,
        "head": 1,
        "n": 200,
        "n_dev": 200,
        "dev_accuracy": 0.8,
        "attention_mass": 0.5,
        "best_on_dev": True,
        "offset": -1,
        "offset_accuracy": 0.6,
        "delta": 0.2,
        "p_holm": 0.001,
        "head_positional": False,
        "head_top_offset": -1,
        "share_at_top_offset": 0.6,
    }

    def verdict(**kw):
        row = {**base, "accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9, **kw}
        return verdicts(pd.DataFrame([row])).verdict.iloc[0]

    assert verdict() == "specialist found (3.1)"
    assert verdict(accuracy=0.69, ci_low=0.62) == "none"  # < 10 points
    assert verdict(accuracy=0.75, ci_low=0.59) == "none"  # CI reaches the baseline
    assert verdict(n=11, accuracy=1.0, ci_low=1.0) == "n/a (n=11 < 30 test instances)"
    assert verdict(dev_p_maxT=0.2) == "none"  # not above the permutation null
    assert verdict(dev_p_maxT=0.01) == "specialist found (3.1)"
    assert verdict(head_positional=True) == "only positional (3.1)"  # positional head, relation at -1
    assert verdict(head_positional=True, share_at_top_offset=0.3) == "specialist found (3.1)"
    assert (
        verdict(direction="positional", relation="prev_word", accuracy=0.95, offset_accuracy=1.0)
        == "only positional (3.1)"
    )
    assert verdict(direction="positional", relation="prev_word", accuracy=0.5, offset_accuracy=1.0) == "none"
    assert (
        verdict(direction="positional", relation="first_word", accuracy=0.7, ci_low=0.65, offset_accuracy=0.1)
        == "none"
    )  # positional needs >= 90%
    row = {**base, "accuracy": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    fam = pd.DataFrame(
        [
            {
                "model": "m",
                "relation": "amod",
                "direction": "head_to_dep",
                "n": 200,
                "n_dev": 200,
                "p_perm": 0.01,
                "random_accuracy": 0.75,
            }
        ]
    )
    v = verdicts(pd.DataFrame([row]), fam).iloc[0]
    assert v.verdict == "none" and v.random_accuracy == 0.75  # CI low 0.7 <= random-init 0.75


def test_errors(data):
    cap = planted(data)
    with pytest.raises(ProbekitError, match="unknown relation 'foo'"):
        score_heads(fake_model(), data, relations=["foo"], capture=cap, progress=False)
    with pytest.raises(ProbekitError, match="'iobj' does not occur"):
        score_heads(fake_model(), data, relations="nsubj,iobj", capture=cap, progress=False)
    with pytest.raises(ProbekitError, match="no attention-pattern hooks"):
        no_hooks = SimpleNamespace(
            name="x", is_causal=False, bridge=SimpleNamespace(hook_dict={"blocks.0.hook_resid_post": 0})
        )
        score_heads(no_hooks, data, progress=False)
    cap_no_att = FakeCapture(data.sentences, cap._atts)
    cap_no_att.attn_layers = []
    with pytest.raises(ProbekitError, match="holds no attention"):
        score_heads(fake_model(), data, capture=cap_no_att, progress=False)
    with pytest.raises(ProbekitError, match="other sentences"):
        score_heads(fake_model(), data.subset(range(10)), capture=cap, progress=False)


def test_cli_end_to_end_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    from probekit.cli import main

    args = [
        "heads",
        "--model",
        "tiny-bert",
        "--data",
        "template:svo_adj?n=24",
        "--n-boot",
        "100",
        "--n-perm",
        "20",
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--no-detector", "--no-plots"]) == 0
    for name in ("heads.csv", "baselines.csv", "verdicts.csv", "counts.csv", "specificity.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "heatmap_nsubj.png").exists() and (tmp_path / "a" / "summary.md").exists()
    heads = pd.read_csv(tmp_path / "a" / "heads.csv")
    assert set(heads.layer) == {0, 1} and set(heads["head"]) == {0, 1, 2, 3}
    pos = pd.read_csv(tmp_path / "a" / "positional.csv")
    assert {"tl_previous_token", "tl_duplicate_token", "tl_induction"} <= set(pos.columns)
    assert (
        main(
            [
                "heads",
                "--model",
                "tiny-bert",
                "--data",
                "template:svo_adj?n=24",
                "--relations",
                "iobj",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )


def test_data_label_reaches_every_data_column_and_the_title(data):
    res = analyze_heads(
        fake_model(),
        data,
        relations=["nsubj", "prev_word"],
        capture=planted(data),
        n_boot=20,
        n_perm=10,
        progress=False,
        detector=False,
        data_label="shown:spec",
    )
    assert res.data == "shown:spec"
    for frame in (res.heads, res.baselines, res.verdicts):
        assert set(frame["data"]) == {"shown:spec"}
    default = analyze_heads(
        fake_model(),
        data,
        relations=["nsubj"],
        capture=planted(data),
        n_boot=20,
        n_perm=10,
        progress=False,
        detector=False,
    )
    assert default.data == data.spec and set(default.heads["data"]) == {data.spec}
    with pytest.raises(AttributeError):
        res.data = "changed"  # a result is not patched after the fact


def test_write_returns_every_file_it_writes(encoder_result, tmp_path):
    written = encoder_result.write(tmp_path / "out")
    on_disk = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert sorted(p.name for p in written) == on_disk
    tables = ("baselines", "verdicts", "counts", "positional", "specificity")
    expected = {
        "heads.csv",
        "summary.md",
        *(f"{t}.{e}" for t in tables for e in ("csv", "tex")),
        *(f"heatmap_{r}.png" for r in set(encoder_result.heads.relation)),
    }
    assert set(on_disk) == expected
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "specialist found (0.0)" in summary and "docs/methods/heads.md" in summary
    no_plots = encoder_result.write(tmp_path / "tables", heatmaps=False)
    assert not any(p.suffix == ".png" for p in no_plots)
    assert (tmp_path / "tables" / "heads.csv").read_bytes() == (tmp_path / "out" / "heads.csv").read_bytes()


def test_package_reexports_are_explicit():
    import probekit.analyses.heads as heads_pkg

    assert all(hasattr(heads_pkg, name) for name in heads_pkg.__all__)
    assert heads_pkg.POSITIONAL_DIRECTION == "positional"
    assert "POSITIONAL" not in heads_pkg.__all__
