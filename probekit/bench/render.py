"""The Markdown report ``benchmarks.md``: the machine, the method, a table and notes per benchmark.

`meta_from_report` reads back what an older report (written before ``run.json`` existed) recorded.
See ``docs/methods/benchmarks.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from probekit.bench.context import TITLES, BenchContext

__all__ = ["meta_from_report", "render_report", "summarize"]

#: the report's method paragraph (what the timing and memory columns mean)
METHOD = (
    "**Method.** Variants of a benchmark run interleaved in one process (rotated order every repetition; "
    "the capture variants alternate within every chunk of 64 sentences), "
    "so that other jobs on this shared machine slow every variant alike; ratios are computed within each "
    "repetition and then the median is taken. Absolute times are noisy, ratios much less so. Peak memory "
    "comes from a separate fresh process per variant (`python -m probekit.bench child`): `peak_rss_mb` is "
    "`getrusage(RUSAGE_SELF).ru_maxrss` over the child's whole life (so it includes loading the model and "
    "counts resident pages of memory-mapped output files too). Because that high-water mark is often set "
    "while the model loads, the child also marks `baseline_rss_mb` after loading and one warm-up batch, "
    "and a thread samples `/proc/self/status` every 10 ms from then on: `run_peak_rss_mb` (VmRSS), "
    "`run_peak_anon_mb` (RssAnon: heap, tensors, arrays) and `run_peak_file_mb` (RssFile: mapped files, "
    "e.g. the capture's .npy outputs). `run_peak_rss_mb - baseline_rss_mb` is what the variant itself needed."
)


def summarize(
    frame: pd.DataFrame,
    keys: Sequence[str] = ("variant", "model", "n_sentences", "threads"),
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """Median and min/max seconds over repeats, median tokens/s and peak RSS, per ``keys``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Benchmark rows (``seconds``, ``tokens_per_s`` and the keys).
    keys : sequence of str
        The grouping columns (those absent or all-NaN are dropped).
    extra : sequence of str
        Further columns (e.g. a per-repeat ratio) shown as medians.

    Returns
    -------
    pandas.DataFrame
        One row per group: the keys, ``repeats``, ``median_s``, ``min_s``, ``max_s``, ``tokens_per_s``,
        the ``extra`` columns and the memory columns present.

    Examples
    --------
    >>> frame = pd.DataFrame({"variant": ["a", "a", "b"], "seconds": [1.0, 3.0, 2.0],
    ...                       "tokens_per_s": [10.0, 30.0, 20.0]})
    >>> summarize(frame)[["variant", "repeats", "median_s", "max_s"]].values.tolist()
    [['a', 2, 2.0, 3.0], ['b', 1, 2.0, 2.0]]
    """
    keys = [k for k in keys if k in frame and frame[k].notna().any()]
    rows = []
    for key, g in frame.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        row.update(
            {
                "repeats": int(g["seconds"].notna().sum()),
                "median_s": g["seconds"].median(),
                "min_s": g["seconds"].min(),
                "max_s": g["seconds"].max(),
                "tokens_per_s": g["tokens_per_s"].median(),
            }
        )
        for col in extra:
            if col in g:
                row[col] = g[col].median()
        for col in (
            "baseline_rss_mb",
            "run_peak_rss_mb",
            "run_peak_anon_mb",
            "run_peak_file_mb",
            "peak_rss_mb",
        ):
            if col in g and g[col].notna().any():
                row[col] = g[col].median()
        rows.append(row)
    return pd.DataFrame(rows)


def render_report(
    frame: pd.DataFrame,
    notes: dict[str, str],
    machine: dict,
    ctx: BenchContext,
    wall: dict[str, float],
    tables: dict[str, pd.DataFrame | None] | None = None,
) -> str:
    """The text of ``benchmarks.md``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Every benchmark's rows (as in ``benchmarks.csv``).
    notes : dict of str to str
        The notes under each benchmark's table; its keys (in order) are the sections shown.
    machine : dict
        `machine_info` plus ``invocations``, or ``{"verbatim": text}`` for a run recorded before
        ``run.json`` existed.
    ctx : BenchContext
        The run's mode and repetitions.
    wall : dict of str to float
        Each benchmark's wall time in seconds.
    tables : dict of str to pandas.DataFrame or None, optional
        A benchmark's own summary table; by default the median over repeats per variant (`summarize`).

    Returns
    -------
    str

    Examples
    --------
    >>> frame = pd.DataFrame({"benchmark": ["memory"], "variant": ["x"], "seconds": [1.0],
    ...                       "tokens_per_s": [5.0]})
    >>> text = render_report(frame, {"memory": "A note."}, {"verbatim": "a machine"},
    ...                      BenchContext(quick=True), {"memory": 60.0})
    >>> print(text[text.index("## 2."):], end="")
    ## 2. Memory scaling of capture
    <BLANKLINE>
    _Benchmark wall time: 1.0 min._
    <BLANKLINE>
    | variant | repeats | median_s | min_s | max_s | tokens_per_s |
    |---|---|---|---|---|---|
    | x | 1 | 1 | 1 | 1 | 5 |
    <BLANKLINE>
    <BLANKLINE>
    A note.
    <BLANKLINE>
    """
    from probekit.report import markdown_table

    mode = (
        "`--quick` (tiny models, few sentences: checks the harness, not performance)" if ctx.quick else "full"
    )
    repeats = (
        ctx.n_repeats
        if ctx.repeats is not None or ctx.quick
        else "3 (capture), 2 (probes, memory with MiniLM)"
    )
    timed = f"{repeats} timed repetition(s) per variant"
    if len(machine.get("invocations") or []) > 1:  # each invocation set its own repetitions
        timed = "timed repetitions per variant as each table's `repeats` column gives (merged invocations)"
    lines = [
        "# probekit benchmarks",
        "",
        f"Mode: {mode}; {timed} after one warm-up; tables give the median and min/max.",
        "",
        "## Machine",
        "",
    ]
    if "verbatim" in machine:
        lines += [machine["verbatim"], *_invocation_lines(machine)]
    else:
        lines += _machine_lines(machine)
    lines += ["", METHOD, ""]
    for name, note in notes.items():
        lines += [f"## {TITLES.get(name, name)}", ""]
        sub = frame[frame["benchmark"] == name] if not frame.empty else frame
        if wall.get(name) is not None:
            lines += [f"_Benchmark wall time: {wall[name] / 60:.1f} min._", ""]
        table = (tables or {}).get(name)
        if table is None and not sub.empty:
            table = _report_table(sub)
        if table is not None and not table.empty:
            lines += [markdown_table(_integral(table)), ""]
        if note.strip():  # notes saved by a run end with a newline, even when empty
            lines += [note.strip(), ""]
    return "\n".join(lines) + "\n"


def _report_table(sub: pd.DataFrame) -> pd.DataFrame:
    """The default table of a benchmark: `summarize` with its ratio, speed-up, share and accuracy columns."""
    extra = [c for c in sub.columns if c.startswith(("ratio_", "speedup_"))]
    extra += [c for c in ("share_of_total", "accuracy") if c in sub]
    keys = [k for k in ("variant", "model", "n_sentences", "threads") if k in sub]
    table = summarize(sub, keys, extra)
    return table.dropna(axis=1, how="all")


def _integral(table: pd.DataFrame) -> pd.DataFrame:
    """Float columns that hold only whole numbers (counts read back from CSV) shown as integers."""
    table = table.copy()
    for col in table.columns:
        values = table[col]
        if values.dtype.kind == "f" and values.notna().any():
            finite = values.dropna()
            if (
                (finite == finite.round()).all()
                and finite.abs().max() < 2**53
                and col not in ("median_s", "min_s", "max_s", "seconds")
            ):
                table[col] = values.astype("Int64")
    return table


def _machine_lines(machine: dict) -> list[str]:
    v = machine["versions"]
    return [
        f"- {machine['cpu_count']} CPU(s) ({machine['processor']}), {machine['memory_gib']} GiB RAM, "
        f"{machine['platform']}, Python {machine['python']}",
        f"- CPU model: {machine.get('cpu_model') or 'not recorded'}; torch CPU capability "
        f"{machine.get('torch_cpu_capability') or 'not recorded'}",
        f"- torch threads: **{machine['torch_threads']}** (`torch.set_num_threads`, BLAS pools via "
        f"threadpoolctl); load average when the run started: {machine['load_average_at_start']} "
        "(other jobs share this machine)",
        "- thread pools: " + "; ".join(machine.get("thread_pools") or ["(threadpoolctl not available)"]),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        *_invocation_lines(machine),
    ]


def _invocation_lines(machine: dict) -> list[str]:
    inv = machine.get("invocations") or []
    if len(inv) < 2:
        return []
    return [
        "- this report merges several `probekit bench` invocations (`--only`): "
        + "; ".join(
            f"{', '.join(i.get('benchmarks', []))} — started {i.get('started')}, load average then "
            f"{i.get('load_average')}"
            for i in inv
        )
    ]


def meta_from_report(md_path: str | Path) -> dict:
    """For a run made before ``run.json`` existed: what its ``benchmarks.md`` recorded (machine, wall times).

    Parameters
    ----------
    md_path : path
        The report (a missing file reads as empty).

    Returns
    -------
    dict
        Shaped like ``run.json``: ``machine`` (``{"verbatim": text}``), ``wall_s``, ``notes``,
        ``benchmarks`` and ``invocations``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "benchmarks.md"
    >>> _ = path.write_text("## 2. Memory scaling of capture\\n\\n"
    ...                     "_Benchmark wall time: 1.5 min._\\n\\nA note.\\n")
    >>> meta = meta_from_report(path)
    >>> meta["wall_s"], meta["notes"]["memory"], meta["benchmarks"]
    ({'memory': 90.0}, 'A note.', ['memory'])
    """
    md_path = Path(md_path)
    text = md_path.read_text() if md_path.exists() else ""
    machine = re.search(r"## Machine\n\n(.*?)\n\n\*\*Method", text, re.S)
    wall, notes = {}, {}
    for name, title in TITLES.items():
        m = re.search(
            rf"## {re.escape(title)}\n\n(?:_Benchmark wall time: ([0-9.]+) min._\n\n)?(.*?)(?=\n## |\Z)",
            text,
            re.S,
        )
        if m and m.group(1):
            wall[name] = float(m.group(1)) * 60
        if m:
            notes[name] = m.group(2).strip()
    load = re.search(r"load average when the run started: (\[[^\]]*\])", text)
    benchmarks = [n for n in TITLES if f"## {TITLES[n]}" in text]
    return {
        "machine": {"verbatim": machine.group(1) if machine else "(not recorded)"},
        "wall_s": wall,
        "notes": notes,
        "benchmarks": benchmarks,
        "invocations": [
            {
                "started": "an earlier run (before run.json existed)",
                "load_average": json.loads(load.group(1)) if load else None,
                "benchmarks": benchmarks,
            }
        ],
    }
