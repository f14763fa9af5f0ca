"""Specialists vs random heads: is ablating k chosen heads worse than ablating k layer-matched random heads?

The statistics are defined in ``docs/methods/interventions.md``, "Specialists vs random heads".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.analyses.interventions.ablate import ablate_head_sets
from probekit.analyses.interventions.engine import DEFAULT_OPTIONS, EngineOptions
from probekit.analyses.interventions.heads import Head, head_label, matched_random_sets, parse_heads
from probekit.errors import ProbekitError


@dataclass(frozen=True)
class SpecialistsResult:
    """`specialists_vs_random`'s tables: ``summary`` (one row per metric), ``draws`` (one row per random
    set and metric: ``draw, heads, metric, delta``) and ``specialists`` (the heads ablated)."""

    summary: pd.DataFrame
    draws: pd.DataFrame
    specialists: pd.DataFrame
    title: str = ""

    def write(self, folder, title: str | None = None) -> list[Path]:
        """The ``specialists``, ``specialists_vs_random`` and ``random_draws`` tables (CSV, Markdown,
        LaTeX; `probekit.report.write_tables`) and ``specialists_vs_random.png``."""
        from probekit.report import write_tables

        folder = Path(folder)
        tables = {
            "specialists": self.specialists,
            "specialists_vs_random": self.summary,
            "random_draws": self.draws,
        }
        write_tables(tables, folder)
        paths = [folder / f"{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")]
        paths.append(
            _plot_draws(self.summary, self.draws, folder / "specialists_vs_random.png", title or self.title)
        )
        return paths


def _plot_draws(summary: pd.DataFrame, draws: pd.DataFrame, path: Path, title: str) -> Path:
    """Histogram of the random-set deltas with the specialists' delta marked, per metric."""
    from probekit.report import pyplot, save_fig

    plt = pyplot()
    metrics = list(dict.fromkeys(summary.metric))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        ax.hist(draws[draws.metric == m].delta, bins=15, color="grey", label="layer-matched random heads")
        ax.axvline(
            float(summary[summary.metric == m].specialists_delta.iloc[0]), color="C3", label="specialists"
        )
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("change when ablated")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_fig(fig, path)


def specialists_vs_random(
    model,
    dataset,
    heads: Sequence[Head],
    *,
    n_draws: int = 100,
    seed: int = 0,
    method="zero",
    metric=None,
    alternative: str = "less",
    sweep: str = "fast",
    reference=None,
    max_items: int | None = None,
    batch_size: int | None = None,
    max_tokens: int = 2048,
    n_boot: int = 1000,
    progress: bool = False,
    options: EngineOptions = DEFAULT_OPTIONS,
) -> SpecialistsResult:
    """Is ablating the given k heads worse than ablating k random heads from the same layers?

    The specialists are ablated together, then ``n_draws`` layer-matched random sets
    (`matched_random_sets`), each ablated together, on the same items.

    Parameters
    ----------
    model, dataset, method, metric, sweep, reference, max_items, batch_size, max_tokens, progress,
    options : as in `ablate`.
    heads : the specialists.
    n_draws : random sets (>= 2); ``seed`` seeds them, the donors and the bootstrap.
    alternative : ``"less"`` (default) asks whether the specialists' ablation lowers the metric more
        than random heads' (`probekit.stats.empirical_p`).
    n_boot : bootstrap resamples of the CI of the difference.

    Returns
    -------
    SpecialistsResult
        ``summary`` has per metric: ``specialists_delta`` (mean change, ablated - clean),
        ``random_mean_delta``, ``random_sd``, ``random_q025``/``random_q975`` (over draws),
        ``effect_size = (specialists_delta - random_mean_delta) / random_sd``, the permutation
        ``p_value = (1 + #{draws at least as extreme}) / (1 + n_draws)`` and ``diff_ci_low``/
        ``diff_ci_high``, a 95% bootstrap CI over items of ``delta_specialists - mean_draws(delta_random)``.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> data = pk.load_dataset("template:agreement?n=4")
    >>> result = specialists_vs_random(model, data, [(0, 1)], n_draws=3, metric="margin", n_boot=10)
    >>> len(result.summary), len(result.draws)
    (1, 3)
    """
    from probekit.stats import bootstrap_ci, empirical_p

    if not isinstance(n_draws, int) or n_draws < 2:
        raise ProbekitError(f"n_draws must be an integer >= 2, not {n_draws!r}", fix="e.g. n_draws=100")
    spec = parse_heads(model, heads)
    draws = matched_random_sets(model, spec, n_draws, seed=seed)
    res = ablate_head_sets(
        model,
        dataset,
        [spec, *draws],
        method=method,
        metric=metric,
        sweep=sweep,
        reference=reference,
        seed=seed,
        max_items=max_items,
        batch_size=batch_size,
        max_tokens=max_tokens,
        n_boot=10,
        progress=progress,
        options=options,
    )
    rows, draw_rows = [], []
    for m in res.clean:
        d_items = res.ablated[m] - res.clean[m][None]  # [1 + n_draws, item]
        d_spec, d_rand = d_items[0], d_items[1:]
        spec_delta = float(d_spec.mean())
        rand = d_rand.mean(axis=1)
        lo, hi = bootstrap_ci(d_spec - d_rand.mean(axis=0), n_boot=n_boot, seed=seed)
        sd = float(rand.std(ddof=1))
        rows.append(
            {
                "model": model.name,
                "heads": head_label(spec),
                "k": len(spec),
                "method": res.method,
                "metric": m,
                "clean": float(res.clean[m].mean()),
                "specialists_delta": spec_delta,
                "random_mean_delta": float(rand.mean()),
                "random_sd": sd,
                "random_q025": float(np.quantile(rand, 0.025)),
                "random_q975": float(np.quantile(rand, 0.975)),
                "effect_size": (spec_delta - float(rand.mean())) / sd if sd > 0 else np.nan,
                "p_value": empirical_p(spec_delta, rand, alternative=alternative),
                "alternative": alternative,
                "diff_ci_low": lo,
                "diff_ci_high": hi,
                "n_items": int(d_spec.size),
                "n_draws": n_draws,
            }
        )
        for k, (dset, val) in enumerate(zip(draws, rand, strict=True)):
            draw_rows.append({"draw": k, "heads": head_label(dset), "metric": m, "delta": float(val)})
    specialists = pd.DataFrame({"layer": [layer for layer, _ in spec], "head": [h for _, h in spec]})
    return SpecialistsResult(
        pd.DataFrame(rows), pd.DataFrame(draw_rows), specialists, title=f"{model.name}: ablate {spec}"
    )
