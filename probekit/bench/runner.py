"""Running the benchmark modules (``benchmarks/bench_<name>.py``) and writing their outputs.

`run_all` runs them and writes ``benchmarks.csv``, ``benchmarks.md``, ``run.json``, ``notes/`` and
``manifest.json``; `render_only` rebuilds ``benchmarks.md`` from what a run left. See
``docs/methods/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.bench.context import BENCHMARKS, COLUMNS, BenchContext, machine_info, set_threads
from probekit.bench.render import meta_from_report, render_report
from probekit.errors import ProbekitError

__all__ = [
    "POSITIVE_COLUMNS",
    "check_rows",
    "default_benchmarks_dir",
    "load_module",
    "render_only",
    "run_all",
    "run_benchmark",
]

#: columns whose values, where given, must be finite and > 0 (``seconds`` must be given in some row)
POSITIVE_COLUMNS: tuple[str, ...] = ("seconds", "tokens_per_s", "peak_rss_mb")


def default_benchmarks_dir() -> Path:
    """``benchmarks/`` in the repository that holds the ``probekit`` package (a source checkout).

    Examples
    --------
    >>> (default_benchmarks_dir() / "bench_capture.py").exists()
    True
    """
    from probekit.report.provenance import REPO

    return REPO / "benchmarks"


def load_module(path: Path):
    """Import the file ``path`` as the module ``probekit_benchmarks_<stem>`` (registered in sys.modules).

    Parameters
    ----------
    path : Path
        A benchmark module, or any file `measure_in_subprocess` runs a function of.

    Returns
    -------
    module

    Examples
    --------
    >>> load_module(default_benchmarks_dir() / "bench_e2e.py").__name__
    'probekit_benchmarks_bench_e2e'
    """
    name = f"probekit_benchmarks_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def check_rows(frame: pd.DataFrame) -> str | None:
    """What is wrong with a benchmark's rows, or None: each of `POSITIVE_COLUMNS` must be numeric, and
    finite and > 0 wherever it is given (NaN = not measured), and at least one row must give ``seconds``.

    Examples
    --------
    >>> check_rows(pd.DataFrame({"seconds": [1.0, np.nan], "peak_rss_mb": [np.nan, 20.0]})) is None
    True
    >>> check_rows(pd.DataFrame({"seconds": [1.0, -2.0, np.inf]}))
    'seconds is not finite and > 0 in 2 of 3 row(s)'
    >>> check_rows(pd.DataFrame({"variant": ["x"]}))
    'no row gives seconds'
    """
    for col in POSITIVE_COLUMNS:
        if col not in frame:
            continue
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = (values.isna() & frame[col].notna()) | (values.notna() & ~(np.isfinite(values) & (values > 0)))
        if bad.any():
            return f"{col} is not finite and > 0 in {int(bad.sum())} of {len(frame)} row(s)"
    if "seconds" not in frame or pd.to_numeric(frame["seconds"], errors="coerce").notna().sum() == 0:
        return "no row gives seconds"
    return None


def item_frame(rows: list[dict], benchmark: str, model: str, threads: int) -> pd.DataFrame:
    """A benchmark's rows over items (pairs, not sentences) in the common layout: `COLUMNS` first.

    ``n_sentences`` is the rows' ``n_items``; ``tokens_per_s`` and ``peak_rss_mb`` are not measured (NaN).

    Examples
    --------
    >>> rows = [{"variant": "fast", "repeat": 0, "seconds": 1.5, "n_items": 8}]
    >>> frame = item_frame(rows, "ablation", "m", 1)
    >>> frame.columns.tolist()[:4], int(frame.n_sentences.iloc[0])
    (['benchmark', 'variant', 'model', 'n_sentences'], 8)
    """
    out = pd.DataFrame(rows)
    out.insert(0, "benchmark", benchmark)
    out.insert(2, "model", model)
    out["n_sentences"] = out["n_items"]
    out["tokens_per_s"] = np.nan
    out["peak_rss_mb"] = np.nan
    out["threads"] = threads
    lead = [c for c in COLUMNS if c in out.columns]
    return out[lead + [c for c in out.columns if c not in lead]]


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=list(COLUMNS))


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return str(path)


def run_benchmark(
    name: str, ctx: BenchContext, folder: Path
) -> tuple[pd.DataFrame, str, pd.DataFrame | None]:
    """Run ``folder/bench_<name>.py``: its ``run(quick, ctx)`` (or ``run(quick)``).

    A missing or failing module gives no rows and a note saying so (the other benchmarks still run); so
    do rows that fail `check_rows` (a timing that is NaN in every row, negative, zero or infinite).

    Parameters
    ----------
    name : str
        One of `BENCHMARKS`.
    ctx : BenchContext
        The options.
    folder : Path
        The folder of benchmark modules.

    Returns
    -------
    tuple of (pandas.DataFrame, str, pandas.DataFrame or None)
        The rows (`COLUMNS` first, ``benchmark`` and ``threads`` filled in), the notes the module left in
        ``frame.attrs["notes"]``, and its summary table (``frame.attrs["table"]``) or None.

    Examples
    --------
    >>> import tempfile
    >>> frame, note, table = run_benchmark("ablation", BenchContext(quick=True), Path(tempfile.mkdtemp()))
    >>> frame.empty, note.startswith("Not available yet"), table
    (True, True, None)
    """
    path = folder / f"bench_{name}.py"
    if not path.exists():
        return _empty(), f"Not available yet: `{_display(path)}` does not exist.", None
    try:
        run = load_module(path).run
        params = inspect.signature(run).parameters
        frame = run(ctx.quick, ctx) if len(params) >= 2 else run(ctx.quick)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"run() returned {type(frame).__name__}, not a DataFrame")
        skipped = frame.empty and str(frame.attrs.get("notes", "")).startswith("Skipped")
        problem = None if skipped else check_rows(frame)  # a stated skip has no rows to check
        if problem:
            raise ValueError(f"run() returned invalid rows: {problem}")
    except Exception as err:  # a broken benchmark must not take the others down
        ctx.say(f"{name}: failed: {err!r}")
        tb = traceback.format_exc(limit=6)
        return (
            _empty(),
            (
                f"Not available: `{_display(path)}` failed with `{type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}`.\n\n```\n{tb[-2500:]}\n```"
            ),
            None,
        )
    notes = str(frame.attrs.get("notes", ""))
    table = frame.attrs.get("table")
    table = table if isinstance(table, pd.DataFrame) else None
    frame = frame.copy()
    frame.attrs = {}
    if "benchmark" not in frame:
        frame.insert(0, "benchmark", name)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    if "threads" not in frame:
        frame["threads"] = ctx.threads
    ordered = list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]
    return frame[ordered], notes, table


def _render_one(name: str, sub: pd.DataFrame, ctx: BenchContext, folder: Path, fallback: str):
    """A benchmark's (table, notes) from its rows: its module's ``render``, else the notes the run saved."""
    saved = ctx.out / "notes" / f"{name}.md"
    note = saved.read_text() if saved.exists() else fallback
    path = folder / f"bench_{name}.py"
    sub = sub.dropna(axis=1, how="all")
    if path.exists() and (not sub.empty or name == "e2e"):
        mod = load_module(path)
        if hasattr(mod, "render"):
            return mod.render(sub, ctx)
    return None, note


def _previous_meta(out: Path) -> dict:
    run_json = out / "run.json"
    if run_json.exists():
        return json.loads(run_json.read_text())
    return meta_from_report(out / "benchmarks.md")


# --------------------------------------------------------------------------------------------------
# a run


def run_all(
    ctx: BenchContext, only: Sequence[str] | None = None, folder: Path | None = None
) -> tuple[Path, Path, list[str]]:
    """Run the benchmarks (all, or ``only``); write ``benchmarks.csv`` and ``benchmarks.md`` in ``ctx.out``.

    With ``only``, rows of the *other* benchmarks already in ``ctx.out/benchmarks.csv`` are kept (and their
    notes re-rendered), so one benchmark can be rerun without losing the rest; the report lists every
    invocation that contributed, with the load average when it started. The CSV, ``run.json``, the notes
    and the report are rewritten after every benchmark, so partial results survive a kill;
    ``manifest.json`` (the provenance record) is written last.

    Parameters
    ----------
    ctx : BenchContext
        The options (``ctx.out`` is the output folder).
    only : sequence of str, optional
        A subset of `BENCHMARKS`.
    folder : Path, optional
        The folder of benchmark modules (default: `default_benchmarks_dir`).

    Returns
    -------
    tuple of (Path, Path, list of str)
        ``benchmarks.csv``, ``benchmarks.md``, and the names of the benchmarks that failed (missing module,
        exception, or no rows): their notes in ``benchmarks.md`` say why, and `probekit bench` exits
        non-zero.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "bench_memory.py").write_text("import pandas as pd\\ndef run(quick):\\n"
    ...     "    return pd.DataFrame({'variant': ['x'], 'seconds': [1.5]})\\n")
    >>> ctx = BenchContext(quick=True, out=folder / "out", log=lambda msg: None)
    >>> csv_path, md_path, failed = run_all(ctx, only=["memory"], folder=folder)
    >>> pd.read_csv(csv_path)[["benchmark", "variant", "seconds"]].values.tolist(), failed
    ([['memory', 'x', 1.5]], [])
    """
    from probekit.report import atomic_write_text, write_table

    folder = Path(folder) if folder else default_benchmarks_dir()
    names = list(only) if only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ProbekitError(f"unknown benchmark(s) {unknown}", fix=f"choose from {', '.join(BENCHMARKS)}")
    set_threads(ctx.threads)
    machine = machine_info(ctx.threads)
    ctx.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = ctx.out / "benchmarks.csv", ctx.out / "benchmarks.md"
    kept, meta = _empty(), {"invocations": [], "wall_s": {}}  # type: pd.DataFrame, dict
    if only and csv_path.exists():
        previous = pd.read_csv(csv_path)
        kept = previous[~previous["benchmark"].isin(names)]
        kept = kept.dropna(axis=1, how="all")  # columns only the replaced benchmarks had
        meta = _previous_meta(ctx.out)
        meta["invocations"] = [
            i for i in meta.get("invocations", []) if set(i.get("benchmarks", [])) - set(names)
        ]
    invocation = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": machine["load_average_at_start"],
        "benchmarks": names,
        "threads": ctx.threads,
        "quick": ctx.quick,
    }
    machine["invocations"] = [*meta.get("invocations", []), invocation]
    order = [b for b in BENCHMARKS if b in set(kept["benchmark"]) or b in names]
    wall = {k: v for k, v in (meta.get("wall_s") or {}).items() if k not in names}
    done = [b for b in order if b not in names]  # the kept benchmarks: re-rendered from their rows
    frames = [kept]
    failed: list[str] = []
    rank = {x: i for i, x in enumerate(BENCHMARKS)}
    for name in names:
        ctx.say(f"--- {name}")
        start = time.perf_counter()
        frame, note, _ = run_benchmark(name, ctx, folder)
        wall[name] = time.perf_counter() - start
        if frame.empty and not note.startswith("Skipped"):
            failed.append(name)
        frames.append(frame)
        done.append(name)
        table = pd.concat([f for f in frames if not f.empty] or [_empty()], ignore_index=True)
        table = table.sort_values("benchmark", key=lambda b: b.map(rank), kind="stable")
        write_table(table, csv_path)  # rewritten after every benchmark: partial results survive a kill
        atomic_write_text(ctx.out / "notes" / f"{name}.md", note + "\n")
        run_record = {
            "machine": machine,
            "wall_s": wall,
            "quick": ctx.quick,
            "repeats": ctx.repeats,
            "threads": ctx.threads,
            "benchmarks": [b for b in order if b in done],
            "invocations": machine["invocations"],
        }
        atomic_write_text(ctx.out / "run.json", json.dumps(run_record, indent=2, default=str) + "\n")
        # The report from the files just written, as `render_only` rebuilds it: from the rows as written
        # (rounded to the CSV's float format), since rounding the full-precision rows once can differ from
        # rounding twice (0.829 vs 0.83).
        render_only(ctx, folder)
    _write_manifest(ctx, names if only else None)
    return csv_path, md_path, failed


def _write_manifest(ctx: BenchContext, only: Sequence[str] | None) -> Path:
    """``manifest.json`` with the provenance record (`probekit.report.provenance`).

    The command, and a sha256 of every file in the folder and of every probekit module imported. Timings
    are not reproducible, so ``make verify-results`` lists this folder instead of rerunning it.
    """
    from probekit.report import atomic_write_text, provenance

    words = ["probekit", "bench"] + (["--quick"] if ctx.quick else [])
    words += [f"--only {','.join(only)}"] if only else []
    words += [f"--repeats {ctx.repeats}"] if ctx.repeats is not None else []
    words += [f"--threads {ctx.threads}"] if ctx.threads != 1 else []
    words += [f"--data {ctx.data}"] if ctx.data else []
    if ctx.manifest != BenchContext().manifest:
        words += [f"--manifest {provenance.repo_relative(ctx.manifest) or ctx.manifest}"]
    command = " ".join([*words, f"--out {provenance.repo_relative(ctx.out) or ctx.out}"])
    manifest = {"provenance": provenance.record(ctx.out, command, None)}
    return atomic_write_text(ctx.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def render_only(ctx: BenchContext, folder: Path | None = None) -> Path:
    """Rebuild ``benchmarks.md`` from ``benchmarks.csv`` and the files beside it, without rerunning anything.

    A benchmark module with ``render(frame, ctx) -> (table, notes)`` recomputes its table and notes from
    its rows; for the others the notes saved at run time (``notes/<name>.md``) are reused. The run's mode,
    repetitions and threads come from its ``run.json`` (or, for an older run, its ``benchmarks.md``), not
    from ``ctx``.

    Parameters
    ----------
    ctx : BenchContext
        ``ctx.out`` is the folder to rebuild; ``ctx.manifest`` is passed on to the benchmarks' ``render``.
    folder : Path, optional
        The folder of benchmark modules (default: `default_benchmarks_dir`).

    Returns
    -------
    Path
        ``benchmarks.md``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "bench_memory.py").write_text("import pandas as pd\\ndef run(quick):\\n"
    ...     "    return pd.DataFrame({'variant': ['x'], 'seconds': [1.5]})\\n")
    >>> ctx = BenchContext(quick=True, out=folder / "out", log=lambda msg: None)
    >>> _ = run_all(ctx, only=["memory"], folder=folder)
    >>> "## 2. Memory scaling of capture" in render_only(ctx, folder).read_text()
    True
    """
    from probekit.report import atomic_write_text

    folder = Path(folder) if folder else default_benchmarks_dir()
    csv_path, md_path = ctx.out / "benchmarks.csv", ctx.out / "benchmarks.md"
    if not csv_path.exists():
        raise ProbekitError(f"no {csv_path} to render", fix="run `probekit bench` first")
    frame = pd.read_csv(csv_path)
    meta = _previous_meta(ctx.out)
    ctx = replace(
        ctx,
        quick=bool(meta.get("quick", ctx.quick)),
        repeats=meta["repeats"] if meta.get("repeats") is not None else ctx.repeats,
        threads=int(meta.get("threads") or ctx.threads),
    )
    present = set(frame["benchmark"]) | set(meta.get("benchmarks") or [])
    names = [b for b in BENCHMARKS if b in present]
    notes, tables = {}, {}
    for name in names:
        tables[name], notes[name] = _render_one(
            name, frame[frame["benchmark"] == name], ctx, folder, meta.get("notes", {}).get(name, "")
        )
    machine = dict(meta["machine"])
    machine.setdefault("invocations", meta.get("invocations", []))
    atomic_write_text(md_path, render_report(frame, notes, machine, ctx, meta.get("wall_s") or {}, tables))
    return md_path
