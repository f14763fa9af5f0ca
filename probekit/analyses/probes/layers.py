"""Linear probes on residual-stream activations, with the baselines that make their accuracy meaningful.

A *probe* is a simple classifier trained to predict a linguistic property (part of speech, number,
subject vs object, ...) from a model's hidden vectors. High probe accuracy alone says little: a
high-dimensional vector lets even a linear probe memorise word identities. This module therefore reports
every probe accuracy next to baselines (Belinkov 2022, "Probing Classifiers: Promises, Shortcomings,
and Advances", arXiv:2102.12452):

- **majority** — always predicting the most frequent training label;
- **control task** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks",
  arXiv:1909.03368) — every word *type* gets a random label, fixed across its tokens (`control_labels`).
  A probe can only solve it by memorising word identity, so **selectivity = accuracy − control accuracy**
  measures how much of the accuracy is not explained by lexical memorisation;
- **layer 0** (the embeddings) and a **random-init** model of the same architecture
  (`probe_with_baselines`) — what is decodable before any context mixing / before any training;
- **MDL** (Voita & Titov 2020, "Information-Theoretic Probing with Minimum Description Length",
  arXiv:2003.12298) — how many bits it takes to transmit the labels with an online-trained probe,
  versus a uniform code (`mdl_online_codelength`). Compression > 1 means the representation makes the
  labels easy to learn, which is less sensitive to probe capacity than accuracy.

Estimators (scikit-learn conventions; `clone`, `Pipeline`, `cross_val_score` work):

- `RidgeProbe` — multiclass ridge-regression classifier solved in closed form; with ``alphas`` it picks
  the penalty by exact leave-one-out CV on the training data from a single eigendecomposition. Fast:
  the default for layer sweeps.
- `LinearProbe` — L2 logistic regression (wraps `sklearn.linear_model.LogisticRegression`); gives
  probabilities, so it is the probe used for MDL.

The driver, `probe_layers`, turns a dataset of `Sentence` objects and a capture of residual streams into
a tidy frame with one row per (layer, task, seed). Probes are saved with `skops` (`save_probe`,
`load_probe`), never with pickle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probekit.errors import ProbekitError
from probekit.stats import bootstrap_ci

__all__ = [
    "RidgeProbe",
    "LinearProbe",
    "control_labels",
    "mdl_online_codelength",
    "probe_layers",
    "probe_with_baselines",
    "save_probe",
    "load_probe",
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "MDL_FRACTIONS",
    "TRUSTED_TYPES",
]

#: Ridge penalties searched by `probe_layers` (features are standardised, so alpha is relative to n).
DEFAULT_ALPHAS: tuple[float, ...] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5)
#: Inverse L2 strengths searched by `probe_layers` when ``probe="linear"``.
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Voita & Titov (2020) block boundaries: 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50, 100 % of the data.
MDL_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)

_MIN_EXAMPLES = 10  # fewer instances than this cannot give a meaningful train/test estimate


class _ProbeInputError(ProbekitError, ValueError):
    """Bad input to a probe estimator. A `ProbekitError` that is also a ``ValueError``, so scikit-learn
    tooling (``check_estimator``, ``GridSearchCV(error_score=...)``) recognises it."""


def _check_n_classes(classes: np.ndarray, where: str) -> None:
    if len(classes) < 2:
        raise _ProbeInputError(
            f"y has only one class ({classes.tolist()[0]!r}); a classifier needs at least 2 classes",
            where=where,
            fix="check the labels, or that the training split contains more than one label",
        )


# ==================================================================================================
# RidgeProbe
# ==================================================================================================


class RidgeProbe(ClassifierMixin, BaseEstimator):
    """Multiclass linear probe fitted by ridge regression on ±1 one-hot targets; predict = argmax.

    The model of `sklearn.linear_model.RidgeClassifier` (tested to give identical coefficients), with
    `RidgeClassifierCV`-style efficient alpha selection scored by leave-one-out *accuracy*.
    With classes ``c_1..c_K`` the targets are ``Y[i, k] = +1 if y_i = c_k else -1`` (a single ±1 column
    for two classes), and the weights solve ``min_W ||Y - X W - b||² + alpha ||W||²`` in closed form,
    ``W = (XᵀX + αI)⁻¹ XᵀY`` on centred (and, by default, standardised) features. The penalty is on the
    standardised weights, so ``alpha`` means the same at every layer whatever the activation scale.

    **Choosing alpha (``alphas`` given).** Leave-one-out CV *on the training data passed to fit*, exact
    and for all alphas at once (Golub, Heath & Wahba 1979; Rifkin & Lippert 2007). Write the
    eigendecomposition ``XᵀX = V diag(s) Vᵀ`` (d×d, computed once; a thin SVD of X when n < d) and
    ``P = X V``. Then for every alpha:

    - fitted values ``F = P diag(1/(s+α)) Vᵀ XᵀY``;
    - hat-matrix diagonal ``h_i = 1/n + Σ_j P_ij² / (s_j + α)`` (the 1/n is the unpenalised intercept);
    - leave-one-out residuals ``(Y_i - F_i) / (1 - h_i)``, so the LOO prediction of every training
      instance is available without refitting.

    The chosen ``alpha_`` maximises LOO accuracy (argmax of the LOO scores); ties go to the largest
    alpha, the simplest probe. Cost: one d×d eigendecomposition plus O(n·d·K) per alpha. (The feature
    mean and scale are computed once on all training rows — a negligible, standard approximation.)

    Parameters
    ----------
    alpha : float > 0, penalty used when ``alphas`` is None.
    alphas : sequence of floats > 0 or None; if given, alpha is chosen from it by LOO CV.
    fit_intercept : fit an unpenalised intercept (features and targets are centred).
    standardize : divide features by their standard deviation before fitting (constant features are left
        as they are). ``coef_`` and ``intercept_`` are always in the original feature space.

    Attributes
    ----------
    classes_ : labels, sorted. coef_ : (1 or K, n_features). intercept_ : (1 or K,).
    alpha_ : the penalty used. cv_scores_ : LOO accuracy per entry of ``alphas`` (None without ``alphas``).
    n_features_in_ : number of features.

    Ridge scores are not probabilities; this class has no ``predict_proba`` — use `LinearProbe` where
    probabilities are needed (e.g. MDL).
    """

    def __init__(self, alpha=1.0, alphas=None, fit_intercept=True, standardize=True):
        self.alpha = alpha
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.standardize = standardize

    def fit(self, X, y):
        """Fit on ``X`` (n_samples, n_features) and labels ``y``; returns self.

        The heavy products (the Gram matrix and ``P = X V``) run in the input's precision: float32
        captures stay float32 (half the memory traffic of float64; the eigendecomposition, the
        weights and everything per alpha are float64), float64 input is computed in float64. The LOO
        formula is exact in either; in float32 the Gram matrix's smallest eigenvalues carry float32
        rounding, which matters only when alpha is tiny next to them (on nearly rank-deficient features
        with alpha = 0.01, a few predictions in a thousand can differ from a float64 fit). Pass float64
        for bit-for-bit agreement with `sklearn.linear_model.RidgeClassifier`.
        """
        grid = self._alpha_grid()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        _check_n_classes(self.classes_, "RidgeProbe.fit")
        n, d = X.shape
        n_classes = len(self.classes_)

        Y = -np.ones((n, n_classes))
        Y[np.arange(n), y_idx] = 1.0
        if n_classes == 2:  # one column: +1 for classes_[1], -1 for classes_[0]
            Y = Y[:, 1:]

        # Standardise into one new array (X is the caller's): centre, then divide by the column scale.
        x_mean = X.mean(axis=0, dtype=np.float64) if self.fit_intercept else np.zeros(d)
        Xs = X - x_mean.astype(X.dtype)  # [n, d], X's dtype
        if self.standardize:
            if self.fit_intercept:  # the root mean square of the centred columns = their std
                x_scale = np.sqrt(np.square(Xs).sum(axis=0, dtype=np.float64) / n)
            else:  # uncentred X: still divide by the standard deviation
                x_scale = X.std(axis=0, dtype=np.float64)
            x_scale[x_scale < 1e-12 * max(1.0, float(np.abs(X).max(initial=0.0)))] = 1.0
            Xs /= x_scale.astype(X.dtype)
        else:
            x_scale = np.ones(d)
        y_mean = Y.mean(axis=0) if self.fit_intercept else np.zeros(Y.shape[1])
        Yc = Y - y_mean

        XtY = (Xs.T @ Yc.astype(X.dtype)).astype(np.float64)  # [d, K]
        if grid is None and n >= d:
            # one alpha: a Cholesky solve of (XᵀX + αI) W = XᵀY, a ninth of an eigendecomposition's cost
            alpha, self.cv_scores_ = float(self.alpha), None
            gram = (Xs.T @ Xs).astype(np.float64)  # [d, d]
            gram[np.diag_indices_from(gram)] += alpha
            W = scipy.linalg.solve(gram, XtY, assume_a="pos", overwrite_a=True, check_finite=False)
        else:
            s, V, P = _spectrum(Xs, need_projection=grid is not None)
            B = V.T @ XtY  # [rank, K]
            if grid is None:
                alpha, self.cv_scores_ = float(self.alpha), None
            else:
                self.cv_scores_ = _loo_accuracy(P, s, B, Y, Yc, y_idx, grid, self.fit_intercept)
                best = np.flatnonzero(self.cv_scores_ == self.cv_scores_.max())
                alpha = float(max(grid[i] for i in best))
            W = V @ (B / (s + alpha)[:, None])  # [d, K] in standardised space

        self.alpha_ = alpha
        self.coef_ = (W / x_scale[:, None]).T
        self.intercept_ = y_mean - (x_mean / x_scale) @ W
        return self

    def decision_function(self, X):
        """Ridge scores: (n_samples,) for two classes (positive means ``classes_[1]``), else (n, K)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X @ self.coef_.T + self.intercept_  # float64 (coef_ is float64)
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        """The class with the highest ridge score."""
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]

    def _alpha_grid(self) -> np.ndarray | None:
        return _penalty_grid(self.alpha, self.alphas, "alpha", "alphas", "RidgeProbe", "(0.1, 1, 10, 100)")


def _spectrum(Xs: np.ndarray, need_projection: bool):
    """Eigen-spectrum of XᵀX: ``s`` (eigenvalues), ``V`` (eigenvectors, columns), ``P = X V`` (or None).

    For n >= d the d×d Gram matrix is formed in X's precision (numpy runs ``Xᵀ @ X`` as a symmetric
    rank-k update, half the flops of a general product) and decomposed in float64 with ``eigh`` (cheapest when
    n >> d); ``P`` is computed in X's precision. Otherwise a thin SVD of X gives the same quantities
    restricted to the row space. ``s`` and ``V`` are float64.
    """
    n, d = Xs.shape
    if n >= d:
        gram = Xs.T @ Xs  # [d, d]; numpy runs ``a.T @ a`` as one BLAS syrk
        s, V = scipy.linalg.eigh(gram.astype(np.float64), overwrite_a=True, check_finite=False)
        s = np.clip(s, 0.0, None)
        P = Xs @ V.astype(Xs.dtype) if need_projection else None  # [n, d]
    else:
        U, sv, Vt = scipy.linalg.svd(Xs, full_matrices=False, check_finite=False)
        s, V, P = sv.astype(np.float64) ** 2, Vt.T.astype(np.float64), U * sv
    return s, V, P


def _loo_accuracy(P, s, B, Y, Yc, y_idx, grid, fit_intercept) -> np.ndarray:
    """Exact leave-one-out accuracy of the ridge classifier for every alpha in ``grid``.

    ``Y`` are the ±1 targets, ``Yc`` the same centred; the full-data prediction is ``Y - Yc + F`` and the
    LOO prediction is ``Y - (Yc - F) / (1 - h)``. The fitted values of all alphas come from one matrix
    product ``P @ [B/(s+α_1) | … | B/(s+α_A)]`` in P's precision; the residual algebra is float64.
    """
    n, K, A = P.shape[0], B.shape[1], len(grid)
    inv = 1.0 / (s[:, None] + grid[None, :])  # [rank, A]
    hat = np.einsum("nr,nr,ra->na", P, P, inv.astype(P.dtype), optimize=True).astype(np.float64)  # [n, A]
    if fit_intercept:
        hat += 1.0 / n
    coefs = (B[:, None, :] * inv[:, :, None]).reshape(B.shape[0], A * K)  # [rank, A*K]
    fitted = (P @ coefs.astype(P.dtype)).reshape(n, A, K)  # [n, A, K]
    scores = np.empty(A)
    for a in range(A):
        loo = Y - (Yc - fitted[:, a]) / np.clip(1.0 - hat[:, a], 1e-12, None)[:, None]
        pred = (loo[:, 0] > 0).astype(int) if K == 1 else loo.argmax(axis=1)
        scores[a] = np.mean(pred == y_idx)
    return scores


# ==================================================================================================
# LinearProbe
# ==================================================================================================


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic-regression probe (L2 penalty), wrapping `sklearn.linear_model.LogisticRegression`.

    Features are standardised (``standardize=True``) so the penalty ``1/C`` means the same at every
    layer. With ``Cs`` given, C is chosen by stratified k-fold CV (``cv`` folds, shuffled with
    ``random_state``) *within the training data passed to fit*: each fold's scaler and model are fitted
    on the other folds only, the score is mean held-out accuracy, ties go to the smallest C (the simplest
    probe), and the final model is refitted on all of the training data with ``C_``.

    Unlike `RidgeProbe` it gives probabilities (``predict_proba``), which MDL needs.

    Parameters
    ----------
    C : float > 0, inverse L2 strength used when ``Cs`` is None.
    Cs : sequence of floats > 0 or None; if given, C is chosen from it by inner CV.
    cv : number of inner folds (used only with ``Cs``).
    standardize : standardise features before fitting. ``coef_``/``intercept_`` are in the original space.
    max_iter, tol : passed to the lbfgs solver.
    random_state : seed of the inner CV shuffle.

    Attributes
    ----------
    classes_, coef_, intercept_, n_features_in_; C_ : the C used; cv_scores_ : mean inner-CV accuracy
    per entry of ``Cs`` (None without ``Cs``); model_ : the fitted pipeline (scaler + logistic regression).
    """

    def __init__(self, C=1.0, Cs=None, cv=5, standardize=True, max_iter=1000, tol=1e-4, random_state=0):
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X, y):
        """Fit on ``X`` (n_samples, n_features) and labels ``y``; returns self."""
        grid = self._C_grid()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        _check_n_classes(self.classes_, "LinearProbe.fit")
        if grid is None:
            self.C_, self.cv_scores_ = float(self.C), None
        else:
            self.cv_scores_ = self._inner_cv(X, y, grid)
            best = np.flatnonzero(self.cv_scores_ == self.cv_scores_.max())
            self.C_ = float(min(grid[i] for i in best))
        self.model_ = self._pipeline(self.C_).fit(X, y)
        scaler, logreg = self.model_[0], self.model_[-1]
        mean = scaler.mean_ if self.standardize else np.zeros(X.shape[1])
        scale = scaler.scale_ if self.standardize else np.ones(X.shape[1])
        self.coef_ = logreg.coef_ / scale
        self.intercept_ = logreg.intercept_ - self.coef_ @ mean
        self.n_iter_ = logreg.n_iter_
        return self

    def decision_function(self, X):
        """Logits: (n_samples,) for two classes (positive means ``classes_[1]``), else (n, K)."""
        check_is_fitted(self)
        return self.model_.decision_function(validate_data(self, X, reset=False))

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        return self.model_.predict_proba(validate_data(self, X, reset=False))

    def predict_log_proba(self, X):
        """Log class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        return self.model_.predict_log_proba(validate_data(self, X, reset=False))

    def predict(self, X):
        """The most probable class."""
        check_is_fitted(self)
        return self.model_.predict(validate_data(self, X, reset=False))

    def _pipeline(self, C: float):
        scaler = StandardScaler(with_mean=self.standardize, with_std=self.standardize)
        return make_pipeline(scaler, LogisticRegression(C=C, max_iter=self.max_iter, tol=self.tol))

    def _inner_cv(self, X, y, grid) -> np.ndarray:
        if not (isinstance(self.cv, Integral) and self.cv >= 2):
            raise _ProbeInputError(f"cv must be an integer >= 2, got {self.cv!r}", where="LinearProbe")
        counts = np.unique(y, return_counts=True)[1]
        if counts.max() < self.cv:
            raise _ProbeInputError(
                f"too few examples for {self.cv}-fold inner CV: the largest class has {counts.max()}",
                where="LinearProbe.fit",
                fix="use more data, a smaller `cv`, or a fixed C (Cs=None)",
            )
        folds = StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
        scores = np.zeros((self.cv, len(grid)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = list(folds.split(X, y))
        for f, (tr, te) in enumerate(splits):
            if len(np.unique(y[tr])) < 2:
                scores[f] = np.nan
                continue
            for c, C in enumerate(grid):
                scores[f, c] = self._pipeline(C).fit(X[tr], y[tr]).score(X[te], y[te])
        return np.nanmean(scores, axis=0)

    def _C_grid(self) -> np.ndarray | None:
        return _penalty_grid(self.C, self.Cs, "C", "Cs", "LinearProbe", "(0.01, 0.1, 1, 10)")


def _is_sequence(x) -> bool:
    return isinstance(x, Sequence | np.ndarray) and not isinstance(x, str)


def _penalty_grid(value, values, name: str, names: str, where: str, example: str) -> np.ndarray | None:
    """The penalties to choose from (``values``, e.g. ``alphas``), or None to use the single ``value``
    (checked positive); bad grids raise with the estimator's parameter names."""
    if values is None:
        _check_positive(value, name, where)
        return None
    grid = np.asarray(values, dtype=float).ravel() if _is_sequence(values) else None
    if grid is None or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise _ProbeInputError(
            f"{names} must be a non-empty sequence of positive numbers, got {values!r}",
            where=where,
            fix=f"e.g. {names}={example}, or {names}=None to use the single `{name}`",
        )
    return grid


def _check_positive(value, name: str, where: str) -> None:
    if not (isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0):
        raise _ProbeInputError(f"{name} must be a positive number, got {value!r}", where=where)


# ==================================================================================================
# Control task (Hewitt & Liang 2019)
# ==================================================================================================


def control_labels(word_types: Sequence[str], labels: Sequence, seed: int = 0) -> np.ndarray:
    """Type-level control labels (Hewitt & Liang 2019, §2): one random label per word type.

    Every word *type* — the lowercased word string, ``str(w).lower()`` — draws one label at random from
    the empirical (token-level) label distribution of the task, and all tokens of that type get that
    label. The control task is thus learnable only by memorising word identity; it is not a per-token
    shuffle, which no probe could learn at all.

    Parameters
    ----------
    word_types : one word (or type key) per instance; lowercased to form types.
    labels : the task label of each instance, same length.
    seed : seed of the draw (same seed and data → same control labels).

    Returns
    -------
    np.ndarray of control labels, one per instance, drawn from the set of task labels.
    """
    types = np.asarray([str(w).lower() for w in word_types], dtype=object)
    labels = np.asarray(labels)
    if types.shape != labels.shape or labels.ndim != 1:
        raise ProbekitError(
            f"word_types has {types.size} items but labels has shape {labels.shape}",
            where="control_labels",
            fix="give one word type and one label per instance",
        )
    if labels.size == 0:
        raise ProbekitError("no instances to build a control task from", where="control_labels")
    if any(lab is None for lab in labels.tolist()):
        raise ProbekitError("labels contain None", where="control_labels", fix="drop unlabelled instances first")
    classes, counts = np.unique(labels, return_counts=True)
    unique_types, type_of = np.unique(types, return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(classes), size=len(unique_types), p=counts / counts.sum())
    return classes[drawn][type_of]


# ==================================================================================================
# MDL online code (Voita & Titov 2020)
# ==================================================================================================


def mdl_online_codelength(
    X,
    y,
    probe_factory: Callable[[], Any] | None = None,
    fractions: Sequence[float] = MDL_FRACTIONS,
    seed: int = 0,
    min_prob: float = 1e-6,
) -> dict[str, float]:
    """Online (prequential) codelength of labels ``y`` given features ``X``, in bits (Voita & Titov 2020).

    Imagine Alice sending the labels to Bob, who already has the features. The data are shuffled (with
    ``seed``) and cut at ``t_1 < t_2 < ... < t_S = n`` examples, ``t_i = max(1, floor(fraction_i · n))``.
    The first block is sent with a uniform code, ``t_1 · log2 K`` bits. Every next block
    ``(t_i, t_{i+1}]`` is sent with a probe trained on the first ``t_i`` examples, at
    ``Σ -log2 p(y_j | x_j)`` bits. The sum is the online codelength; the uniform codelength is
    ``n · log2 K``; **compression = uniform / online**. A representation from which the labels are easy
    to learn (from little data) gives high compression; for labels unrelated to ``X`` compression ≈ 1
    (or below, because the probe overfits).

    Details: probabilities are clipped to ``[min_prob, 1]`` (a class the probe has not seen yet costs at
    most ``-log2 min_prob`` bits); a block whose training prefix holds a single class cannot train a
    classifier and is coded uniformly, like the first block.

    Parameters
    ----------
    X : (n_samples, n_features). y : labels (n_samples,).
    probe_factory : zero-argument callable returning an unfitted classifier with ``predict_proba``
        (default: ``LinearProbe()``, logistic regression with C=1 — a fixed probe, as in the paper).
    fractions : increasing block boundaries in (0, 1], ending at 1.0 (default: the paper's).
    seed : seed of the shuffle.

    Returns
    -------
    dict with ``online_codelength``, ``uniform_codelength`` (bits) and ``compression``.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ProbekitError(f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}",
                            where="mdl_online_codelength")
    fractions = np.asarray(fractions, dtype=float)
    if fractions.size == 0 or np.any(np.diff(fractions) <= 0) or fractions[0] <= 0 or fractions[-1] != 1.0:
        raise ProbekitError(f"fractions must increase strictly within (0, 1] and end at 1.0, got {fractions.tolist()}",
                            where="mdl_online_codelength", fix="use the default MDL_FRACTIONS")
    classes, y_idx = np.unique(y, return_inverse=True)
    n, n_classes = y.size, len(classes)
    if n_classes < 2:
        raise ProbekitError("y has a single class; there is nothing to transmit", where="mdl_online_codelength")
    factory = probe_factory if probe_factory is not None else LinearProbe

    order = np.random.default_rng(seed).permutation(n)
    X, y, y_idx = X[order], y[order], y_idx[order]
    ends = sorted({max(1, int(f * n)) for f in fractions} | {n})
    uniform_bits = np.log2(n_classes)

    online = ends[0] * uniform_bits
    for start, stop in zip(ends[:-1], ends[1:], strict=True):
        if len(np.unique(y_idx[:start])) < 2:
            online += (stop - start) * uniform_bits
            continue
        probe = factory().fit(X[:start], y[:start])
        if not hasattr(probe, "predict_proba"):
            raise ProbekitError(f"{type(probe).__name__} has no predict_proba; MDL needs probabilities",
                                where="mdl_online_codelength", fix="use LinearProbe (the default)")
        proba = np.full((stop - start, n_classes), 0.0)
        proba[:, np.searchsorted(classes, probe.classes_)] = probe.predict_proba(X[start:stop])
        p_true = np.clip(proba[np.arange(stop - start), y_idx[start:stop]], min_prob, 1.0)
        online += float(-np.log2(p_true).sum())
    uniform = n * uniform_bits
    return {"online_codelength": float(online), "uniform_codelength": float(uniform),
            "compression": float(uniform / online)}


# ==================================================================================================
# Tasks: from sentences to (instance, label) pairs
# ==================================================================================================

_ROLES = {"nsubj": "subj", "obj": "obj"}  # the same values as labels["role"] in the template data
_BUILTIN_TASKS = ("upos", "role", "relation:<deprel>")


@dataclass(frozen=True)
class _Instances:
    """The probing instances of one task: a word (or an ordered word pair) with a label."""

    sentence_ids: np.ndarray  # (n,) sentence id of each instance
    word_ids: np.ndarray  # (n, 1) word index, or (n, 2) (head, dependent) for pair tasks
    words: np.ndarray  # (n, 1|2) the word strings, to check the capture lines up with the data
    labels: np.ndarray  # (n,)
    types: np.ndarray  # (n,) lowercased word type, or "head|dependent" type pair

    def subset(self, keep: np.ndarray) -> _Instances:
        return _Instances(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def _task_instances(sentences: list, task: str, data_name: str) -> _Instances:
    """Instances of a task. Token tasks: ``upos`` (Sentence.upos), ``role`` (words whose base deprel is
    nsubj → "subj" or obj → "obj", derived from Sentence.deprels), or any per-word label ``labels[task]``
    (e.g. ``number``, ``sense``); words whose label is None are skipped. Pair task: ``relation:R`` (see `_relation_instances`).
    Sentences lacking the annotation are skipped; if none has it, that is an error."""
    where = f"task {task!r} on {data_name}"
    if not isinstance(task, str) or not task:
        raise ProbekitError(f"a task must be a non-empty string, got {task!r}", where="probe_layers")
    if task.startswith("relation:"):
        return _relation_instances(sentences, task, where)
    if task == "upos":
        need, fix = "Sentence.upos", "load a treebank with UPOS tags (e.g. CoNLL-U) or tag the data first"

        def get(s):
            return s.upos
    elif task == "role":
        need, fix = "Sentence.deprels", "load data with dependency relations (CoNLL-U, or parse the text)"

        def get(s):
            return None if s.deprels is None else [_ROLES.get(r.split(":")[0]) for r in s.deprels]
    else:
        need = f"a per-word label labels[{task!r}] (a list with one entry per word)"
        per_word = sorted({k for s in sentences for k, v in s.labels.items() if _is_per_word(v, s)})
        fix = (f"use a built-in task {_BUILTIN_TASKS} or one of this data's per-word labels {per_word}; "
               f"a sentence-level label cannot be probed per word")

        def get(s):
            v = s.labels.get(task)
            return v if _is_per_word(v, s) else None

    sids, wids, words, labels = [], [], [], []
    has_annotation = False
    for s in sentences:
        values = get(s)
        if values is None:
            continue
        has_annotation = True
        for i, lab in enumerate(values):
            if lab is not None:
                sids.append(str(s.id))
                wids.append(i)
                words.append(s.words[i])
                labels.append(lab)
    if not has_annotation:
        raise ProbekitError(f"task {task!r} needs {need}, but no sentence in {data_name} has it",
                            where=where, fix=fix)
    if not labels:
        raise ProbekitError(f"task {task!r}: the data has {need} but no word carries a label",
                            where=where, fix=fix)
    words_arr = np.asarray(words, dtype=object)
    return _Instances(
        sentence_ids=np.asarray(sids, dtype=object),
        word_ids=np.asarray(wids, dtype=int)[:, None],
        words=words_arr[:, None],
        labels=_label_array(labels),
        types=np.asarray([w.lower() for w in words], dtype=object),
    )


def _relation_instances(sentences: list, task: str, where: str) -> _Instances:
    """Pair task ``relation:R``: is word h the head of word d with (base) relation R?

    Positives: every arc ``(heads[d], d)`` with base deprel R. Negatives: for each sentence, as many
    ordered pairs ``(a, b)``, ``a != b``, drawn uniformly without replacement from that sentence's pairs
    that are not R arcs (so other arcs, reversed arcs and non-arcs), with a fixed seed (0) so the
    instance set is the same for every run seed. Sentences without an R arc contribute nothing.
    Features are ``[h_a, h_b, h_a * h_b]`` (see `_features`); the type of a pair is ``"a|b"`` (lowercased).
    """
    relation = task.split(":", 1)[1]
    if not relation:
        raise ProbekitError("relation task without a relation name", where=where, fix="e.g. task='relation:nsubj'")
    rng = np.random.default_rng(0)
    sids, pairs, words, labels = [], [], [], []
    annotated = False
    for s in sentences:
        if s.heads is None or s.deprels is None:
            continue
        annotated = True
        n = len(s.words)
        pos = {(h, d) for d, (h, r) in enumerate(zip(s.heads, s.deprels, strict=True))
               if h is not None and h >= 0 and r.split(":")[0] == relation}
        if not pos:
            continue
        candidates = [(a, b) for a in range(n) for b in range(n) if a != b and (a, b) not in pos]
        take = rng.choice(len(candidates), size=min(len(pos), len(candidates)), replace=False)
        for pair, lab in [(p, True) for p in sorted(pos)] + [(candidates[k], False) for k in sorted(take)]:
            sids.append(str(s.id))
            pairs.append(pair)
            words.append((s.words[pair[0]], s.words[pair[1]]))
            labels.append(lab)
    if not annotated:
        raise ProbekitError(f"task {task!r} needs Sentence.heads and Sentence.deprels, but no sentence has them",
                            where=where, fix="load data with dependency trees (CoNLL-U, or parse the text)")
    if not labels:
        raise ProbekitError(f"task {task!r}: no arc in the data has relation {relation!r}", where=where,
                            fix="check the relation name (base relations, e.g. 'nsubj', 'obj', 'amod')")
    words_arr = np.asarray(words, dtype=object).reshape(-1, 2)
    return _Instances(
        sentence_ids=np.asarray(sids, dtype=object),
        word_ids=np.asarray(pairs, dtype=int).reshape(-1, 2),
        words=words_arr,
        labels=np.asarray(labels, dtype=bool),
        types=np.asarray([f"{a.lower()}|{b.lower()}" for a, b in words_arr], dtype=object),
    )


def _is_per_word(value, sentence) -> bool:
    return isinstance(value, list | tuple) and len(value) == len(sentence.words)


def _label_array(labels: list) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuUS":  # mixed or unusual label types: compare them as strings
        arr = np.asarray([str(v) for v in labels])
    return arr


def _features(stream: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Probe inputs: the word's vector, or ``[h_a, h_b, h_a * h_b]`` for a word pair."""
    if rows.shape[1] == 1:
        return stream[rows[:, 0]]
    a, b = stream[rows[:, 0]], stream[rows[:, 1]]
    return np.concatenate([a, b, a * b], axis=1)


# ==================================================================================================
# Splits
# ==================================================================================================


def _split_test_mask(units: np.ndarray, test_size: float, seed: int, what: str, where: str) -> np.ndarray:
    """Hold out whole units (sentences or word types): shuffle them with ``seed`` and move units to the
    test side until it holds at least ``test_size`` of the instances (at least one unit on each side)."""
    unique, unit_of = np.unique(units, return_inverse=True)
    if len(unique) < 2:
        raise ProbekitError(
            f"too few examples to split: all instances come from one {what}",
            where=where,
            fix=f"use data with more {what}s",
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    cumulative = np.cumsum(np.bincount(unit_of, minlength=len(unique))[order])
    n_test_units = int(np.searchsorted(cumulative, test_size * len(units))) + 1
    n_test_units = min(max(n_test_units, 1), len(unique) - 1)
    return np.isin(unit_of, order[:n_test_units])


# ==================================================================================================
# probe_layers
# ==================================================================================================

_COLUMNS = [
    "model", "data", "task", "layer", "seed", "split", "probe", "n_train", "n_test", "n_classes",
    "accuracy", "ci_low", "ci_high", "control_accuracy", "selectivity", "selectivity_ci_low",
    "selectivity_ci_high", "majority_accuracy", "regularization",
]
_MDL_COLUMNS = ["mdl_online_codelength", "mdl_uniform_codelength", "mdl_compression", "control_mdl_compression"]


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
) -> pd.DataFrame:
    """Train and evaluate a probe on each residual-stream layer; one row per (layer, task, seed).

    For every task and seed: the instances are split into train and test (``split``), a probe is fitted
    on the train side (its regularisation chosen by inner CV on the train side only: LOO for the default
    ridge probe) and scored on the test side, together with its baselines.

    Parameters
    ----------
    model : a loaded model (``.name``, ``.n_layers``) or a model name. Only its name is used when
        ``capture`` is given; otherwise a name is loaded with `probekit.models.load_model`.
    dataset : iterable of `Sentence` (other items, e.g. minimal pairs, are ignored). Its ``name`` (or a
        `probekit.data.Dataset`'s ``spec``) fills the ``data`` column.
    task : a task name or a list of them: ``"upos"``, ``"role"`` (nsubj vs obj words), any per-word label
        in ``Sentence.labels`` (``"number"``, ``"sense"``), or ``"relation:R"`` (word pairs, features
        ``[h_i, h_j, h_i*h_j]``, negatives from the same sentence).
    layers : "all" or residual-stream layers 0..n_layers (0 = embeddings, l = output of block l-1).
    probe : "ridge" (`RidgeProbe` with LOO over `DEFAULT_ALPHAS`), "linear" (`LinearProbe`, 5-fold CV
        over `DEFAULT_CS`), or an unfitted estimator (cloned for every fit).
    seeds : one row per seed; the seed sets the split, the control labels, the bootstrap and MDL order.
    test_size : fraction of instances held out.
    split : ``"random"``, ``"lexical"`` or a list of both (rows for each, side by side in ``split``).
        ``"random"`` — held-out *sentences* (all words of a sentence on one side, so a test word's
        context never appeared in training); ``"lexical"`` — held-out *word types*: no test word type
        (pair type for relations) occurs in training. Sentences may then contribute to both sides; the
        question is generalisation to unseen words. Under a lexical split the control probe cannot
        memorise test types, so control accuracy drops towards chance and selectivity is inflated.
    control : also fit the Hewitt & Liang control task (`control_labels`, drawn once per seed and shared
        by all layers) with the *same* regularisation the task probe chose, i.e. a probe of equal
        capacity; ``selectivity = accuracy - control_accuracy``.
    mdl : also compute the Voita & Titov online code on the train side, for the task and (if
        ``control``) the control labels, with ``mdl_probe`` (default ``LinearProbe()``, C=1). Slow.
    capture : an existing capture (``.index``, ``.stream(layer)``, ``.stream_layers``), e.g. from
        `probekit.capture.capture` or built from arrays. If None, the residual streams of ``layers``
        are captured once (``resid_pre``/``resid_post`` of the blocks needed, no attention).
    n_boot, ci : bootstrap replicates and level of the confidence intervals.

    Returns
    -------
    DataFrame with columns ``model, data, task, layer, seed, split, probe, n_train, n_test, n_classes,
    accuracy, ci_low, ci_high, control_accuracy, selectivity, selectivity_ci_low, selectivity_ci_high,
    majority_accuracy, regularization`` (+ ``mdl_online_codelength, mdl_uniform_codelength,
    mdl_compression, control_mdl_compression`` when ``mdl``).

    **What the intervals mean.** ``ci_low``/``ci_high`` form a percentile *cluster-bootstrap* interval
    of the test accuracy for that seed's split, resampling test *sentences* (words of a sentence are
    correlated), via `probekit.stats.bootstrap_ci`. It covers the sampling of test data, not the choice
    of split or training set: that variation is the spread across the seed rows. The selectivity
    interval bootstraps the per-instance difference (task correct − control correct) with the same
    resampled sentences (a paired interval). ``majority_accuracy`` is the test accuracy of always
    predicting the most frequent training label; ``regularization`` is the chosen ``alpha_`` or ``C_``.
    """
    seeds, splits = _check_run_args(seeds, test_size, split, n_boot, ci)
    template, probe_name = _resolve_probe(probe)
    sentences = [s for s in dataset if hasattr(s, "words")]
    data_name = str(getattr(dataset, "name", None) or getattr(dataset, "spec", None) or "unnamed")
    if not sentences:
        raise ProbekitError(f"{data_name} contains no sentences", where="probe_layers",
                            fix="probe_layers needs a dataset of Sentence objects (words + annotations)")
    tasks = [task] if isinstance(task, str) else list(task)
    instances = {t: _task_instances(sentences, t, data_name) for t in tasks}  # fail before capturing

    if capture is None:
        model = _load_if_name(model)
        capture = _capture_streams(model, sentences, layers)
    model_name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    layer_list = _resolve_layers(layers, capture)
    mdl_factory = (lambda: clone(mdl_probe)) if mdl_probe is not None else LinearProbe

    records = []
    for t, inst in instances.items():
        where = f"task {t!r} on {data_name}"
        inst, rows = _align(inst, capture, where)
        _check_task_size(inst, where)
        test_masks = {}  # (split, seed) -> bool [n_instances]
        for split_name in splits:
            units, what = (inst.sentence_ids, "sentence") if split_name == "random" else (inst.types, "word type")
            for seed in seeds:
                test_masks[split_name, seed] = _split_test_mask(units, test_size, seed, what, where)
        for (split_name, seed), test in test_masks.items():
            seen = np.unique(inst.labels[~test])
            if len(seen) < 2:
                raise ProbekitError(f"too few examples: the training side of {split_name} split seed {seed} "
                                    f"has a single class",
                                    where=where, fix="use more data or a smaller test_size")
            unseen = np.setdiff1d(np.unique(inst.labels[test]), seen).tolist()
            if unseen:
                warnings.warn(f"{where}, {split_name} split seed {seed}: test labels {unseen} never occur in "
                              f"training (all their instances went to the test side); they count as errors",
                              stacklevel=2)
        controls = {seed: control_labels(inst.types, inst.labels, seed=seed) for seed in seeds} if control else {}
        if controls and len(np.unique(inst.types)) < 2:
            # One word type (e.g. the sense of "bank"): the control task gives every instance the same label,
            # so it measures nothing. Report it as missing; the random-init model is the baseline that counts.
            warnings.warn(f"{where}: every instance is the word type {inst.types[0]!r}, so the control task is "
                          "undefined (control_accuracy and selectivity are NaN); compare with the random-init "
                          "model instead", stacklevel=2)
            controls = {}
        for layer in layer_list:
            X = _features(np.asarray(capture.stream(layer)), rows)
            for (split_name, seed), test in test_masks.items():
                rec = _probe_once(X, inst, test, controls.get(seed), template, seed,
                                  n_boot=n_boot, ci=ci, mdl_factory=mdl_factory if mdl else None)
                records.append({"model": model_name, "data": data_name, "task": t, "layer": int(layer),
                                "seed": int(seed), "split": split_name, "probe": probe_name, **rec})
    columns = _COLUMNS + (_MDL_COLUMNS if mdl else [])
    return pd.DataFrame.from_records(records, columns=columns)


def _probe_once(X, inst: _Instances, test: np.ndarray, control_y, template, seed: int, *, n_boot, ci,
                mdl_factory) -> dict:
    """Fit and score one probe (and its control) on one split of one layer."""
    train = ~test
    y_train, y_test = inst.labels[train], inst.labels[test]
    groups = inst.sentence_ids[test]
    fitted = clone(template).fit(X[train], y_train)
    correct = (fitted.predict(X[test]) == y_test).astype(float)
    classes, counts = np.unique(y_train, return_counts=True)
    rec = {
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "n_classes": int(len(np.unique(inst.labels))),
        "accuracy": float(correct.mean()),
        "majority_accuracy": float(np.mean(y_test == classes[counts.argmax()])),
        "regularization": float(getattr(fitted, "alpha_", getattr(fitted, "C_", np.nan))),
    }
    rec["ci_low"], rec["ci_high"] = bootstrap_ci(correct, groups, n_boot=n_boot, ci=ci, seed=seed)
    rec.update(control_accuracy=np.nan, selectivity=np.nan, selectivity_ci_low=np.nan, selectivity_ci_high=np.nan)
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
            correct - control_correct, groups, n_boot=n_boot, ci=ci, seed=seed)
    if mdl_factory is not None:
        code = mdl_online_codelength(X[train], y_train, mdl_factory, seed=seed)
        rec.update(mdl_online_codelength=code["online_codelength"], mdl_uniform_codelength=code["uniform_codelength"],
                   mdl_compression=code["compression"], control_mdl_compression=np.nan)
        if control_y is not None and len(np.unique(control_y[train])) > 1:
            rec["control_mdl_compression"] = mdl_online_codelength(
                X[train], control_y[train], mdl_factory, seed=seed)["compression"]
    return rec


def _same_capacity(template, fitted):
    """An unfitted probe with the regularisation ``fitted`` chose (Hewitt & Liang compare a task and a
    control probe of equal complexity); other estimators are simply cloned."""
    if isinstance(fitted, RidgeProbe):
        return clone(template).set_params(alpha=fitted.alpha_, alphas=None)
    if isinstance(fitted, LinearProbe):
        return clone(template).set_params(C=fitted.C_, Cs=None)
    return clone(template)


def _align(inst: _Instances, capture, where: str) -> tuple[_Instances, np.ndarray]:
    """Rows of the capture for each instance's word(s); instances whose words were not captured are
    dropped with a warning; a word mismatch means capture and dataset do not belong together."""
    index = capture.index
    key = pd.MultiIndex.from_arrays([index.get_level_values(0).astype(str),
                                     np.asarray(index.get_level_values(1), dtype=int)])
    if not key.is_unique:
        raise ProbekitError("the capture index has duplicate (sentence_id, word_id) rows", where=where,
                            fix="capture each sentence once (sentence ids must be unique)")
    rows = np.stack([key.get_indexer(pd.MultiIndex.from_arrays([inst.sentence_ids.astype(str), inst.word_ids[:, j]]))
                     for j in range(inst.word_ids.shape[1])], axis=1)
    found = (rows >= 0).all(axis=1)
    if not found.any():
        raise ProbekitError("the capture contains none of the dataset's sentences", where=where,
                            fix="pass the capture made from this dataset (capture=...), or capture=None")
    if not found.all():
        warnings.warn(f"{where}: {int((~found).sum())} of {len(found)} instances are not in the capture "
                      f"(e.g. sentences too long for the model) and are skipped", stacklevel=3)
    inst, rows = inst.subset(found), rows[found]
    if index.nlevels >= 3:
        captured = np.asarray(index.get_level_values(2), dtype=object)[rows]
        mismatch = np.flatnonzero((captured != inst.words).any(axis=1))
        if mismatch.size:
            i = mismatch[0]
            raise ProbekitError(
                f"the capture's words do not match the dataset: sentence {inst.sentence_ids[i]!r} word "
                f"{inst.word_ids[i].tolist()} is {inst.words[i].tolist()} in the data but "
                f"{captured[i].tolist()} in the capture",
                where=where, fix="capture this dataset (or pass capture=None)")
    return inst, rows


def _check_task_size(inst: _Instances, where: str) -> None:
    if len(inst.labels) < _MIN_EXAMPLES:
        raise ProbekitError(f"too few examples: {len(inst.labels)} instances (need at least {_MIN_EXAMPLES})",
                            where=where, fix="use more sentences")
    classes = np.unique(inst.labels).tolist()
    if len(classes) < 2:
        raise ProbekitError(f"the task has a single class ({classes[0]!r}) in this data; nothing to probe",
                            where=where, fix="use data where the label varies")


def _check_run_args(seeds, test_size, split, n_boot, ci) -> tuple[list[int], list[str]]:
    where = "probe_layers"
    if isinstance(seeds, Integral):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, Integral) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ProbekitError(f"seeds must be distinct integers, got {seeds!r}", where=where, fix="e.g. seeds=(0, 1, 2)")
    if not (isinstance(test_size, Real) and 0 < test_size < 1):
        raise ProbekitError(f"test_size must be a fraction in (0, 1), got {test_size!r}", where=where)
    splits = [split] if isinstance(split, str) else list(split) if _is_sequence(split) else [split]
    if not splits or any(x not in ("random", "lexical") for x in splits) or len(set(splits)) != len(splits):
        raise ProbekitError(f"split must be 'random', 'lexical' or a list of them, got {split!r}", where=where,
                            fix="e.g. split='random' or split=['random', 'lexical']")
    if not (isinstance(n_boot, Integral) and n_boot >= 1) or not 0 < ci < 1:
        raise ProbekitError(f"need n_boot >= 1 and 0 < ci < 1, got {n_boot!r} and {ci!r}", where=where)
    return [int(s) for s in seeds], splits


def _resolve_probe(probe) -> tuple[BaseEstimator, str]:
    if isinstance(probe, str):
        if probe == "ridge":
            return RidgeProbe(alphas=DEFAULT_ALPHAS), "ridge"
        if probe == "linear":
            return LinearProbe(Cs=DEFAULT_CS), "linear"
    elif hasattr(probe, "fit") and hasattr(probe, "predict"):
        return probe, type(probe).__name__
    raise ProbekitError(f"probe must be 'ridge', 'linear' or an unfitted estimator, got {probe!r}",
                        where="probe_layers")


def _as_layer_list(layers) -> list[int]:
    if isinstance(layers, Integral):
        return [int(layers)]
    if _is_sequence(layers) and all(isinstance(x, Integral) for x in layers):
        return [int(x) for x in layers]
    raise ProbekitError(f"layers must be 'all', an int or a list of ints, got {layers!r}", where="probe_layers")


def _resolve_layers(layers, capture) -> list[int]:
    available = [int(x) for x in capture.stream_layers]
    if isinstance(layers, str):
        if layers != "all":
            raise ProbekitError(f"layers must be 'all' or integers, got {layers!r}", where="probe_layers")
        return available
    wanted = _as_layer_list(layers)
    missing = [x for x in wanted if x not in available]
    if missing:
        raise ProbekitError(f"layers {missing} are not in the capture (it has {available})", where="probe_layers",
                            fix="capture those layers, or ask only for captured ones")
    return wanted


def _capture_streams(model, sentences: list, layers):
    """Run `probekit.capture.capture` for residual-stream layers ``layers`` (0..n_layers).

    Stream layer 0 is ``blocks.0.hook_resid_pre``; stream layer l > 0 is ``blocks.{l-1}.hook_resid_post``,
    so the blocks to capture are ``{l - 1 : l > 0}`` (plus block 0's ``resid_pre`` when 0 is asked for).
    """
    from probekit.activations.capture import capture as run_capture

    wanted = list(range(model.n_layers + 1)) if isinstance(layers, str) else _as_layer_list(layers)
    bad = [x for x in wanted if not 0 <= x <= model.n_layers]
    if bad:
        raise ProbekitError(f"layers {bad} are outside the residual stream 0..{model.n_layers} of {model.name}",
                            where="probe_layers", fix="0 is the embeddings, l the output of block l-1")
    blocks = sorted({max(x - 1, 0) for x in wanted})
    resid = ("resid_pre", "resid_post") if 0 in wanted else ("resid_post",)
    return run_capture(model, sentences, layers=blocks, resid=resid, attention=False)


def _load_if_name(model):
    if isinstance(model, str):
        from probekit.models import load_model

        return load_model(model)
    return model


def probe_with_baselines(
    model,
    dataset: Iterable,
    task: str | Sequence[str],
    layers: str | int | Sequence[int] = "all",
    *,
    random_model=None,
    capture=None,
    random_capture=None,
    **kwargs,
) -> pd.DataFrame:
    """`probe_layers` on a trained model and on its random-init twin, in one frame with ``model_kind``.

    The random-init model (Belinkov 2022, §4) has the same architecture with untrained weights: what a
    probe reads off it is what the architecture and the probe produce without learning. ``random_model``
    defaults to ``"random:<model name>"`` (loaded with `probekit.models.load_model`). Layer 0 of the
    trained model (the embeddings) is the other baseline and is already a row of every sweep with
    ``layers="all"``. ``kwargs`` go to `probe_layers`; ``capture``/``random_capture`` may give captures
    that already exist. Rows have ``model_kind`` "trained" or "random-init"; ``random_model=False`` leaves
    the random-init rows out (e.g. when ``model`` is itself a random-init model).
    """
    if random_model is False:
        frame = probe_layers(model, dataset, task, layers, capture=capture, **kwargs)
        frame.insert(0, "model_kind", "trained")
        return frame
    if random_model is None:
        name = model if isinstance(model, str) else getattr(model, "name", None)
        if name is None:
            raise ProbekitError("cannot name the random-init model", where="probe_with_baselines",
                                fix="pass random_model=load_model('random:<name>')")
        random_model = f"random:{name}"
    frames = []
    for kind, m, cap in (("trained", model, capture), ("random-init", random_model, random_capture)):
        frame = probe_layers(m, dataset, task, layers, capture=cap, **kwargs)
        frame.insert(0, "model_kind", kind)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def probe_summary(frame: pd.DataFrame, within: float = 0.01) -> pd.DataFrame:
    """The layer curves of a `probe_layers`/`probe_with_baselines` frame in one row per
    (model, data, task, split), every number a mean over seeds.

    Columns: ``n_seeds``; ``best_layer`` and its ``accuracy`` (``accuracy_min``/``accuracy_max``: the
    range over seeds; ``ci_low``/``ci_high``: the mean of the seeds' cluster-bootstrap bounds);
    ``control_accuracy``, ``selectivity`` and ``majority_accuracy`` at that layer; ``layer0_accuracy``
    (the embeddings: no context) and ``gain_over_layer0``; ``first_layer_within`` — the shallowest layer
    whose accuracy is within ``within`` of the best (where in depth the property becomes linearly
    decodable); and, when the frame holds random-init rows (``model_kind``), the random-init model's
    ``random_init_best_layer``, ``random_init_accuracy`` and ``random_init_selectivity`` at its own best
    layer, and ``gain_over_random_init``. The best layer is chosen on the test accuracies it reports, so
    ``accuracy`` is slightly optimistic (ties go to the shallowest layer); the full curves are in the
    frame. Rows are kept apart by ``model, data, task, split, probe``, whatever the row order.
    """
    if "model_kind" not in frame:
        frame = frame.assign(model_kind="trained")
    frame = frame.sort_values("layer", kind="stable")  # each curve runs from the shallowest layer
    keys = [k for k in ("model", "data", "task", "split", "probe") if k in frame]
    metrics = ["accuracy", "ci_low", "ci_high", "control_accuracy", "selectivity", "majority_accuracy"]

    def curves(kind):  # mean over seeds: one row per (model, data, task, split, probe, layer)
        sub = frame[frame.model_kind == kind]
        mean = sub.groupby([*keys, "layer"], sort=False)[metrics].mean()
        spread = sub.groupby([*keys, "layer"], sort=False)["accuracy"].agg(["min", "max", "size"])
        return mean.join(spread.rename(columns={"min": "accuracy_min", "max": "accuracy_max", "size": "n_seeds"}))

    def best_rows(curve):
        return curve.loc[curve.groupby(level=keys, sort=False)["accuracy"].idxmax()].reset_index(level="layer")

    trained = curves("trained")
    if trained.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds", "best_layer", *metrics])
    rows = []
    for key, curve in trained.groupby(level=keys, sort=False):
        curve = curve.droplevel(keys)  # indexed by layer, shallowest first
        best_layer = curve.accuracy.idxmax()  # the first maximum: ties go to the shallowest layer
        b = curve.loc[best_layer]
        row = dict(zip(keys, key), n_seeds=int(b.n_seeds), best_layer=int(best_layer),
                   **{m: b[m] for m in [*metrics, "accuracy_min", "accuracy_max"]})
        row["layer0_accuracy"] = curve.accuracy.get(0, np.nan)
        row["gain_over_layer0"] = row["accuracy"] - row["layer0_accuracy"]
        row["first_layer_within"] = int(curve.index[curve.accuracy >= b.accuracy - within][0])
        rows.append(row)
    out = pd.DataFrame(rows)
    random_curve = curves("random-init")
    if not random_curve.empty:
        rb = best_rows(random_curve).reset_index()
        rb["model"] = rb.model.str.removeprefix("random:")
        rb = rb[[*keys, "layer", "accuracy", "selectivity"]].rename(columns={
            "layer": "random_init_best_layer", "accuracy": "random_init_accuracy",
            "selectivity": "random_init_selectivity"})
        out = out.merge(rb, on=keys, how="left")
        out["gain_over_random_init"] = out.accuracy - out.random_init_accuracy
    return out


# ==================================================================================================
# Saving probes (skops, not pickle)
# ==================================================================================================

#: Types `load_probe` trusts beyond skops' defaults (which cover numpy and scikit-learn).
TRUSTED_TYPES: tuple[str, ...] = ("probekit.analyses.probes.layers.RidgeProbe", "probekit.analyses.probes.layers.LinearProbe")


def save_probe(probe: BaseEstimator, path: str | Path) -> Path:
    """Save a (fitted) probe with `skops.io` — a format that, unlike pickle, loads without running code."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(probe, path)
    return path


def load_probe(path: str | Path, trusted: Sequence[str] = ()) -> BaseEstimator:
    """Load a probe saved with `save_probe`.

    skops refuses to construct types it does not trust. Its defaults trust numpy and scikit-learn;
    this function adds `TRUSTED_TYPES` (probekit's probes). A file that needs anything else raises a
    `ProbekitError` listing those types; pass them in ``trusted`` only if you trust where the file came
    from (``skops.io.get_untrusted_types(file=path)`` shows them).
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise ProbekitError(f"no probe file at {path}", where="load_probe", fix="check the path")
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES) - set(trusted))
    if unexpected:
        raise ProbekitError(f"{path} contains types that are not trusted: {unexpected}", where="load_probe",
                            fix="if you trust the file's origin, pass trusted=[...those names...]")
    return sio.load(path, trusted=list(untrusted))
