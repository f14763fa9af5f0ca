"""Benchmark 5: `make run`'s default job, stage by stage, from a run folder's ``manifest.json``.

Nothing is rerun here: the numbers are the ``timings_s`` that `probekit.experiment` wrote when the job
ran (``--manifest PATH``, default ``results/seed_claims/manifest.json``). A stage that was reused from an
earlier run shows 0 s. Without a manifest the benchmark is skipped with a note.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from probekit import bench


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    ctx = ctx or bench.BenchContext(quick=quick)
    path = Path(ctx.manifest)
    if not path.exists():
        frame = pd.DataFrame(columns=list(bench.COLUMNS))
        frame.attrs["notes"] = (f"Skipped: no manifest at `{path}`. Run `make run` (or `probekit run CONFIG`) "
                                "first, or pass `probekit bench --manifest RUN_DIR/manifest.json`.")
        return frame
    manifest = json.loads(path.read_text())
    timings = dict(manifest.get("timings_s") or {})
    total = float(timings.pop("total", sum(timings.values())))
    rows = []
    for label, seconds in timings.items():
        analysis, _, rest = label.partition("/")
        model = rest.split("__")[0] if rest else ""
        rows.append({"benchmark": "e2e", "variant": label, "model": model, "repeat": 0, "seconds": float(seconds),
                     "analysis": analysis, "share_of_total": float(seconds) / total if total else float("nan")})
    staged = sum(r["seconds"] for r in rows)
    rows.append({"benchmark": "e2e", "variant": "(outside stages: loading data, report)", "model": "", "repeat": 0,
                 "seconds": max(total - staged, 0.0), "analysis": "other",
                 "share_of_total": max(total - staged, 0.0) / total if total else float("nan")})
    frame = pd.DataFrame(rows)
    frame.attrs["table"] = _table(frame, total)
    frame.attrs["notes"] = _notes(frame, manifest, path, total)
    return frame


def _table(frame: pd.DataFrame, total: float) -> pd.DataFrame:
    table = frame[["variant", "seconds", "share_of_total"]].rename(columns={"variant": "stage"})
    table = table.sort_values("seconds", ascending=False, kind="stable")
    return pd.concat([table, pd.DataFrame([{"stage": "total", "seconds": total, "share_of_total": 1.0}])],
                     ignore_index=True)


def _notes(frame: pd.DataFrame, manifest: dict, path: Path, total: float) -> str:
    by = frame.groupby("analysis")["seconds"].sum().sort_values(ascending=False)
    machine = manifest.get("machine", {})
    reused = int((frame["seconds"] == 0).sum())
    top = frame.sort_values("seconds", ascending=False).iloc[0]
    parts = [f"From `{path}` (run `{manifest.get('name', '?')}`, commit {str(manifest.get('git_commit'))[:10]}, "
             f"{machine.get('cpu_count', '?')} CPUs, {machine.get('torch_threads', '?')} torch threads): total "
             f"{total / 60:.1f} min. By analysis: " + ", ".join(f"{k} {v / 60:.1f} min ({v / total:.0%})"
                                                             for k, v in by.items()) + ".",
             f"The largest single stage is `{top.variant}` ({top.seconds / 60:.1f} min, {top.share_of_total:.0%}).",
             "Stage times include loading each model the first time a stage asks for it. These were measured "
             "once, by the run itself, on whatever load the machine had then."]
    if reused:
        parts.append(f"{reused} stage(s) show 0 s: they were finished in an earlier run and reused.")
    return " ".join(parts)


def render(frame: pd.DataFrame, ctx: bench.BenchContext) -> tuple[pd.DataFrame | None, str]:
    """Re-read the manifest (this benchmark only reads a file)."""
    fresh = run(ctx.quick, ctx)
    return fresh.attrs.get("table"), fresh.attrs.get("notes", "")
