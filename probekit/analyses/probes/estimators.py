"""The probe estimators, `RidgeProbe` and `LogisticProbe`, and their skops I/O (`save_probe`, `load_probe`).

Both are scikit-learn estimators (``__init__`` only stores parameters, ``fit`` returns self, fitted
attributes end in ``_``; `clone`, ``Pipeline`` and ``cross_val_score`` work) that choose their own
penalty on the training data. The method (exact leave-one-out for ridge, Golub, Heath & Wahba 1979;
Rifkin & Lippert 2007) is described in ``docs/methods/probes.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probekit.errors import ProbekitError

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "TRUSTED_TYPES",
    "LinearProbe",
    "LogisticProbe",
    "RidgeProbe",
    "load_probe",
    "save_probe",
]

#: Ridge penalties searched by `probe_layers` (features are standardised, so alpha is relative to n).
DEFAULT_ALPHAS: tuple[float, ...] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5)
#: Inverse L2 strengths searched by `probe_layers` when ``probe="logistic"``.
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


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

    The model of `sklearn.linear_model.RidgeClassifier` on standardised features. With ``alphas`` the
    penalty is chosen by exact leave-one-out *accuracy* on the training data, for all alphas from one
    decomposition (Golub, Heath & Wahba 1979; Rifkin & Lippert 2007). The selection runs in float64 in a
    cancellation-free form and compares integer counts of correct LOO predictions (a prediction within
    1e-9 of the decision boundary counts as an error); among tied alphas the **largest** wins (the
    strongest regularisation), so the same data give the same ``alpha_`` at any thread count. The
    derivation is in ``docs/methods/probes.md``. Ridge scores are not
    probabilities (no ``predict_proba``): use `LogisticProbe` where they are needed (e.g. MDL).

    Parameters
    ----------
    alpha : float > 0
        Penalty used when ``alphas`` is None.
    alphas : sequence of floats > 0 or None
        If given, alpha is chosen from it by leave-one-out CV.
    fit_intercept : bool
        Fit an unpenalised intercept (features and targets are centred).
    standardize : bool
        Divide features by their standard deviation before fitting (constant features are left as they
        are). ``coef_`` and ``intercept_`` are always in the original feature space.

    Attributes
    ----------
    classes_ : labels, sorted.
    coef_ : (1 or K, n_features).
    intercept_ : (1 or K,).
    alpha_ : the penalty used.
    cv_scores_ : LOO accuracy per entry of ``alphas``, an exact fraction correct/n (None without ``alphas``).
    n_features_in_ : number of features.

    Examples
    --------
    >>> import numpy as np
    >>> from probekit.analyses.probes import RidgeProbe
    >>> X = np.random.default_rng(0).normal(size=(200, 5))
    >>> y = np.where(X[:, 0] > 0, "a", "b")
    >>> probe = RidgeProbe(alphas=(0.1, 1.0, 10.0)).fit(X, y)
    >>> probe.alpha_ in (0.1, 1.0, 10.0), probe.score(X, y) > 0.9
    (True, True)
    """

    def __init__(self, alpha=1.0, alphas=None, fit_intercept=True, standardize=True):
        self.alpha = alpha
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.standardize = standardize

    def fit(self, X, y):
        """Fit on ``X`` (n_samples, n_features) and labels ``y``; returns self.

        With ``alphas`` the decomposition and the LOO selection run in float64; a single fixed ``alpha``
        with n >= d is a Cholesky solve in the input's precision for the Gram matrix. Pass float64 for
        agreement with `RidgeClassifier` to rounding.
        """
        grid = self._alpha_grid()
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        if grid is not None or X.shape[0] < X.shape[1]:
            X = X.astype(np.float64)  # centred in float64, so the constant is exactly outside X's span
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
        elif grid is None:
            alpha, self.cv_scores_ = float(self.alpha), None
            s, V, _ = _spectrum(Xs)
            W = V @ ((V.T @ XtY) / (s + alpha)[:, None])  # [d, K] in standardised space
        else:
            # LOO selection runs in float64 whatever the input precision (docs/methods/probes.md)
            s, V, U = _spectrum(Xs)
            correct = _loo_correct(U, s, Y, Yc, y_idx, grid, self.fit_intercept)  # [A] int
            self.cv_scores_ = correct / n
            alpha = _choose_penalty(grid, correct, prefer="largest")
            W = V @ ((V.T @ XtY) / (s + alpha)[:, None])  # [d, K] in standardised space

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


#: Singular values below this fraction of the largest are treated as zero (their directions join the
#: orthogonal complement of the column space; with alpha > 0 they barely change the fit).
_RANK_RTOL = 1e-10
#: Mean CV accuracies within this of the best tie (`LogisticProbe`).
_SCORE_TOL = 1e-9
#: LOO predictions whose margin (top score minus runner-up, or |score| for two classes, on the ±1
#: target scale) is at most this are ties and count as errors, so a prediction on the decision boundary
#: does not flip with floating-point rounding.
_MARGIN_TOL = 1e-9


def _spectrum(Xs: np.ndarray):
    """``s`` (eigenvalues of XᵀX, the squared singular values above `_RANK_RTOL`), ``V  # [d, r]`` and
    ``U  # [n, r]`` (X = U diag(sqrt(s)) Vᵀ), all float64 from a float64 ``Xs  # [n, d]``.

    For n >= d the Gram matrix XᵀX is decomposed with ``eigh`` (cheaper when n >> d) and ``U = X V /
    sqrt(s)``; for n < d a thin SVD of X gives them directly.
    """
    n, d = Xs.shape
    if n >= d:
        s, V = scipy.linalg.eigh(Xs.T @ Xs, check_finite=False)  # ascending
        s, V = s[::-1], V[:, ::-1]
        keep = s > (_RANK_RTOL**2) * max(float(s[0]), 0.0)
        s, V = s[keep], V[:, keep]
        U = (Xs @ V) / np.sqrt(s)
    else:
        U, sv, Vt = scipy.linalg.svd(Xs, full_matrices=False, check_finite=False, lapack_driver="gesvd")
        keep = sv > _RANK_RTOL * float(sv[0])
        U, s, V = U[:, keep], sv[keep] ** 2, Vt[keep].T
    if not keep.any():  # X is constant: no direction at all
        return np.zeros(0), np.zeros((d, 0)), np.zeros((n, 0))
    return s, V, U


def _loo_correct(U, s, Y, Yc, y_idx, grid, fit_intercept) -> np.ndarray:
    """Number of training instances the exact leave-one-out ridge fit classifies correctly, per alpha.

    With X = U diag(sqrt(s)) Vᵀ (centred when ``fit_intercept``) the hat diagonal is
    ``h_i = [1/n] + Σ_j U_ij² s_j/(s_j+α)``. Both ``1 - h_i`` and the residual are computed without
    subtracting nearly equal numbers: ``1 - h_i = q_i + Σ_j U_ij² α/(s_j+α)`` and ``r = R⊥ + U diag(α/(s+α))
    Uᵀ Yc``, where ``q_i = 1 - [1/n] - Σ_j U_ij²`` and ``R⊥ = Yc - U Uᵀ Yc`` are the leverage and the residual
    of the orthogonal complement of the column space (and the constant), exactly zero when that complement
    is empty (n <= rank + 1 with an intercept). LOO prediction: ``Y - r / (1 - h)``. A prediction whose
    margin is at most `_MARGIN_TOL` counts as an error. Everything is float64.
    """
    n, r = U.shape
    K = Y.shape[1]
    complement = n - r - (1 if fit_intercept else 0)  # dimension of the complement
    UtY = U.T @ Yc  # [r, K]
    if complement > 0:
        q = np.clip(1.0 - (1.0 / n if fit_intercept else 0.0) - np.square(U).sum(axis=1), 0.0, None)  # [n]
        R_perp = Yc - U @ UtY  # [n, K]
    else:
        q, R_perp = np.zeros(n), np.zeros_like(Yc)
    correct = np.empty(len(grid), dtype=np.int64)
    U2 = np.square(U)  # [n, r]
    for a, alpha in enumerate(grid):
        shrink = alpha / (s + alpha)  # [r]
        one_minus_h = q + U2 @ shrink  # [n]
        resid = R_perp + U @ (UtY * shrink[:, None])  # [n, K]
        loo = Y - resid / np.clip(one_minus_h, 1e-300, None)[:, None]  # [n, K]
        if K == 1:
            pred = (loo[:, 0] > 0).astype(int)
            decided = np.abs(loo[:, 0]) > _MARGIN_TOL
        else:
            top2 = -np.sort(-loo, axis=1)[:, :2]
            pred = loo.argmax(axis=1)
            decided = top2[:, 0] - top2[:, 1] > _MARGIN_TOL
        correct[a] = int(np.count_nonzero((pred == y_idx) & decided))
    return correct


def _choose_penalty(grid: np.ndarray, correct: np.ndarray, prefer: str) -> float:
    """The penalty with the most correct predictions (integer counts, so no rounding can break a tie);
    among tied ones the strongest regularisation: the largest ``alpha`` (``prefer="largest"``) or the
    smallest ``C`` (``prefer="smallest"``)."""
    tied = grid[correct == correct.max()]
    return float(tied.max() if prefer == "largest" else tied.min())


# ==================================================================================================
# LogisticProbe
# ==================================================================================================


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic-regression probe (L2 penalty), wrapping `sklearn.linear_model.LogisticRegression`.

    Features are standardised so the penalty ``1/C`` means the same at every layer. With ``Cs`` given, C
    is chosen by stratified k-fold CV *within the training data passed to fit* (mean accuracies within
    1e-9 tie; ties go to the smallest C, the strongest penalty), then the model is refitted on all of it
    (``docs/methods/probes.md``). Unlike `RidgeProbe` it
    gives probabilities (``predict_proba``), which MDL needs. ``LinearProbe`` is the same class under its
    old name.

    Parameters
    ----------
    C : float > 0
        Inverse L2 strength used when ``Cs`` is None.
    Cs : sequence of floats > 0 or None
        If given, C is chosen from it by inner CV.
    cv : int >= 2
        Number of inner folds (used only with ``Cs``).
    standardize : bool
        Standardise features before fitting. ``coef_``/``intercept_`` are in the original space.
    max_iter, tol : passed to the lbfgs solver.
    random_state : int
        Seed of the inner CV shuffle.

    Attributes
    ----------
    classes_, coef_, intercept_, n_features_in_, n_iter_ : as in scikit-learn.
    C_ : the C used.
    cv_scores_ : mean inner-CV accuracy per entry of ``Cs`` (None without ``Cs``).
    model_ : the fitted pipeline (scaler + logistic regression).

    Examples
    --------
    >>> import numpy as np
    >>> from probekit.analyses.probes import LogisticProbe
    >>> X = np.random.default_rng(0).normal(size=(200, 5))
    >>> y = np.where(X[:, 0] > 0, "a", "b")
    >>> probe = LogisticProbe(Cs=(0.1, 1.0), cv=3).fit(X, y)
    >>> probe.predict_proba(X[:2]).shape, probe.score(X, y) > 0.9
    ((2, 2), True)
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
        grid = self._c_grid()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        _check_n_classes(self.classes_, "LogisticProbe.fit")
        if grid is None:
            self.C_, self.cv_scores_ = float(self.C), None
        else:
            self.cv_scores_ = self._inner_cv(X, y, grid)
            # mean fold accuracies: ties within 1e-9 (rounding) go to the smallest C (strongest penalty)
            tied = grid[self.cv_scores_ >= np.nanmax(self.cv_scores_) - _SCORE_TOL]
            self.C_ = float(tied.min())
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
        if not (isinstance(self.cv, Integral) and self.cv >= 2):  # type: ignore[operator]  # numbers.Integral compares at runtime
            raise _ProbeInputError(f"cv must be an integer >= 2, got {self.cv!r}", where="LogisticProbe")
        counts = np.unique(y, return_counts=True)[1]
        if counts.max() < self.cv:
            raise _ProbeInputError(
                f"too few examples for {self.cv}-fold inner CV: the largest class has {counts.max()}",
                where="LogisticProbe.fit",
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

    def _c_grid(self) -> np.ndarray | None:
        return _penalty_grid(self.C, self.Cs, "C", "Cs", "LogisticProbe", "(0.01, 0.1, 1, 10)")


#: The old name of `LogisticProbe` (kept so existing code and ``pk.LinearProbe`` keep working).
LinearProbe = LogisticProbe


def _penalty_grid(value, values, name: str, names: str, where: str, example: str) -> np.ndarray | None:
    """The penalties to choose from (``values``, e.g. ``alphas``), or None to use the single ``value``
    (checked positive); bad grids raise with the estimator's parameter names."""
    if values is None:
        _check_positive(value, name, where)
        return None
    is_sequence = isinstance(values, Sequence | np.ndarray) and not isinstance(values, str)
    grid = np.asarray(values, dtype=float).ravel() if is_sequence else None
    if grid is None or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise _ProbeInputError(
            f"{names} must be a non-empty sequence of positive numbers, got {values!r}",
            where=where,
            fix=f"e.g. {names}={example}, or {names}=None to use the single `{name}`",
        )
    return grid


def _check_positive(value, name: str, where: str) -> None:
    if not (isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0):  # type: ignore[call-overload, operator]  # numbers.Real
        raise _ProbeInputError(f"{name} must be a positive number, got {value!r}", where=where)


# ==================================================================================================
# Saving probes (skops, not pickle)
# ==================================================================================================

#: Types `load_probe` trusts beyond skops' defaults (which cover numpy and scikit-learn).
TRUSTED_TYPES: tuple[str, ...] = (
    "probekit.analyses.probes.estimators.RidgeProbe",
    "probekit.analyses.probes.estimators.LogisticProbe",
)


def save_probe(probe: BaseEstimator, path: str | Path) -> Path:
    """Save a (fitted) probe with `skops.io` — a format that, unlike pickle, loads without running code.

    Parameters
    ----------
    probe : the estimator to save.
    path : the file to write (its folder is created).

    Returns
    -------
    Path of the file written.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from probekit.analyses.probes import RidgeProbe, load_probe, save_probe
    >>> X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    >>> path = save_probe(RidgeProbe().fit(X, y), tempfile.mkdtemp() + "/probe.skops")
    >>> type(load_probe(path)).__name__
    'RidgeProbe'
    """
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

    Parameters
    ----------
    path : a file written by `save_probe`.
    trusted : further type names to trust.

    Returns
    -------
    The fitted estimator.

    Examples
    --------
    See `save_probe`.
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise ProbekitError(f"no probe file at {path}", where="load_probe", fix="check the path")
    untrusted = sio.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES) - set(trusted))
    if unexpected:
        raise ProbekitError(
            f"{path} contains types that are not trusted: {unexpected}",
            where="load_probe",
            fix="if you trust the file's origin, pass trusted=[...those names...]",
        )
    return sio.load(path, trusted=list(untrusted))
