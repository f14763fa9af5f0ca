"""Benchmark 5: `make run`'s default job, stage by stage, from a run folder's ``manifest.json``.

Nothing is rerun here: the numbers are the ``timings_s`` that `probekit.experiment.config` wrote
(``--manifest PATH``, default ``results/seed_claims/manifest.json``). A stage finished in an earlier
invocation is reused; the manifest then carries the compute time recorded in its ``.done`` marker, or
null when the marker predates recorded times. ``total`` is the wall time of the manifest's own
invocation only. Without a manifest the benchmark is skipped with a note.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from probekit import bench


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    ctx = ctx or bench.BenchContext(quick=quick)
    path = Path(ctx.manifest)
    if not path.exists():
        frame = pd.DataFrame(columns=list(bench.COLUMNS))
        frame.attrs["notes"] = _skipped(path)
        return frame
    manifest = json.loads(path.read_text())
    timings = dict(manifest.get("timings_s") or {})
    total = timings.pop("total", None)
    cpu = dict(manifest.get("cpu_s") or {})  # absent from manifests written before CPU times were kept
    total_cpu = cpu.pop("total", None)
    machine = manifest.get("machine", {})
    common = {
        "benchmark": "e2e",
        "repeat": 0,
        "manifest": str(path),
        "run_name": manifest.get("name"),
        "git_commit": manifest.get("git_commit"),
        "invocation_total_s": total,
        "invocation_cpu_s": total_cpu,
        "run_cpu_count": machine.get("cpu_count"),
        "run_torch_threads": machine.get("torch_threads"),
    }
    rows = []
    for label, seconds in timings.items():
        analysis, _, rest = label.partition("/")
        rows.append(
            {
                **common,
                "variant": label,
                "model": rest.split("__")[0] if rest else "",
                "analysis": analysis,
                "seconds": float(seconds) if seconds is not None else math.nan,
                "cpu_s": float(cpu[label]) if cpu.get(label) is not None else math.nan,
                "recorded": seconds is not None,
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs["table"], frame.attrs["notes"] = render(frame, ctx)
    return frame


def _skipped(path: Path) -> str:
    return (
        f"Skipped: no manifest at `{path}`. Run `make run` (or `probekit run CONFIG`) first, or pass "
        "`probekit bench --manifest RUN_DIR/manifest.json`."
    )


def render(frame: pd.DataFrame, ctx: bench.BenchContext) -> tuple[pd.DataFrame | None, str]:
    """Table and notes from the rows alone (as in benchmarks.csv)."""
    if frame.empty or "seconds" not in frame:
        return None, _skipped(Path(ctx.manifest))
    frame = frame.copy()
    if "cpu_s" not in frame:  # no CPU times: a manifest from before they were kept (the column is dropped)
        frame["cpu_s"] = math.nan
    known = frame[frame["seconds"].notna()]
    staged = float(known["seconds"].sum())
    staged_cpu = known["cpu_s"].sum(min_count=1)  # NaN when no stage has a CPU time
    frame["share_of_recorded"] = frame["seconds"] / staged if staged else math.nan
    frame["cores_busy"] = frame["cpu_s"] / frame["seconds"]
    table = frame[["variant", "seconds", "share_of_recorded", "cpu_s", "cores_busy"]]
    table = table.rename(columns={"variant": "stage"})
    table = table.sort_values("seconds", ascending=False, na_position="last", kind="stable")
    table = pd.concat(
        [
            table,
            pd.DataFrame(
                [
                    {
                        "stage": "sum of recorded stages",
                        "seconds": staged,
                        "share_of_recorded": 1.0,
                        "cpu_s": staged_cpu,
                        "cores_busy": staged_cpu / staged if staged else math.nan,
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    first = frame.iloc[0]
    total = first.get("invocation_total_s")
    by = known.groupby("analysis")["seconds"].sum().sort_values(ascending=False)
    parts = [
        f"From `{first.get('manifest')}` (run `{first.get('run_name')}`, commit "
        f"{str(first.get('git_commit'))[:10]}, {_int(first.get('run_cpu_count'))} CPUs, "
        f"{_int(first.get('run_torch_threads'))} torch threads). Recorded stage compute times add up to "
        f"{staged / 60:.1f} min; by analysis: "
        + ", ".join(f"{k} {v / 60:.1f} min ({v / staged:.0%})" for k, v in by.items())
        + "."
    ]
    if not known.empty:
        top = known.sort_values("seconds", ascending=False).iloc[0]
        parts.append(
            f"The largest stage is `{top.variant}` ({top.seconds / 60:.1f} min, {top.seconds / staged:.0%} "
            "of the recorded time)."
        )
    missing = frame[frame["seconds"].isna()]
    if not missing.empty:
        parts.append(
            f"{len(missing)} stage(s) have no recorded time (finished by an earlier invocation, before "
            "`.done` markers kept times): " + ", ".join(f"`{v}`" for v in missing.variant) + "."
        )
    if total is not None and not (isinstance(total, float) and math.isnan(total)):
        if float(total) < staged:
            parts.append(
                f"The manifest's `total` ({float(total):.1f} s) is the wall time of its own invocation, "
                "which reused finished stages; it is not the cost of the job from scratch."
            )
        else:
            parts.append(
                f"The invocation took {float(total) / 60:.1f} min in all; the rest is loading data and "
                "models outside stages and writing the report."
            )
    busy = known[known["cpu_s"].notna()].sort_values("seconds", ascending=False)
    if not busy.empty and busy["seconds"].sum() > 0:
        cores = float(busy["cpu_s"].sum() / busy["seconds"].sum())
        large = busy[busy["seconds"] > 0.1 * staged]
        parts.append(
            "CPU time (the run's own process, all threads) over wall time: the stages kept "
            f"{cores:.2f} cores busy on average, of {_int(first.get('run_cpu_count'))}"
            + (
                "; the stages that take more than a tenth of the time: "
                + ", ".join(f"`{r.variant}` {r.cpu_s / r.seconds:.2f}" for r in large.itertuples())
                if not large.empty
                else ""
            )
            + ". Where a stage keeps every core busy, running stages side by side cannot make the job "
            "faster; only less work can."
        )
    parts.append(
        "Stage times include loading each model the first time a stage needs it, and were measured once, "
        "by the run itself, on whatever load the machine had then."
    )
    return table, " ".join(parts)


def _int(x) -> str:
    try:
        return str(int(x))
    except (TypeError, ValueError):
        return "?"
