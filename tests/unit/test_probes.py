"""probekit.analyses.probes on synthetic data: estimators, control task, MDL, tasks, probe_layers on a fake
capture, the shared split and relation readers, ProbeResult, skops I/O."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from probekit.analyses.probes import (
    TRUSTED_TYPES,
    LinearProbe,
    LogisticProbe,
    ProbeResult,
    RidgeProbe,
    control_labels,
    load_probe,
    mdl_online_codelength,
    probe_layers,
    probe_summary,
    probe_with_baselines,
    save_probe,
    task_instances,
)
from probekit.data.schema import Sentence
from probekit.errors import ProbekitError

POS = ("NOUN", "VERB", "DET", "ADJ")

# --------------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------------


def planted(n=600, d=20, n_classes=3, strength=3.0, seed=0):
    """Features whose first n_classes dims carry a one-hot of the label (plus unit Gaussian noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    X = rng.normal(size=(n, d))
    X[np.arange(n), y] += strength
    return X, y


def make_sentences(n_sent=60, n_types=40, length=8, seed=0):
    """Sentences over a toy vocabulary where each word type has one UPOS tag (like a real lexicon)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(n_types)]
    pos_of = {w: POS[i % len(POS)] for i, w in enumerate(vocab)}
    sentences = []
    for k in range(n_sent):
        words = [vocab[j] for j in rng.integers(0, n_types, length)]
        upos = [pos_of[w] for w in words]
        number = [("Sing" if rng.random() < 0.5 else "Plur") if p == "NOUN" else None for p in upos]
        sentences.append(
            Sentence(
                id=f"s{k}",
                words=tuple(words),
                heads=(-1,) + (0,) * (length - 1),
                deprels=("root", "nsubj", "dep", "obj") + ("dep",) * (length - 4),
                upos=tuple(upos),
                labels={"number": number, "genre": "news"},
            )
        )
    return sentences


class FakeCapture:
    """The part of `probekit.capture.Capture` that probe_layers uses, built from arrays."""

    def __init__(self, sentences, streams):
        self.index = pd.MultiIndex.from_tuples(
            [(s.id, i, w) for s in sentences for i, w in enumerate(s.words)],
            names=["sentence_id", "word_id", "word"],
        )
        self._streams = streams
        self.stream_layers = sorted(streams)

    def stream(self, layer):
        return self._streams[layer]


def planted_capture(sentences, d=12, seed=0):
    """Layer 0: noise. Layer 1: the UPOS tag planted along the first 4 dims."""
    rng = np.random.default_rng(seed)
    tags = np.array([p for s in sentences for p in s.upos])
    noise = rng.normal(size=(tags.size, d)).astype(np.float32)
    signal = noise.copy()
    signal[:, : len(POS)] += 3 * (tags[:, None] == np.array(POS)[None, :])
    return FakeCapture(sentences, {0: noise, 1: signal})


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    # The problems here are tiny; multi-threaded BLAS only adds contention on a busy machine (10x slower).
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def sentences():
    return make_sentences()


@pytest.fixture(scope="module")
def capture(sentences):
    return planted_capture(sentences)


# --------------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------------


@parametrize_with_checks(
    [RidgeProbe(), RidgeProbe(alphas=(0.1, 1.0, 10.0)), LogisticProbe(), LogisticProbe(Cs=(0.1, 1.0), cv=3)]
)
def test_sklearn_estimator_checks(estimator, check):
    # The full check_estimator suite passes; nothing is listed as an expected failure.
    # (check_array_api_input skips itself unless SCIPY_ARRAY_API=1 is set; the probes are numpy-only.)
    check(estimator)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize(
    "make", [lambda: RidgeProbe(alphas=(0.1, 1, 10, 100)), lambda: LogisticProbe(Cs=(0.1, 1))]
)
def test_probe_recovers_a_planted_signal(make, n_classes):
    X, y = planted(n_classes=n_classes)
    X_test, y_test = planted(n_classes=n_classes, seed=1)
    probe = make().fit(X, y)
    assert probe.score(X_test, y_test) > 0.9
    assert probe.coef_.shape == (1 if n_classes == 2 else n_classes, X.shape[1])


@pytest.mark.parametrize(
    "make", [lambda: RidgeProbe(alphas=(0.1, 1, 10, 100)), lambda: LogisticProbe(Cs=(0.1, 1))]
)
def test_probe_recovers_the_planted_direction(make):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 30))
    w = rng.normal(size=30)
    w /= np.linalg.norm(w)
    y = np.where(X @ w + 0.1 * rng.normal(size=800) > 0, "pos", "neg")
    probe = make().fit(X, y)
    direction = probe.coef_[0] / np.linalg.norm(probe.coef_[0])
    assert direction @ w > 0.95  # positive scores mean classes_[1] == "pos"


@pytest.mark.parametrize("make", [lambda: RidgeProbe(alphas=(0.1, 1, 10, 100)), lambda: LogisticProbe()])
def test_probe_on_noise_sits_at_chance(make):
    rng = np.random.default_rng(0)
    X, X_test = rng.normal(size=(1000, 20)), rng.normal(size=(2000, 20))
    y, y_test = rng.integers(0, 4, 1000), rng.integers(0, 4, 2000)
    assert abs(make().fit(X, y).score(X_test, y_test) - 0.25) < 0.05


def test_ridge_probe_equals_sklearn_ridge_classifier():
    X, y = planted(n=200, d=15, n_classes=4)
    ours = RidgeProbe(alpha=3.0, standardize=False).fit(X, y)
    ref = RidgeClassifier(alpha=3.0).fit(X, y)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-10)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-10)
    # standardize=True is ridge on standardised features, coefficients mapped back
    scaled = make_pipeline(StandardScaler(), RidgeClassifier(alpha=3.0)).fit(X, y)
    np.testing.assert_allclose(
        RidgeProbe(alpha=3.0).fit(X, y).decision_function(X), scaled.decision_function(X), atol=1e-10
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("shape", [(60, 8), (25, 40)])  # n > d (eigh of the Gram) and n < d (thin SVD)
def test_ridge_loo_scores_equal_brute_force_leave_one_out(shape, fit_intercept, dtype):
    rng = np.random.default_rng(0)
    X = rng.normal(size=shape).astype(dtype)
    y = rng.integers(0, 3, shape[0])
    alphas = (0.1, 1.0, 10.0)
    params = {"standardize": False, "fit_intercept": fit_intercept}
    fast = RidgeProbe(alphas=alphas, **params).fit(X, y).cv_scores_
    brute = []
    for alpha in alphas:
        hits = 0
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            hits += RidgeProbe(alpha=alpha, **params).fit(X[keep], y[keep]).predict(X[i : i + 1])[0] == y[i]
        brute.append(hits / len(y))
    np.testing.assert_allclose(fast, brute)


def test_ridge_probe_on_float32_matches_float64():
    # float32 captures are fitted in float32 (Gram, projection); the result must match the float64 fit
    X, y = planted(n=2000, d=64, n_classes=5, strength=0.5)
    X = X * np.linspace(0.01, 50, X.shape[1]) + 3  # columns on very different scales, offset
    a = RidgeProbe(alphas=(0.1, 1, 10, 100)).fit(X.astype(np.float32), y)
    b = RidgeProbe(alphas=(0.1, 1, 10, 100)).fit(X, y)
    assert a.alpha_ == b.alpha_
    np.testing.assert_allclose(a.cv_scores_, b.cv_scores_, atol=2 / len(y))
    np.testing.assert_allclose(a.decision_function(X), b.decision_function(X), atol=1e-3)
    assert np.mean(a.predict(X) == b.predict(X)) > 0.998


def test_alpha_selection_sees_only_training_data():
    # The LOO scores are those of the rows passed to fit: brute-force leave-one-out on them, refitting
    # without each row in turn (the alpha is chosen from them, ties to the largest).
    X, y = planted(n=90, d=30, strength=1.0)
    X = X + 0.01  # any offset; standardize=False keeps the brute force simple
    alphas = (0.01, 1.0, 100.0, 1e4)
    probe = RidgeProbe(alphas=alphas, standardize=False).fit(X[:60], y[:60])
    brute = [
        sum(
            RidgeProbe(alpha=a, standardize=False)
            .fit(np.delete(X[:60], i, 0), np.delete(y[:60], i))
            .predict(X[i : i + 1])[0]
            == y[i]
            for i in range(60)
        )
        for a in alphas
    ]
    np.testing.assert_array_equal(np.rint(probe.cv_scores_ * 60), brute)
    best = [a for a, b in zip(alphas, brute, strict=True) if b == max(brute)]
    assert probe.alpha_ == max(best)


def test_ridge_ties_go_to_the_largest_alpha():
    # a separable problem: every alpha up to 100 classifies all LOO predictions correctly
    X, y = planted(n=200, d=10, n_classes=2, strength=8.0)
    alphas = (0.01, 0.1, 1.0, 10.0, 100.0)
    probe = RidgeProbe(alphas=alphas).fit(X, y)
    assert probe.cv_scores_.tolist() == [1.0] * 5 and probe.alpha_ == 100.0
    assert RidgeProbe(alphas=alphas[::-1]).fit(X, y).alpha_ == 100.0  # the order of the grid is irrelevant


def test_ridge_loo_prediction_on_the_boundary_counts_as_an_error():
    # two identical points with opposite labels: the LOO prediction of each is exactly undecided by
    # symmetry (float noise would pick a side at random); it must count as an error, every time
    X = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
    y = np.array([0, 1, 0, 0, 1, 1])
    probe = RidgeProbe(alphas=(1.0,), standardize=False, fit_intercept=False).fit(X, y)
    assert probe.cv_scores_[0] == pytest.approx(4 / 6)


_THREADS_SCRIPT = """
import hashlib, sys, tempfile
import numpy as np, pandas as pd
from threadpoolctl import threadpool_limits
from probekit.analyses.probes import DEFAULT_ALPHAS, RidgeProbe, probe_layers
from probekit.data.schema import Sentence
from probekit.report import write_tables

class Capture:
    def __init__(self, sentences, streams):
        rows = [(s.id, i, w) for s in sentences for i, w in enumerate(s.words)]
        self.index = pd.MultiIndex.from_tuples(rows)
        self._streams, self.stream_layers = streams, sorted(streams)
    def stream(self, layer):
        return self._streams[layer]

out = []
with threadpool_limits(int(sys.argv[1])):
    for seed in range(12):  # bank-like: n < d, float32, many tied alphas
        rng = np.random.default_rng(seed)
        n, d = 140, 384
        y = rng.integers(0, 2, n)
        X = (rng.normal(size=(n, d)) + 2.0 * y[:, None] * (rng.random(d) < 0.05)).astype(np.float32) * 10 + 3
        probe = RidgeProbe(alphas=DEFAULT_ALPHAS).fit(X, y)
        out.append((probe.alpha_, probe.cv_scores_.tolist()))
    rng = np.random.default_rng(0)
    sense = rng.integers(0, 2, 120)
    sentences = [Sentence(id=f"s{k}", words=("the", "bank", "x"), labels={"sense": [None, str(c), None]})
                 for k, c in enumerate(sense)]
    streams = {layer: (rng.normal(size=(360, 384)) + layer * np.repeat(sense, 3)[:, None]).astype(np.float32)
               for layer in (0, 1)}
    capture = Capture(sentences, streams)
    frame = probe_layers("m", sentences, "sense", capture=capture, seeds=(0, 1), n_boot=50)
    folder = tempfile.mkdtemp()
    write_tables({"probes": frame}, folder)
    out.append(hashlib.sha256(open(folder + "/probes.csv", "rb").read()).hexdigest())
print(out)
"""


def test_ridge_alpha_and_probe_table_are_the_same_at_1_and_2_threads(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "threads.py"
    script.write_text(_THREADS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    outputs = [
        subprocess.run(
            [sys.executable, str(script), str(k)], env=env, capture_output=True, text=True, check=True
        ).stdout
        for k in (1, 2)
    ]
    assert outputs[0] == outputs[1] and outputs[0].count("[") > 12


def test_probes_work_with_clone_pipeline_and_cross_val_score():
    X, y = planted(n=300)
    for probe in (RidgeProbe(alphas=(0.1, 1.0)), LogisticProbe(C=0.5)):
        copy = clone(probe)
        assert copy.get_params() == probe.get_params() and copy is not probe
        scores = cross_val_score(make_pipeline(StandardScaler(), probe), X, y, cv=3)
        assert scores.shape == (3,) and scores.min() > 0.8


def test_linear_probe_probabilities_and_original_space_coefficients():
    X, y = planted(n=300)
    X = X * 10 + 5  # the probe standardises internally; coef_/intercept_ are for raw X
    probe = LogisticProbe().fit(X, y)
    proba = probe.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(X @ probe.coef_.T + probe.intercept_, probe.decision_function(X), atol=1e-8)


def test_estimator_input_errors_are_probekit_errors():
    X, y = planted(n=50)
    with pytest.raises(ProbekitError, match="one class"):
        RidgeProbe().fit(X, np.zeros(50))
    with pytest.raises(ProbekitError, match="alphas"):
        RidgeProbe(alphas=(1.0, -1.0)).fit(X, y)
    with pytest.raises(ProbekitError, match="alpha"):
        RidgeProbe(alpha=0).fit(X, y)
    with pytest.raises(ProbekitError, match="too few examples"):
        LogisticProbe(Cs=(1.0,), cv=5).fit(X[:6], np.array([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError):  # also a ValueError, for scikit-learn tooling
        LogisticProbe(C=-1).fit(X, y)


# --------------------------------------------------------------------------------------------------
# control task
# --------------------------------------------------------------------------------------------------


def test_control_labels_give_one_label_per_type():
    words = ["The", "cat", "the", "dog", "cat", "THE", "ran"] * 20
    labels = ["DET", "NOUN", "DET", "NOUN", "VERB", "DET", "VERB"] * 20  # "cat" is ambiguous in the task
    ctrl = control_labels(words, labels, seed=0)
    frame = pd.DataFrame({"type": [w.lower() for w in words], "control": ctrl})
    assert (frame.groupby("type")["control"].nunique() == 1).all()  # "The"/"the"/"THE" are one type
    assert set(ctrl) <= set(labels)
    np.testing.assert_array_equal(ctrl, control_labels(words, labels, seed=0))


def test_control_label_distribution_approximates_the_task():
    rng = np.random.default_rng(0)
    task_dist = {"NOUN": 0.5, "VERB": 0.3, "DET": 0.2}
    n_types = 4000
    types = [f"w{i}" for i in range(n_types)]
    tokens = rng.choice(types, size=20_000)
    labels = rng.choice(list(task_dist), p=list(task_dist.values()), size=tokens.size)
    ctrl = control_labels(tokens, labels, seed=1)
    per_type = pd.Series(ctrl, index=tokens).groupby(level=0).first()
    empirical = pd.Series(labels).value_counts(normalize=True)
    drawn = per_type.value_counts(normalize=True)
    for lab in task_dist:
        assert drawn[lab] == pytest.approx(empirical[lab], abs=0.03)
    assert not np.array_equal(ctrl, control_labels(tokens, labels, seed=2))


def test_control_labels_reject_mismatched_lengths():
    with pytest.raises(ProbekitError, match="one word type and one label"):
        control_labels(["a", "b"], ["X"])


# --------------------------------------------------------------------------------------------------
# MDL
# --------------------------------------------------------------------------------------------------


def test_mdl_compression_above_one_on_signal_and_not_on_noise():
    X, y = planted(n=600, d=10, n_classes=3)
    signal = mdl_online_codelength(X, y, seed=0)
    assert signal["compression"] > 1.5
    assert signal["uniform_codelength"] == pytest.approx(600 * np.log2(3))
    assert signal["online_codelength"] == pytest.approx(signal["uniform_codelength"] / signal["compression"])
    noise_y = np.random.default_rng(1).integers(0, 3, 600)
    noise = mdl_online_codelength(X, noise_y, seed=0)
    assert noise["compression"] < 1.05
    assert mdl_online_codelength(X, y, seed=0) == signal  # reproducible


def test_mdl_needs_probabilities():
    X, y = planted(n=200)
    with pytest.raises(ProbekitError, match="predict_proba"):
        mdl_online_codelength(X, y, probe_factory=RidgeProbe)
    with pytest.raises(ProbekitError, match="fractions"):
        mdl_online_codelength(X, y, fractions=(0.5, 0.25, 1.0))


# --------------------------------------------------------------------------------------------------
# probe_layers on a fake capture
# --------------------------------------------------------------------------------------------------

COLUMNS = [
    "model",
    "data",
    "task",
    "layer",
    "seed",
    "split",
    "n_train",
    "n_dev",
    "n_test",
    "dev_accuracy",
    "accuracy",
    "ci_low",
    "ci_high",
    "control_accuracy",
    "selectivity",
    "majority_accuracy",
]


def test_probe_layers_frame(sentences, capture):
    frame = probe_layers("fake-model", sentences, "upos", capture=capture, seeds=(0, 1))
    assert set(COLUMNS) <= set(frame.columns)
    assert len(frame) == 2 * 2  # layers x seeds, one row each
    assert set(frame["layer"]) == {0, 1} and set(frame["seed"]) == {0, 1}
    assert (frame["model"] == "fake-model").all() and (frame["task"] == "upos").all()
    n_words = sum(len(s) for s in sentences)
    assert ((frame["n_train"] + frame["n_dev"] + frame["n_test"]) == n_words).all()
    assert (frame["n_dev"] > 0).all() and (frame["n_test"] >= frame["n_dev"]).all()
    np.testing.assert_allclose(frame["selectivity"], frame["accuracy"] - frame["control_accuracy"])
    assert ((frame["ci_low"] <= frame["accuracy"]) & (frame["accuracy"] <= frame["ci_high"])).all()
    by_layer = frame.groupby("layer")["accuracy"].mean()
    assert by_layer[1] > 0.9  # planted layer
    assert by_layer[0] < 0.45  # noise layer: near chance (4 tags)
    assert (frame["regularization"] > 0).all()


def test_probe_layers_is_reproducible_for_a_seed(sentences, capture):
    a = probe_layers("m", sentences, "upos", capture=capture, seeds=(3,))
    b = probe_layers("m", sentences, "upos", capture=capture, seeds=(3,))
    pd.testing.assert_frame_equal(a, b)
    c = probe_layers("m", sentences, "upos", capture=capture, seeds=(4,))
    assert not a[["ci_low", "ci_high"]].equals(c[["ci_low", "ci_high"]])


def test_probe_layers_tasks(sentences, capture):
    frame = probe_layers(
        "m", sentences, ["number", "role", "relation:nsubj"], layers=[1], capture=capture, seeds=(0,)
    )
    assert list(frame["task"]) == ["number", "role", "relation:nsubj"]
    assert (frame["n_classes"] == 2).all()
    n_nouns = sum(p == "NOUN" for s in sentences for p in s.upos)
    assert frame.set_index("task").loc["number", ["n_train", "n_dev", "n_test"]].sum() == n_nouns
    # one subject and one object per sentence; one nsubj arc + one sampled negative per sentence
    sides = ["n_train", "n_dev", "n_test"]
    assert frame.set_index("task").loc["role", sides].sum() == 2 * len(sentences)
    assert frame.set_index("task").loc["relation:nsubj", sides].sum() == 2 * len(sentences)


def test_probe_layers_with_the_logistic_probe(sentences, capture):
    frame = probe_layers(
        "m", sentences, "upos", layers=[1], capture=capture, seeds=(0,), probe="logistic", control=False
    )
    assert frame["probe"].iloc[0] == "logistic" and frame["accuracy"].iloc[0] > 0.9
    assert frame["regularization"].iloc[0] in (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # a C from DEFAULT_CS
    assert frame["control_accuracy"].isna().all()
    # the old family name still works, with a DeprecationWarning, and gives the same rows
    with pytest.warns(DeprecationWarning, match="logistic"):
        old = probe_layers(
            "m", sentences, "upos", layers=[1], capture=capture, seeds=(0,), probe="linear", control=False
        )
    pd.testing.assert_frame_equal(old, frame)
    with pytest.raises(ProbekitError, match="'ridge', 'logistic'"):
        probe_layers("m", sentences, "upos", layers=[1], capture=capture, probe="svm")


def test_linear_probe_is_the_logistic_probe():
    assert LinearProbe is LogisticProbe
    assert TRUSTED_TYPES == (
        "probekit.analyses.probes.estimators.RidgeProbe",
        "probekit.analyses.probes.estimators.LogisticProbe",
    )
    for cls in (RidgeProbe, LogisticProbe):  # TRUSTED_TYPES names where the classes really live
        assert f"{cls.__module__}.{cls.__qualname__}" in TRUSTED_TYPES


def test_probe_layers_mdl_columns(sentences, capture):
    frame = probe_layers("m", sentences, "upos", capture=capture, seeds=(0,), mdl=True)
    by_layer = frame.set_index("layer")
    assert by_layer.loc[1, "mdl_compression"] > 1.5
    assert by_layer.loc[1, "mdl_compression"] > by_layer.loc[1, "control_mdl_compression"]
    assert by_layer.loc[0, "mdl_compression"] < 1.1


class _Recorder(ClassifierMixin, BaseEstimator):
    """Predicts the first class; logs the features it is fitted on and asked to predict."""

    calls: ClassVar[list] = []  # class-level on purpose: shared by every clone probe_layers makes

    def fit(self, X, y):
        _Recorder.calls.append(("fit", np.asarray(X).copy()))
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        _Recorder.calls.append(("predict", np.asarray(X).copy()))
        return np.full(len(X), self.classes_[0])


def _id_capture(sentences):
    """Features that name each word's sentence (column 0) and type (column 1)."""
    feats = np.array([[k, int(w[1:])] for k, s in enumerate(sentences) for w in s.words], dtype=float)
    return FakeCapture(sentences, {0: feats})


@pytest.mark.parametrize("split", ["random", "lexical"])
def test_splits_hold_out_sentences_or_word_types(sentences, split):
    _Recorder.calls.clear()
    probe_layers(
        "m",
        sentences,
        "upos",
        capture=_id_capture(sentences),
        probe=_Recorder(),
        seeds=(0,),
        split=split,
        control=False,
    )
    (kind_fit, train), (kind_test, test), (kind_dev, dev) = _Recorder.calls
    assert (kind_fit, kind_test, kind_dev) == ("fit", "predict", "predict")
    column = 0 if split == "random" else 1  # sentence index, or word type
    assert not set(train[:, column]) & set(test[:, column])
    assert not set(train[:, column]) & set(dev[:, column]) and not set(dev[:, column]) & set(test[:, column])
    n = sum(len(s) for s in sentences)
    assert len(test) + len(dev) == pytest.approx(0.3 * n, abs=0.1 * n)
    assert len(test) == pytest.approx(len(dev), abs=0.1 * n)


def test_probes_and_dataset_split_share_one_split_function(sentences, monkeypatch):
    """Dataset.split and both probe splits go through probekit.data.dataset.holdout_mask, and the probe's
    test side is exactly the mask it returns."""
    import probekit.analyses.probes.layers as layers_module
    import probekit.data.dataset as dataset_module
    from probekit.data import Dataset

    assert layers_module.holdout_mask is dataset_module.holdout_mask
    real, calls = dataset_module.holdout_mask, []

    def spy(units, *args, **kwargs):
        mask = real(units, *args, **kwargs)
        calls.append((kwargs["where"], kwargs["order"], kwargs["size"], mask))
        return mask

    monkeypatch.setattr(dataset_module, "holdout_mask", spy)
    monkeypatch.setattr(layers_module, "holdout_mask", spy)
    Dataset("toy", tuple(sentences)).split(test_size=0.3, seed=0)
    assert calls[0][:3] == ("Dataset.split", "hash", "units")
    for split, column in (("random", 0), ("lexical", 1)):
        calls.clear()
        _Recorder.calls.clear()
        probe_layers(
            "m",
            sentences,
            "upos",
            capture=_id_capture(sentences),
            probe=_Recorder(),
            seeds=(0,),
            split=split,
            control=False,
        )
        (where, order, size, held), (_, order2, size2, half) = calls  # held-out side, then its halves
        assert (order, size) == (order2, size2) == ("permutation", "instances") and "upos" in where
        test_rows = _Recorder.calls[1][1]
        expected = _id_capture(sentences).stream(0)[held][half]
        np.testing.assert_array_equal(test_rows, expected)
        assert not set(_Recorder.calls[0][1][:, column]) & set(test_rows[:, column])


def test_relation_tasks_read_arcs_like_head_scoring(sentences):
    """relation:R instances come from probekit.data.relations.relation_instances: dobj is obj, a full label
    (nsubj:pass) matches only those arcs, and a relation absent from the data is an error."""
    from pathlib import Path

    from probekit.data import load_dataset

    obj = task_instances(sentences, "relation:obj", "toy")
    dobj = task_instances(sentences, "relation:dobj", "toy")
    for field in ("sentence_ids", "word_ids", "words", "labels", "types"):
        np.testing.assert_array_equal(getattr(dobj, field), getattr(obj, field))
    assert obj.labels.sum() == len(sentences)  # one obj arc per toy sentence
    frame = probe_layers(
        "m",
        sentences,
        ["relation:obj", "relation:dobj"],
        layers=[1],
        capture=planted_capture(sentences),
        seeds=(0,),
        n_boot=50,
    )
    cols = ["n_train", "n_test", "accuracy", "control_accuracy", "regularization"]
    np.testing.assert_array_equal(frame[cols].iloc[0].to_numpy(), frame[cols].iloc[1].to_numpy())

    tiny = load_dataset(f"ud:{Path(__file__).resolve().parents[1] / 'fixtures' / 'tiny.conllu'}").sentences
    passive = task_instances(tiny, "relation:nsubj:pass", "tiny")
    positives = passive.word_ids[passive.labels].tolist()
    assert positives == [[3, 1]] and passive.sentence_ids[passive.labels].tolist() == ["tiny-4"]
    nsubj = task_instances(tiny, "relation:nsubj", "tiny")  # the base relation includes nsubj:pass
    assert [3, 1] in nsubj.word_ids[nsubj.labels].tolist()
    with pytest.raises(ProbekitError, match=r"'relation:nmod'.*does not occur"):
        task_instances(tiny, "relation:nmod", "tiny")
    with pytest.raises(ProbekitError, match="positional relation"):
        task_instances(tiny, "relation:prev_word", "tiny")
    with pytest.raises(ProbekitError, match=r"Sentence\.heads"):
        task_instances([Sentence(id="x", words=("a", "b"))], "relation:nsubj", "plain")


def test_probe_result_writes_the_tables_and_the_plot(sentences, capture, tmp_path):
    frame = probe_layers("m", sentences, "upos", capture=capture, seeds=(0,), n_boot=50)
    result = ProbeResult.from_frame(frame, title="m on toy")
    pd.testing.assert_frame_equal(result.summary, probe_summary(frame))
    paths = result.write(tmp_path / "out")
    assert [p.name for p in paths] == [
        "probes.csv",
        "probes.md",
        "probes.tex",
        "probes_summary.csv",
        "probes_summary.md",
        "probes_summary.tex",
        "probe_curves.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    assert list(result.frame.columns) == ["model_kind", *frame.columns] and set(result.frame.model_kind) == {
        "trained"
    }
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), result.frame, check_dtype=False, atol=1e-6)


def test_regularisation_is_chosen_on_training_data_only(sentences, capture):
    from probekit.data.dataset import holdout_mask

    before = probe_layers("m", sentences, "upos", layers=[1], capture=capture, seeds=(0,), control=False)
    sids = np.array([s.id for s in sentences for _ in s.words], dtype=object)
    test = holdout_mask(sids, 0.3, 0, order="permutation", size="instances")
    changed = capture.stream(1).copy()
    changed[test] = np.random.default_rng(9).normal(size=(test.sum(), changed.shape[1])) * 50
    after = probe_layers(
        "m",
        sentences,
        "upos",
        layers=[1],
        capture=FakeCapture(sentences, {1: changed}),
        seeds=(0,),
        control=False,
    )
    assert after["regularization"].iloc[0] == before["regularization"].iloc[0]
    assert after["accuracy"].iloc[0] < before["accuracy"].iloc[0]  # the test side did change


def test_probe_layers_errors(sentences, capture):
    with pytest.raises(ProbekitError, match=r"'sense'.*labels\['sense'\]"):
        probe_layers("m", sentences, "sense", capture=capture)
    with pytest.raises(ProbekitError, match="sentence-level"):
        probe_layers("m", sentences, "genre", capture=capture)
    no_upos = [Sentence(id=s.id, words=s.words) for s in sentences]
    with pytest.raises(ProbekitError, match=r"Sentence\.upos"):
        probe_layers("m", no_upos, "upos", capture=capture)
    one_class = [Sentence(id=s.id, words=s.words, upos=("NOUN",) * len(s)) for s in sentences]
    with pytest.raises(ProbekitError, match="single class"):
        probe_layers("m", one_class, "upos", capture=capture)
    with pytest.raises(ProbekitError, match="too few examples"):
        probe_layers("m", sentences[:1], "upos", capture=capture)
    with pytest.raises(ProbekitError, match="too few examples"):
        probe_layers("m", sentences[:1], "number", capture=capture)
    with pytest.raises(ProbekitError, match="not in the capture"):
        probe_layers("m", sentences, "upos", layers=[7], capture=capture)
    with pytest.raises(ProbekitError, match="split"):
        probe_layers("m", sentences, "upos", capture=capture, split="by-type")
    other = make_sentences(seed=1)
    with pytest.raises(ProbekitError, match="do not match"):
        probe_layers("m", other, "upos", capture=capture)


def test_probe_layers_reports_random_and_lexical_splits_side_by_side(sentences, capture):
    both = probe_layers("m", sentences, "upos", capture=capture, seeds=(0, 1), split=["random", "lexical"])
    assert len(both) == 2 * 2 * 2  # layers x splits x seeds
    for split in ("random", "lexical"):
        alone = probe_layers("m", sentences, "upos", capture=capture, seeds=(0, 1), split=split)
        pd.testing.assert_frame_equal(both[both.split == split].reset_index(drop=True), alone)
    with pytest.raises(ProbekitError, match="split"):
        probe_layers("m", sentences, "upos", capture=capture, split=["random", "random"])


def test_probe_summary_reads_the_layer_curve(sentences, capture):
    random_capture = FakeCapture(sentences, {0: capture.stream(0), 1: capture.stream(0)})
    frame = probe_with_baselines(
        "tiny",
        sentences,
        "upos",
        "all",
        capture=capture,
        random_capture=random_capture,
        seeds=(0, 1),
        split=["random", "lexical"],
    )
    summary = probe_summary(frame)
    assert len(summary) == 2 and list(summary.split) == ["random", "lexical"]
    r = summary.iloc[0]
    trained = (
        frame[(frame.model_kind == "trained") & (frame.split == "random")].groupby("layer").accuracy.mean()
    )
    assert r.best_layer == 1 and r.accuracy == pytest.approx(trained[1]) and r.n_seeds == 2
    assert r.layer0_accuracy == pytest.approx(trained[0]) and r.first_layer_within == 1
    assert r.random_init_accuracy < 0.45 and r.gain_over_random_init > 0.4  # the random twin sees noise only
    assert r.accuracy_min <= r.accuracy <= r.accuracy_max


def _halves(units, seed, test_size=0.3):
    """The dev and test halves of probe_layers' held-out side, computed here by hand."""
    from probekit.data.dataset import holdout_mask

    held = holdout_mask(units, test_size, seed, order="permutation", size="instances")
    half = holdout_mask(units[held], 0.5, seed, order="permutation", size="instances")
    test = np.zeros(len(units), dtype=bool)
    test[np.flatnonzero(held)[half]] = True
    return held & ~test, test


@pytest.mark.parametrize("split", ["random", "lexical"])
def test_probe_row_interval_resamples_the_split_unit(sentences, capture, split):
    # by hand: refit the probe on the train side, score the test half, cluster-bootstrap by the unit the
    # split holds out (word types for lexical, sentences for random)
    from probekit.stats import bootstrap_ci

    probe = RidgeProbe(alpha=10.0)
    frame, units = probe_layers(
        "m", sentences, "upos", layers=[0], capture=capture, seeds=(2,), split=split, probe=probe,
        control=False, n_boot=200, return_units=True,
    )  # fmt: skip
    inst = task_instances(sentences, "upos", "toy")
    sids, types = inst.sentence_ids, inst.types
    dev, test = _halves(sids if split == "random" else types, seed=2)
    X = capture.stream(0)
    fitted = clone(probe).fit(X[~(dev | test)], inst.labels[~(dev | test)])
    correct = (fitted.predict(X[test]) == inst.labels[test]).astype(float)
    row = frame.iloc[0]
    assert row.n_test == test.sum() and row.n_dev == dev.sum()
    assert row.accuracy == pytest.approx(correct.mean())
    assert row.dev_accuracy == pytest.approx(np.mean(fitted.predict(X[dev]) == inst.labels[dev]))
    unit = types[test] if split == "lexical" else sids[test]
    other = sids[test] if split == "lexical" else types[test]
    expected = bootstrap_ci(correct, unit, n_boot=200, seed=2)
    assert (row.ci_low, row.ci_high) == pytest.approx(expected)
    assert (row.ci_low, row.ci_high) != pytest.approx(bootstrap_ci(correct, other, n_boot=200, seed=2))
    by_unit = pd.Series(correct).groupby(unit).agg(["size", "sum"])
    np.testing.assert_array_equal(units.n, by_unit["size"].loc[units.unit].to_numpy())
    np.testing.assert_array_equal(units.correct, by_unit["sum"].loc[units.unit].to_numpy())


def test_probe_summary_chooses_the_layer_on_dev_and_reports_test():
    base = {"model": "m", "data": "d", "task": "upos", "split": "random", "probe": "ridge"}
    rows = [  # (layer, seed, dev, test): dev prefers layer 1, test would prefer layer 2
        (0, 0, 0.50, 0.52), (1, 0, 0.90, 0.80), (2, 0, 0.85, 0.95),
        (0, 1, 0.50, 0.48), (1, 1, 0.88, 0.82), (2, 1, 0.86, 0.93),
    ]  # fmt: skip
    frame = pd.DataFrame(
        [dict(base, layer=la, seed=se, dev_accuracy=d, accuracy=t) for la, se, d, t in rows]
    ).assign(control_accuracy=0.3, selectivity=0.1, majority_accuracy=0.2)
    r = probe_summary(frame, within=0.03).iloc[0]
    assert r.best_layer == 1 and r.dev_accuracy == pytest.approx(0.89) and r.accuracy == pytest.approx(0.81)
    assert (r.accuracy_min, r.accuracy_max) == (0.80, 0.82) and r.layer0_accuracy == pytest.approx(0.50)
    assert r.first_layer_within == 1  # layer 2's mean dev accuracy 0.855 is not within 0.03 of 0.89
    assert np.isnan(r.ci_low)  # no per-unit table: no interval


def test_probe_summary_interval_equals_a_hand_computed_two_seed_bootstrap():
    # seed 0: units a (2 items, 2 correct), b (1, 0); seed 1: units c (1, 1), d (2, 1), e (1, 0); best
    # layer 1. Each replicate resamples each seed's units on its own and averages the two accuracies.
    key = {"model": "m", "data": "d", "task": "upos", "split": "random", "probe": "ridge"}
    frame = pd.DataFrame(
        [dict(key, layer=la, seed=se, dev_accuracy=0.5 + 0.1 * la, accuracy=acc) for la, se, acc in
         [(0, 0, 0.5), (1, 0, 2 / 3), (0, 1, 0.5), (1, 1, 0.5)]]
    ).assign(control_accuracy=np.nan, selectivity=np.nan, majority_accuracy=0.5)  # fmt: skip
    units = pd.DataFrame(
        [dict(key, layer=1, seed=0, unit=u, n=n, correct=c) for u, n, c in [("a", 2, 2), ("b", 1, 0)]]
        + [dict(key, layer=1, seed=1, unit=u, n=n, correct=c)
           for u, n, c in [("c", 1, 1), ("d", 2, 1), ("e", 1, 0)]]
        + [dict(key, layer=0, seed=0, unit="a", n=3, correct=0)]  # another layer: not used
    )  # fmt: skip
    n_boot = 40
    reps = np.zeros(n_boot)
    for k, (n, c) in enumerate([([2, 1], [2, 0]), ([1, 2, 1], [1, 1, 0])]):
        draws = np.random.default_rng(k).integers(0, len(n), size=(n_boot, len(n)))  # seed k of the bootstrap
        reps += np.asarray(c)[draws].sum(axis=1) / np.asarray(n)[draws].sum(axis=1)
    expected = np.quantile(reps / 2, [0.05, 0.95])
    r = probe_summary(frame, units=units, n_boot=n_boot, ci=0.9).iloc[0]
    assert r.best_layer == 1 and r.accuracy == pytest.approx((2 / 3 + 0.5) / 2)
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(expected))
    assert r.ci_low < r.ci_high


def test_analyze_probes_summary_has_a_test_interval(sentences, capture):
    from probekit.analyses.probes import analyze_probes

    result = analyze_probes(
        "m", sentences, "upos", capture=capture, seeds=(0, 1), split=["random", "lexical"], n_boot=100,
        random_model=False,
    )  # fmt: skip
    s = result.summary
    assert ((s.ci_low <= s.accuracy) & (s.accuracy <= s.ci_high) & (s.ci_low < s.ci_high)).all()
    assert set(result.units.split) == {"random", "lexical"}


def test_probe_summary_does_not_depend_on_row_order_and_keeps_probes_apart():
    acc = {6: 0.90, 0: 0.50, 3: 0.895, 9: 0.90}  # layers in the order a user might ask for them
    base = {
        "model": "m",
        "data": "d",
        "task": "upos",
        "seed": 0,
        "split": "random",
        "control_accuracy": 0.3,
        "selectivity": 0.0,
        "majority_accuracy": 0.2,
        "ci_low": 0.0,
        "ci_high": 1.0,
    }
    frame = pd.DataFrame(
        [dict(base, layer=layer, accuracy=a, probe="ridge") for layer, a in acc.items()]
        + [dict(base, layer=layer, accuracy=a - 0.1, probe="logistic") for layer, a in acc.items()]
    )
    summary = probe_summary(frame)
    assert list(summary.probe) == ["ridge", "logistic"] and (summary.n_seeds == 1).all()
    ridge = summary.iloc[0]
    assert ridge.best_layer == 6 and ridge.first_layer_within == 3 and ridge.layer0_accuracy == 0.5
    shuffled = (
        probe_summary(frame.sample(frac=1, random_state=1)).set_index("probe").loc[["ridge", "logistic"]]
    )
    pd.testing.assert_frame_equal(shuffled, summary.set_index("probe"))


def test_probe_cli_writes_tables_plot_and_summary(tmp_path):
    from probekit.cli import main

    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "--model",
                "tiny-bert",
                "--data",
                "template:svo_adj?n=24",
                "--task",
                "upos",
                "--layers",
                "0",
                "2",
                "--seeds",
                "0",
                "--split",
                "random",
                "lexical",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    frame = pd.read_csv(out / "probes.csv")
    assert set(frame.model_kind) == {"trained", "random-init"} and set(frame.layer) == {0, 2}
    assert set(frame.split) == {"random", "lexical"}
    for name in ("probes_summary.csv", "probes.tex", "probe_curves.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    assert "selectivity" in (out / "summary.md").read_text()
    # a run folder holding only probes gets a report without an (empty) verdict table
    from probekit.experiment.verdicts import build_report

    run_dir = tmp_path / "run"
    (run_dir / "probes").mkdir(parents=True)
    out.rename(run_dir / "probes" / "tiny-bert__svo")
    text = build_report(run_dir).read_text()
    assert "## Probes" in text and "upos probe on" in text and "## Verdicts" not in text
    out.mkdir()
    assert (
        main(
            [
                "probe",
                "--model",
                "tiny-bert",
                "--data",
                "template:svo_adj?n=24",
                "--task",
                "upos",
                "--layers",
                "zero",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    # a random-init model has no random-init twin: probed on its own
    assert (
        main(
            [
                "probe",
                "--model",
                "random:tiny-bert",
                "--data",
                "template:svo_adj?n=24",
                "--task",
                "upos",
                "--layers",
                "1",
                "--seeds",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert set(pd.read_csv(out / "probes.csv").model) == {"random:tiny-bert"}


def test_probe_cli_takes_the_logistic_family_and_its_old_name():
    from probekit.cli import build_parser

    base = ["probe", "--model", "m", "--data", "d", "--task", "upos", "--out", "o", "--probe"]
    for name in ("ridge", "logistic", "linear"):
        assert build_parser().parse_args([*base, name]).probe == name
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "svm"])


def test_probe_with_baselines_labels_model_kind(sentences, capture):
    random_capture = FakeCapture(sentences, {1: capture.stream(0)})
    frame = probe_with_baselines(
        "tiny", sentences, "upos", [1], capture=capture, random_capture=random_capture, seeds=(0,)
    )
    assert list(frame["model_kind"]) == ["trained", "random-init"]
    assert list(frame["model"]) == ["tiny", "random:tiny"]
    assert frame["accuracy"].iloc[0] > frame["accuracy"].iloc[1]


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", [RidgeProbe(alphas=(0.1, 1.0)), LogisticProbe(Cs=(0.1, 1.0), cv=3)])
def test_save_load_round_trip(tmp_path, probe):
    X, y = planted(n=200)
    probe = probe.fit(X, np.array(POS)[y])
    path = save_probe(probe, tmp_path / "sub" / "probe.skops")
    loaded = load_probe(path)
    assert type(loaded) is type(probe)
    np.testing.assert_array_equal(loaded.predict(X), probe.predict(X))
    np.testing.assert_allclose(loaded.coef_, probe.coef_)
    assert loaded.get_params() == probe.get_params()


def test_load_refuses_untrusted_types(tmp_path):
    X, y = planted(n=50)
    path = save_probe(_Recorder().fit(X, y), tmp_path / "other.skops")
    with pytest.raises(ProbekitError, match="not trusted"):
        load_probe(path)
    assert isinstance(load_probe(path, trusted=[f"{__name__}._Recorder"]), _Recorder)
    with pytest.raises(ProbekitError, match="no probe file"):
        load_probe(tmp_path / "missing.skops")


def test_control_with_a_single_word_type_is_undefined():
    """The sense task has one word type ("bank"): its control task would be one constant label that any
    probe learns perfectly. It measures nothing, so it is reported as missing, with a warning."""
    rng = np.random.default_rng(0)
    sentences, feats = [], []
    for i in range(60):
        sense = "river" if i % 2 else "finance"
        sentences.append(Sentence(id=f"b{i}", words=("the", "bank"), labels={"sense": [None, sense]}))
        base = np.zeros(4)
        base[0] = 1.0 if sense == "river" else -1.0
        feats += [rng.normal(size=4), base + rng.normal(scale=0.1, size=4)]
    with pytest.warns(UserWarning, match="control task is undefined"):
        frame = probe_layers(
            "m",
            sentences,
            "sense",
            layers=[0],
            capture=FakeCapture(sentences, {0: np.array(feats)}),
            seeds=(0,),
            n_boot=100,
        )
    assert np.isnan(frame.control_accuracy.iloc[0]) and np.isnan(frame.selectivity.iloc[0])
    assert frame.accuracy.iloc[0] > 0.9
