"""Do the C4 head conclusions survive another attention weighting? `compare_weightings` reruns the head
analysis (`analyze_heads`, the C4 rule of `probekit.analyses.heads.rules` unchanged) on raw, norm-weighted
(Kobayashi et al. 2020) and rollout (Abnar & Zuidema 2020) attention and tabulates, per relation, the
dev-selected head, its score and verdict and whether the conclusion changes against raw; plus Voita et
al.'s (2019) positional heads per weighting and the sink mass each head loses under the norm weighting.
Method: ``docs/methods/weighting.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from probekit.analyses.heads.result import SELECTED_HEAD_COLUMNS
from probekit.analyses.heads.score import analyze_heads
from probekit.analyses.heads.weighting import WEIGHTINGS, check_weighting
from probekit.data.relations import DIRECTIONS
from probekit.errors import ProbekitError
from probekit.report import atomic_write_text, markdown_table, write_table

#: a head "is a sink head" when at least this share of its attention (mean over words) goes to the sink
SINK_HEAD = 0.5

COMPARISON_COLUMNS = [
    "model",
    "data",
    "weighting",
    *SELECTED_HEAD_COLUMNS,
    "attention_mass",
    "offset_accuracy",
    "verdict",
    "conclusion",
    "relation_verdict",
    "same_head_as_raw",
    "conclusion_changed",
    "relation_conclusion_changed",
]


def conclusion(verdict) -> str:
    """The C4 rule's conclusion without the head: ``specialist``, ``only positional``, ``none`` or ``n/a``.

    Examples
    --------
    >>> conclusion("specialist found (3.1)"), conclusion("n/a (n=4 < 30 test instances)")
    ('specialist', 'n/a')
    """
    v = str(verdict) if isinstance(verdict, str) else "none"
    for prefix, name in (
        ("specialist", "specialist"),
        ("only positional", "only positional"),
        ("n/a", "n/a"),
    ):
        if v.startswith(prefix):
            return name
    return "none"


@dataclass(frozen=True)
class WeightingComparison:
    """What `compare_weightings` found; every frame is tidy and deterministic.

    - ``comparison``: one row per (weighting, relation, direction): the dev-selected head, its test
      score, the C4 verdict and whether the conclusion (and the head) differ from ``raw``
      (`COMPARISON_COLUMNS`).
    - ``positional``: Voita's table (`probekit.analyses.heads.positional_heads`) per weighting.
    - ``sink``: per head, the mean attention on the sink/[CLS]/[SEP] under raw and norm weighting
      (``model, layer, head, sink_raw, sink_norm``); empty without ``norm``.
    - ``analyses``: the `HeadAnalysis` of each weighting.

    Examples
    --------
    >>> import pandas as pd
    >>> sink = pd.DataFrame({"model": "m", "layer": [0, 1], "head": [0, 0], "sink_raw": [0.9, 0.1],
    ...                      "sink_norm": [0.3, 0.2]})
    >>> s = WeightingComparison("m", "d", pd.DataFrame(), pd.DataFrame(), sink).sink_summary()
    >>> round(s["share_removed"], 2), s["sink_heads_raw"], s["sink_heads_still_norm"]
    (0.5, 1, 0)
    """

    model: str
    data: str
    comparison: pd.DataFrame
    positional: pd.DataFrame
    sink: pd.DataFrame
    analyses: dict = field(default_factory=dict)

    def write(self, out: str | os.PathLike) -> list[Path]:
        """``weighting_comparison.csv``, ``weighting_positional.csv``, ``weighting_sink.csv`` (with
        ``norm``), ``weighting_verdicts.csv`` (every weighting's C4 verdicts) and ``summary.md``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        verdict_frames = [
            a.verdicts[a.verdicts.model == a.model].assign(weighting=w).pipe(_weighting_first)
            for w, a in self.analyses.items()
        ]
        written = [
            write_table(self.comparison, out / "weighting_comparison.csv"),
            write_table(self.positional, out / "weighting_positional.csv"),
            write_table(pd.concat(verdict_frames, ignore_index=True), out / "weighting_verdicts.csv"),
        ]
        if len(self.sink):
            written.append(write_table(self.sink, out / "weighting_sink.csv"))
        written.append(atomic_write_text(out / "summary.md", self.summary()))
        return written

    def sink_summary(self) -> dict:
        """Mean sink mass over heads under raw and norm, the share that disappears, and the sink heads
        (raw sink mass >= `SINK_HEAD`) that remain sink heads under norm."""
        if not len(self.sink):
            return {}
        raw, norm = self.sink.sink_raw.to_numpy(), self.sink.sink_norm.to_numpy()
        heads = raw >= SINK_HEAD
        return {
            "mean_sink_raw": float(raw.mean()),
            "mean_sink_norm": float(norm.mean()),
            "share_removed": float(1.0 - norm.sum() / raw.sum()) if raw.sum() > 0 else float("nan"),
            "sink_heads_raw": int(heads.sum()),
            "sink_heads_still_norm": int((heads & (norm >= SINK_HEAD)).sum()),
            "n_heads": len(raw),
        }

    def summary(self) -> str:
        """Markdown: the comparison per relation, positional heads and the sink mass per weighting."""
        c = self.comparison
        lines = [
            f"# Attention weighting: {self.model} on `{self.data}`",
            "",
            "The head analysis (C4 rule unchanged) on raw attention, norm-weighted attention "
            "(Kobayashi et al. 2020; rows renormalised to 1) and per-head attention rollout (Abnar & Zuidema "
            "2020); see "
            "`docs/methods/weighting.md`. `conclusion_changed`: the C4 conclusion (specialist / only "
            "positional / none / n/a) differs from raw's.",
            "",
            "## Best head per relation",
            "",
            markdown_table(
                c[
                    [
                        "weighting",
                        "relation",
                        "direction",
                        "layer",
                        "head",
                        "accuracy",
                        "offset_accuracy",
                        "verdict",
                        "same_head_as_raw",
                        "conclusion_changed",
                    ]
                ]
            ),
            "",
        ]
        changed = c[c.conclusion_changed]
        lines.append(
            "No C4 conclusion changes against raw."
            if changed.empty
            else "Conclusions that change against raw: "
            + "; ".join(
                f"{r.relation}/{r.direction} under {r.weighting}: {r.conclusion}"
                for r in changed.itertuples()
            )
            + "."
        )
        lines += ["", "## Positional heads (Voita et al. 2019)", ""]
        p = self.positional
        for w in dict.fromkeys(p.weighting):
            s = p[(p.weighting == w) & p.positional]
            tags = ", ".join(f"{int(r.layer)}.{int(r.head)} ({int(r.top_offset):+d})" for r in s.itertuples())
            lines.append(
                f"- {w}: {len(s)} of {int((p.weighting == w).sum())} heads{': ' + tags if tags else ''}"
            )
        ss = self.sink_summary()
        if ss:
            lines += [
                "",
                "## Sink attention under the norm weighting",
                "",
                f"Mean attention on the sink/[CLS]/[SEP] over {ss['n_heads']} heads: "
                f"{ss['mean_sink_raw']:.3f} raw, {ss['mean_sink_norm']:.3f} norm-weighted "
                f"({100 * ss['share_removed']:.1f}% of it disappears). Heads with >= {SINK_HEAD:.0%} on the "
                f"sink: {ss['sink_heads_raw']} raw, of which {ss['sink_heads_still_norm']} stay so under the "
                "norm weighting.",
            ]
        return "\n".join(lines) + "\n"


def _weighting_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["weighting", *[col for col in frame.columns if col != "weighting"]]]


def compare_weightings(
    model,
    dataset,
    relations=None,
    weightings=WEIGHTINGS,
    directions=DIRECTIONS,
    batch_size: int = 16,
    seed: int = 0,
    n_boot: int = 1000,
    n_perm: int = 200,
    random_baseline: bool = False,
    random_model=None,
    progress: bool = True,
    test_size: float = 0.5,
    data_label: str | None = None,
) -> WeightingComparison:
    """Rerun the C4 head analysis under each attention weighting and compare the conclusions with raw.

    Parameters
    ----------
    model, dataset, relations, directions, batch_size, seed, n_boot, n_perm, random_baseline,
    random_model, progress, test_size, data_label : as in `probekit.analyses.heads.analyze_heads`
        (the TransformerLens detector is not run).
    weightings : some of `WEIGHTINGS`; ``raw`` is always scored (the reference) and comes first.

    Returns
    -------
    WeightingComparison
        ``.write(folder)`` writes the comparison, positional and sink tables and ``summary.md``.

    Examples
    --------
    >>> import probekit as pk
    >>> cmp = pk.compare_weightings(pk.load_model("tiny-llama"), pk.load_dataset("template:svo_adj?n=12"),
    ...                             relations=["amod", "prev_word"], n_boot=20, n_perm=10, progress=False)
    >>> sorted(set(cmp.comparison.weighting)), list(cmp.sink.columns)
    (['norm', 'raw', 'rollout'], ['model', 'layer', 'head', 'sink_raw', 'sink_norm'])
    """
    if isinstance(weightings, str):
        weightings = weightings.split(",")
    asked = [check_weighting(str(w).strip(), where="compare_weightings(weightings=...)") for w in weightings]
    if not asked:
        raise ProbekitError("no weightings were given", where="compare_weightings", fix=f"e.g. {WEIGHTINGS}")
    order = list(dict.fromkeys(["raw", *asked]))
    analyses = {
        w: analyze_heads(
            model,
            dataset,
            relations=relations,
            directions=directions,
            batch_size=batch_size,
            seed=seed,
            n_boot=n_boot,
            n_perm=n_perm,
            random_baseline=random_baseline,
            random_model=random_model,
            progress=progress,
            test_size=test_size,
            detector=False,
            data_label=data_label,
            weighting=w,
        )
        for w in order
    }
    raw = analyses["raw"]
    comparison = _comparison(analyses)
    positional = pd.concat(
        [a.positional.assign(weighting=w).pipe(_weighting_first) for w, a in analyses.items()],
        ignore_index=True,
    )
    sink = pd.DataFrame(columns=["model", "layer", "head", "sink_raw", "sink_norm"])
    if "norm" in analyses:
        sink = raw.positional[["model", "layer", "head", "special_mass"]].rename(
            columns={"special_mass": "sink_raw"}
        )
        sink["sink_norm"] = analyses["norm"].positional.special_mass.to_numpy()
    return WeightingComparison(
        model=raw.model,
        data=raw.data,
        comparison=comparison,
        positional=positional,
        sink=sink.reset_index(drop=True),
        analyses=analyses,
    )


def _comparison(analyses: dict) -> pd.DataFrame:
    """One row per (weighting, relation, direction) from each analysis's verdicts (main model only)."""
    frames = []
    for w, a in analyses.items():
        v = a.verdicts[a.verdicts.model == a.model].copy()
        v["weighting"] = w
        v["conclusion"] = [conclusion(x) for x in v.verdict]
        frames.append(v)
    df = pd.concat(frames, ignore_index=True)
    ref = frames[0].set_index(["relation", "direction"])
    key = list(zip(df.relation, df.direction, strict=True))
    ref_layer = ref.layer.reindex(key).to_numpy()
    ref_head = ref["head"].reindex(key).to_numpy()
    df["same_head_as_raw"] = (df.layer.to_numpy() == ref_layer) & (df["head"].to_numpy() == ref_head)
    df["same_head_as_raw"] = df.same_head_as_raw.fillna(False).astype(bool)
    df["conclusion_changed"] = df.conclusion.to_numpy() != ref.conclusion.reindex(key).to_numpy()
    ref_rel = {
        r: conclusion(x) for r, x in zip(ref.index.get_level_values(0), ref.relation_verdict, strict=True)
    }
    df["relation_conclusion_changed"] = [
        conclusion(x) != ref_rel[r] for r, x in zip(df.relation, df.relation_verdict, strict=True)
    ]
    return df.reindex(columns=COMPARISON_COLUMNS).reset_index(drop=True)
