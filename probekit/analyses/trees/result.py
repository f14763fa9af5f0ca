"""`TreesResult`: the tables, figures and summary of `analyze_trees`.

Tables (each as CSV, Markdown and LaTeX, `probekit.report.write_tables`):

- ``trees_summary``: one row per (model, method) on the test part: ``uuas``/``uas`` with cluster-bootstrap
  95% CIs over test sentences (``*_low``/``*_high``; `probekit.stats.bootstrap_ci`). Methods:
  ``best_head`` (selected on dev UUAS), ``best_head_directed`` (selected on dev UAS over both attention
  directions), ``words_probe`` (UAS: argmax head per dependent; UUAS: undirected MST of its probabilities),
  ``words_probe_tree`` (its Chu-Liu/Edmonds tree with the gold root), ``chain_head_right``,
  ``chain_head_left``, ``best_offset`` (offset chosen on train). The random-init model has its own rows.
- ``trees_heads``: every head's test ``uuas``/``uas``/``uas_reverse`` and dev scores, ``best_on_dev``.
- ``trees_layers``: per layer, the best head (selected on dev within the layer) and the probe trained on
  that layer's heads alone (its tree with the gold root), test scores.
- ``trees_relations``: recall of the gold arcs of each relation (test) by the best head, the probe's tree
  and the right chain, undirected and directed.
- ``trees_parts``: the train/dev/test fractions and their sentence counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from probekit.report import atomic_write_text, markdown_table, write_tables
from probekit.report.figures import pyplot, save_fig

#: the summary methods drawn as horizontal lines in the per-layer plot
LINE_METHODS = ("words_probe", "chain_head_right", "best_offset")


@dataclass
class TreesResult:
    """What `analyze_trees` found; ``.write(folder)`` writes the tables, ``summary.md`` and the figures.

    Examples
    --------
    >>> import tempfile, probekit as pk
    >>> res = pk.analyze_trees(pk.load_model("tiny-bert"), pk.load_dataset("template:svo_adj?n=12"),
    ...                        n_boot=50, progress=False)
    >>> names = {p.name for p in res.write(tempfile.mkdtemp())}
    >>> {"trees_summary.csv", "trees_heads.csv", "trees_layers.png"} <= names
    True
    """

    model: str
    data: str
    parts: pd.DataFrame
    summary: pd.DataFrame
    heads: pd.DataFrame
    layers: pd.DataFrame
    relations: pd.DataFrame
    drawings: list = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by file stem."""
        return {
            "trees_summary": self.summary,
            "trees_heads": self.heads,
            "trees_layers": self.layers,
            "trees_relations": self.relations,
            "trees_parts": self.parts,
        }

    def write(self, folder: str | Path) -> list[Path]:
        """Write the tables, ``summary.md``, ``trees_layers.png`` and ``trees_drawn.png`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tables = self.tables()
        write_tables(tables, folder)
        written = [folder / f"{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")]
        written.append(atomic_write_text(folder / "summary.md", self.markdown()))
        written.append(plot_tree_layers(self.layers, self.summary, folder / "trees_layers.png"))
        if self.drawings:
            written.append(plot_trees(self.drawings, folder / "trees_drawn.png"))
        return written

    def markdown(self) -> str:
        """The summary table and the parts, as Markdown."""
        parts = ", ".join(
            f"{r.part} {r.fraction:g} ({r.n_sentences} sentences)" for r in self.parts.itertuples()
        )
        cols = ["model", "method", "detail", "uuas", "uuas_low", "uuas_high", "uas", "uas_low", "uas_high"]
        return (
            f"# Whole trees from attention: {self.model} on {self.data}\n\n"
            f"Parts: {parts}. Scores on the test part, punctuation excluded; 95% bootstrap CIs over "
            "sentences.\n\n" + markdown_table(self.summary[cols])
        )


def plot_tree_layers(layers: pd.DataFrame, summary: pd.DataFrame, path) -> Path:
    """UUAS per layer: each model's best head and per-layer probe, with the summary baselines as lines.

    Parameters
    ----------
    layers : the ``trees_layers`` table.
    summary : the ``trees_summary`` table.
    path : the PNG file.

    Returns
    -------
    pathlib.Path
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, ("uuas", "uas"), strict=True):
        for (model, method), g in layers.groupby(["model", "method"], sort=True):
            style = "--" if str(model).startswith("random:") else "-"
            ax.plot(g.layer, g[metric], style, marker="o", ms=3, label=f"{model} {method}")
        colors = ("black", "grey", "tab:brown")
        for method, color in zip(LINE_METHODS, colors, strict=True):
            rows = summary[(summary.method == method) & ~summary.model.astype(str).str.startswith("random:")]
            for r in rows.itertuples():
                ax.axhline(getattr(r, metric), color=color, lw=1, ls=":", label=f"{r.model} {method}")
        ax.set_xlabel("layer")
        ax.set_title(metric.upper() + " (test)")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("score")
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_fig(fig, path)


def plot_trees(drawings: list[dict], path) -> Path:
    """Each drawn sentence: the head's undirected tree above the words, the gold tree below.

    Arcs are half-ellipses; a predicted arc that is a gold edge is green, others red.

    Parameters
    ----------
    drawings : dicts with ``model, head, sentence_id, words, gold (dep, head) arcs, pred (i, j) edges``.
    path : the PNG file.

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.patches import Arc

    plt = pyplot()
    fig, axes = plt.subplots(len(drawings), 1, figsize=(10, 2.6 * len(drawings)), squeeze=False)
    for ax, d in zip(axes[:, 0], drawings, strict=True):
        words = d["words"]
        gold = {(min(a, b), max(a, b)) for a, b in d["gold"]}
        for i, w in enumerate(words):
            ax.text(i, 0, w, ha="center", va="center", fontsize=8)
        for a, b in d["pred"]:
            color = "tab:green" if (a, b) in gold else "tab:red"
            ax.add_patch(Arc(((a + b) / 2, 0.25), b - a, 0.5 * (b - a), theta1=0, theta2=180, color=color))
        for dep, head in d["gold"]:
            a, b = min(dep, head), max(dep, head)
            ax.add_patch(Arc(((a + b) / 2, -0.25), b - a, 0.5 * (b - a), theta1=180, theta2=360, color="k"))
            ax.plot([dep], [-0.3], marker="v", color="k", ms=3)
        span = max(len(words) - 1, 1)
        ax.set_xlim(-0.8, len(words) - 0.2)
        ax.set_ylim(-0.3 - 0.25 * span, 0.3 + 0.25 * span)
        ax.axis("off")
        ax.set_title(f"{d['model']} head {d['head']} (above) vs gold (below): {d['sentence_id']}", fontsize=8)
    return save_fig(fig, path)
