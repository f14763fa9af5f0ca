"""The per-layer driver: `probe_layers` fits a probe on every residual-stream layer next to its
baselines (majority, control task, layer 0, MDL), `probe_with_baselines` adds the random-init model, and
`analyze_probes` returns both with their summary as a `ProbeResult`. Method: ``docs/methods/probes.md``
(Hewitt & Liang 2019; Voita & Titov 2020; Belinkov 2022).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from probekit.analyses.probes.estimators import DEFAULT_ALPHAS, DEFAULT_CS, LogisticProbe, RidgeProbe
from probekit.analyses.probes.mdl import mdl_online_codelength
from probekit.analyses.probes.streams import (
    align_instances,
    capture_streams,
    features,
    load_if_name,
    resolve_layers,
)
from probekit.analyses.probes.summary import ProbeResult
from probekit.analyses.probes.tasks import TaskInstances, control_labels, task_instances
from probekit.data.dataset import holdout_mask
from probekit.errors import ProbekitError
from probekit.stats import bootstrap_ci

__all__ = [
    "PROBE_FAMILIES",
    "UNIT_COLUMNS",
    "analyze_probes",
    "probe_layers",
    "probe_with_baselines",
    "resolve_probe_family",
    "trained_and_random_runs",
]

#: The probe families `probe_layers` builds from a name (``probe="ridge"`` or ``probe="logistic"``).
PROBE_FAMILIES: tuple[str, ...] = ("ridge", "logistic")

_MIN_EXAMPLES = 10  # fewer instances than this cannot give a meaningful train/test estimate

_COLUMNS = [
    "model",
    "data",
    "task",
    "layer",
    "seed",
    "split",
    "probe",
    "n_train",
    "n_dev",
    "n_test",
    "n_classes",
    "dev_accuracy",
    "accuracy",
    "ci_low",
    "ci_high",
    "control_accuracy",
    "selectivity",
    "selectivity_ci_low",
    "selectivity_ci_high",
    "majority_accuracy",
    "regularization",
]
#: the per-unit table (`probe_layers` with ``return_units=True``): test-half items and correct ones per unit
UNIT_COLUMNS = ["model", "data", "task", "layer", "seed", "split", "probe", "unit", "n", "correct"]
_MDL_COLUMNS = [
    "mdl_online_codelength",
    "mdl_uniform_codelength",
    "mdl_compression",
    "control_mdl_compression",
]


def probe_layers(
    model,
    dataset: Iterable,
    task: str | Sequence[str],
    layers: str | int | Sequence[int] = "all",
    *,
    probe: str | BaseEstimator = "ridge",
    seeds: Sequence[int] = (0, 1, 2),
    test_size: float = 0.3,
    split: str | Sequence[str] = "random",
    control: bool = True,
    mdl: bool = False,
    mdl_probe: BaseEstimator | None = None,
    capture=None,
    n_boot: int = 1000,
    ci: float = 0.95,
    return_units: bool = False,
):
    """Train and evaluate a probe on each residual-stream layer; one row per (layer, task, split, seed).

    For every task and seed the instances are split into train and held-out (``split``), and the
    held-out units into a *dev* and a *test* half (by the same unit, `holdout_mask` with the seed). A
    probe is fitted on the train side (its regularisation chosen by inner CV on the train side only: LOO
    for the default ridge probe) and scored on the dev half (``dev_accuracy``, what `probe_summary`
    chooses layers on) and on the test half (everything else), next to its baselines: the majority
    class, the Hewitt & Liang (2019) control task and, with ``mdl``, the Voita & Titov (2020) online
    code. Splits, tasks and intervals are described in ``docs/methods/probes.md``.

    Parameters
    ----------
    model : a loaded model (``.name``, ``.n_layers``) or a model name. Only its name is used when
        ``capture`` is given; otherwise a name is loaded with `probekit.models.load_model`.
    dataset : iterable of `Sentence` (other items, e.g. minimal pairs, are ignored). Its ``name`` (or a
        `probekit.data.Dataset`'s ``spec``) fills the ``data`` column.
    task : a task name or a list of them: ``"upos"``, ``"role"`` (nsubj vs obj words), any per-word label
        in ``Sentence.labels`` (``"number"``, ``"sense"``), or ``"relation:R"`` (word pairs, features
        ``[h_a, h_b, h_a*h_b]``, negatives from the same sentence; see `task_instances`).
    layers : "all" or residual-stream layers 0..n_layers (0 = embeddings, l = output of block l-1).
    probe : ``"ridge"`` (`RidgeProbe`, LOO over `DEFAULT_ALPHAS`), ``"logistic"`` (`LogisticProbe`,
        5-fold CV over `DEFAULT_CS`; ``"linear"`` is its deprecated old name), or an unfitted estimator
        (cloned for every fit).
    seeds : one row per seed; the seed sets the split, the control labels, the bootstrap and MDL order.
    test_size : fraction of instances held out.
    split : ``"random"`` (held-out sentences), ``"lexical"`` (held-out word types) or a list of both;
        both are `probekit.data.dataset.holdout_mask`.
    control : also fit the control task (`control_labels`, drawn once per seed and shared by all
        layers) with the *same* regularisation the task probe chose; ``selectivity = accuracy -
        control_accuracy``.
    mdl : also compute the online code on the train side, for the task and (if ``control``) the control
        labels, with ``mdl_probe`` (default ``LogisticProbe()``, C=1). Slow.
    mdl_probe : the probe MDL uses.
    capture : an existing capture (``.index``, ``.stream(layer)``, ``.stream_layers``), e.g. from
        `probekit.activations.capture.capture` or built from arrays. If None, the residual streams of
        ``layers`` are captured once (``resid_pre``/``resid_post`` of the blocks needed, no attention).
    n_boot, ci : bootstrap replicates and level of the cluster-bootstrap confidence intervals (the
        split's unit resampled: test sentences for ``"random"``, test word types for ``"lexical"``).
    return_units : also return the per-unit table `probe_summary` needs for its interval.

    Returns
    -------
    DataFrame with columns ``model, data, task, layer, seed, split, probe, n_train, n_dev, n_test,
    n_classes, dev_accuracy, accuracy, ci_low, ci_high, control_accuracy, selectivity,
    selectivity_ci_low, selectivity_ci_high, majority_accuracy, regularization`` (+
    ``mdl_online_codelength, mdl_uniform_codelength, mdl_compression, control_mdl_compression`` when
    ``mdl``). ``n_dev``/``dev_accuracy`` are the dev half; ``n_test``, ``accuracy``, its interval and the
    baselines the test half; ``regularization`` is the chosen ``alpha_`` or ``C_``. With
    ``return_units`` a pair ``(frame, units)``: ``units`` has the columns `UNIT_COLUMNS`, one row per
    (layer, seed, split, test-half unit) with its number of items ``n`` and of correct predictions.

    Examples
    --------
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.probes import probe_layers
    >>> data = load_dataset("template:svo_adj?n=24")
    >>> frame = probe_layers("tiny-bert", data, "upos", layers=[0, 2], seeds=(0,), n_boot=100)
    >>> frame[["layer", "split", "probe"]].values.tolist()
    [[0, 'random', 'ridge'], [2, 'random', 'ridge']]
    """
    seeds, splits = _check_run_args(seeds, test_size, split, n_boot, ci)
    template, probe_name = _resolve_probe(probe)
    sentences = [s for s in dataset if hasattr(s, "words")]
    data_name = str(getattr(dataset, "name", None) or getattr(dataset, "spec", None) or "unnamed")
    if not sentences:
        raise ProbekitError(
            f"{data_name} contains no sentences",
            where="probe_layers",
            fix="probe_layers needs a dataset of Sentence objects (words + annotations)",
        )
    tasks = [task] if isinstance(task, str) else list(task)
    instances = {t: task_instances(sentences, t, data_name) for t in tasks}  # fail before capturing

    if capture is None:
        model = load_if_name(model)
        capture = capture_streams(model, sentences, layers)
    model_name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    layer_list = resolve_layers(layers, capture)
    mdl_factory = (lambda: clone(mdl_probe)) if mdl_probe is not None else LogisticProbe

    records, unit_frames = [], []
    for t, inst in instances.items():
        where = f"task {t!r} on {data_name}"
        inst, rows = align_instances(inst, capture, where)
        _check_task_size(inst, where)
        parts = _split_masks(inst, splits, seeds, test_size, where)  # (split, seed) -> (dev, test) [n]
        controls = (
            {seed: control_labels(inst.types, inst.labels, seed=seed) for seed in seeds} if control else {}
        )
        if controls and len(np.unique(inst.types)) < 2:
            # One word type (e.g. the sense of "bank"): the control task gives every instance the same label,
            # so it measures nothing. Report it as missing; the random-init model is the baseline that counts.
            warnings.warn(
                f"{where}: every instance is the word type {inst.types[0]!r}, so the control task is "
                "undefined (control_accuracy and selectivity are NaN); compare with the random-init "
                "model instead",
                stacklevel=2,
            )
            controls = {}
        for layer in layer_list:
            X = features(np.asarray(capture.stream(layer)), rows)
            for (split_name, seed), (dev, test) in parts.items():
                unit_ids = inst.sentence_ids if split_name == "random" else inst.types  # [n]
                rec, per_unit = _probe_once(
                    X,
                    inst,
                    unit_ids,
                    dev,
                    test,
                    controls.get(seed),
                    template,
                    seed,
                    n_boot=n_boot,
                    ci=ci,
                    mdl_factory=mdl_factory if mdl else None,
                )
                key = {
                    "model": model_name,
                    "data": data_name,
                    "task": t,
                    "layer": int(layer),
                    "seed": int(seed),
                    "split": split_name,
                    "probe": probe_name,
                }
                records.append({**key, **rec})
                if return_units:
                    unit_frames.append(per_unit.assign(**key))
    columns = _COLUMNS + (_MDL_COLUMNS if mdl else [])
    frame = pd.DataFrame.from_records(records, columns=columns)
    if not return_units:
        return frame
    unit_table = pd.concat(unit_frames, ignore_index=True) if unit_frames else pd.DataFrame()
    return frame, unit_table.reindex(columns=UNIT_COLUMNS)


def _split_masks(
    inst: TaskInstances, splits: list[str], seeds: list[int], test_size: float, where: str
) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """The dev and test halves of the held-out side of every (split, seed): held-out sentences
    ("random") or word types ("lexical") by `holdout_mask`, then the held-out units halved the same way
    (at least half of the held-out instances, in whole units, go to test). A training side with a single
    class is an error, unseen held-out labels a warning."""
    parts = {}  # (split, seed) -> (dev, test), bool [n_instances] each
    for split_name in splits:
        units, what = (inst.sentence_ids, "sentence") if split_name == "random" else (inst.types, "word type")
        for seed in seeds:
            held = holdout_mask(
                units, test_size, seed, order="permutation", size="instances", what=what, where=where
            )
            if len(np.unique(units[held])) < 2:
                raise ProbekitError(
                    f"the held-out side of {split_name} split seed {seed} has a single {what}, which "
                    "cannot be halved into dev and test",
                    where=where,
                    fix="use more data or a larger test_size",
                )
            half = holdout_mask(
                units[held], 0.5, seed, order="permutation", size="instances", what=what, where=where
            )
            test = np.zeros(len(units), dtype=bool)
            test[np.flatnonzero(held)[half]] = True
            parts[split_name, seed] = (held & ~test, test)
    for (split_name, seed), (dev, test) in parts.items():
        test = dev | test  # the whole held-out side
        seen = np.unique(inst.labels[~test])
        if len(seen) < 2:
            raise ProbekitError(
                f"too few examples: the training side of {split_name} split seed {seed} has a single class",
                where=where,
                fix="use more data or a smaller test_size",
            )
        unseen = np.setdiff1d(np.unique(inst.labels[test]), seen).tolist()
        if unseen:
            warnings.warn(
                f"{where}, {split_name} split seed {seed}: test labels {unseen} never occur in "
                f"training (all their instances went to the test side); they count as errors",
                stacklevel=3,
            )
    return parts


def _probe_once(
    X,
    inst: TaskInstances,
    units: np.ndarray,
    dev: np.ndarray,
    test: np.ndarray,
    control_y,
    template,
    seed: int,
    *,
    n_boot,
    ci,
    mdl_factory,
) -> tuple[dict, pd.DataFrame]:
    """Fit and score one probe (and its control) on one split of one layer: the row's numbers and the
    per-unit counts of the test half (``unit, n, correct``). Intervals resample ``units`` (the split's
    unit: sentence or word type)."""
    train = ~(dev | test)
    y_train, y_test = inst.labels[train], inst.labels[test]
    groups = units[test]
    fitted = clone(template).fit(X[train], y_train)
    correct = (fitted.predict(X[test]) == y_test).astype(float)
    dev_correct = fitted.predict(X[dev]) == inst.labels[dev]
    classes, counts = np.unique(y_train, return_counts=True)
    rec = {
        "n_train": int(train.sum()),
        "n_dev": int(dev.sum()),
        "n_test": int(test.sum()),
        "n_classes": len(np.unique(inst.labels)),
        "dev_accuracy": float(dev_correct.mean()),
        "accuracy": float(correct.mean()),
        "majority_accuracy": float(np.mean(y_test == classes[counts.argmax()])),
        "regularization": float(getattr(fitted, "alpha_", getattr(fitted, "C_", np.nan))),
    }
    rec["ci_low"], rec["ci_high"] = bootstrap_ci(correct, groups, n_boot=n_boot, ci=ci, seed=seed)
    rec.update(
        control_accuracy=np.nan, selectivity=np.nan, selectivity_ci_low=np.nan, selectivity_ci_high=np.nan
    )
    if control_y is not None:
        control_classes = np.unique(control_y[train])
        if len(control_classes) == 1:
            # Few word types can give every training type the same control label: then any probe learns
            # that constant, which is what we score.
            control_pred = np.full(int(test.sum()), control_classes[0])
        else:
            control_pred = _same_capacity(template, fitted).fit(X[train], control_y[train]).predict(X[test])
        control_correct = (control_pred == control_y[test]).astype(float)
        rec["control_accuracy"] = float(control_correct.mean())
        rec["selectivity"] = rec["accuracy"] - rec["control_accuracy"]
        rec["selectivity_ci_low"], rec["selectivity_ci_high"] = bootstrap_ci(
            correct - control_correct, groups, n_boot=n_boot, ci=ci, seed=seed
        )
    if mdl_factory is not None:
        code = mdl_online_codelength(X[train], y_train, mdl_factory, seed=seed)
        rec.update(
            mdl_online_codelength=code["online_codelength"],
            mdl_uniform_codelength=code["uniform_codelength"],
            mdl_compression=code["compression"],
            control_mdl_compression=np.nan,
        )
        if control_y is not None and len(np.unique(control_y[train])) > 1:
            rec["control_mdl_compression"] = mdl_online_codelength(
                X[train], control_y[train], mdl_factory, seed=seed
            )["compression"]
    per_unit = (
        pd.DataFrame({"unit": groups.astype(str), "n": 1, "correct": correct.astype(int)})
        .groupby("unit", sort=True)
        .sum()
        .reset_index()
    )
    return rec, per_unit


def _same_capacity(template, fitted):
    """An unfitted probe with the regularisation ``fitted`` chose (Hewitt & Liang compare a task and a
    control probe of equal complexity); other estimators are simply cloned."""
    if isinstance(fitted, RidgeProbe):
        return clone(template).set_params(alpha=fitted.alpha_, alphas=None)
    if isinstance(fitted, LogisticProbe):
        return clone(template).set_params(C=fitted.C_, Cs=None)
    return clone(template)


def _check_task_size(inst: TaskInstances, where: str) -> None:
    if len(inst.labels) < _MIN_EXAMPLES:
        raise ProbekitError(
            f"too few examples: {len(inst.labels)} instances (need at least {_MIN_EXAMPLES})",
            where=where,
            fix="use more sentences",
        )
    classes = np.unique(inst.labels).tolist()
    if len(classes) < 2:
        raise ProbekitError(
            f"the task has a single class ({classes[0]!r}) in this data; nothing to probe",
            where=where,
            fix="use data where the label varies",
        )


def _check_run_args(seeds, test_size, split, n_boot, ci) -> tuple[list[int], list[str]]:
    where = "probe_layers"
    if isinstance(seeds, Integral):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, Integral) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ProbekitError(
            f"seeds must be distinct integers, got {seeds!r}", where=where, fix="e.g. seeds=(0, 1, 2)"
        )
    if not (isinstance(test_size, Real) and 0 < test_size < 1):  # type: ignore[operator]  # numbers.Real
        raise ProbekitError(f"test_size must be a fraction in (0, 1), got {test_size!r}", where=where)
    splits = (
        [split]
        if isinstance(split, str)
        else list(split)
        if isinstance(split, Sequence | np.ndarray)
        else [split]
    )
    if not splits or any(x not in ("random", "lexical") for x in splits) or len(set(splits)) != len(splits):
        raise ProbekitError(
            f"split must be 'random', 'lexical' or a list of them, got {split!r}",
            where=where,
            fix="e.g. split='random' or split=['random', 'lexical']",
        )
    if not (isinstance(n_boot, Integral) and n_boot >= 1) or not 0 < ci < 1:  # type: ignore[operator]  # numbers.Integral
        raise ProbekitError(f"need n_boot >= 1 and 0 < ci < 1, got {n_boot!r} and {ci!r}", where=where)
    return [int(s) for s in seeds], splits


def resolve_probe_family(name: str) -> str:
    """The probe family for ``name``: ``"ridge"`` or ``"logistic"``; the old name ``"linear"`` is
    accepted for ``"logistic"`` with a `DeprecationWarning`."""
    if name == "linear":
        warnings.warn(
            'probe="linear" is deprecated: the logistic-regression probe is called "logistic"',
            DeprecationWarning,
            stacklevel=4,
        )
        return "logistic"
    if name not in PROBE_FAMILIES:
        raise ProbekitError(
            f"probe must be 'ridge', 'logistic' or an unfitted estimator, got {name!r}",
            where="probe_layers",
            fix="e.g. probe='ridge'",
        )
    return name


def _resolve_probe(probe) -> tuple[BaseEstimator, str]:
    if isinstance(probe, str):
        family = resolve_probe_family(probe)
        return (
            RidgeProbe(alphas=DEFAULT_ALPHAS) if family == "ridge" else LogisticProbe(Cs=DEFAULT_CS)
        ), family
    if hasattr(probe, "fit") and hasattr(probe, "predict"):
        return probe, type(probe).__name__
    raise ProbekitError(
        f"probe must be 'ridge', 'logistic' or an unfitted estimator, got {probe!r}", where="probe_layers"
    )


def trained_and_random_runs(
    model, capture, random_model, random_capture, where: str, fix: str
) -> list[tuple[str, Any, Any]]:
    """The ``(model_kind, model, capture)`` runs of a trained model and of its random-init twin.

    The one place that names the random-init baseline (Belinkov 2022, §4) of `probe_with_baselines` and
    of the structural probes (`probekit.analyses.trees.fit_structural_probes`).

    Parameters
    ----------
    model, capture : the trained model (or its name) and its capture (None: captured later).
    random_model : the random-init model or its name; None means ``"random:<model name>"``; False: no
        random-init run.
    random_capture : its capture (None: captured later).
    where, fix : the error's place and advice when ``random_model`` is None and ``model`` has no name.

    Returns
    -------
    list of (str, model, capture)
        ``("trained", model, capture)``, then ``("random-init", random_model, random_capture)`` unless
        ``random_model`` is False.

    Examples
    --------
    >>> trained_and_random_runs("tiny-bert", None, None, None, where="example", fix="name the model")
    [('trained', 'tiny-bert', None), ('random-init', 'random:tiny-bert', None)]
    >>> trained_and_random_runs("random:tiny-bert", None, False, None, where="example", fix="")
    [('trained', 'random:tiny-bert', None)]
    """
    runs = [("trained", model, capture)]
    if random_model is None:
        name = model if isinstance(model, str) else getattr(model, "name", None)
        if name is None:
            raise ProbekitError("cannot name the random-init model", where=where, fix=fix)
        random_model = f"random:{name}"
    if random_model is not False:
        runs.append(("random-init", random_model, random_capture))
    return runs


def probe_with_baselines(
    model,
    dataset: Iterable,
    task: str | Sequence[str],
    layers: str | int | Sequence[int] = "all",
    *,
    random_model=None,
    capture=None,
    random_capture=None,
    return_units: bool = False,
    **kwargs,
):
    """`probe_layers` on a trained model and on its random-init twin, in one frame with ``model_kind``.

    The random-init model (Belinkov 2022, §4) has the same architecture with untrained weights: what a
    probe reads off it is what the architecture and the probe produce without learning. Layer 0 of the
    trained model (the embeddings) is the other baseline and is already a row of every sweep with
    ``layers="all"``.

    Parameters
    ----------
    model, dataset, task, layers : as in `probe_layers`.
    random_model : the random-init model or its name; None (default) means ``"random:<model name>"``
        (loaded with `probekit.models.load_model`); False leaves the random-init rows out (e.g. when
        ``model`` is itself a random-init model).
    capture, random_capture : captures of the two models that already exist (else captured here).
    return_units : also return the per-unit tables (`probe_layers`), with ``model_kind`` too.
    **kwargs : passed to `probe_layers`.

    Returns
    -------
    DataFrame: the `probe_layers` columns after a first column ``model_kind`` ("trained" or
    "random-init"); with ``return_units`` a pair ``(frame, units)``.

    Examples
    --------
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.probes import probe_with_baselines
    >>> frame = probe_with_baselines("tiny-bert", load_dataset("template:svo_adj?n=24"), "upos", [2],
    ...                              seeds=(0,), n_boot=100)
    >>> frame[["model_kind", "model"]].values.tolist()
    [['trained', 'tiny-bert'], ['random-init', 'random:tiny-bert']]
    """
    runs = trained_and_random_runs(
        model,
        capture,
        random_model,
        random_capture,
        where="probe_with_baselines",
        fix="pass random_model=load_model('random:<name>')",
    )
    frames, unit_frames = [], []
    for kind, m, cap in runs:
        frame, units = probe_layers(m, dataset, task, layers, capture=cap, return_units=True, **kwargs)
        frame.insert(0, "model_kind", kind)
        units.insert(0, "model_kind", kind)
        frames.append(frame)
        unit_frames.append(units)
    frame = pd.concat(frames, ignore_index=True)
    return (frame, pd.concat(unit_frames, ignore_index=True)) if return_units else frame


def analyze_probes(
    model,
    dataset: Iterable,
    task: str | Sequence[str],
    layers: str | int | Sequence[int] = "all",
    *,
    title: str = "",
    data_label: str | None = None,
    within: float = 0.01,
    **kwargs,
) -> ProbeResult:
    """The probes analysis: `probe_with_baselines` and its `probe_summary`, as a `ProbeResult`.

    ``probekit probe`` and the experiment's ``probes`` stage both run this and call ``.write(folder)``.

    Parameters
    ----------
    model, dataset, task, layers : as in `probe_layers`.
    title : the title of the layer-curve plot.
    data_label : if given, replaces the ``data`` column (e.g. a shorter name of the data spec) before
        the summary is made.
    within : passed to `probe_summary` (``first_layer_within``).
    **kwargs : passed to `probe_with_baselines` (``random_model``, ``probe``, ``seeds``, ``split``, ...).

    Returns
    -------
    ProbeResult with ``frame`` (every layer, seed and model kind) and ``summary`` (one row per curve).

    Examples
    --------
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.probes import analyze_probes
    >>> result = analyze_probes("tiny-bert", load_dataset("template:svo_adj?n=24"), "upos", [0, 2],
    ...                         seeds=(0,), n_boot=100, random_model=False)
    >>> result.summary[["task", "split", "n_seeds"]].values.tolist()
    [['upos', 'random', 1]]
    """
    frame, units = probe_with_baselines(model, dataset, task, layers, return_units=True, **kwargs)
    if data_label is not None:
        frame["data"] = data_label
        units["data"] = data_label
    boot = {k: kwargs[k] for k in ("n_boot", "ci") if k in kwargs}
    return ProbeResult.from_frame(frame, title=title, within=within, units=units, **boot)
