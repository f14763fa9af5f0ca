"""`probe_summary` (the layer curves of a probe frame, one row per curve) and `ProbeResult`, the probes
analysis' result object whose ``.write`` writes its files through `probekit.report`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.report import plot_probe_curves, write_tables
from probekit.stats import mean_of_means_bootstrap_ci

__all__ = ["ProbeResult", "probe_summary"]


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames do not compare to a single bool
class ProbeResult:
    """The result of the probes analysis (`analyze_probes`).

    Attributes
    ----------
    frame : every (model kind, task, split, layer, seed) row of `probe_with_baselines`.
    summary : its `probe_summary`, one row per (model, data, task, split, probe).
    title : the title of the layer-curve plot.
    units : the per-unit test-half counts the summary's interval comes from (`probe_layers` with
        ``return_units=True``; not written, as it is large), or None.

    Examples
    --------
    >>> import tempfile
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.probes import ProbeResult, probe_layers
    >>> data = load_dataset("template:svo_adj?n=24")
    >>> frame, units = probe_layers("tiny-bert", data, "upos", [2], seeds=(0,), n_boot=100, return_units=True)
    >>> result = ProbeResult.from_frame(frame, title="tiny-bert on svo", units=units, n_boot=100)
    >>> [p.name for p in result.write(tempfile.mkdtemp())][::3]
    ['probes.csv', 'probes_summary.csv', 'probe_curves.png']
    """

    frame: pd.DataFrame
    summary: pd.DataFrame
    title: str = ""
    units: pd.DataFrame | None = None

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        title: str = "",
        within: float = 0.01,
        units: pd.DataFrame | None = None,
        n_boot: int = 1000,
        ci: float = 0.95,
    ) -> ProbeResult:
        """A result from a `probe_with_baselines` frame (its summary is `probe_summary`, with the per-unit
        table ``units`` for its interval). A `probe_layers` frame, which has no ``model_kind`` column,
        gets ``model_kind="trained"`` first, as ``probe_with_baselines(random_model=False)`` would give."""
        if "model_kind" not in frame:
            frame = frame.copy()
            frame.insert(0, "model_kind", "trained")
        if units is not None and "model_kind" not in units:
            units = units.copy()
            units.insert(0, "model_kind", "trained")
        summary = probe_summary(frame, within=within, units=units, n_boot=n_boot, ci=ci)
        return cls(frame, summary, title, units)

    def write(self, folder: str | Path) -> list[Path]:
        """Write the tables ``probes`` and ``probes_summary`` (CSV, Markdown, LaTeX; `write_tables`) and
        ``probe_curves.png`` (`plot_probe_curves`) into ``folder``, atomically; return their paths."""
        folder = Path(folder)
        tables = {"probes": self.frame, "probes_summary": self.summary}
        write_tables(tables, folder)
        plot = plot_probe_curves(self.frame, folder / "probe_curves.png", title=self.title)
        return [folder / f"{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")] + [Path(plot)]


def probe_summary(
    frame: pd.DataFrame,
    within: float = 0.01,
    units: pd.DataFrame | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
) -> pd.DataFrame:
    """The layer curves of a `probe_layers`/`probe_with_baselines` frame in one row per
    (model, data, task, split, probe): the best layer chosen on the dev halves, reported on the test
    halves.

    Every layer choice uses ``dev_accuracy`` (the mean over seeds of each seed's dev half; ties go to the
    shallowest layer); every reported number is on the test halves, which took no part in any choice, so
    ``accuracy`` is not optimistic. The interval is a cluster bootstrap of the seed-mean test accuracy at
    the best layer (`probekit.stats.mean_of_means_bootstrap_ci`): each replicate resamples the test-half
    units of every seed on its own (sentences for the random split, word types for the lexical one, the
    unit each split holds out) and averages the seeds' resampled accuracies; seed k draws with seed k
    of the bootstrap (0, 1, ... in seed order). It covers the sampling of test items with the seeds'
    splits and probes fixed; the spread over seeds is ``accuracy_min``/``accuracy_max``. See
    ``docs/methods/probes.md``.

    Parameters
    ----------
    frame : the per-layer rows; rows are kept apart by ``model, data, task, split, probe``, whatever
        the row order. Rows with ``model_kind`` "random-init" give the random-init columns. A frame
        without ``dev_accuracy`` (an older table) chooses on ``accuracy``.
    within : ``first_layer_within`` is the shallowest layer whose dev accuracy is within this of the
        best layer's.
    units : the per-unit table of the same run (`probe_layers` with ``return_units=True``); without it
        ``ci_low``/``ci_high`` are NaN.
    n_boot, ci : bootstrap replicates and level.

    Returns
    -------
    DataFrame with ``n_seeds``; ``best_layer`` with its ``dev_accuracy`` and its test ``accuracy``
    (``ci_low``/``ci_high``: the interval above; ``accuracy_min``/``accuracy_max``: the range over
    seeds); ``control_accuracy``, ``selectivity`` and ``majority_accuracy`` there (test halves);
    ``layer0_accuracy`` and ``gain_over_layer0``; ``first_layer_within``; and, with random-init rows,
    ``random_init_best_layer`` (chosen on its dev halves), ``random_init_accuracy``,
    ``random_init_selectivity`` and ``gain_over_random_init``.

    Examples
    --------
    >>> import pandas as pd
    >>> from probekit.analyses.probes import probe_summary
    >>> frame = pd.DataFrame({"model": "m", "data": "d", "task": "upos", "split": "random", "probe": "ridge",
    ...                       "seed": 0, "layer": [0, 1, 2], "dev_accuracy": [0.5, 0.9, 0.895],
    ...                       "accuracy": [0.5, 0.8, 0.9], "control_accuracy": 0.3, "selectivity": 0.0,
    ...                       "majority_accuracy": 0.2})
    >>> probe_summary(frame)[["best_layer", "accuracy", "first_layer_within"]].values.tolist()
    [[1.0, 0.8, 1.0]]
    """
    if "model_kind" not in frame:
        frame = frame.assign(model_kind="trained")
    if "dev_accuracy" not in frame:
        frame = frame.assign(dev_accuracy=frame["accuracy"])
    frame = frame.sort_values("layer", kind="stable")  # each curve runs from the shallowest layer
    keys = [k for k in ("model", "data", "task", "split", "probe") if k in frame]
    metrics = ["dev_accuracy", "accuracy", "control_accuracy", "selectivity", "majority_accuracy"]

    def curves(kind):  # mean over seeds: one row per (model, data, task, split, probe, layer)
        sub = frame[frame.model_kind == kind]
        mean = sub.groupby([*keys, "layer"], sort=False)[metrics].mean()
        spread = sub.groupby([*keys, "layer"], sort=False)["accuracy"].agg(["min", "max", "size"])
        return mean.join(
            spread.rename(columns={"min": "accuracy_min", "max": "accuracy_max", "size": "n_seeds"})
        )

    def best_rows(curve):
        return curve.loc[curve.groupby(level=keys, sort=False)["dev_accuracy"].idxmax()].reset_index(
            level="layer"
        )

    columns = [*keys, "n_seeds", "best_layer", "dev_accuracy", "accuracy", "ci_low", "ci_high"]
    trained = curves("trained")
    if trained.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, curve in trained.groupby(level=keys, sort=False):
        curve = curve.droplevel(keys)  # indexed by layer, shallowest first
        best_layer = curve.dev_accuracy.idxmax()  # the first maximum: ties go to the shallowest layer
        b = curve.loc[best_layer]
        row = dict(zip(keys, key, strict=True), n_seeds=int(b.n_seeds), best_layer=int(best_layer))
        row["dev_accuracy"], row["accuracy"] = b.dev_accuracy, b.accuracy
        row["ci_low"], row["ci_high"] = _test_interval(units, dict(row), keys, n_boot, ci)
        row.update({m: b[m] for m in ["accuracy_min", "accuracy_max", *metrics[2:]]})
        row["layer0_accuracy"] = curve.accuracy.get(0, np.nan)
        row["gain_over_layer0"] = row["accuracy"] - row["layer0_accuracy"]
        row["first_layer_within"] = int(curve.index[curve.dev_accuracy >= b.dev_accuracy - within][0])
        rows.append(row)
    out = pd.DataFrame(rows)
    random_curve = curves("random-init")
    if not random_curve.empty:
        rb = best_rows(random_curve).reset_index()
        rb["model"] = rb.model.str.removeprefix("random:")
        rb = rb[[*keys, "layer", "accuracy", "selectivity"]].rename(
            columns={
                "layer": "random_init_best_layer",
                "accuracy": "random_init_accuracy",
                "selectivity": "random_init_selectivity",
            }
        )
        out = out.merge(rb, on=keys, how="left")
        out["gain_over_random_init"] = out.accuracy - out.random_init_accuracy
    return out


def _test_interval(units, row: dict, keys: list[str], n_boot: int, ci: float) -> tuple[float, float]:
    """The `mean_of_means_bootstrap_ci` of the trained model's test accuracy at ``row["best_layer"]``
    from the per-unit table (NaN without one): each seed's test half is expanded from its per-unit
    counts ``n``/``correct`` (the mean bootstrap only needs those) and resampled by unit."""
    if units is None or units.empty:
        return np.nan, np.nan
    sub = units[units.model_kind == "trained"] if "model_kind" in units else units
    for k in keys:
        sub = sub[sub[k] == row[k]]
    sub = sub[sub.layer == row["best_layer"]]
    values, groups = [], []
    for _, g in sub.groupby("seed", sort=True):
        n, c = g.n.to_numpy(int), g.correct.to_numpy(int)
        values.append(
            np.concatenate([np.r_[np.ones(ci_), np.zeros(ni - ci_)] for ni, ci_ in zip(n, c, strict=True)])
        )
        groups.append(np.repeat(g.unit.to_numpy(), n))
    if not values:
        return np.nan, np.nan
    return mean_of_means_bootstrap_ci(values, groups, n_boot=n_boot, ci=ci, seed=0)
