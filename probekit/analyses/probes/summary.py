"""`probe_summary` (the layer curves of a probe frame, one row per curve) and `ProbeResult`, the probes
analysis' result object whose ``.write`` writes its files through `probekit.report`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.report import plot_probe_curves, write_tables

__all__ = ["ProbeResult", "probe_summary"]


@dataclass(frozen=True, eq=False)  # eq=False: DataFrames do not compare to a single bool
class ProbeResult:
    """The result of the probes analysis (`analyze_probes`).

    Attributes
    ----------
    frame : every (model kind, task, split, layer, seed) row of `probe_with_baselines`.
    summary : its `probe_summary`, one row per (model, data, task, split, probe).
    title : the title of the layer-curve plot.

    Examples
    --------
    >>> import tempfile
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.probes import ProbeResult, probe_layers
    >>> data = load_dataset("template:svo_adj?n=24")
    >>> frame = probe_layers("tiny-bert", data, "upos", [2], seeds=(0,), n_boot=100)
    >>> result = ProbeResult.from_frame(frame, title="tiny-bert on svo")
    >>> [p.name for p in result.write(tempfile.mkdtemp())][::3]
    ['probes.csv', 'probes_summary.csv', 'probe_curves.png']
    """

    frame: pd.DataFrame
    summary: pd.DataFrame
    title: str = ""

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, title: str = "", within: float = 0.01) -> ProbeResult:
        """A result from a `probe_with_baselines` frame (its summary is `probe_summary`). A `probe_layers`
        frame, which has no ``model_kind`` column, gets ``model_kind="trained"`` first, as
        ``probe_with_baselines(random_model=False)`` would give."""
        if "model_kind" not in frame:
            frame = frame.copy()
            frame.insert(0, "model_kind", "trained")
        return cls(frame, probe_summary(frame, within=within), title)

    def write(self, folder: str | Path) -> list[Path]:
        """Write the tables ``probes`` and ``probes_summary`` (CSV, Markdown, LaTeX; `write_tables`) and
        ``probe_curves.png`` (`plot_probe_curves`) into ``folder``, atomically; return their paths."""
        folder = Path(folder)
        tables = {"probes": self.frame, "probes_summary": self.summary}
        write_tables(tables, folder)
        plot = plot_probe_curves(self.frame, folder / "probe_curves.png", title=self.title)
        return [folder / f"{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")] + [Path(plot)]


def probe_summary(frame: pd.DataFrame, within: float = 0.01) -> pd.DataFrame:
    """The layer curves of a `probe_layers`/`probe_with_baselines` frame in one row per
    (model, data, task, split, probe), every number a mean over seeds.

    Parameters
    ----------
    frame : the per-layer rows; rows are kept apart by ``model, data, task, split, probe``, whatever
        the row order. Rows with ``model_kind`` "random-init" give the random-init columns.
    within : ``first_layer_within`` is the shallowest layer whose accuracy is within this of the best.

    Returns
    -------
    DataFrame with ``n_seeds``; ``best_layer`` and its ``accuracy`` (``accuracy_min``/``accuracy_max``:
    the range over seeds; ``ci_low``/``ci_high``: the mean of the seeds' cluster-bootstrap bounds);
    ``control_accuracy``, ``selectivity`` and ``majority_accuracy`` at that layer; ``layer0_accuracy``
    and ``gain_over_layer0``; ``first_layer_within``; and, with random-init rows,
    ``random_init_best_layer``, ``random_init_accuracy``, ``random_init_selectivity`` (at its own best
    layer) and ``gain_over_random_init``. The best layer is chosen on the test accuracies it reports, so
    ``accuracy`` is slightly optimistic (ties go to the shallowest layer); see ``docs/methods/probes.md``.

    Examples
    --------
    >>> import pandas as pd
    >>> from probekit.analyses.probes import probe_summary
    >>> frame = pd.DataFrame({"model": "m", "data": "d", "task": "upos", "split": "random", "probe": "ridge",
    ...                       "seed": 0, "layer": [0, 1, 2], "accuracy": [0.5, 0.9, 0.895], "ci_low": 0.0,
    ...                       "ci_high": 1.0, "control_accuracy": 0.3, "selectivity": 0.0,
    ...                       "majority_accuracy": 0.2})
    >>> probe_summary(frame)[["best_layer", "layer0_accuracy", "first_layer_within"]].values.tolist()
    [[1.0, 0.5, 1.0]]
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
        return mean.join(
            spread.rename(columns={"min": "accuracy_min", "max": "accuracy_max", "size": "n_seeds"})
        )

    def best_rows(curve):
        return curve.loc[curve.groupby(level=keys, sort=False)["accuracy"].idxmax()].reset_index(
            level="layer"
        )

    trained = curves("trained")
    if trained.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds", "best_layer", *metrics])
    rows = []
    for key, curve in trained.groupby(level=keys, sort=False):
        curve = curve.droplevel(keys)  # indexed by layer, shallowest first
        best_layer = curve.accuracy.idxmax()  # the first maximum: ties go to the shallowest layer
        b = curve.loc[best_layer]
        row = dict(
            zip(keys, key, strict=True),
            n_seeds=int(b.n_seeds),
            best_layer=int(best_layer),
            **{m: b[m] for m in [*metrics, "accuracy_min", "accuracy_max"]},
        )
        row["layer0_accuracy"] = curve.accuracy.get(0, np.nan)
        row["gain_over_layer0"] = row["accuracy"] - row["layer0_accuracy"]
        row["first_layer_within"] = int(curve.index[curve.accuracy >= b.accuracy - within][0])
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
