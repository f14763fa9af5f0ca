"""Head ablation: remove heads (zero, mean or resample) and measure the damage on minimal pairs or sentences.

Methods, metrics and the statistics are defined in ``docs/methods/interventions.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.analyses.interventions.engine import DEFAULT_OPTIONS, EngineOptions, SweepResult, run_sweep
from probekit.analyses.interventions.heads import Head, head_label, parse_heads
from probekit.analyses.interventions.interventions import (
    Intervention,
    MeanAblation,
    ResampleAblation,
    ZeroAblation,
    ZLayout,
    head_sites,
)
from probekit.analyses.interventions.plan import Plan, is_pairs, make_plan
from probekit.errors import ProbekitError

#: ablation methods by the name users and configs write
METHODS: dict[str, type[Intervention]] = {
    "zero": ZeroAblation,
    "mean": MeanAblation,
    "resample": ResampleAblation,
}
FRAME_COLUMNS = (
    "model",
    "layer",
    "head",
    "heads",
    "method",
    "metric",
    "clean",
    "ablated",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "n",
)


@dataclass(frozen=True)
class AblationResult:
    """Ablation effects: ``frame`` has one row per (head or head set, metric) (`FRAME_COLUMNS`);
    ``clean[metric]  # [item]`` and ``ablated[metric]  # [head set, item]`` are the per-item values."""

    frame: pd.DataFrame
    clean: dict[str, np.ndarray]
    ablated: dict[str, np.ndarray]
    specs: list[list[Head]]
    model: str
    n_layers: int
    n_heads: int
    method: str
    sweep: str
    seconds: float
    forwards: int
    preserve_patterns: bool = False
    target_heads: list[Head] = field(default_factory=list)

    def write(self, folder, title: str = "") -> list[Path]:
        """``ablation.csv`` and, when there are single-head rows, ``ablation_heatmap.png``
        (`plot_heatmap`)."""
        from probekit.report import write_table

        folder = Path(folder)
        paths = [write_table(self.frame, folder / "ablation.csv")]
        if (self.frame["layer"] >= 0).any():
            paths.append(self.plot_heatmap(folder / "ablation_heatmap.png", title=title))
        return paths

    def plot_heatmap(self, path, *, metric: str | None = None, title: str = "") -> Path:
        """The layers × heads heatmap of ``delta`` (single-head rows), one panel per metric (or just
        ``metric``), diverging around 0 (`probekit.report.plot_head_heatmap`)."""
        from probekit.report import HeadPanel, plot_head_heatmap

        single = self.frame[self.frame["layer"] >= 0]
        panels = []
        for m in [metric] if metric else list(dict.fromkeys(single["metric"])):
            sub = single[single["metric"] == m]
            grid = np.full((self.n_layers, self.n_heads), np.nan)  # [layer, head]
            grid[sub["layer"].to_numpy(), sub["head"].to_numpy()] = sub["delta"].to_numpy()
            panels.append(HeadPanel(grid, title=f"delta {m}"))
        return plot_head_heatmap(
            panels,
            path,
            symmetric=True,
            cmap="RdBu",
            shared_colorbar=False,
            suptitle=title or f"{self.model}, {self.method} ablation",
        )


def _method(method) -> type[Intervention]:
    """A method name (`METHODS`) or an `Intervention` class with ``fit``."""
    if isinstance(method, type) and issubclass(method, Intervention) and method in METHODS.values():
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]
    raise ProbekitError(f"unknown ablation method {method!r}", fix=f"use one of {', '.join(METHODS)}")


def _check_preserve(model, preserve_patterns: bool) -> None:
    if preserve_patterns and not model.is_causal:
        raise ProbekitError(
            f"pattern-preserving ablation is not available for {model.name}: its attention runs "
            "inside the Hugging Face module, so an edited hook_pattern does not reach the output",
            fix="use preserve_patterns=False for encoders",
        )


def ablate(
    model,
    dataset,
    heads="all",
    method="zero",
    metric=None,
    *,
    joint: bool = False,
    sweep: str = "fast",
    reference=None,
    seed: int = 0,
    preserve_patterns: bool = False,
    relation: str | None = None,
    target_heads=None,
    max_items: int | None = None,
    batch_size: int | None = None,
    max_tokens: int = 2048,
    n_boot: int = 1000,
    progress: bool = False,
    options: EngineOptions = DEFAULT_OPTIONS,
) -> AblationResult:
    """Ablate each head in ``heads`` (or, with ``joint=True``, all of them together) and measure.

    Parameters
    ----------
    model : probekit.Model
    dataset : minimal pairs (BLiMP, ``template:agreement``) or sentences with gold arcs.
    heads : ``"all"``, ``"L.H,..."`` or ``[(layer, head), ...]`` (query heads; `parse_heads`).
    method : ``"zero"``, ``"mean"`` or ``"resample"`` (`METHODS`) or one of their classes.
    metric : a name or list of names (default: ``accuracy, margin, logprob_diff`` for pairs,
        ``relation_loss, relation_attention`` for sentences, which need ``relation=``), or a callable
        ``fn(logits [B, T, V], input_ids [B, T]) -> [B]``.
    joint : ablate all ``heads`` together (one row per metric, ``layer = head = -1``).
    sweep : ``"fast"`` (default) or ``"naive"`` (the reference loop); same numbers up to float32
        rounding (up to ~2e-4 in a sentence log-prob, from packing; bit for bit with
        ``options=EngineOptions(pack=False)``).
    reference : the dataset means/donors come from (default: ``dataset``); ``seed`` seeds the donors
        and the bootstrap.
    preserve_patterns : freeze all attention patterns at their clean values (causal models).
    relation, target_heads : the UD relation of sentence metrics; the heads whose attention
        ``relation_attention`` reads (default: the 5 with the highest clean score).
    max_items : use the first N pairs/sentences.
    batch_size, max_tokens : items per clean forward (default: about 512 tokens' worth); tokens of one
        fast forward (copies x rows x width).
    n_boot : bootstrap resamples of the 95% CI over items.
    options : the fast path's optimisations (`EngineOptions`).

    Returns
    -------
    AblationResult
        ``frame``: one row per (head, metric) with ``delta = ablated - clean`` (mean over items) and a
        95% bootstrap CI over items; ``.write(folder)`` writes ``ablation.csv`` and heatmaps.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> data = pk.load_dataset("template:agreement?n=4")
    >>> result = ablate(model, data, "0.1,1.2", metric="margin", n_boot=10)
    >>> result.frame[["heads", "metric"]].values.tolist()
    [['0.1', 'margin'], ['1.2', 'margin']]
    """
    cls = _method(method)
    _check_preserve(model, preserve_patterns)
    plan = make_plan(model, dataset, metric, relation, target_heads, max_items)
    hs = parse_heads(model, heads)
    specs = [hs] if joint else [[h] for h in hs]
    return _ablate(
        model,
        plan,
        specs,
        cls,
        single=not joint,
        sweep=sweep,
        reference=reference,
        seed=seed,
        preserve_patterns=preserve_patterns,
        batch_size=batch_size,
        max_tokens=max_tokens,
        n_boot=n_boot,
        progress=progress,
        options=options,
    )


def ablate_heads(model, dataset, heads="all", method="zero", metric=None, **kwargs) -> pd.DataFrame:
    """`ablate` returning only its frame (``result.frame``); the keyword arguments are `ablate`'s.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> data = pk.load_dataset("template:agreement?n=4")
    >>> frame = ablate_heads(model, data, "0.1", metric="margin", n_boot=10)
    >>> list(frame.columns) == list(FRAME_COLUMNS)
    True
    """
    return ablate(model, dataset, heads, method, metric, **kwargs).frame


def ablate_head_sets(
    model,
    dataset,
    head_sets: Sequence,
    method="zero",
    metric=None,
    *,
    sweep: str = "fast",
    reference=None,
    seed: int = 0,
    preserve_patterns: bool = False,
    relation: str | None = None,
    target_heads=None,
    max_items: int | None = None,
    batch_size: int | None = None,
    max_tokens: int = 2048,
    n_boot: int = 1000,
    progress: bool = False,
    options: EngineOptions = DEFAULT_OPTIONS,
) -> AblationResult:
    """Ablate each set of heads jointly: one frame row per (set, metric), ``heads`` names the set.

    Parameters are `ablate`'s; ``head_sets`` is a list of head specifications (`parse_heads`).

    Returns
    -------
    AblationResult
        With ``layer = head = -1`` in every row; ``result.ablated[metric]  # [set, item]``.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> data = pk.load_dataset("template:agreement?n=4")
    >>> result = ablate_head_sets(model, data, [[(0, 1)], "0.2,1.3"], metric="margin", n_boot=10)
    >>> result.ablated["margin"].shape
    (2, 4)
    """
    cls = _method(method)
    _check_preserve(model, preserve_patterns)
    plan = make_plan(model, dataset, metric, relation, target_heads, max_items)
    specs = [parse_heads(model, s) for s in head_sets]
    return _ablate(
        model,
        plan,
        specs,
        cls,
        single=False,
        sweep=sweep,
        reference=reference,
        seed=seed,
        preserve_patterns=preserve_patterns,
        batch_size=batch_size,
        max_tokens=max_tokens,
        n_boot=n_boot,
        progress=progress,
        options=options,
    )


def _ablate(
    model,
    plan: Plan,
    specs: list[list[Head]],
    cls: type[Intervention],
    *,
    single: bool,
    sweep,
    reference,
    seed,
    preserve_patterns,
    batch_size,
    max_tokens,
    n_boot,
    progress,
    options,
) -> AblationResult:
    layers = [layer for spec in specs for layer, _ in spec]
    intervention = cls.fit(model, plan, layers, reference=reference, seed=seed)
    res = run_sweep(
        model,
        plan,
        specs,
        intervention,
        sweep=sweep,
        preserve_patterns=preserve_patterns,
        batch_items=batch_size,
        max_tokens=max_tokens,
        progress=progress,
        options=options,
    )
    frame = _frame(model, plan, specs, res, cls.name, n_boot=n_boot, seed=seed, single=single)
    frame.attrs.update(
        {
            "seconds": res.seconds,
            "forwards": res.forwards,
            "sweep": sweep,
            "preserve_patterns": preserve_patterns,
            "target_heads": head_label(plan.target_heads) if plan.target_heads else "",
        }
    )
    ablated = {
        m: np.stack([a[m] for a in res.ablated]) if specs else np.zeros((0, plan.n_items))
        for m in plan.metrics
    }
    return AblationResult(
        frame,
        res.clean,
        ablated,
        specs,
        model.name,
        model.n_layers,
        model.n_heads,
        cls.name,
        sweep,
        res.seconds,
        res.forwards,
        preserve_patterns,
        list(plan.target_heads),
    )


def _frame(model, plan: Plan, specs, res: SweepResult, method: str, *, n_boot: int, seed: int, single: bool):
    from probekit.stats import bootstrap_ci

    rows = []
    for si, spec in enumerate(specs):
        for m in plan.metrics:
            c, a = res.clean[m], res.ablated[si][m]
            delta = a - c
            ok = ~np.isnan(delta)
            lo, hi = bootstrap_ci(delta[ok], n_boot=n_boot, seed=seed) if ok.sum() > 1 else (np.nan, np.nan)
            rows.append(
                {
                    "model": model.name,
                    "layer": spec[0][0] if single else -1,
                    "head": spec[0][1] if single else -1,
                    "heads": head_label(spec),
                    "method": method,
                    "metric": m,
                    "clean": float(np.nanmean(c)),
                    "ablated": float(np.nanmean(a)),
                    "delta": float(np.nanmean(delta)),
                    "delta_ci_low": lo,
                    "delta_ci_high": hi,
                    "n": int(ok.sum()),
                }
            )
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


@contextlib.contextmanager
def ablated(model, heads, method: str = "zero", *, reference=None):
    """Context manager: inside it every forward of ``model.bridge`` runs with ``heads`` ablated.

    Parameters
    ----------
    model : probekit.Model
    heads : the heads to ablate (`parse_heads`).
    method : ``"zero"`` or ``"mean"`` (means over ``reference``, required). ``resample`` needs
        per-example donors: use `ablate`.
    reference : the dataset the means come from.

    Yields
    ------
    probekit.Model
        ``model``, whose hooks are removed on exit, also on error.

    Examples
    --------
    >>> import probekit as pk, torch
    >>> model = pk.load_model("tiny-llama")
    >>> ids = torch.tensor([[model.sink_token_id, 5, 6]])
    >>> with torch.inference_mode(), ablated(model, [(1, 1)]):
    ...     logits = model.bridge(ids)
    >>> tuple(logits.shape[:2])
    (1, 3)
    """
    hs = parse_heads(model, heads)
    if method not in ("zero", "mean"):
        raise ProbekitError(
            f"ablated() supports zero and mean, not {method!r}",
            fix="use ablate_heads(..., method='resample') for resampling",
        )
    intervention: Intervention = ZeroAblation()
    if method == "mean":
        if reference is None:
            raise ProbekitError("mean ablation needs a reference dataset", fix="pass reference=dataset")
        plan = make_plan(model, reference, None if is_pairs(reference) else ["loss"])
        intervention = MeanAblation.fit(model, plan, sorted({layer for layer, _ in hs}))

    def live(site):  # any forward: the replacement is built for the width of each call
        def hook(z, hook):
            layout = ZLayout(1, z.shape[1], model.n_heads, model.d_head)
            return site.write(z, intervention.replacement(site.layer, layout))

        return site.hook_name, hook

    with model.bridge.hooks(fwd_hooks=[live(site) for site in head_sites(hs)]):
        yield model
