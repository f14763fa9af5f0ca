"""Figures (matplotlib, Agg backend: no display needed), saved atomically and byte-reproducibly.

`pyplot` gives the configured ``matplotlib.pyplot``; `save_fig` writes a figure by atomic rename with
no timestamp metadata; `plot_head_heatmap` is the one layers × heads heatmap every analysis uses.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata={"Software": None})
    os.replace(tmp, path)
    pyplot().close(fig)
    return path


def plot_word_attention(att, words, heads, path, title: str = "", layers=None) -> Path:
    """Word × word heatmaps of chosen heads, labelled with the words. ``att  # [layer, head, from, to]``."""
    plt = pyplot()
    layers = list(layers) if layers is not None else list(range(att.shape[0]))
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.0), squeeze=False)
    for ax, (layer, head) in zip(axes[0], heads):
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
    (mean over seeds); the random-init model's curves are dotted."""
    plt = pyplot()
    splits = frame.split if "split" in frame else pd.Series("random", index=frame.index)
    panels = list(dict.fromkeys(zip(frame.task, splits)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (task, split) in zip(axes[0], panels):
        f = frame[(frame.task == task) & (splits == split)]
        for kind, style in (("trained", "-"), ("random-init", ":")):
            g = f[f.model_kind == kind].groupby("layer")[["accuracy", "control_accuracy", "majority_accuracy"]].mean()
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


def plot_head_heatmap(values, path, title: str = "", cbar: str = "", layers=None, cmap: str = "viridis",
                      center: float | None = None) -> Path:
    """A layers × heads heatmap (``values  # [layer, head]``)."""
    import numpy as np

    plt = pyplot()
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.35 * values.shape[1], 0.8 + 0.22 * values.shape[0]))
    kwargs = {}
    if center is not None:
        span = np.nanmax(np.abs(values - center)) or 1.0
        kwargs = {"vmin": center - span, "vmax": center + span}
    im = ax.imshow(values, aspect="auto", cmap=cmap, **kwargs)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(values.shape[0]), layers if layers is not None else range(values.shape[0]), fontsize=6)
    ax.set_xticks(range(values.shape[1]), range(values.shape[1]), fontsize=6)
    fig.colorbar(im, ax=ax, label=cbar)
    ax.set_title(title, fontsize=9)
    return save_fig(fig, path)
