"""`mdl_online_codelength`: the online (prequential) code of a probe's labels (Voita & Titov 2020,
"Information-Theoretic Probing with Minimum Description Length"); the method is in
``docs/methods/probes.md``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from probekit.analyses.probes.estimators import LogisticProbe
from probekit.errors import ProbekitError

__all__ = ["MDL_FRACTIONS", "mdl_online_codelength"]

#: Voita & Titov (2020) block boundaries: 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50, 100 % of the data.
MDL_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)


def mdl_online_codelength(
    X,
    y,
    probe_factory: Callable[[], Any] | None = None,
    fractions: Sequence[float] = MDL_FRACTIONS,
    seed: int = 0,
    min_prob: float = 1e-6,
) -> dict[str, float]:
    """Online (prequential) codelength of labels ``y`` given features ``X``, in bits (Voita & Titov 2020).

    The data are shuffled (``seed``) and sent in blocks: the first with a uniform code, every next one
    with a probe trained on all earlier blocks. **compression = uniform / online**: high when the labels
    are easy to learn from ``X``, about 1 (or below) for labels unrelated to ``X``. Probabilities are
    clipped to ``[min_prob, 1]``; a block whose training prefix holds one class is coded uniformly.
    Details in ``docs/methods/probes.md``.

    Parameters
    ----------
    X : array (n_samples, n_features)
    y : array (n_samples,) of labels
    probe_factory : zero-argument callable returning an unfitted classifier with ``predict_proba``
        (default: ``LogisticProbe()``, logistic regression with C=1 — a fixed probe, as in the paper).
    fractions : increasing block boundaries in (0, 1], ending at 1.0 (default: the paper's).
    seed : seed of the shuffle.
    min_prob : the smallest probability a label is coded with.

    Returns
    -------
    dict with ``online_codelength``, ``uniform_codelength`` (bits) and ``compression``.

    Examples
    --------
    >>> import numpy as np
    >>> from probekit.analyses.probes import mdl_online_codelength
    >>> X = np.random.default_rng(0).normal(size=(300, 4))
    >>> code = mdl_online_codelength(X, X[:, 0] > 0)
    >>> code["uniform_codelength"], code["compression"] > 2
    (300.0, True)
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ProbekitError(
            f"X must be (n, d) and y (n,), got {X.shape} and {y.shape}", where="mdl_online_codelength"
        )
    fracs = np.asarray(fractions, dtype=float)
    if fracs.size == 0 or np.any(np.diff(fracs) <= 0) or fracs[0] <= 0 or fracs[-1] != 1.0:
        raise ProbekitError(
            f"fractions must increase strictly within (0, 1] and end at 1.0, got {fracs.tolist()}",
            where="mdl_online_codelength",
            fix="use the default MDL_FRACTIONS",
        )
    classes, y_idx = np.unique(y, return_inverse=True)
    n, n_classes = y.size, len(classes)
    if n_classes < 2:
        raise ProbekitError(
            "y has a single class; there is nothing to transmit", where="mdl_online_codelength"
        )
    factory = probe_factory if probe_factory is not None else LogisticProbe

    order = np.random.default_rng(seed).permutation(n)
    X, y, y_idx = X[order], y[order], y_idx[order]
    ends = sorted({max(1, int(f * n)) for f in fracs} | {n})
    uniform_bits = np.log2(n_classes)

    online = ends[0] * uniform_bits
    for start, stop in itertools.pairwise(ends):
        if len(np.unique(y_idx[:start])) < 2:
            online += (stop - start) * uniform_bits
            continue
        probe = factory().fit(X[:start], y[:start])
        if not hasattr(probe, "predict_proba"):
            raise ProbekitError(
                f"{type(probe).__name__} has no predict_proba; MDL needs probabilities",
                where="mdl_online_codelength",
                fix="use LogisticProbe (the default)",
            )
        proba = np.full((stop - start, n_classes), 0.0)
        proba[:, np.searchsorted(classes, probe.classes_)] = probe.predict_proba(X[start:stop])
        p_true = np.clip(proba[np.arange(stop - start), y_idx[start:stop]], min_prob, 1.0)
        online += float(-np.log2(p_true).sum())
    uniform = n * uniform_bits
    return {
        "online_codelength": float(online),
        "uniform_codelength": float(uniform),
        "compression": float(uniform / online),
    }
