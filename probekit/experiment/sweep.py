"""Sweeps: one experiment config × a grid of values -> many runs, on this machine or on a Ray cluster.

A sweep file (``experiments/<name>.sweep.yaml``) names a ``base`` experiment config (inline, or a path
relative to the sweep file) and a ``grid`` of dotted config keys, each with a list of values::

    name: tiny
    out: ../runs/tiny-sweep            # the sweep folder, relative to this file
    base: smoke.yaml                   # or an inline config (its `out` is ignored)
    grid:
      models: [[tiny-llama], [tiny-bert]]
      seed: [0, 1]
      analyses.probes.0.data: [svo, bank]     # a number picks a list item

`load_sweep` expands the grid into the product of its values, in file order, and validates every
resolved config like ``probekit run`` does. Each run is named by its grid values
(``models=tiny-llama,seed=0``) and writes the folder ``<out>/runs/<name>`` with `run_experiment`.
`run_sweep` runs the unfinished ones on a backend (`probekit.experiment.sweep_backends`) and writes
``sweep.csv``, ``sweep.md``, ``tables/<analysis>.<table>.csv`` and ``sweep.json``. The file format and
the outputs are described in ``docs/sweeps.md``; scheduling, resume and byte-identity between backends
in ``docs/methods/experiments.md``.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from probekit.errors import ProbekitError
from probekit.experiment.config import read_yaml, resolve_paths, set_dotted, validate_config, validation_error
from probekit.experiment.context import display_spec
from probekit.experiment.sweep_backends import (
    FAILED,
    OK,
    LocalExecutor,
    RayExecutor,
    SweepRun,
    is_finished,
    threads_for,
)
from probekit.parallel.shards import ray_session
from probekit.report.tables import atomic_write_text, markdown_table, write_table

__all__ = [
    "BACKENDS",
    "RunResult",
    "Sweep",
    "SweepFile",
    "SweepResult",
    "SweepRun",
    "is_finished",
    "load_sweep",
    "run_sweep",
    "write_sweep_tables",
]

BACKENDS = ("local", "ray")
#: combined tables with at most this many rows are shown inline in sweep.md
INLINE_ROWS = 40


# --------------------------------------------------------------------------------------------------
# the sweep file


class SweepFile(BaseModel):
    """A sweep: a base experiment config and a grid of dotted config keys -> lists of values."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="sweep name (default: the file name without .sweep.yaml)")
    out: str = Field(..., description="sweep folder, relative to the sweep file; runs go to <out>/runs/<run>")
    base: str | dict[str, Any] = Field(
        ..., description="experiment config: inline, or a path relative to the sweep file"
    )
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        ..., min_length=1, description="dotted config key -> list of values, e.g. seed: [0, 1]"
    )


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep file: its runs in grid order (the first key varies slowest)."""

    name: str
    path: Path
    out: Path
    keys: tuple[str, ...]
    runs: tuple[SweepRun, ...]


def load_sweep(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Sweep:
    """Read, validate and expand a sweep file.

    Every run's config is validated here, so a bad grid value fails before any work.

    Parameters
    ----------
    path : str or PathLike
        The sweep file (``out`` and a ``base`` path in it are relative to its folder).
    out : str or PathLike, optional
        Sweep folder (relative to the working directory), replacing the file's ``out``.

    Returns
    -------
    Sweep
        Its runs in grid order (the first key varies slowest), each with its resolved config.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "demo.sweep.yaml").write_text(
    ...     "out: sweep\\nbase: {name: demo, seed: 0, out: x, models: [tiny-llama]}\\n"
    ...     "grid: {models: [[tiny-llama], [tiny-bert]], seed: [0, 1]}\\n")
    >>> sweep = load_sweep(folder / "demo.sweep.yaml")
    >>> [run.name for run in sweep.runs]  # doctest: +NORMALIZE_WHITESPACE
    ['models=tiny-llama,seed=0', 'models=tiny-llama,seed=1',
     'models=tiny-bert,seed=0', 'models=tiny-bert,seed=1']
    >>> sweep.runs[3].folder == folder / "sweep" / "runs" / "models=tiny-bert,seed=1"
    True
    """
    path = Path(path)
    spec = _validate(read_yaml(path), str(path))
    here = path.resolve().parent
    name = spec.name or re.sub(r"(\.sweep)?\.ya?ml$", "", path.name)
    sweep_out = Path(out).resolve() if out is not None else (here / spec.out).resolve()

    if isinstance(spec.base, str):
        base_path = (here / spec.base).resolve()
        base, base_dir = read_yaml(base_path), base_path.parent
    else:
        base, base_dir = spec.base, here
    for key in spec.grid:
        _check_grid_key(key, path)

    keys = tuple(spec.grid)
    runs, folders = [], {}  # type: list[SweepRun], dict[str, str]
    for values in itertools.product(*spec.grid.values()):
        point = dict(zip(keys, values, strict=True))
        labels = {k: _label(v) for k, v in point.items()}
        run_name = ",".join(f"{k}={labels[k]}" for k in keys)
        folder = sweep_out / "runs" / _folder_name(run_name)
        if folder.name in folders:
            raise ProbekitError(
                f"runs {folders[folder.name]!r} and {run_name!r} would share the folder {folder.name!r}",
                where=str(path),
                fix="make the grid values differ in letters, digits or -_.+=",
            )
        folders[folder.name] = run_name
        raw = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(raw, key, copy.deepcopy(value), where=str(path))
        raw["out"] = str(folder)  # absolute, so resolving it against the base config's folder keeps it
        cfg = resolve_paths(validate_config(raw, where=f"{path} (run {run_name})"), base_dir)
        runs.append(SweepRun(run_name, labels, cfg))
    return Sweep(name=name, path=path.resolve(), out=sweep_out, keys=keys, runs=tuple(runs))


def _validate(raw: dict, where: str) -> SweepFile:
    """Validate a sweep file; pydantic's first error becomes a `ProbekitError` that names the key."""
    try:
        return SweepFile.model_validate(raw)
    except ValidationError as err:
        raise validation_error(
            err, SweepFile, kind="sweep", where=where, reference="docs/sweeps.md"
        ) from None


def _check_grid_key(key: str, path: Path) -> None:
    if not key or any(not part for part in key.split(".")):
        raise ProbekitError(
            f"grid key {key!r} is not a dotted config key",
            where=f"{path}: grid",
            fix="e.g. seed, models or analyses.probes.data",
        )
    if key.split(".")[0] == "out":
        raise ProbekitError(
            "the grid cannot set `out`",
            where=f"{path}: grid",
            fix="each run writes to <sweep out>/runs/<run name>; set the sweep's `out` instead",
        )


def _label(value: Any) -> str:
    """A grid value as it appears in run names and table columns: ``[tiny-llama]`` -> ``tiny-llama``."""
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return display_spec(str(value))


def _folder_name(run_name: str) -> str:
    """A run name made safe as a folder name on every OS (``template:svo?n=30`` -> ``template_svo_n=30``)."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", run_name)


# --------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class RunResult:
    name: str
    status: str
    error: str = ""
    attempts: int = 0
    seconds: float = 0.0
    reused: bool = False


@dataclass
class SweepResult:
    sweep: Sweep
    results: list[RunResult]
    table: Path
    model_loads: dict = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        return [r.name for r in self.results if not r.reused]

    @property
    def reused(self) -> list[str]:
        return [r.name for r in self.results if r.reused]

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status != OK]


def run_sweep(
    sweep: Sweep | str | os.PathLike,
    *,
    backend: Literal["local", "ray"] = "local",
    address: str | None = None,
    gpus_per_task: float = 0.0,
    cpus_per_task: float | None = None,
    actors_per_model: int = 1,
    max_retries: int = 1,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run every unfinished run of a sweep, then write ``sweep.csv``, ``sweep.md`` and ``tables/``.

    Parameters
    ----------
    sweep : Sweep, str or PathLike
        A `Sweep` or the path of a sweep file.
    backend : {"local", "ray"}
        ``local`` (serial, in this process) or ``ray`` (one actor per model group).
    address : str, optional
        Ray cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``); default: a Ray session this
        process already started, else a new one on this machine.
    gpus_per_task : float
        GPUs of each Ray actor; a fraction shares a GPU between actors.
    cpus_per_task : float, optional
        CPUs of each Ray actor (default 1), and the torch threads of each run on both backends (local
        default: leave torch's own setting). Runs must use the same thread count to agree byte for byte:
        the count changes the last bits of float reductions.
    actors_per_model : int
        Ray actors per model group (each loads the weights once).
    max_retries : int
        Extra attempts for a run that raised (not for a `ProbekitError`).
    out : str or PathLike, optional
        Sweep folder, replacing the sweep file's ``out``.
    progress : bool
        A progress bar over finished runs.

    Returns
    -------
    SweepResult
        Failed runs are in ``.failed`` and in the tables, never raised.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "demo.sweep.yaml").write_text(
    ...     "out: sweep\\nbase: {name: demo, seed: 0, out: x, models: [tiny-bert], "
    ...     "analyses: {check_attention: {}}}\\ngrid: {seed: [0, 1]}\\n")
    >>> result = run_sweep(folder / "demo.sweep.yaml", progress=False)
    >>> result.ran, result.failed, result.table.name
    (['seed=0', 'seed=1'], [], 'sweep.csv')
    >>> run_sweep(folder / "demo.sweep.yaml", progress=False).reused  # finished runs are kept
    ['seed=0', 'seed=1']
    """
    if backend not in BACKENDS:
        raise ProbekitError(f"unknown backend {backend!r}", fix=f"use one of {', '.join(BACKENDS)}")
    if backend == "local" and (address is not None or gpus_per_task):
        raise ProbekitError(
            "--address and --gpus-per-task apply to the ray backend",
            fix="add --backend ray (the local backend uses a GPU when one is visible)",
        )
    if max_retries < 0 or actors_per_model < 1 or gpus_per_task < 0 or (cpus_per_task or 0) < 0:
        raise ProbekitError(
            "max_retries and resources must be >= 0 and actors_per_model >= 1",
            fix="e.g. --max-retries 1 --gpus-per-task 0.5",
        )
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep, out=out)
    elif out is not None:
        sweep = load_sweep(sweep.path, out=out)

    results = {run.name: RunResult(run.name, OK, reused=True) for run in sweep.runs if is_finished(run)}
    todo = [run for run in sweep.runs if run.name not in results]
    loads: dict = {}
    if todo:
        first_seen = {key: i for i, key in reversed(list(enumerate(r.model_key for r in todo)))}
        todo.sort(key=lambda r: first_seen[r.model_key])  # a model's runs together (stable sort)
        if backend == "local":
            executor = LocalExecutor(None if cpus_per_task is None else threads_for(cpus_per_task))  # type: LocalExecutor | RayExecutor
            results |= _schedule(todo, executor, max_retries, progress)
            loads = executor.close()
        else:
            with ray_session(address) as ray:
                executor = RayExecutor(
                    ray,
                    cpus_per_task=cpus_per_task or 1.0,
                    gpus_per_task=gpus_per_task,
                    actors_per_model=actors_per_model,
                )
                try:
                    results |= _schedule(todo, executor, max_retries, progress)
                finally:
                    loads = executor.close()
    ordered = [results[run.name] for run in sweep.runs]
    table = write_sweep_tables(sweep, ordered)
    atomic_write_text(
        sweep.out / "sweep.json",
        json.dumps(
            {
                "name": sweep.name,
                "sweep_file": str(sweep.path),
                "backend": backend,
                "model_loads": loads,
                "runs": [asdict(r) for r in ordered],
            },
            indent=2,
        )
        + "\n",
    )
    return SweepResult(sweep, ordered, table, loads)


def _schedule(todo: list[SweepRun], executor, max_retries: int, progress: bool) -> dict[str, RunResult]:
    """Submit every run, collect them as they finish, resubmit retryable failures."""
    from tqdm.auto import tqdm

    attempts: Counter = Counter()
    seconds: Counter = Counter()
    results: dict[str, RunResult] = {}
    with tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress) as bar:
        for run in todo:
            executor.submit(run)
        while executor.busy():
            run, record = executor.next_finished()
            attempts[run.name] += 1
            seconds[run.name] += record["seconds"]
            if record["status"] == OK and not is_finished(run):
                record = dict(
                    record,
                    status=FAILED,
                    retryable=False,
                    error=f"the run finished on a worker but {run.folder} is not complete here: "
                    "put the sweep's out folder on storage every node shares",
                )
            if record["status"] != OK and record["retryable"] and attempts[run.name] <= max_retries:
                bar.write(
                    f"[retry] {run.name} (attempt {attempts[run.name] + 1}): {record['error']}",
                    file=sys.stderr,
                )
                executor.submit(run)
                continue
            if record["status"] != OK:
                bar.write(f"[fail ] {run.name}: {record['error']}", file=sys.stderr)
            results[run.name] = RunResult(
                run.name, record["status"], record["error"], attempts[run.name], round(seconds[run.name], 2)
            )
            bar.update(1)
    return results


# --------------------------------------------------------------------------------------------------
# combined tables


def write_sweep_tables(sweep: Sweep, results: list[RunResult]) -> Path:
    """Write ``sweep.csv``, ``sweep.md`` and ``tables/*.csv`` from the run folders; return sweep.csv.

    Everything here is a function of the run folders and statuses only (no timings, no backend), so a
    local and a Ray sweep of the same file give byte-identical files.
    """
    import pandas as pd

    status = {r.name: r for r in results}
    index = pd.DataFrame(
        [
            {
                "run": run.name,
                **run.grid,
                "status": status[run.name].status,
                "error": status[run.name].error,
                "folder": f"runs/{run.folder.name}",
            }
            for run in sweep.runs
        ]
    )
    csv = write_table(index, sweep.out / "sweep.csv")

    tables: dict[str, list] = defaultdict(list)
    for run in sweep.runs:
        if status[run.name].status != OK:
            continue
        found = [("verdicts", "", run.folder / "verdicts.csv")]
        found += [
            (f"{p.parent.parent.name}.{p.stem}", p.parent.name, p)
            for p in sorted(run.folder.glob("*/*/*.csv"))
        ]
        for table, stage, path in found:
            if path.exists():
                tables[table].append(_with_grid(pd.read_csv(path), run, stage))
    folder = sweep.out / "tables"
    combined = {}
    for table in sorted(tables):
        frame = pd.concat(tables[table], ignore_index=True, sort=False)
        write_table(frame, folder / f"{table}.csv")
        combined[table] = frame

    counts = Counter(r.status for r in results)
    lines = [
        f"# Sweep {sweep.name}",
        "",
        f"{len(results)} runs of `{sweep.path.name}`: {counts[OK]} ok, {counts[FAILED]} failed. "
        "Each run folder holds its own REPORT.md; `tables/` holds every run's tables concatenated.",
        "",
        "## Runs",
        "",
        markdown_table(
            index.drop(columns="folder").assign(
                report=[f"[REPORT.md](runs/{r.folder.name}/REPORT.md)" for r in sweep.runs]
            )
        ),
        "",
    ]
    verdicts = combined.get("verdicts")
    if verdicts is not None and not verdicts.empty:
        pivot = verdicts.pivot_table(
            index=["claim", "model"], columns="run", values="verdict", aggfunc="first", sort=False
        )
        pivot = pivot[[r.name for r in sweep.runs if r.name in pivot.columns]].reset_index()
        lines += ["## Verdicts", "", markdown_table(pivot.fillna("")), ""]
    if combined:
        lines += ["## Tables", ""]
    for table, frame in combined.items():
        lines += [f"### {table}", "", f"[tables/{table}.csv](tables/{table}.csv): {len(frame)} rows", ""]
        if len(frame) <= INLINE_ROWS:
            lines += [markdown_table(frame), ""]
    atomic_write_text(sweep.out / "sweep.md", "\n".join(lines))
    return csv


def _with_grid(frame, run: SweepRun, stage: str):
    """``run``, the grid columns and ``stage`` in front of a run's table."""
    front = {"run": run.name, **{(f"grid.{k}" if k in frame.columns else k): v for k, v in run.grid.items()}}
    if stage:
        front["stage"] = stage
    for i, (col, value) in enumerate(front.items()):
        frame.insert(i, col if col not in frame.columns else f"sweep.{col}", value)
    return frame
