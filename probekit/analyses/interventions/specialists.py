"""Specialists vs random heads: is ablating k chosen heads worse than ablating k layer-matched random heads?

Several head sets (one per selection criterion) are tested on the same items against the same random
draws (`coupled_random_sets`). The statistics are defined in ``docs/methods/interventions.md``,
"Specialists vs random heads".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.analyses.interventions.ablate import ablate_head_sets
from probekit.analyses.interventions.engine import DEFAULT_OPTIONS, EngineOptions
from probekit.analyses.interventions.heads import Head, coupled_random_sets, head_label, parse_heads
from probekit.errors import ProbekitError

#: how a criterion ranks heads, by name (`select_heads`; the ``select`` option of the ablate stage)
SELECTION_CRITERIA = {
    "attention": "raw attention: the mean word-level attention along the relation's arcs over all the "
    "selection sentences (both halves of the head-scoring split)",
    "heads_score": "the head-scoring module's ranking: accuracy on its test half (the share of arcs on "
    "which the head's most-attended word is the gold partner), ties by test-half attention",
}
#: the significance level the generated summary uses to say whether the specialists hurt more
ALPHA = 0.05
#: the name of the head set when `specialists_vs_random` is given one set, not a mapping
GIVEN = "given"


@dataclass(frozen=True)
class SpecialistsResult:
    """`specialists_vs_random`'s tables: ``summary`` (one row per criterion and metric), ``draws`` (one
    row per criterion, random set and metric: ``criterion, draw, heads, metric, delta``) and
    ``specialists`` (the heads ablated, with their ``criterion``); ``commentary`` is optional
    hand-written text the generated ``summary.md`` prints under its own, marked heading."""

    summary: pd.DataFrame
    draws: pd.DataFrame
    specialists: pd.DataFrame
    title: str = ""
    commentary: str | None = None

    def write(self, folder, title: str | None = None) -> list[Path]:
        """The ``specialists``, ``specialists_vs_random`` and ``random_draws`` tables (CSV, Markdown,
        LaTeX; `probekit.report.write_tables`), ``specialists_vs_random.png`` and ``summary.md``
        (`specialists_markdown`)."""
        from probekit.report import atomic_write_text, write_tables

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
        text = specialists_markdown(
            self.summary, self.specialists, title=title or self.title, commentary=self.commentary
        )
        paths.append(atomic_write_text(folder / "summary.md", text))
        return paths


def _plot_draws(summary: pd.DataFrame, draws: pd.DataFrame, path: Path, title: str) -> Path:
    """Histogram of the random-set deltas with each criterion's specialists' delta marked, per metric."""
    from probekit.report import pyplot, save_fig

    plt = pyplot()
    metrics = list(dict.fromkeys(summary.metric))
    criteria = list(dict.fromkeys(summary.criterion))
    fig, axes = plt.subplots(
        len(criteria), len(metrics), figsize=(4 * len(metrics), 3 * len(criteria)), squeeze=False
    )
    for row, c in enumerate(criteria):
        for ax, m in zip(axes[row], metrics, strict=True):
            sel = (draws.criterion == c) & (draws.metric == m)
            ax.hist(draws[sel].delta, bins=15, color="grey", label="layer-matched random heads")
            spec = summary[(summary.criterion == c) & (summary.metric == m)]
            ax.axvline(float(spec.specialists_delta.iloc[0]), color="C3", label="specialists")
            ax.set_title(f"{c}: {m}", fontsize=9)
            ax.set_xlabel("change when ablated")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_fig(fig, path)


def difference_ci(
    d_spec: np.ndarray, d_rand: np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap CI of "specialists minus a layer-matched random set", over items *and* random draws.

    Each of ``n_boot`` replicates resamples the items with replacement and draws one random set
    uniformly, and computes ``mean(d_spec[items]) - mean(d_rand[draw, items])``; the interval is the
    percentile interval of the replicates (Efron & Tibshirani 1993, ch. 13). So it holds both the
    sampling error over items and the spread between random head sets (two random sets differ by as
    much as that spread), the spread the permutation p-value of `specialists_vs_random` compares
    against.

    Parameters
    ----------
    d_spec : ``[item]`` the specialists' per-item change (ablated - clean).
    d_rand : ``[draw, item]`` each random set's per-item change on the same items.
    n_boot : replicates; ``ci`` the level; ``seed`` seeds `numpy.random.default_rng`.

    Returns
    -------
    (low, high) : floats.

    Examples
    --------
    Without item noise the replicates are the specialists minus one random set, here -1 or +1:

    >>> difference_ci(np.zeros(3), np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), n_boot=200)
    (-1.0, 1.0)
    """
    d_spec = np.asarray(d_spec, dtype=np.float64)
    d_rand = np.asarray(d_rand, dtype=np.float64)
    if d_spec.ndim != 1 or d_rand.ndim != 2 or d_rand.shape[1] != d_spec.shape[0]:
        raise ProbekitError(
            f"d_spec must be [item] and d_rand [draw, item], got {d_spec.shape} and {d_rand.shape}",
            where="difference_ci",
        )
    if d_spec.size == 0 or d_rand.shape[0] == 0:
        raise ProbekitError("no items or no random draws", where="difference_ci", fix="pass at least one")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ProbekitError(f"n_boot must be a positive integer, got {n_boot!r}", where="difference_ci")
    if not 0 < ci < 1:
        raise ProbekitError(f"ci must lie strictly between 0 and 1, got {ci!r}", where="difference_ci")
    n = d_spec.size
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        items = rng.integers(0, n, size=(stop - start, n))  # [replicate, item]
        draw = rng.integers(0, d_rand.shape[0], size=stop - start)  # [replicate]
        reps[start:stop] = d_spec[items].mean(1) - d_rand[draw[:, None], items].mean(1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def select_heads(scored: pd.DataFrame, criterion: str, top_k: int) -> pd.DataFrame:
    """The ``top_k`` heads of one relation and direction by a selection criterion (`SELECTION_CRITERIA`).

    Parameters
    ----------
    scored : the rows of `probekit.analyses.heads.score_heads` for one model, relation and direction
        (``layer, head, n, accuracy, attention_mass, n_dev, dev_accuracy, dev_attention_mass``).
    criterion : ``"attention"`` (the mean attention on the gold partner over all instances, dev and
        test halves weighted by their counts) or ``"heads_score"`` (test-half ``accuracy``, ties by
        test-half ``attention_mass``); remaining ties by layer, then head.
    top_k : how many heads.

    Returns
    -------
    pandas.DataFrame
        ``criterion, rank, layer, head, attention, accuracy, dev_accuracy`` (plus the relation's
        columns ``scored`` has), best first; ``attention`` is the all-instances mean attention.

    Examples
    --------
    >>> scored = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "n": [2, 2, 2], "n_dev": [2, 2, 2],
    ...     "accuracy": [1.0, 0.5, 0.0], "attention_mass": [0.1, 0.4, 0.9],
    ...     "dev_accuracy": [1.0, 0.5, 0.0], "dev_attention_mass": [0.1, 0.4, 0.7]})
    >>> select_heads(scored, "attention", 2)[["layer", "head", "attention"]].values.tolist()
    [[1.0, 0.0, 0.8], [0.0, 1.0, 0.4]]
    >>> select_heads(scored, "heads_score", 1)[["layer", "head"]].values.tolist()
    [[0, 0]]
    """
    if criterion not in SELECTION_CRITERIA:
        raise ProbekitError(
            f"unknown selection criterion {criterion!r}", fix=f"use one of {', '.join(SELECTION_CRITERIA)}"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ProbekitError(f"top_k must be a positive integer, got {top_k!r}", where="select_heads")
    df = scored.copy()
    n_all = (df["n"] + df["n_dev"]).astype(float)
    df["attention"] = (df["n"] * df["attention_mass"] + df["n_dev"] * df["dev_attention_mass"]) / n_all
    keys = ["attention"] if criterion == "attention" else ["accuracy", "attention_mass"]
    df = df.sort_values([*keys, "layer", "head"], ascending=[False] * len(keys) + [True, True], kind="stable")
    df = df.head(top_k).reset_index(drop=True)
    df.insert(0, "criterion", criterion)
    df.insert(1, "rank", np.arange(1, len(df) + 1))
    return df


def check_disjoint(selection, evaluation, *, where: str = "specialists") -> None:
    """Raise `ProbekitError` if a sentence the heads are selected on is also an evaluated sentence.

    Heads picked on the very sentences they are then tested on would make the test circular. Texts are
    compared after collapsing whitespace; a minimal pair contributes its good and its bad sentence.

    Parameters
    ----------
    selection : sentences (a `Dataset` or a list) the heads are selected on.
    evaluation : the minimal pairs or sentences the ablation is measured on.
    where : what the error names.

    Examples
    --------
    >>> import probekit as pk
    >>> pairs = pk.load_dataset("template:agreement?n=20")
    >>> check_disjoint(pk.load_dataset("template:agreement_sentences?n=20", seed=1), pairs)
    >>> check_disjoint(pk.load_dataset("template:agreement_sentences?n=20"), pairs)
    Traceback (most recent call last):
    ...
    probekit.errors.ProbekitError: 20 of the 20 head-selection sentences are also evaluated ...
    """

    def norm(text: str) -> str:
        return " ".join(str(text).split())

    evaluated: set[str] = set()
    for item in getattr(evaluation, "items", evaluation):
        if hasattr(item, "good"):
            evaluated.update((norm(item.good), norm(item.bad)))
        else:
            evaluated.add(norm(item.text))
    chosen = [norm(s.text) for s in getattr(selection, "items", selection)]
    shared = [t for t in chosen if t in evaluated]
    if shared:
        raise ProbekitError(
            f"{len(shared)} of the {len(chosen)} head-selection sentences are also evaluated "
            f"(e.g. {shared[0]!r}): heads chosen on the test items make the test circular",
            where=where,
            fix="select on other data: another template seed (e.g. template:agreement_sentences"
            "?n=200&seed=1 when the pairs use seed 0) or another source",
        )


def specialists_vs_random(
    model,
    dataset,
    heads,
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

    Each head set (the specialists; several sets, e.g. one per selection criterion, as a mapping) is
    ablated jointly, then ``n_draws`` layer-matched random sets per head set, drawn from the same
    shuffles for every set (`coupled_random_sets`), each ablated jointly, on the same items. A head set
    that appears several times (a random set drawn twice, two criteria picking the same heads) is run
    once.

    Parameters
    ----------
    model, dataset, method, metric, sweep, reference, max_items, batch_size, max_tokens, progress,
    options : as in `ablate`.
    heads : the specialists (`parse_heads`), or ``{criterion name: specialists}``.
    n_draws : random sets per head set (>= 2); ``seed`` seeds them, the donors and the bootstrap.
    alternative : ``"less"`` (default) asks whether the specialists' ablation lowers the metric more
        than random heads' (`probekit.stats.empirical_p`).
    n_boot : bootstrap replicates of the CI of the difference (`difference_ci`).

    Returns
    -------
    SpecialistsResult
        ``summary`` has per criterion (``"given"`` for a single head set) and metric:
        ``specialists_delta`` (mean change, ablated - clean), ``random_mean_delta``, ``random_sd``,
        ``random_q025``/``random_q975`` (over draws), ``difference = specialists_delta -
        random_mean_delta``, ``effect_size = difference / random_sd``, the permutation
        ``p_value = (1 + #{draws at least as extreme}) / (1 + n_draws)`` and ``diff_ci_low``/
        ``diff_ci_high``, a 95% bootstrap CI of the specialists minus one random set, over items and
        draws jointly (`difference_ci`).

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> data = pk.load_dataset("template:agreement?n=4")
    >>> result = specialists_vs_random(model, data, [(0, 1)], n_draws=3, metric="margin", n_boot=10)
    >>> len(result.summary), len(result.draws)
    (1, 3)
    >>> both = specialists_vs_random(model, data, {"a": [(0, 1)], "b": [(1, 2)]}, n_draws=3,
    ...                              metric="margin", n_boot=10)
    >>> both.summary[["criterion", "heads"]].values.tolist()
    [['a', '0.1'], ['b', '1.2']]
    """
    from probekit.stats import empirical_p

    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 2:
        raise ProbekitError(f"n_draws must be an integer >= 2, not {n_draws!r}", fix="e.g. n_draws=100")
    named = dict(heads) if isinstance(heads, Mapping) else {GIVEN: heads}
    if not named:
        raise ProbekitError("no head sets given", where="specialists_vs_random", fix="pass the specialists")
    specs = {name: parse_heads(model, h) for name, h in named.items()}
    draws = dict(
        zip(specs, coupled_random_sets(model, list(specs.values()), n_draws, seed=seed), strict=True)
    )
    unique: dict[tuple[Head, ...], int] = {}
    for s in [*specs.values(), *(d for ds in draws.values() for d in ds)]:
        unique.setdefault(tuple(sorted(s)), len(unique))
    res = ablate_head_sets(
        model,
        dataset,
        [list(k) for k in unique],
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
    rows, draw_rows, spec_rows = [], [], []
    for name, spec in specs.items():
        spec_idx = unique[tuple(sorted(spec))]
        draw_idx = [unique[tuple(sorted(d))] for d in draws[name]]
        spec_rows += [{"criterion": name, "layer": layer, "head": h} for layer, h in spec]
        for m in res.clean:
            d_items = res.ablated[m] - res.clean[m][None]  # [unique set, item]
            d_spec, d_rand = d_items[spec_idx], d_items[draw_idx]  # [item], [draw, item]
            spec_delta = float(d_spec.mean())
            rand = d_rand.mean(axis=1)  # [draw]
            lo, hi = difference_ci(d_spec, d_rand, n_boot=n_boot, seed=seed)
            sd = float(rand.std(ddof=1))
            diff = spec_delta - float(rand.mean())
            rows.append(
                {
                    "model": model.name,
                    "criterion": name,
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
                    "difference": diff,
                    "effect_size": diff / sd if sd > 0 else np.nan,
                    "p_value": empirical_p(spec_delta, rand, alternative=alternative),
                    "alternative": alternative,
                    "diff_ci_low": lo,
                    "diff_ci_high": hi,
                    "n_items": int(d_spec.size),
                    "n_draws": n_draws,
                }
            )
            for k, (dset, val) in enumerate(zip(draws[name], rand, strict=True)):
                draw_rows.append(
                    {
                        "criterion": name,
                        "draw": k,
                        "heads": head_label(dset),
                        "metric": m,
                        "delta": float(val),
                    }
                )
    title = f"{model.name}: ablate " + "; ".join(f"{n} {head_label(s)}" for n, s in specs.items())
    return SpecialistsResult(
        pd.DataFrame(rows), pd.DataFrame(draw_rows), pd.DataFrame(spec_rows), title=title
    )


def _verdict(row) -> str:
    """Whether one criterion's specialists hurt more than layer-matched random heads, in words."""
    worse = row.p_value < ALPHA and row.specialists_delta < row.random_mean_delta
    if worse:
        return f"hurts more than layer-matched random heads (p = {row.p_value:.3g} < {ALPHA})"
    return f"does not hurt more than layer-matched random heads (p = {row.p_value:.3g}, not below {ALPHA})"


def specialists_markdown(
    summary: pd.DataFrame,
    specialists: pd.DataFrame,
    *,
    title: str = "",
    commentary: str | None = None,
    metric: str = "margin",
) -> str:
    """The generated prose of a specialists-vs-random run: every number is formatted from the tables.

    One paragraph per criterion (its heads, the change in each metric against the random sets, the
    p-value and the CI of the difference), then which criteria's specialists hurt ``metric`` more than
    random heads (p below `ALPHA`), how many heads the criteria share, and ``commentary`` (hand-written,
    printed under a heading that says so; it must hold no digits, so that no number escapes the
    tables).

    Examples
    --------
    >>> summary = pd.DataFrame({"criterion": ["a"], "heads": ["1.2"], "k": [1], "method": ["zero"],
    ...     "metric": ["margin"], "clean": [3.0], "specialists_delta": [-0.5], "random_mean_delta": [-0.1],
    ...     "random_sd": [0.1], "difference": [-0.4], "p_value": [0.02], "diff_ci_low": [-0.6],
    ...     "diff_ci_high": [-0.2], "n_items": [50], "n_draws": [49]})
    >>> text = specialists_markdown(summary, pd.DataFrame({"criterion": ["a"], "layer": [1], "head": [2]}))
    >>> "**a**: hurts more than layer-matched random heads (p = 0.02 < 0.05)" in text
    True
    """
    if commentary is not None and any(ch.isdigit() for ch in commentary):
        raise ProbekitError(
            "the hand-written commentary contains digits",
            where="specialists_markdown",
            fix="keep numbers in the tables: the generated text quotes them; write the commentary without",
        )
    lines = [f"# {title or 'Specialists vs layer-matched random heads'}", ""]
    lines.append(
        "Generated from `specialists_vs_random.csv`, `specialists.csv` and `random_draws.csv` (every number "
        "below is formatted from those tables). Change = ablated - clean, mean over the evaluation items; "
        "p: share of random layer-matched head sets that did at least as much damage (+1 correction); CI: "
        "95% bootstrap interval of the specialists minus one random set, over items and random sets."
    )
    lines.append("")
    criteria = list(dict.fromkeys(summary.criterion))
    holds: dict[str, bool] = {}
    for c in criteria:
        sub = summary[summary.criterion == c]
        first = sub.iloc[0]
        lines.append(
            f"## {c}: {first.heads} ({first.k} heads, {first.method} ablation, {first.n_items} items, "
            f"{first.n_draws} random sets)"
        )
        lines.append("")
        for r in sub.itertuples():
            lines.append(
                f"- {r.metric}: clean {r.clean:.3f}; specialists {r.specialists_delta:+.3f}, random sets "
                f"{r.random_mean_delta:+.3f} (sd {r.random_sd:.3f}); difference {r.difference:+.3f} "
                f"[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}], p = {r.p_value:.3g}"
            )
        on = sub[sub.metric == metric]
        if not on.empty:
            row = on.iloc[0]
            holds[c] = bool(row.p_value < ALPHA and row.specialists_delta < row.random_mean_delta)
            lines += ["", f"On the {metric}, **{c}**: {_verdict(row)}."]
        lines.append("")
    if len(criteria) > 1:
        lines += ["## Which criterion holds", ""]
        yes = [c for c in criteria if holds.get(c)]
        no = [c for c in criteria if c in holds and not holds[c]]
        lines.append(
            f"On the {metric}: specialists hurt more than random heads for "
            f"{', '.join(yes) if yes else 'no criterion'}; not for {', '.join(no) if no else 'any other'}."
        )
        sets = {}
        for c in criteria:
            own = specialists[specialists["criterion"] == c]
            sets[c] = set(zip(own["layer"], own["head"], strict=True))
        for i, a in enumerate(criteria):
            for b in criteria[i + 1 :]:
                shared = sorted(sets[a] & sets[b])
                lines.append(
                    f"{a} and {b} share {len(shared)} of their heads"
                    + (f" ({head_label(shared)})" if shared else "")
                    + "."
                )
        lines.append("")
    if commentary:
        lines += [
            "## Commentary (hand-written, number-free; the numbers are above)",
            "",
            commentary.strip(),
            "",
        ]
    return "\n".join(lines)
