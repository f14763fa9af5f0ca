"""The source document's worked examples (claims C2 and C3), measured head by head.

C2 — "'bank' near 'river' attends to river/steep, and 'bank' near 'deposit' attends to deposit/money."
    `bank_attention` reads, for each "bank" of the seed sentence, the attention every head sends to the
    two cue groups. A causal model cannot attend forward: the first "bank" (word 1) sees none of the cue
    words, and the second sees river/steep but not deposit/money, so for SmolLM2 the claim is only
    partly testable, and the table says which cells were visible. `bank_cue_heads` scales the test up to
    ``template:bank_sense``: the attention "bank" pays to its disambiguating cue word, per head, against
    two baselines: a random-word baseline (the other visible words of the same sentence) and an
    **offset-matched** baseline (the attention the same head pays to a non-cue word at the same relative
    position in the other sentences), because a head that simply looks one or two words back would
    otherwise look sense-aware. A permutation null for the best head replaces the cue index by a random
    visible word and takes the max over all heads.

    In the seed sentence each "bank" is also *closer* to its own cues than to the other ones, so that
    comparison is confounded by distance; the template test is the controlled one.

C3 — "In 'The curious cat explored the mysterious room.', 'explored' attends to 'cat' (0.45) and 'room'
    (0.28)." `explored_weights` lists the actual weights in every head. In a causal model "room" is
    invisible to "explored"; it reports "room" -> "explored" instead.

`analyze_claims` measures both on one model and returns a `ClaimsAnalysis` (``.write(folder)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from probekit.activations.capture import capture as run_capture
from probekit.errors import ProbekitError
from probekit.report import plot_word_attention, write_tables
from probekit.stats import empirical_p

RIVER_CUES, FINANCE_CUES = ("river", "steep"), ("deposit", "money")
CLAIMED = {"cat": 0.45, "room": 0.28}


@dataclass(frozen=True)
class AttentionView:
    """Word x word attention of one sentence and the heads to draw (`probekit.report.plot_word_attention`)."""

    attention: np.ndarray  # [layer, head, from, to]
    words: tuple[str, ...]
    heads: tuple[tuple[int, ...], ...]  # (layer, head)
    layers: tuple[int, ...]  # the layers of ``attention``'s first axis
    title: str

    def plot(self, path: str | os.PathLike) -> Path:
        return plot_word_attention(
            self.attention,
            list(self.words),
            list(self.heads),
            path,
            title=self.title,
            layers=list(self.layers),
        )


@dataclass(frozen=True)
class ClaimsAnalysis:
    """Claims C2 and C3 on one model: the six tables and the two attention views of `analyze_claims`."""

    model: str
    bank_attention: pd.DataFrame
    bank_summary: pd.DataFrame
    bank_cue_heads: pd.DataFrame
    bank_cue_summary: pd.DataFrame
    explored_weights: pd.DataFrame
    explored_summary: pd.DataFrame
    bank_view: AttentionView
    explored_view: AttentionView

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by file name."""
        return {
            "bank_attention": self.bank_attention,
            "bank_summary": self.bank_summary,
            "bank_cue_heads": self.bank_cue_heads,
            "bank_cue_summary": self.bank_cue_summary,
            "explored_weights": self.explored_weights,
            "explored_summary": self.explored_summary,
        }

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write each table as ``<name>.csv/.md/.tex``, ``explored_attention.png`` (the head closest to
        the claimed weights, and the last layer's head 0) and ``bank_attention.png`` (the best cue head)."""
        folder = Path(folder)
        tables = self.tables()
        write_tables(tables, folder)
        written = [folder / f"{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")]
        written.append(self.explored_view.plot(folder / "explored_attention.png"))
        written.append(self.bank_view.plot(folder / "bank_attention.png"))
        return written


class _OneSentence:
    """A view of one sentence of a capture, shaped like a one-sentence capture."""

    def __init__(self, cap, i: int):
        self._cap, self._i = cap, i
        self.attn_layers = cap.attn_layers

    def attention(self, _):
        return self._cap.attention(self._i)

    def special_mass(self, _):
        return self._cap.special_mass(self._i)


def analyze_claims(
    model,
    bank,
    explored,
    bank_cues,
    *,
    n_perm: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    bank_label: str = "seed:bank",
) -> ClaimsAnalysis:
    """Claims C2 and C3 on one model: `bank_attention`, `bank_cue_heads`, `explored_weights`, summaries.

    Parameters
    ----------
    model : a `probekit.Model`.
    bank : the two-sense "bank" `Sentence` (``seed:bank``).
    explored : the "explored" `Sentence` (``seed:explored``).
    bank_cues : sentences with ``bank_index``/``cue_index`` labels (``template:bank_sense``).
    n_perm, seed : the permutation null of `bank_cue_heads`.
    batch_size, progress : passed to the capture of ``bank`` and ``explored``.
    bank_label : names the bank sentence in the ``bank_attention.png`` title.

    Returns
    -------
    ClaimsAnalysis

    Examples
    --------
    >>> import probekit as pk
    >>> res = analyze_claims(pk.load_model("tiny-bert"), pk.load_dataset("seed:bank").sentences[0],
    ...                      pk.load_dataset("seed:explored").sentences[0],
    ...                      pk.load_dataset("template:bank_sense?n=8"), n_perm=20)
    >>> sorted(res.tables())[:3], int(res.explored_summary.n_heads.iloc[0])
    (['bank_attention', 'bank_cue_heads', 'bank_cue_summary'], 8)
    """
    cap = run_capture(
        model, [bank, explored], resid=(), attention=True, batch_size=batch_size, progress=progress
    )
    bank_frame = bank_attention(model, bank, cap=_OneSentence(cap, 0))
    head_frame, head_summary = bank_cue_heads(model, bank_cues, n_perm=n_perm, seed=seed)
    explored_frame = explored_weights(model, explored, cap=_OneSentence(cap, 1))
    explored_row = explored_summary(explored_frame, model.is_causal)
    # attention views: the heads the tables single out, labelled with the words
    best_cue = tuple(int(x) for x in head_summary["best_head"].split("."))
    closest = tuple(int(x) for x in explored_row["closest_head"].split("."))
    layers = tuple(cap.attn_layers)
    return ClaimsAnalysis(
        model=model.name,
        bank_attention=bank_frame,
        bank_summary=bank_summary(bank_frame),
        bank_cue_heads=head_frame,
        bank_cue_summary=pd.DataFrame([head_summary]),
        explored_weights=explored_frame,
        explored_summary=pd.DataFrame([explored_row]),
        bank_view=AttentionView(
            cap.attention(0), tuple(bank.words), (best_cue,), layers, f"{model.name}: {bank_label}"
        ),
        explored_view=AttentionView(
            cap.attention(1),
            tuple(explored.words),
            (closest, (model.n_layers - 1, 0)),
            layers,
            f"{model.name}: {explored.text}",
        ),
    )


def _head_frame(model, cap, i: int) -> tuple[np.ndarray, list[int]]:
    return cap.attention(i), cap.attn_layers  # [layer, head, from, to]


def bank_attention(model, sentence, cap=None) -> pd.DataFrame:
    """Per (layer, head, bank occurrence, cue group): summed attention to the group's words.

    One row per cell, with ``visible`` False where the cue words lie after "bank" in a causal model
    (their attention is then 0 by construction and says nothing about the claim).
    """
    cap = cap or run_capture(model, [sentence], resid=(), attention=True, progress=False)
    att, layers = _head_frame(model, cap, 0)
    words = [w.lower() for w in sentence.words]
    banks = [i for i, w in enumerate(words) if w == "bank"]
    if len(banks) != 2:
        raise ProbekitError(
            f"expected two 'bank's in {sentence.id!r}, found {len(banks)}",
            fix="use seed:bank or a sentence with one river and one finance 'bank'",
        )
    groups = {
        "river/steep": [words.index(w) for w in RIVER_CUES],
        "deposit/money": [words.index(w) for w in FINANCE_CUES],
    }
    rows = []
    for occurrence, (b, sense) in enumerate(zip(banks, ("river", "finance"), strict=True), start=1):
        for group, idx in groups.items():
            visible = all(j <= b for j in idx) if model.is_causal else True
            mass = att[:, :, b, idx].sum(-1)  # [layer, head]
            for li, layer in enumerate(layers):
                for head in range(att.shape[1]):
                    rows.append(
                        {
                            "model": model.name,
                            "bank": occurrence,
                            "bank_word": b,
                            "sense": sense,
                            "cue_group": group,
                            "own_sense": (group == "river/steep") == (sense == "river"),
                            "visible": visible,
                            "layer": layer,
                            "head": head,
                            "attention": float(mass[li, head]),
                        }
                    )
    return pd.DataFrame(rows)


def bank_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per bank occurrence: how many heads put more weight on the own-sense cues than on the other ones."""
    out = []
    for (model, bank, sense), g in frame.groupby(["model", "bank", "sense"]):
        own = g[g.own_sense].set_index(["layer", "head"])
        other = g[~g.own_sense].set_index(["layer", "head"])
        own_vis, other_vis = bool(own.visible.iloc[0]), bool(other.visible.iloc[0])
        row = {
            "model": model,
            "bank": bank,
            "sense": sense,
            "own_cues_visible": own_vis,
            "other_cues_visible": other_vis,
        }
        if own_vis and other_vis:
            diff = own.attention - other.attention
            best = cast(tuple[int, int], diff.idxmax())  # idxmax over a (layer, head) index
            row.update(
                testable=True,
                heads_own_gt_other=int((diff > 0).sum()),
                n_heads=len(diff),
                best_head=f"{best[0]}.{best[1]}",
                best_own=float(own.attention[best]),
                best_other=float(other.attention[best]),
                mean_own=float(own.attention.mean()),
                mean_other=float(other.attention.mean()),
            )
        else:
            seen = own if own_vis else other if other_vis else None
            row.update(
                testable=False,
                heads_own_gt_other=np.nan,
                n_heads=len(own),
                mean_own=float(own.attention.mean()) if own_vis else np.nan,
                mean_other=float(other.attention.mean()) if other_vis else np.nan,
                best_head=""
                if seen is None
                else "{}.{}".format(*cast(tuple[int, int], seen.attention.idxmax())),  # a (layer, head) label
            )
        out.append(row)
    return pd.DataFrame(out)


def bank_cue_heads(model, dataset, cap=None, n_perm: int = 200, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Attention from "bank" to its cue word, per head, on ``template:bank_sense``.

    Returns a per-head frame (``cue_attention``, ``random_word_attention`` = mean attention to the other
    visible words) and a summary dict with the best head, its margin over the random-word baseline and
    a permutation p-value for "the best of all heads" (cue position shuffled among visible words).
    """
    sents = [s for s in dataset if hasattr(s, "words") and "cue_index" in s.labels]
    if not sents:
        raise ProbekitError("no sentences with labels bank_index/cue_index", fix="use template:bank_sense")
    cap = cap or run_capture(model, sents, resid=(), attention=True, progress=False)
    rng = np.random.default_rng(seed)
    cue_rows, rand_rows, candidates, used = [], [], [], []
    for i, s in enumerate(sents):
        b, c = s.labels["bank_index"], s.labels["cue_index"]
        if model.is_causal and c > b:
            continue  # the cue comes after "bank": invisible to a causal model
        att = cap.attention(i)[:, :, b, :]  # [layer, head, to]
        visible = [j for j in range(len(s.words)) if j != b and (j <= b or not model.is_causal)]
        others = [j for j in visible if j != c]
        cue_rows.append(att[:, :, c])
        rand_rows.append(att[:, :, others].mean(-1))
        candidates.append((att, visible))
        used.append(s.id)
    if not cue_rows:
        raise ProbekitError(
            "no sentence has its cue word visible from 'bank'",
            fix="causal models need cue_position=before sentences",
        )
    cue = np.mean(cue_rows, axis=0)  # [layer, head]
    rand = np.mean(rand_rows, axis=0)  # [layer, head]
    offset = _offset_matched(cap, sents, used, model.is_causal)  # [layer, head]
    null = np.empty(n_perm)
    for p in range(n_perm):
        sampled = [att[:, :, rng.choice(vis)] for att, vis in candidates]
        null[p] = np.mean(sampled, axis=0).max()
    layers = cap.attn_layers
    frame = pd.DataFrame(
        [
            {
                "model": model.name,
                "layer": layer,
                "head": h,
                "n": len(cue_rows),
                "cue_attention": float(cue[li, h]),
                "random_word_attention": float(rand[li, h]),
                "offset_matched_attention": float(offset[li, h]),
            }
            for li, layer in enumerate(layers)
            for h in range(cue.shape[1])
        ]
    )
    li, h = np.unravel_index(np.argmax(cue), cue.shape)
    summary = {
        "model": model.name,
        "n_sentences": len(cue_rows),
        "best_head": f"{layers[li]}.{h}",
        "best_cue_attention": float(cue[li, h]),
        "its_random_word_attention": float(rand[li, h]),
        "median_head_cue_attention": float(np.median(cue)),
        "its_offset_matched_attention": float(offset[li, h]),
        "heads_cue_gt_random": int((cue > rand).sum()),
        "heads_cue_gt_offset": int((cue > offset).sum()),
        "n_heads": int(cue.size),
        "null_best_mean": float(null.mean()),
        "p_value": empirical_p(float(cue.max()), null),
    }
    return frame, summary


def _offset_matched(cap, sents, used: list[str], causal: bool) -> np.ndarray:
    """Per head: mean attention from "bank" to a NON-cue word at the cue's relative offset, averaged over
    the offsets the used sentences have (each offset weighted by how many used sentences have it)."""
    by_offset: dict[int, list[np.ndarray]] = {}
    for i, s in enumerate(sents):
        b, c = s.labels["bank_index"], s.labels["cue_index"]
        att = cap.attention(i)[:, :, b, :]
        for j in range(len(s.words)):
            if j not in (b, c) and (j <= b or not causal):
                by_offset.setdefault(j - b, []).append(att[:, :, j])
    index = {s.id: s for s in sents}
    values = []
    for sid in used:
        s = index[sid]
        d = s.labels["cue_index"] - s.labels["bank_index"]
        if d in by_offset:
            values.append(np.mean(by_offset[d], axis=0))
    shape = cap.attention(0).shape[:2]
    return np.mean(values, axis=0) if values else np.full(shape, np.nan)


def explored_weights(model, sentence, cap=None) -> pd.DataFrame:
    """Every head's attention between "explored", "cat" and "room", next to the claimed 0.45 / 0.28."""
    cap = cap or run_capture(model, [sentence], resid=(), attention=True, progress=False)
    att = cap.attention(0)
    words = [w.lower() for w in sentence.words]
    try:
        v, cat, room = words.index("explored"), words.index("cat"), words.index("room")
    except ValueError:
        raise ProbekitError(f"{sentence.id!r} lacks explored/cat/room", fix="use seed:explored") from None
    rows = []
    for li, layer in enumerate(cap.attn_layers):
        for h in range(att.shape[1]):
            row = att[li, h, v]
            others = [j for j in range(len(words)) if j != v]
            rows.append(
                {
                    "model": model.name,
                    "layer": layer,
                    "head": h,
                    "explored_to_cat": float(row[cat]),
                    "explored_to_room": float(row[room]) if not model.is_causal else np.nan,
                    "room_to_explored": float(att[li, h, room, v]),
                    "explored_to_sink": float(cap.special_mass(0)[li, h, v]),
                    "explored_argmax_other": sentence.words[others[int(np.argmax(row[others]))]],
                }
            )
    return pd.DataFrame(rows)


def explored_summary(frame: pd.DataFrame, is_causal: bool) -> dict:
    """How close any head comes to the claimed weights, and what is typical."""
    f = frame.copy()
    if is_causal:
        f["distance"] = (f.explored_to_cat - CLAIMED["cat"]).abs()
    else:
        f["distance"] = np.hypot(f.explored_to_cat - CLAIMED["cat"], f.explored_to_room - CLAIMED["room"])
    best = f.loc[f.distance.idxmin()]  # type: ignore[call-overload]  # idxmin: a row label (pandas-stubs: idxmin returns Hashable)
    out = {
        "model": f.model.iloc[0],
        "n_heads": len(f),
        "closest_head": f"{int(best['layer'])}.{int(best['head'])}",
        "closest_cat": float(best.explored_to_cat),
        "closest_room": float(best.explored_to_room) if not is_causal else None,
        "closest_distance": float(best.distance),
        "heads_within_0.1": int((f.distance <= 0.1).sum()),
        "mean_explored_to_cat": float(f.explored_to_cat.mean()),
        "max_explored_to_cat": float(f.explored_to_cat.max()),
        "heads_argmax_cat": int((f.explored_argmax_other == "cat").sum()),
        "mean_explored_to_sink": float(f.explored_to_sink.mean()),
    }
    if is_causal:
        out["mean_room_to_explored"] = float(f.room_to_explored.mean())
        out["max_room_to_explored"] = float(f.room_to_explored.max())
    else:
        out["mean_explored_to_room"] = float(f.explored_to_room.mean())
    return out
