"""Benchmark harness behind `probekit bench`: timing, fresh-process peak memory, profiles, the report.

The benchmarks themselves live in the repository's ``benchmarks/`` folder, one module per benchmark
(``bench_capture.py``, ``bench_memory.py``, ``bench_ablation.py``, ``bench_probes.py``, ``bench_e2e.py``),
each exposing ``run(quick: bool, ctx: BenchContext | None = None) -> pandas.DataFrame``. A module that
only accepts ``run(quick)`` is called that way. Frames are tidy: one row per measurement with the
`COLUMNS` below plus benchmark-specific metric columns; ``frame.attrs["notes"]`` may carry the
Markdown paragraph (and profiles) written under the benchmark's table in ``benchmarks.md``.

How things are measured
-----------------------
- **Time**: ``time.perf_counter`` around each variant, after one warm-up call of every variant. The
  variants of a benchmark run *interleaved in one process* (repeat 0: A, B, C; repeat 1: B, C, A; ...;
  for capture, interleaved within chunks of 64 sentences, `interleaved_chunks`) so that load from other
  jobs on a shared machine hits every variant alike; the report gives ratios computed per repeat and
  then the median over repeats.
- **Peak memory** (`measure_in_subprocess`): each variant runs once more in a *fresh* Python process
  (``python -m probekit.bench child ...``). ``peak_rss_mb`` is that process's
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``; on Linux a sampling thread also reads ``RssAnon`` /
  ``RssFile`` from ``/proc/self/status`` every 10 ms (``peak_anon_mb``, ``peak_file_mb``): anonymous
  memory is the heap (tensors, arrays), file memory includes the pages of memory-mapped outputs, which
  ``ru_maxrss`` also counts. ``baseline_rss_mb`` is the RSS after the model is loaded and warmed up,
  so ``peak_rss_mb - baseline_rss_mb`` is what the variant itself needed.
- **Threads**: ``torch.set_num_threads(n)`` and the BLAS pools (threadpoolctl) are set explicitly and
  recorded in every row (``threads``) and in the report's machine section.
"""

from __future__ import annotations

import contextlib
import cProfile
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from probekit.errors import ProbekitError

#: benchmark names, in report order; each is ``benchmarks/bench_<name>.py``
BENCHMARKS: tuple[str, ...] = ("capture", "memory", "ablation", "probes", "e2e")
#: the columns every benchmark row has (benchmarks add metric columns after these)
COLUMNS: tuple[str, ...] = (
    "benchmark",
    "variant",
    "model",
    "n_sentences",
    "n_tokens",
    "repeat",
    "seconds",
    "tokens_per_s",
    "peak_rss_mb",
)
TITLES = {
    "capture": "1. Capture: word-level resid_post + attention, every layer",
    "memory": "2. Memory scaling of capture",
    "ablation": "3. Head-ablation sweep",
    "probes": "4. Probe sweep: every residual-stream layer, UPOS",
    "e2e": "5. End to end: `make run` by stage",
}
from probekit.data.bundled import EWT_DEV  # noqa: E402


@dataclass
class BenchContext:
    """Options shared by the benchmarks of one `probekit bench` call."""

    quick: bool = False
    out: Path = field(default_factory=lambda: Path("results/benchmarks"))
    repeats: int | None = None  # None: 1 with quick, 3 otherwise
    threads: int = 1
    manifest: Path = field(default_factory=lambda: Path("results/seed_claims/manifest.json"))
    data: str | None = None  # sentence source; None: EWT dev if present, else template:svo_adj
    log: Callable[[str], None] | None = None

    @property
    def n_repeats(self) -> int:
        return self.repeats if self.repeats is not None else (1 if self.quick else 3)

    def say(self, msg: str) -> None:
        (self.log or _stderr)(msg)


def _stderr(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# machine and threads


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads in torch and in every BLAS/OpenMP pool (numpy's, scipy's, torch's).

    threadpoolctl only limits libraries already loaded, and scipy ships its own OpenBLAS, loaded on first
    import: so the environment variables are set for anything loaded later, and scipy/sklearn/torch are
    imported before limiting. (Without this, scipy's OpenBLAS keeps one thread per core; on a loaded
    machine that made a 576×576 ``eigh`` 25× slower — see the probe benchmark.)
    """
    n = int(n)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    with contextlib.suppress(ImportError):
        import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS so that it can be limited)
        import sklearn.linear_model  # noqa: F401
    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # process-wide until changed


def thread_pools() -> list[str]:
    """The loaded thread pools and their sizes (threadpoolctl), e.g. ``openblas 0.3.30 (scipy): 1``."""
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        return [
            f"{i['internal_api']} {i.get('version') or ''} ({Path(i['filepath']).name}): {i['num_threads']}"
            for i in threadpool_info()
        ]
    return []


def machine_info(threads: int) -> dict:
    """CPU count, threads and package versions, for the report."""
    from importlib import metadata

    import torch

    versions = {}
    for dist in (
        "probekit-mi",
        "torch",
        "transformer-lens",
        "transformers",
        "numpy",
        "scikit-learn",
        "psutil",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": int(threads),
        "torch_get_num_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load],
        "versions": versions,
        "thread_pools": thread_pools(),
        "memory_gib": _total_memory_gib(),
    }


def _total_memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


# --------------------------------------------------------------------------------------------------
# input sentences


def bench_sentences(n: int, ctx: BenchContext | None = None, *, distinct: bool = False):
    """The first ``n`` sentences of EWT dev (``ctx.data`` overrides; template:svo_adj if EWT is absent).

    With more sentences asked for than the source has, it is cycled and the repeats get new ids
    (``r1:<id>``, ...), so every sentence is a new cache entry but the token statistics are the same.
    Returns ``(sentences, source_description)``.
    """
    from dataclasses import replace

    from probekit.data import load_dataset

    spec = (ctx.data if ctx and ctx.data else None) or (f"ud:{EWT_DEV}" if EWT_DEV.exists() else None)
    if spec is None:
        spec = f"template:svo_adj?n={n}"
    base = list(load_dataset(spec, max_sentences=n).sentences)
    if not base:
        raise ProbekitError(f"no sentences in {spec}")
    out = list(base)
    k = 1
    while len(out) < n:
        out += [replace(s, id=f"r{k}:{s.id}") for s in base[: n - len(out)]]
        k += 1
    source = spec if len(base) >= n else f"{spec} cycled to {n} sentences (new ids)"
    return out[:n], source


# --------------------------------------------------------------------------------------------------
# timing


def interleaved(
    variants: dict[str, Callable[[], Callable[[], None] | None]],
    repeats: int,
    warmup: dict[str, Callable[[], object]] | None = None,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> list[dict]:
    """Time every variant ``repeats`` times, interleaved and rotated; warm each one up once first.

    A variant may return a cleanup callable; it runs after the clock stops (e.g. deleting outputs).
    Returns rows ``{"variant", "repeat", "seconds"}``.
    """
    names = list(variants)
    for name in names:
        if log:
            log(f"{label} warm-up {name}")
        fn = (warmup or {}).get(name, variants[name])
        cleanup = fn()
        if callable(cleanup):
            cleanup()
    rows = []
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            cleanup = variants[name]()
            seconds = time.perf_counter() - start
            if callable(cleanup):
                cleanup()
            rows.append({"variant": name, "repeat": r, "seconds": seconds})
            if log:
                log(f"{label} repeat {r} {name}: {seconds:.2f} s")
    return rows


def interleaved_chunks(
    chunks: list[dict[str, Callable[[], Callable[[], None] | None]]],
    repeats: int,
    log: Callable[[str], None] | None = None,
    label: str = "",
    warmup: bool = True,
) -> list[dict]:
    """Like `interleaved`, but the input is cut into chunks and the variants alternate *within* each chunk.

    ``chunks[k][variant]`` runs that variant on chunk k. Every variant is warmed up on chunk 0; then, for
    each repetition, each chunk runs every variant back to back (order rotated per chunk), and a variant's
    time for the repetition is the sum over chunks. Load from other jobs that changes over minutes then
    hits all variants alike, instead of whichever happened to run during a busy minute.
    Returns rows ``{"variant", "repeat", "seconds"}``.
    """
    names = list(chunks[0])
    for name in names if warmup else ():
        if log:
            log(f"{label} warm-up {name}")
        cleanup = chunks[0][name]()
        if callable(cleanup):
            cleanup()
    rows = []
    for r in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for k, chunk in enumerate(chunks):
            shift = (r + k) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                cleanup = chunk[name]()
                total[name] += time.perf_counter() - start
                if callable(cleanup):
                    cleanup()
        rows += [{"variant": name, "repeat": r, "seconds": total[name]} for name in names]
        if log:
            log(f"{label} repeat {r}: " + ", ".join(f"{n} {t:.1f} s" for n, t in total.items()))
    return rows


def per_repeat_ratio(frame: pd.DataFrame, reference: str, by: Sequence[str] = ("model",)) -> pd.Series:
    """seconds / seconds of ``reference`` in the same repeat (and same ``by`` keys); NaN where absent."""
    keys = [*by, "repeat"]
    ref = frame[frame.variant == reference].set_index(keys)["seconds"]
    idx = pd.MultiIndex.from_frame(frame[keys])
    return pd.Series(frame["seconds"].to_numpy() / ref.reindex(idx).to_numpy(), index=frame.index)


# --------------------------------------------------------------------------------------------------
# peak memory in a fresh process


class RssSampler:
    """Samples ``/proc/self/status`` (VmRSS, RssAnon, RssFile) in a thread; keeps the maxima (MiB)."""

    FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = {"rss": 0.0, "anon": 0.0, "file": 0.0}
        self.available = Path("/proc/self/status").exists()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> dict[str, float]:
        now = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in self.FIELDS:
                    now[self.FIELDS[key]] = int(line.split()[1]) / 1024.0
        return now

    def _loop(self) -> None:
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peak[k] = max(self.peak[k], v)
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for k, v in self.read().items():
            self.peak[k] = max(self.peak[k], v)
        return dict(self.peak)


_BASELINE: dict[str, float] = {}
_SAMPLER: RssSampler | None = None


def mark_baseline() -> None:
    """In a child process: record the current RSS as the baseline (call after loading and warm-up); the
    sampled ``run_peak_*`` values count from here."""
    _BASELINE["rss"] = _current_rss_mb()
    if _SAMPLER is not None:
        now = _SAMPLER.read()
        _SAMPLER.peak = {k: now.get(k, 0.0) for k in _SAMPLER.peak}


def _current_rss_mb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    with contextlib.suppress(ImportError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    return float("nan")


def _maxrss_mb() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 2**20 if sys.platform == "darwin" else ru / 1024.0  # bytes on macOS, KiB on Linux


def measure_in_subprocess(
    module: str | os.PathLike, func: str, kwargs: dict, *, threads: int, timeout: float = 3600
) -> dict:
    """Run ``module.func(**kwargs)`` in a fresh interpreter and return its result dict plus
    ``peak_rss_mb`` (ru_maxrss over the whole process), ``baseline_rss_mb`` (see `mark_baseline`),
    ``run_peak_rss_mb``/``run_peak_anon_mb``/``run_peak_file_mb`` (sampled maxima after the baseline)
    and ``rss_method``. ``module`` is a file path; results must be JSON-able."""
    with tempfile.TemporaryDirectory(prefix="probekit-bench-") as tmp:
        result = Path(tmp) / "result.json"
        spec = {
            "module": str(Path(module).resolve()),
            "func": func,
            "kwargs": kwargs,
            "threads": int(threads),
            "result": str(result),
        }
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            OPENBLAS_NUM_THREADS=str(threads),
            TOKENIZERS_PARALLELISM="false",
        )
        cmd = [sys.executable, "-m", "probekit.bench", "child", json.dumps(spec)]
        if os.path.exists("/bin/sh"):
            # Linux carries the parent's RSS high-water mark into ru_maxrss across fork+exec (the benchmark
            # process holds models, so a direct child would report *our* peak). A shell that forks again
            # gives the child a fresh mark.
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "probekit-bench-child", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(
                f"benchmark child {Path(module).name}:{func} failed (exit {proc.returncode}):\n"
                f"{proc.stderr[-3000:]}"
            )
        return json.loads(result.read_text())


def measure_in_process(fn: Callable[[], dict]) -> dict:
    """Like `measure_in_subprocess` but in this process (for ``--quick``: no interpreter start-up).
    ``peak_rss_mb`` is then this process's high-water mark so far, not the call's."""
    from probekit import bench as this

    sampler = this._SAMPLER = this.RssSampler().start()
    this._BASELINE.clear()
    try:
        out = fn() or {}
    finally:
        peak = sampler.stop()
        this._SAMPLER = None
    sampled = sampler.available and "rss" in this._BASELINE
    out.update(
        peak_rss_mb=_maxrss_mb(),
        baseline_rss_mb=this._BASELINE.get("rss"),
        run_peak_rss_mb=peak["rss"] if sampled else None,
        run_peak_anon_mb=peak["anon"] if sampled else None,
        run_peak_file_mb=peak["file"] if sampled else None,
        rss_method="in-process (--quick): ru_maxrss of the whole benchmark process; sampled from the baseline on",
    )
    return out


def _child(spec_json: str) -> int:
    from probekit import bench as this  # this file runs as __main__; benchmarks import probekit.bench

    spec = json.loads(spec_json)
    this.set_threads(spec["threads"])
    sampler = this._SAMPLER = this.RssSampler().start()
    mod = this.load_module(Path(spec["module"]))
    out = getattr(mod, spec["func"])(**spec["kwargs"]) or {}
    peak = sampler.stop()
    sampled = sampler.available and "rss" in this._BASELINE
    out.update(
        peak_rss_mb=_maxrss_mb(),
        baseline_rss_mb=this._BASELINE.get("rss"),
        run_peak_rss_mb=peak["rss"] if sampled else None,
        run_peak_anon_mb=peak["anon"] if sampled else None,
        run_peak_file_mb=peak["file"] if sampled else None,
        rss_method="fresh process: ru_maxrss (whole life)"
        + ("; VmRSS/RssAnon/RssFile sampled every 10 ms from the baseline on" if sampled else ""),
    )
    Path(spec["result"]).write_text(json.dumps(out, default=float))
    return 0


# --------------------------------------------------------------------------------------------------
# profiles


def cprofile_top(fn: Callable[[], object], top: int = 15, sort: str = "tottime") -> str:
    """Run ``fn`` under cProfile; the ``top`` entries by ``sort`` as text (paths shortened)."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats(sort).print_stats(top)
    text = buf.getvalue()
    prefixes = {str(Path(p).parent) + "/" for p in sys.path if p} | {
        str(Path.cwd()) + "/",
        str(Path(__file__).resolve().parents[1]) + "/",
    }
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix, "")
    lines = [ln.rstrip() for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if "function calls" in ln), 0)
    return "\n".join(
        ln for ln in lines[start:] if ln.strip() and not ln.strip().startswith(("Ordered by", "List reduced"))
    )


def torch_profile_top(fn: Callable[[], object], top: int = 12) -> str:
    """Run ``fn`` under ``torch.profiler`` (CPU); the ``top`` ops by self CPU time, with call counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)


# --------------------------------------------------------------------------------------------------
# loading and running benchmark modules


def default_benchmarks_dir() -> Path:
    """``benchmarks/`` beside the ``probekit`` package (an editable install / source checkout)."""
    return Path(__file__).resolve().parents[1] / "benchmarks"


def load_module(path: Path):
    name = f"probekit_benchmarks_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_benchmark(
    name: str, ctx: BenchContext, folder: Path
) -> tuple[pd.DataFrame, str, pd.DataFrame | None]:
    """Run ``folder/bench_<name>.py``; returns (rows, notes, summary table or None). A missing or failing
    module gives no rows and a note saying so (the other benchmarks still run)."""
    path = folder / f"bench_{name}.py"
    if not path.exists():
        return _empty(), f"Not available yet: `{_display(path)}` does not exist.", None
    try:
        mod = load_module(path)
        run = mod.run
        import inspect

        params = inspect.signature(run).parameters
        frame = run(ctx.quick, ctx) if len(params) >= 2 else run(ctx.quick)
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"run() returned {type(frame).__name__}, not a DataFrame")
    except Exception as err:  # a broken benchmark must not take the others down
        import traceback

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


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=list(COLUMNS))


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return str(path)


def run_all(
    ctx: BenchContext, only: Sequence[str] | None = None, folder: Path | None = None
) -> tuple[Path, Path, list[str]]:
    """Run the benchmarks (all, or ``only``) and write ``benchmarks.csv`` and ``benchmarks.md`` in ``ctx.out``.

    Returns the two paths and the names of the benchmarks that failed (missing module, exception, or no
    rows): their notes in ``benchmarks.md`` say why, and `probekit bench` exits non-zero.

    With ``only``, rows of the *other* benchmarks already in ``ctx.out/benchmarks.csv`` are kept (and their
    notes re-rendered), so one benchmark can be rerun without losing the rest; the report lists every
    invocation that contributed, with the load average when it started.
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
    kept, meta = _empty(), {"invocations": [], "wall_s": {}}
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
    notes: dict[str, str] = {}
    tables: dict[str, pd.DataFrame | None] = {}
    wall = {k: v for k, v in (meta.get("wall_s") or {}).items() if k not in names}
    for name in order:  # the kept benchmarks' notes, re-rendered from their rows
        if name not in names:
            tables[name], notes[name] = _render_one(
                name, kept[kept["benchmark"] == name], ctx, folder, meta.get("notes", {}).get(name, "")
            )
    frames = [kept]
    failed: list[str] = []
    for name in names:
        ctx.say(f"--- {name}")
        start = time.perf_counter()
        frame, notes[name], tables[name] = run_benchmark(name, ctx, folder)
        wall[name] = time.perf_counter() - start
        if frame.empty and not notes[name].startswith("Skipped"):
            failed.append(name)
        frames.append(frame)
        table = pd.concat([f for f in frames if not f.empty] or [_empty()], ignore_index=True)
        table = table.sort_values(
            "benchmark", key=lambda b: b.map({x: i for i, x in enumerate(BENCHMARKS)}), kind="stable"
        )
        write_table(table, csv_path)  # rewritten after every benchmark: partial results survive a kill
        atomic_write_text(ctx.out / "notes" / f"{name}.md", notes[name] + "\n")
        atomic_write_text(
            ctx.out / "run.json",
            json.dumps(
                {
                    "machine": machine,
                    "wall_s": wall,
                    "quick": ctx.quick,
                    "repeats": ctx.repeats,
                    "threads": ctx.threads,
                    "benchmarks": [b for b in order if b in notes],
                    "invocations": machine["invocations"],
                },
                indent=2,
                default=str,
            )
            + "\n",
        )
        shown = {b: notes[b] for b in order if b in notes}
        atomic_write_text(md_path, render_report(table, shown, machine, ctx, wall, tables))
    _write_manifest(ctx, names if only else None)
    return csv_path, md_path, failed


def _write_manifest(ctx: BenchContext, only: Sequence[str] | None) -> Path:
    """``manifest.json`` with the provenance record (`probekit.report.provenance`): the command, and a
    sha256 of every file in the folder and of every probekit module imported. Timings are not
    reproducible, so ``make verify-results`` lists this folder instead of rerunning it."""
    from probekit.report import atomic_write_text, provenance

    command = (
        "probekit bench" + (" --quick" if ctx.quick else "") + (f" --only {','.join(only)}" if only else "")
    )
    command += f" --out {provenance.repo_relative(ctx.out) or ctx.out}"
    manifest = {"provenance": provenance.record(ctx.out, command, None)}
    return atomic_write_text(ctx.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _render_one(name: str, sub: pd.DataFrame, ctx: BenchContext, folder: Path, fallback: str):
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
    return _meta_from_old_report(out / "benchmarks.md")


def render_only(ctx: BenchContext, folder: Path | None = None) -> Path:
    """Rebuild ``benchmarks.md`` from ``benchmarks.csv`` and the files beside it, without rerunning anything.

    A benchmark module with ``render(frame, ctx) -> (table, notes)`` recomputes its table and notes from
    its rows; for the others the notes saved at run time (``notes/<name>.md``) are reused.
    """
    from probekit.report import atomic_write_text

    folder = Path(folder) if folder else default_benchmarks_dir()
    csv_path, md_path = ctx.out / "benchmarks.csv", ctx.out / "benchmarks.md"
    if not csv_path.exists():
        raise ProbekitError(f"no {csv_path} to render", fix="run `probekit bench` first")
    frame = pd.read_csv(csv_path)
    meta = _previous_meta(ctx.out)
    ctx.quick = bool(meta.get("quick", ctx.quick))
    if meta.get("repeats") is not None:
        ctx.repeats = meta["repeats"]
    ctx.threads = int(meta.get("threads") or ctx.threads)
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


def _meta_from_old_report(md_path: Path) -> dict:
    """For a run made before run.json existed: the machine section and wall times of its benchmarks.md."""
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


# --------------------------------------------------------------------------------------------------
# the report


def summarize(
    frame: pd.DataFrame,
    keys: Sequence[str] = ("variant", "model", "n_sentences", "threads"),
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """Median and min/max seconds over repeats, median tokens/s and peak RSS, per ``keys``; columns of
    ``extra`` (e.g. a per-repeat ratio) as medians."""
    keys = [k for k in keys if k in frame and frame[k].notna().any()]
    rows = []
    for key, g in frame.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
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
    from probekit.report import markdown_table

    lines = [
        "# probekit benchmarks",
        "",
        f"Mode: {'`--quick` (tiny models, few sentences: checks the harness, not performance)' if ctx.quick else 'full'}; "
        f"{ctx.n_repeats if ctx.repeats is not None or ctx.quick else '3 (capture), 2 (probes, memory with MiniLM)'} "
        "timed repetition(s) per variant after one warm-up; tables give the median and min/max.",
        "",
        "## Machine",
        "",
    ]
    if "verbatim" in machine:
        lines += [machine["verbatim"], *_invocation_lines(machine)]
    else:
        lines += _machine_lines(machine)
    lines += [
        "",
        "**Method.** Variants of a benchmark run interleaved in one process (rotated order every repetition; "
        "the capture variants alternate within every chunk of 64 sentences), "
        "so that other jobs on this shared machine slow every variant alike; ratios are computed within each "
        "repetition and then the median is taken. Absolute times are noisy, ratios much less so. Peak memory "
        "comes from a separate fresh process per variant (`python -m probekit.bench child`): `peak_rss_mb` is "
        "`getrusage(RUSAGE_SELF).ru_maxrss` over the child's whole life (so it includes loading the model and "
        "counts resident pages of memory-mapped output files too). Because that high-water mark is often set "
        "while the model loads, the child also marks `baseline_rss_mb` after loading and one warm-up batch, and a "
        "thread samples `/proc/self/status` every 10 ms from then on: `run_peak_rss_mb` (VmRSS), "
        "`run_peak_anon_mb` (RssAnon: heap, tensors, arrays) and `run_peak_file_mb` (RssFile: mapped files, "
        "e.g. the capture's .npy outputs). `run_peak_rss_mb - baseline_rss_mb` is what the variant itself needed.",
        "",
    ]
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
        if note:
            lines += [note.strip(), ""]
    return "\n".join(lines) + "\n"


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
        f"- torch threads: **{machine['torch_threads']}** (`torch.set_num_threads`, BLAS pools via threadpoolctl); "
        f"load average when the run started: {machine['load_average_at_start']} (other jobs share this machine)",
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


def _report_table(sub: pd.DataFrame) -> pd.DataFrame:
    extra = [c for c in sub.columns if c.startswith(("ratio_", "speedup_"))]
    extra += [c for c in ("share_of_total", "accuracy") if c in sub]
    keys = [k for k in ("variant", "model", "n_sentences", "threads") if k in sub]
    table = summarize(sub, keys, extra)
    return table.dropna(axis=1, how="all")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "child":
        return _child(argv[1])
    print("usage: python -m probekit.bench child SPEC_JSON   (used by `probekit bench`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
