"""Figures (matplotlib, Agg backend: no display needed), saved atomically and byte-reproducibly.

`pyplot` gives the configured ``matplotlib.pyplot``; `save_fig` writes a figure by atomic rename with
no timestamp metadata. The plots: `plot_word_attention` (word × word attention of chosen heads, the
claims stage), `plot_probe_curves` (probe accuracy against layer) and `plot_head_heatmap` (the
one layers × heads heatmap every analysis uses, with `HeadPanel` panels).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend (no display needed), imported on first use.

    Returns
    -------
    module
        ``matplotlib.pyplot``.

    Examples
    --------
    >>> pyplot().get_backend().lower()
    'agg'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path: str | os.PathLike) -> Path:
    """Save a figure atomically (temporary name, then rename) at 110 dpi without the Software
    metadata, so the same figure gives the same bytes; then close it.

    Parameters
    ----------
    fig
        A matplotlib figure.
    path
        The PNG file (its folder is created).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> fig, ax = pyplot().subplots()
    >>> save_fig(fig, Path(tempfile.mkdtemp()) / "empty.png").stat().st_size > 0
    True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    os.replace(tmp, path)
    pyplot().close(fig)
    return path


def plot_word_attention(att, words, heads, path, title: str = "", layers=None) -> Path:
    """Word × word heatmaps of chosen heads, labelled with the words (weights >= 0.1 written in).

    Parameters
    ----------
    att
        Word-level attention, ``att  # [layer, head, from_word, to_word]``.
    words
        The words, labelling both axes.
    heads
        ``(layer, head)`` pairs, one panel each.
    path
        The PNG file.
    title
        The figure's title.
    layers
        The layers that ``att``'s first axis holds (default ``0 .. att.shape[0] - 1``).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> att = np.full((1, 2, 3, 3), 1 / 3)  # [layer, head, from, to]
    >>> plot_word_attention(att, ["a", "cat", "sat"], [(0, 1)], Path(tempfile.mkdtemp()) / "a.png").suffix
    '.png'
    """
    plt = pyplot()
    layers = list(layers) if layers is not None else list(range(att.shape[0]))
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.0), squeeze=False)
    for ax, (layer, head) in zip(axes[0], heads, strict=True):
        m = att[layers.index(layer), head]
        ax.imshow(m, cmap="viridis", vmin=0, vmax=max(float(m.max()), 1e-6))
        ax.set_xticks(range(len(words)), words, rotation=70, fontsize=7)
        ax.set_yticks(range(len(words)), words, fontsize=7)
        ax.set_title(f"layer {layer}, head {head}", fontsize=9)
        ax.set_xlabel("attended word (to)", fontsize=8)
        ax.set_ylabel("attending word (from)", fontsize=8)
        for i in range(len(words)):
            for j in range(len(words)):
                if m[i, j] >= 0.1:
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5, color="w")
    fig.suptitle(title, fontsize=9)
    return save_fig(fig, path)


def plot_probe_curves(frame: pd.DataFrame, path, title: str = "") -> Path:
    """Accuracy, control accuracy and majority baseline against layer, one panel per task and split
    (mean over seeds); the random-init model's curves are dotted.

    Parameters
    ----------
    frame
        A `probekit.analyses.probes.probe_layers` table (``task, layer, model_kind, accuracy,
        control_accuracy, majority_accuracy`` and optionally ``split``).
    path
        The PNG file.
    title
        The figure's title.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> frame = pd.DataFrame({"task": "upos", "layer": [0, 1], "model_kind": "trained",
    ...     "accuracy": [0.5, 0.9], "control_accuracy": [0.4, 0.5], "majority_accuracy": 0.3})
    >>> plot_probe_curves(frame, Path(tempfile.mkdtemp()) / "curves.png").name
    'curves.png'
    """
    plt = pyplot()
    splits = frame.split if "split" in frame else pd.Series("random", index=frame.index)
    panels = list(dict.fromkeys(zip(frame.task, splits, strict=True)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (task, split) in zip(axes[0], panels, strict=True):
        f = frame[(frame.task == task) & (splits == split)]
        for kind, style in (("trained", "-"), ("random-init", ":")):
            g = (
                f[f.model_kind == kind]
                .groupby("layer")[["accuracy", "control_accuracy", "majority_accuracy"]]
                .mean()
            )
            if g.empty:
                continue
            ax.plot(g.index, g.accuracy, style, color="C0", label=f"probe ({kind})")
            ax.plot(g.index, g.control_accuracy, style, color="C1", label=f"control task ({kind})")
            if kind == "trained":
                ax.plot(g.index, g.majority_accuracy, "--", color="grey", label="majority class")
        ax.set_xlabel("residual-stream layer (0 = embeddings)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(task if splits.nunique() == 1 else f"{task}, {split} split")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_fig(fig, path)


@dataclass(frozen=True)
class HeadPanel:
    """One panel of a layers × heads heatmap.

    ``values  # [layer, head]`` (NaN cells are left blank); ``mark`` boxes one ``(layer, head)`` cell
    (e.g. the head chosen on the dev split).
    """

    values: Any
    title: str = ""
    mark: tuple[int, int] | None = None


def plot_head_heatmap(
    panels: HeadPanel | Sequence[HeadPanel],
    path: str | os.PathLike,
    *,
    cbar: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    symmetric: bool = False,
    cmap: str = "viridis",
    shared_colorbar: bool = True,
    suptitle: str = "",
) -> Path:
    """The one layers × heads heatmap: one panel per `HeadPanel`, side by side, saved atomically.

    Every analysis that shows a value per head (head-scoring accuracy, ablation or patching effects)
    draws it here, so all such figures share their layout: layer 0 at the bottom, one column per head,
    ``0.45`` inch per head and ``0.22`` inch per layer.

    Parameters
    ----------
    panels
        One panel, or several drawn side by side.
    path
        The PNG file.
    cbar
        The colour bar's label.
    vmin, vmax
        The colour scale (default: each panel's range).
    symmetric
        A scale symmetric around 0 per panel (``±max|value|``), for effects with a diverging ``cmap``.
    cmap
        A matplotlib colour map.
    shared_colorbar
        One colour bar for all panels (needs a common ``vmin``/``vmax``), else one per panel.
    suptitle
        A title over all panels.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> panel = HeadPanel(np.arange(6.0).reshape(2, 3), title="score", mark=(1, 2))  # [layer, head]
    >>> plot_head_heatmap(panel, Path(tempfile.mkdtemp()) / "h.png", cbar="score", vmin=0, vmax=5).name
    'h.png'
    """
    import numpy as np

    panels = [panels] if isinstance(panels, HeadPanel) else list(panels)
    plt = pyplot()
    n_layers, n_heads = np.asarray(panels[0].values).shape
    width = (1.2 if shared_colorbar else 2.2) + 0.45 * n_heads * len(panels)
    height = (1.5 if shared_colorbar else 1.2) + 0.22 * n_layers
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        grid = np.asarray(panel.values, dtype=float)  # [layer, head]
        lo, hi = vmin, vmax
        if symmetric:
            hi = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
            lo = -hi
        im = ax.imshow(grid, vmin=lo, vmax=hi, cmap=cmap, aspect="auto", origin="lower")
        if panel.mark is not None:
            layer, head = panel.mark
            ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        if shared_colorbar:
            ax.set_title(panel.title, fontsize=8)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(n_heads))
            ax.tick_params(labelsize=6)
        else:
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_title(panel.title, fontsize=9)
            ax.set_xticks(range(n_heads))
            fig.colorbar(im, ax=ax, fraction=0.05)
    if shared_colorbar:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=cbar)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    if not shared_colorbar:
        fig.tight_layout()
    return save_fig(fig, path)
