"""Structural probes (Hewitt & Manning 2019): trees, metrics against hand computations, the estimators on
synthetic vectors whose geometry *is* the tree, and fit_structural_probes on a tiny random model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from probekit.analyses.trees.structural import (
    DepthProbe,
    DistanceProbe,
    fit_structural_probes,
    random_tree_heads,
    structural_metrics,
    tree_depths,
    tree_distances,
)
from probekit.data.bundled import EWT_DEV
from probekit.data.schema import Sentence
from probekit.errors import ProbekitError

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# trees


def test_tree_distances_and_depths_by_hand():
    heads = [1, 2, -1, 2, 3]  # 0 <- 1 <- 2 (root) -> 3 -> 4
    d = tree_distances(heads)
    assert d.tolist() == [
        [0, 1, 2, 3, 4],
        [1, 0, 1, 2, 3],
        [2, 1, 0, 1, 2],
        [3, 2, 1, 0, 1],
        [4, 3, 2, 1, 0],
    ]
    assert tree_depths(heads).tolist() == [2, 1, 0, 1, 2]


def test_tree_distances_equal_shortest_paths_of_the_tree_graph():
    import scipy.sparse
    import scipy.sparse.csgraph

    for heads in [random_tree_heads(n, seed=f"2:{n}") for n in range(1, 30)] + [(-1, 0, -1, 2)]:  # + a forest
        h = np.asarray(heads)
        child = np.flatnonzero(h >= 0)
        graph = scipy.sparse.coo_matrix((np.ones(len(child)), (child, h[child])), shape=(len(h), len(h)))
        expected = scipy.sparse.csgraph.shortest_path(graph.tocsr(), directed=False, unweighted=True)
        np.testing.assert_array_equal(tree_distances(heads), expected)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 40])
def test_random_tree_heads_is_a_seeded_tree_of_n_words(n):
    heads = random_tree_heads(n, seed=f"0:s{n}")
    assert len(heads) == n and heads.count(-1) == 1
    Sentence("s", tuple(f"w{i}" for i in range(n)), heads=heads)  # validates: in range, acyclic
    assert np.isfinite(tree_distances(heads)).all()  # connected
    assert heads == random_tree_heads(n, seed=f"0:s{n}")


def test_random_trees_differ_between_sentences_and_seeds():
    trees = {random_tree_heads(12, seed=f"{seed}:{sid}") for seed in (0, 1) for sid in ("a", "b", "c")}
    assert len(trees) == 6


# --------------------------------------------------------------------------------------------------
# metrics, by hand


def test_dspr_and_nspr_match_spearmanr_by_hand():
    heads = [1, 2, -1, 2, 3]  # 5 words: length 5 is inside 5..50
    gold = tree_distances(heads)
    rng = np.random.default_rng(0)
    pred = gold + rng.normal(scale=0.8, size=gold.shape)
    pred = (pred + pred.T) / 2
    np.fill_diagonal(pred, 0)
    depth_pred = np.array([2.5, 0.2, 0.1, 1.8, 1.0])
    m = structural_metrics([heads], distances=[pred], depths=[depth_pred], n_boot=20)
    by_hand = np.mean([scipy.stats.spearmanr(pred[i], gold[i]).statistic for i in range(5)])
    assert m["dspr"] == pytest.approx(by_hand, abs=1e-12)
    nspr = scipy.stats.spearmanr(depth_pred, tree_depths(heads)).statistic
    assert m["nspr"] == pytest.approx(nspr, abs=1e-12)
    assert m["root_acc"] == 1.0  # word 2 is shallowest (0.1) and the gold root


def test_root_accuracy_and_uuas_by_hand_with_punctuation_left_out():
    heads = [1, 2, -1, 2, 2]  # word 4 is punctuation attached to the root
    pred = np.array(
        [
            [0, 1, 3, 3, 0.1],
            [1, 0, 2, 2, 0.1],
            [3, 2, 0, 1, 0.1],
            [3, 2, 1, 0, 0.1],
            [0.1, 0.1, 0.1, 0.1, 0],
        ],
        dtype=float,
    )
    # over words 0-3 the MST is 0-1, 3-2 and 1-2 (distance 2 beats 3): all 3 gold arcs, punctuation ignored
    m = structural_metrics([heads], distances=[pred], ignore=[[4]], n_boot=20)
    assert m["uuas"] == 1.0
    # with the punctuation kept every word hangs off word 4: only the gold arc 2-4 is found of 4
    assert structural_metrics([heads], distances=[pred], n_boot=20)["uuas"] == 0.25
    depth = np.array([2.0, 1.0, 0.5, 1.0, 0.0])  # the punctuation word is shallowest
    assert structural_metrics([heads], depths=[depth], ignore=[[4]], n_boot=20)["root_acc"] == 1.0
    assert structural_metrics([heads], depths=[depth], n_boot=20)["root_acc"] == 0.0


def test_spearman_averages_by_length_then_over_lengths_5_to_50():
    short = [1, -1, 1]  # length 3: outside 5..50, ignored
    a, b = [1, 2, -1, 2, 3], [-1, 0, 1, 2, 3, 4]  # lengths 5 and 6
    perfect, flipped = tree_depths(a).astype(float), -tree_depths(b).astype(float)
    m = structural_metrics([short, a, a, b], depths=[np.zeros(3), perfect, perfect, flipped], n_boot=20)
    # length 5: mean of 1.0 and 1.0; length 6: -1.0; then the mean over the two lengths
    assert m["nspr"] == pytest.approx(0.0)


def test_metrics_of_the_gold_tree_are_perfect_and_the_ci_brackets():
    heads = [random_tree_heads(n, seed=f"1:{n}") for n in range(5, 25)]
    m = structural_metrics(
        heads, distances=[tree_distances(h) for h in heads], depths=[tree_depths(h) for h in heads], n_boot=50
    )
    assert (m["uuas"], m["dspr"], m["root_acc"], m["nspr"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["uuas_ci_low"] == m["uuas_ci_high"] == 1.0


# --------------------------------------------------------------------------------------------------
# estimators on synthetic trees


def _path_vectors(heads, dims: np.ndarray, d: int) -> np.ndarray:
    """h_i = sum of the unit vectors of the arcs on the path from the root to i: then ||h_i - h_j||^2 is
    the number of arcs between i and j (the tree distance) and ||h_i||^2 the depth."""
    n = len(heads)
    X = np.zeros((n, d))
    for i in range(n):
        j = i
        while heads[j] != -1:
            X[i, dims[j]] += 1.0  # arc j -> head(j) is dimension dims[j]
            j = heads[j]
    return X


def _synthetic(n_sentences: int, seed: int, d: int = 24, noise_dims: int = 4):
    rng = np.random.default_rng(seed)
    X, trees = [], []
    for s in range(n_sentences):
        n = int(rng.integers(5, 13))
        heads = random_tree_heads(n, seed=f"{seed}:{s}")
        dims = rng.choice(d, size=n, replace=False)  # a distinct unit vector per arc
        x = _path_vectors(heads, dims, d)
        noise = rng.normal(size=(n, noise_dims))  # directions the probe must learn to ignore
        X.append(np.concatenate([x, noise], axis=1))
        trees.append(heads)
    return X, trees


@pytest.fixture(scope="module")
def synthetic():
    return _synthetic(160, seed=0), _synthetic(40, seed=1)


def test_distance_probe_recovers_synthetic_trees_exactly(synthetic):
    (X, trees), (X_test, trees_test) = synthetic
    probe = DistanceProbe(rank=28, lr=0.01, max_epochs=60, patience=5, batch_size=10).fit(
        X, [tree_distances(h) for h in trees]
    )
    m = structural_metrics(trees_test, distances=probe.predict(X_test), n_boot=20)
    assert m["uuas"] == 1.0
    assert m["dspr"] > 0.95
    assert probe.best_epoch_ <= probe.n_epochs_ <= 60 and probe.coef_.shape == (28, 28)
    assert probe.dev_loss_ == min(probe.dev_loss_curve_)


def test_depth_probe_finds_the_root_of_synthetic_trees(synthetic):
    (X, trees), (X_test, trees_test) = synthetic
    probe = DepthProbe(rank=28, lr=0.01, max_epochs=60, patience=5, batch_size=10).fit(
        X, [tree_depths(h) for h in trees]
    )
    m = structural_metrics(trees_test, depths=probe.predict(X_test), n_boot=20)
    assert m["root_acc"] == 1.0
    assert m["nspr"] > 0.95


def test_an_untrained_probe_does_not_recover_the_trees(synthetic):
    """The check above can fail: a probe stopped after one epoch from random weights is far from 1.0."""
    (X, trees), (X_test, trees_test) = synthetic
    probe = DistanceProbe(rank=28, lr=1e-5, max_epochs=1, batch_size=10).fit(
        X, [tree_distances(h) for h in trees]
    )
    assert structural_metrics(trees_test, distances=probe.predict(X_test), n_boot=20)["uuas"] < 0.9


def test_feature_scaling_copes_with_a_massive_feature(synthetic):
    """A decoder's residual stream has a few huge features (massive activations); dividing every feature
    by its RMS keeps them from swamping the distances. coef_ maps the raw vectors."""
    (X, trees), (X_test, trees_test) = synthetic
    big = [
        np.concatenate([x, 1000.0 * np.random.default_rng(i).normal(size=(len(x), 1))], 1)
        for i, x in enumerate(X)
    ]
    big_test = [np.concatenate([x, 1000.0 * np.ones((len(x), 1))], 1) for x in X_test]
    y = [tree_distances(h) for h in trees]
    settings = {"rank": 29, "lr": 0.01, "max_epochs": 60, "patience": 5, "batch_size": 10}
    scaled = DistanceProbe(**settings).fit(big, y)
    raw = DistanceProbe(scale=False, **settings).fit(big, y)
    assert structural_metrics(trees_test, distances=scaled.predict(big_test), n_boot=20)["uuas"] == 1.0
    assert structural_metrics(trees_test, distances=raw.predict(big_test), n_boot=20)["uuas"] < 0.9
    assert np.allclose(raw.scale_, 1.0) and scaled.scale_[-1] > 100
    z = big_test[0] @ scaled.coef_
    np.testing.assert_allclose(
        scaled.predict(big_test[:1])[0], ((z[:, None] - z[None]) ** 2).sum(-1), atol=1e-9
    )


def test_fit_is_deterministic_and_the_seed_matters(synthetic):
    (X, trees), _ = synthetic
    y = [tree_depths(h) for h in trees]
    a = DepthProbe(rank=4, max_epochs=3).fit(X, y)
    b = DepthProbe(rank=4, max_epochs=3).fit(X, y)
    c = DepthProbe(rank=4, max_epochs=3, seed=1).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_)
    assert not np.allclose(a.coef_, c.coef_)


def test_fit_gives_the_same_weights_at_one_and_two_threads(synthetic):
    (X, trees), _ = synthetic
    y = [tree_distances(h) for h in trees]
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = DistanceProbe(rank=8, max_epochs=3).fit(X, y).coef_
        torch.set_num_threads(2)
        two = DistanceProbe(rank=8, max_epochs=3).fit(X, y).coef_
    finally:
        torch.set_num_threads(n)
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-12)


def test_estimators_clone_and_work_in_a_pipeline(synthetic):
    (X, trees), (X_test, _) = synthetic
    y = [tree_distances(h) for h in trees]
    probe = DistanceProbe(rank=5, lr=0.02, max_epochs=2, seed=3)
    copy = clone(probe)
    assert copy.get_params() == probe.get_params() and not hasattr(copy, "coef_")
    fitted = clone(probe).fit(X, y)
    assert not hasattr(probe, "coef_") and clone(fitted).get_params()["rank"] == 5
    scale = FunctionTransformer(lambda xs: [2.0 * x for x in xs])
    pipe = make_pipeline(scale, DistanceProbe(rank=5, lr=0.02, max_epochs=2, seed=3)).fit(X, y)
    direct = DistanceProbe(rank=5, lr=0.02, max_epochs=2, seed=3).fit([2.0 * x for x in X], y)
    np.testing.assert_array_equal(pipe.predict(X_test)[0], direct.predict([2.0 * x for x in X_test])[0])
    assert pipe.score(X_test[:5], [tree_distances(h) for h in _synthetic(40, seed=1)[1][:5]]) <= 0
    pipe.set_params(distanceprobe__rank=3)
    assert pipe[-1].rank == 3


def test_explicit_dev_part_is_used(synthetic):
    (X, trees), (X_dev, trees_dev) = synthetic
    y, y_dev = [tree_depths(h) for h in trees], [tree_depths(h) for h in trees_dev]
    probe = DepthProbe(rank=4, max_epochs=2).fit(X, y, X_dev=X_dev, y_dev=y_dev)
    assert probe.dev_loss_ == pytest.approx(-probe.score(X_dev, y_dev), rel=1e-9)


@pytest.mark.parametrize(
    "X, y, message",
    [
        (np.zeros((5, 3)), None, "grouped by sentence"),
        ([np.zeros((3, 2))] * 4, [np.zeros(3)] * 4, "a distance target"),
        ([np.zeros((3, 2))] * 4, [np.zeros((3, 3))] * 3, "one target per sentence"),
        ([np.zeros((3, 2)), np.zeros((3, 4))] * 2, [np.zeros((3, 3))] * 4, "features"),
        ([np.full((3, 2), np.nan)] * 4, [np.zeros((3, 3))] * 4, "NaN"),
    ],
)
def test_bad_input_raises_a_probekit_error(X, y, message):
    with pytest.raises(ProbekitError, match=message):
        DistanceProbe(max_epochs=1).fit(X, y)


def test_bad_settings_raise():
    X, y = [np.zeros((3, 2))] * 4, [np.zeros((3, 3))] * 4
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        DistanceProbe(rank=0).fit(X, y)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        DistanceProbe(lr=-1.0).fit(X, y)


# --------------------------------------------------------------------------------------------------
# every layer of a model


@pytest.fixture(scope="module")
def ewt_capture(tmp_path_factory):
    import probekit as pk
    from probekit.data import load_dataset

    model = pk.load_model("tiny-llama", device="cpu")
    data = load_dataset(f"ud:{EWT_DEV}", max_sentences=40)
    cap = pk.capture(
        model,
        data,
        layers=None,
        resid=("resid_pre", "resid_post"),
        attention=False,
        cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False,
    )
    return model, data, cap


def _fit(ewt_capture, **kwargs):
    model, data, cap = ewt_capture
    settings = {"rank": 8, "lr": 0.01, "max_epochs": 4, "batch_size": 8, "random_model": False, "n_boot": 50}
    return fit_structural_probes(model, data, capture=cap, **{**settings, **kwargs})


def test_batched_path_equals_the_plain_loop(ewt_capture):
    batched = _fit(ewt_capture).table()
    loop = _fit(ewt_capture, engine="loop").table()
    numeric = ["dev_loss", "uuas", "dspr", "root_acc", "nspr", "uuas_ci_low", "root_acc_ci_low"]
    keys = [c for c in batched.columns if c not in numeric]
    pd.testing.assert_frame_equal(batched[keys], loop[keys])
    for layer, g in batched.groupby("layer", dropna=False):
        h = loop[loop.layer.eq(layer) | (pd.isna(layer) & loop.layer.isna())]
        np.testing.assert_allclose(g[numeric].to_numpy(float), h[numeric].to_numpy(float), atol=1e-6)


def test_table_covers_every_layer_probe_target_and_the_baselines(ewt_capture):
    result = _fit(ewt_capture)
    t = result.table()
    trained = t[t.model_kind == "trained"]
    assert sorted(trained.layer.unique()) == [0, 1, 2]  # tiny-llama: embeddings + 2 blocks
    assert len(trained) == 3 * 2 * 2  # layers x probes x targets
    assert set(t.model_kind) == {"trained", "linear-position"}
    linear = t[t.model_kind == "linear-position"]
    assert linear.layer.isna().all() and len(linear) == 4
    assert (
        t.baseline.tolist() == ["none", "control"] * 6 + ["linear-position", "linear-position, control"] * 2
    )
    n = sum(len(s.words) >= 2 for s in ewt_capture[1])  # one-word sentences have no pairs: left out
    assert n == 39 and (t.n_train + t.n_dev + t.n_sentences).dropna().eq(n).all()
    assert t.n_sentences.eq(8).all() and trained.n_dev.eq(4).all()  # 20% test, then 10% dev
    dist = t[t.probe == "distance"]
    assert dist.uuas.notna().all() and dist.dspr.notna().all() and dist.root_acc.isna().all()
    depth = t[t.probe == "depth"]
    assert depth.root_acc.notna().all() and depth.nspr.notna().all() and depth.uuas.isna().all()
    sel = result.selectivity()
    assert len(sel) == (3 + 1) * 2 * 2  # (layers + linear) x probes x their two metrics
    row = sel[(sel.model_kind == "trained") & (sel.layer == 1) & (sel.metric == "uuas")].iloc[0]
    assert row.selectivity == pytest.approx(row.gold - row.control)


def test_linear_position_baseline_is_perfect_on_chains(tmp_path):
    """Left-to-right chains (word i's head is i - 1): |i - j| is the tree distance and i the depth."""
    import probekit as pk

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far"]
    data = [
        Sentence(f"c{i}", tuple(rng.choice(words, size=n)), heads=tuple(range(-1, n - 1)))
        for i, n in enumerate(rng.integers(5, 10, size=20))
    ]
    model = pk.load_model("tiny-llama", device="cpu")
    cap = pk.capture(model, data, layers=[0], resid=("resid_pre",), attention=False,
                     cache_dir=tmp_path, progress=False)  # fmt: skip
    t = fit_structural_probes(
        model, data, layers=[0], capture=cap, rank=4, max_epochs=1, random_model=False, n_boot=20
    ).table()
    gold = t[(t.model_kind == "linear-position") & (t.target == "gold")].set_index("probe")
    assert gold.loc["distance", "uuas"] == gold.loc["distance", "dspr"] == 1.0
    assert gold.loc["depth", "root_acc"] == gold.loc["depth", "nspr"] == 1.0
    control = t[(t.model_kind == "linear-position") & (t.target == "control")].set_index("probe")
    assert control.loc["distance", "uuas"] < 1.0


def test_same_tables_at_one_and_two_threads(ewt_capture, tmp_path):
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _fit(ewt_capture, layers=[1]).write(tmp_path / "one")
        torch.set_num_threads(2)
        _fit(ewt_capture, layers=[1]).write(tmp_path / "two")
    finally:
        torch.set_num_threads(n)
    for name in ("structural_probes.csv", "structural_selectivity.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert (tmp_path / "one" / "structural_probes.png").stat().st_size > 0


def test_random_init_rows_come_from_the_random_model(ewt_capture):
    import probekit as pk

    model, data, cap = ewt_capture
    random_model = pk.load_model("random:tiny-llama", device="cpu")
    t = fit_structural_probes(
        model, data, layers=[2], capture=cap, rank=4, max_epochs=1, control=False,
        random_model=random_model, n_boot=20,
    ).table()  # fmt: skip
    kinds = t.groupby("model_kind").model.first()
    assert kinds["random-init"] == "random:tiny-llama" and kinds["trained"] == "tiny-llama"
    assert set(t.target) == {"gold"}


def test_bad_arguments_of_fit_structural_probes(ewt_capture):
    model, data, cap = ewt_capture
    with pytest.raises(ProbekitError, match="engine"):
        fit_structural_probes(model, data, capture=cap, engine="fast", random_model=False)
    with pytest.raises(ProbekitError, match="need at least 3"):
        fit_structural_probes(model, list(data)[:2], capture=cap, random_model=False)
    # the random-init twin is named by the probes' helper, with this function's place and advice
    with pytest.raises(ProbekitError, match="cannot name the random-init model") as err:
        fit_structural_probes(object(), data, capture=cap, n_boot=20)
    assert err.value.where == "fit_structural_probes" and "random_model=False" in err.value.fix
