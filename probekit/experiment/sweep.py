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
resolved config like ``probekit run`` does. Each run gets a deterministic name built from its grid
values (``models=tiny-llama,seed=0``) and its own folder ``<out>/runs/<name>``, which is exactly the
folder ``probekit run`` writes (`run_experiment` does the work). `run_sweep` runs them and writes the
combined tables:

- ``sweep.csv`` / ``sweep.md``: one row per run with its grid values, status (``ok``/``failed``) and
  error; ``sweep.md`` adds the runs' claim verdicts side by side and every small combined table;
- ``tables/<analysis>.<table>.csv``: every run's stage table concatenated, with ``run``, the grid
  columns and ``stage`` in front (a grid column is called ``grid.<key>`` in a table that already has
  a column of that name, e.g. ``seed`` in ``probes``);
- ``sweep.json``: attempts, timings, reuse and model-load counts (the only file that differs between
  two identical sweeps, so the tables above can be compared byte for byte).

Backends
--------
``local`` runs the runs one after the other in this process. ``ray`` starts one long-lived *actor*
per model group (the config's ``models`` list) and sends it that group's runs, so weights are loaded
once per actor, not once per run: the actor keeps a small `ModelCache` and passes its ``load`` to
`run_experiment` as the run's model loader. Both backends share the scheduler
(`_schedule`): a run that raises is retried up to ``max_retries`` times (a `ProbekitError` is a user
error that a retry cannot fix, so it fails at once), a run that still fails is reported in the status
column with its error (traceback in ``<run>/ERROR.txt``), and the other runs carry on.

Both backends give byte-identical tables when their runs use the same number of torch threads
(``cpus_per_task``; a Ray actor uses that many, the local backend keeps torch's default unless it is
given): the thread count decides how float sums are split, which moves the last bits of some numbers.

Activations never travel between processes: a run captures and consumes them inside one actor, and
the content-keyed capture cache (``$PROBEKIT_CACHE/capture``, written by atomic rename) lets runs that
need the same activations (same weights, sentences and settings) share them on disk. The object store
only carries each run's small status record.

Resume
------
A run is finished when its folder holds ``manifest.json``, ``REPORT.md`` and a ``.sweep-done`` marker
with the hash of its resolved config (without ``out``, so a moved sweep folder still counts). A rerun
skips finished runs before contacting any worker (no Ray start, no model load), retries failed ones,
and rebuilds the combined tables; a changed config reruns only the stages it touches, through
`run_experiment`'s own ``.done`` markers.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import itertools
import json
import os
import re
import sys
import time
import traceback
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from probekit.errors import ProbekitError
from probekit.experiment.config import (
    ExperimentConfig,
    display_spec,
    read_yaml,
    resolve_spec,
    run_experiment,
    set_dotted,
    validate_config,
)
from probekit.report import atomic_write_text, markdown_table, write_table

OK, FAILED = "ok", "failed"
BACKENDS = ("local", "ray")
DONE_MARKER = ".sweep-done"
ERROR_FILE = "ERROR.txt"
#: environment variables a Ray worker needs to behave like this process (offline, same cache)
FORWARDED_ENV = ("PROBEKIT_CACHE", "PROBEKIT_ALLOW_NETWORK", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "TOKENIZERS_PARALLELISM")
#: combined tables with at most this many rows are shown inline in sweep.md
INLINE_ROWS = 40


# --------------------------------------------------------------------------------------------------
# the sweep file


class SweepFile(BaseModel):
    """A sweep: a base experiment config and a grid of dotted config keys -> lists of values."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="sweep name (default: the file name without .sweep.yaml)")
    out: str = Field(..., description="sweep folder, relative to the sweep file; runs go to <out>/runs/<run>")
    base: str | dict[str, Any] = Field(..., description="experiment config: inline, or a path relative to the "
                                                         "sweep file")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        ..., min_length=1, description="dotted config key -> list of values, e.g. seed: [0, 1]")


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its name, its grid values (as labels) and its resolved config."""

    name: str
    grid: dict[str, str]
    config: ExperimentConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.out)

    @property
    def model_key(self) -> tuple[str, ...]:
        """Runs with the same key share a worker (and its loaded weights)."""
        return tuple(self.config.models)

    def digest(self) -> str:
        """Hash of the resolved config without ``out``: what the ``.sweep-done`` marker holds."""
        return hashlib.sha256(self.config.model_dump_json(exclude={"out"}).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep file: its runs in grid order (the first key varies slowest)."""

    name: str
    path: Path
    out: Path
    keys: tuple[str, ...]
    runs: tuple[SweepRun, ...]


def load_sweep(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Sweep:
    """Read, validate and expand a sweep file. ``out`` (relative to the working directory) replaces the
    file's ``out``. Every run's config is validated here, so a bad grid value fails before any work."""
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
    runs, folders = [], {}
    for values in itertools.product(*spec.grid.values()):
        point = dict(zip(keys, values, strict=True))
        labels = {k: _label(v) for k, v in point.items()}
        run_name = ",".join(f"{k}={labels[k]}" for k in keys)
        folder = sweep_out / "runs" / _folder_name(run_name)
        if folder.name in folders:
            raise ProbekitError(f"runs {folders[folder.name]!r} and {run_name!r} would share the folder "
                                f"{folder.name!r}", where=str(path),
                                fix="make the grid values differ in letters, digits or -_.+=")
        folders[folder.name] = run_name
        raw = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(raw, key, copy.deepcopy(value), where=str(path))
        raw["out"] = str(folder)
        cfg = validate_config(raw, where=f"{path} (run {run_name})")
        cfg.out = str(folder)
        cfg.data = {k: resolve_spec(v, base_dir) for k, v in cfg.data.items()}
        cfg.optional_data = {k: resolve_spec(v, base_dir) for k, v in cfg.optional_data.items()}
        runs.append(SweepRun(run_name, labels, cfg))
    return Sweep(name=name, path=path.resolve(), out=sweep_out, keys=keys, runs=tuple(runs))


def _validate(raw: dict, where: str) -> SweepFile:
    """Validate a sweep file; turn pydantic's first error into a `ProbekitError` that names the key."""
    model = SweepFile
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo explains the rest
        first = errors[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(key, list(model.model_fields), n=1)
            raise ProbekitError(f"unknown sweep key {key!r}", where=where,
                                fix=f"did you mean {guess[0]!r}?" if guess else
                                f"valid keys: {', '.join(model.model_fields)}") from None
        if first["type"] == "missing":
            raise ProbekitError(f"the sweep file has no {key!r}", where=where,
                                fix="a sweep file needs out, base and grid (see docs/sweeps.md)") from None
        got = repr(first.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        raise ProbekitError(f"sweep key {key!r}: {first['msg']} (got {got})", where=where,
                            fix="see docs/sweeps.md for the sweep file format") from None


def _check_grid_key(key: str, path: Path) -> None:
    if not key or any(not part for part in key.split(".")):
        raise ProbekitError(f"grid key {key!r} is not a dotted config key", where=f"{path}: grid",
                            fix="e.g. seed, models or analyses.probes.data")
    if key.split(".")[0] == "out":
        raise ProbekitError("the grid cannot set `out`", where=f"{path}: grid",
                            fix="each run writes to <sweep out>/runs/<run name>; set the sweep's `out` instead")


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
# executing one run (the same code on both backends)


def _weights_depend_on_seed(name: str) -> bool:
    """``load_model``'s seed only changes random-init weights (``tiny-*``, ``random:*``)."""
    return name.startswith("random:") or name in ("tiny-llama", "tiny-bert")


class ModelCache:
    """Loaded models kept across runs in one worker process (least recently used out first).

    `run_experiment(..., load_model=cache.load)` routes every model load of a run through `load`, so
    every analysis of every run in this process gets the same `Model` object for the same
    (name, device, seed) instead of loading the weights again. A model's weights are never changed by an
    analysis; after a failed run the cache is cleared anyway, so a half-finished analysis cannot leak
    state (e.g. a hook) into the next.
    """

    def __init__(self, max_models: int = 4):
        self.max_models = max_models
        self.requests = 0
        self.loads = 0
        self._models: OrderedDict[tuple, Any] = OrderedDict()

    def load(self, name_or_path, device: str | None = None, *, allow_network: bool | None = None,
             seed: int = 0):
        name = str(name_or_path)
        key = (name, device, allow_network, seed if _weights_depend_on_seed(name) else None)
        self.requests += 1
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        from probekit.models import load_model

        model = load_model(name_or_path, device, allow_network=allow_network, seed=seed)
        self.loads += 1
        self._models[key] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model

    def clear(self) -> None:
        self._models.clear()

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "loads": self.loads}


def execute_run(name: str, config: dict, models: ModelCache, threads: int | None = None) -> dict:
    """Run one resolved config into its folder; never raises. Returns a small status record:
    ``{"name", "status", "error", "retryable", "seconds"}``. On failure the traceback goes to
    ``<run folder>/ERROR.txt``; on success the ``.sweep-done`` marker is written. ``threads`` pins
    torch's intra-op threads for the run (None: leave them as they are)."""
    cfg = ExperimentConfig.model_validate(config)
    run = SweepRun(name, {}, cfg)
    folder = run.folder
    start = time.perf_counter()
    try:
        with _torch_threads(threads):
            run_experiment(cfg, out=folder, progress=False, load_model=models.load)
    except Exception as err:  # noqa: BLE001 - a failed run is reported, not raised
        models.clear()
        with contextlib.suppress(OSError):
            atomic_write_text(folder / ERROR_FILE, traceback.format_exc())
        return {"name": name, "status": FAILED, "error": _one_line(err),
                "retryable": not isinstance(err, ProbekitError), "seconds": _since(start)}
    (folder / ERROR_FILE).unlink(missing_ok=True)
    atomic_write_text(folder / DONE_MARKER, run.digest() + "\n")
    return {"name": name, "status": OK, "error": "", "retryable": False, "seconds": _since(start)}


def _threads_for(cpus: float) -> int:
    return max(1, int(cpus))


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Pin torch's intra-op threads. The thread count decides how float reductions are split, so it
    changes the last bits of some numbers (the manifest records it): runs that must agree byte for
    byte, e.g. a local and a Ray sweep, must use the same count."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_finished(run: SweepRun) -> bool:
    """True when the run's folder is complete for exactly this config (see the module docstring)."""
    marker = run.folder / DONE_MARKER
    needed = (marker, run.folder / "manifest.json", run.folder / "REPORT.md")
    try:
        return all(p.exists() for p in needed) and marker.read_text().strip() == run.digest()
    except OSError:
        return False


def _one_line(err: BaseException, limit: int = 500) -> str:
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


# --------------------------------------------------------------------------------------------------
# backends: an executor takes runs with `submit` and hands back finished ones with `next_finished`


class _LocalExecutor:
    """Runs one after the other in this process, sharing one `ModelCache`."""

    def __init__(self, threads: int | None):
        self.models, self.threads = ModelCache(), threads
        self._queue: deque[SweepRun] = deque()

    def submit(self, run: SweepRun) -> None:
        self._queue.append(run)

    def busy(self) -> bool:
        return bool(self._queue)

    def next_finished(self) -> tuple[SweepRun, dict]:
        run = self._queue.popleft()
        return run, execute_run(run.name, run.config.model_dump(mode="json"), self.models, self.threads)

    def close(self) -> dict:
        return {"local": self.models.stats()}


class ModelWorker:
    """The Ray actor: one per model group (or ``actors_per_model`` of them), alive for the whole sweep.

    It executes that group's runs one at a time with `execute_run`, keeping the loaded weights in its
    `ModelCache` between runs. ``env`` carries the driver's offline/cache settings to workers on
    other nodes (a worker started on this machine inherits them anyway).
    """

    def __init__(self, env: dict[str, str], threads: int):
        os.environ.update(env)
        self.models, self.threads = ModelCache(), threads

    def execute(self, name: str, config: dict) -> dict:
        return execute_run(name, config, self.models, self.threads)

    def stats(self) -> dict[str, int]:
        return self.models.stats()


class _RayExecutor:
    """Sends each model group's runs to its own actor(s); ``next_finished`` waits with `ray.wait`."""

    def __init__(self, ray, *, cpus_per_task: float, gpus_per_task: float, actors_per_model: int):
        have = ray.cluster_resources()
        for resource, need in (("CPU", cpus_per_task), ("GPU", gpus_per_task)):
            if need > have.get(resource, 0):  # the actor would wait forever for a node that fits it
                raise ProbekitError(f"each actor asks for {need:g} {resource} but the Ray cluster has "
                                    f"{have.get(resource, 0):g}",
                                    fix="lower --gpus-per-task/--cpus-per-task, or join a cluster that has "
                                        "them with --address")
        self.ray = ray
        self.actor_class = ray.remote(ModelWorker).options(
            num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_restarts=0)
        self.threads = _threads_for(cpus_per_task)
        self.actors_per_model = actors_per_model
        self.env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        self.queues: defaultdict[tuple, deque[SweepRun]] = defaultdict(deque)
        self.idle: defaultdict[tuple, list] = defaultdict(list)
        self.actors: defaultdict[tuple, list] = defaultdict(list)
        self.in_flight: dict[Any, tuple[Any, SweepRun]] = {}
        self.lost_stats: Counter = Counter()

    def _spawn(self, key: tuple) -> Any:
        actor = self.actor_class.remote(self.env, self.threads)
        self.actors[key].append(actor)
        return actor

    def submit(self, run: SweepRun) -> None:
        key = run.model_key
        self.queues[key].append(run)
        if not self.idle[key] and len(self.actors[key]) < self.actors_per_model:
            self.idle[key].append(self._spawn(key))
        self._dispatch(key)

    def _dispatch(self, key: tuple) -> None:
        while self.queues[key] and self.idle[key]:
            actor, run = self.idle[key].pop(), self.queues[key].popleft()
            ref = actor.execute.remote(run.name, run.config.model_dump(mode="json"))
            self.in_flight[ref] = (actor, run)

    def busy(self) -> bool:
        return bool(self.in_flight)

    def next_finished(self) -> tuple[SweepRun, dict]:
        from ray.exceptions import RayActorError, RayError

        [ref], _ = self.ray.wait(list(self.in_flight), num_returns=1)
        actor, run = self.in_flight.pop(ref)
        key = run.model_key
        try:
            record = self.ray.get(ref)
        except RayActorError as err:  # the worker process died (OOM, node lost): replace it
            record = {"name": run.name, "status": FAILED, "error": _one_line(err), "retryable": True, "seconds": 0.0}
            self.actors[key].remove(actor)
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
            actor = self._spawn(key)
        except RayError as err:
            record = {"name": run.name, "status": FAILED, "error": _one_line(err), "retryable": True, "seconds": 0.0}
        self.idle[key].append(actor)
        self._dispatch(key)
        return run, record

    def close(self) -> dict:
        """Stop the actors; return their model-load counts (none after an interruption: a busy actor
        would answer only after its run)."""
        stats = {}
        interrupted = bool(self.in_flight)
        for key, actors in self.actors.items():
            for i, actor in enumerate(actors):
                label = "+".join(key) + (f"#{i}" if len(actors) > 1 else "")
                if not interrupted:
                    with contextlib.suppress(Exception):
                        stats[label] = self.ray.get(actor.stats.remote(), timeout=60)
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
        return stats


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Connect to Ray: reuse a session this process already started (``ray.init`` in a notebook or a
    test), else start or join one and shut it down afterwards."""
    try:
        import ray
    except ImportError:
        raise ProbekitError("the ray backend needs the optional package 'ray'",
                            fix="pip install 'probekit-mi[ray]' (make install does this), or use --backend local"
                            ) from None
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


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


def run_sweep(sweep: Sweep | str | os.PathLike, *, backend: Literal["local", "ray"] = "local",
              address: str | None = None, gpus_per_task: float = 0.0, cpus_per_task: float | None = None,
              actors_per_model: int = 1, max_retries: int = 1, out: str | os.PathLike | None = None,
              progress: bool = True) -> SweepResult:
    """Run every unfinished run of a sweep, then write ``sweep.csv``, ``sweep.md`` and ``tables/``.

    Args:
        sweep: a `Sweep` or the path of a sweep file.
        backend: ``local`` (serial, in this process) or ``ray``.
        address: Ray cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``); default: a Ray
            session this process already started, else a new one on this machine.
        gpus_per_task: GPUs of each Ray actor; a fraction shares a GPU between actors.
        cpus_per_task: CPUs of each Ray actor (default 1), and the torch threads of each run on both
            backends (local default: leave torch's own setting). Runs must use the same thread count
            to agree byte for byte: the count changes the last bits of float reductions.
        actors_per_model: Ray actors per model group (each loads the weights once).
        max_retries: extra attempts for a run that raised (not for a `ProbekitError`).
        out: sweep folder, replacing the sweep file's ``out``.
        progress: a progress bar over finished runs.
    Returns:
        a `SweepResult`; failed runs are in ``.failed`` and in the tables, never raised.
    """
    if backend not in BACKENDS:
        raise ProbekitError(f"unknown backend {backend!r}", fix=f"use one of {', '.join(BACKENDS)}")
    if backend == "local" and (address is not None or gpus_per_task):
        raise ProbekitError("--address and --gpus-per-task apply to the ray backend",
                            fix="add --backend ray (the local backend uses a GPU when one is visible)")
    if max_retries < 0 or actors_per_model < 1 or gpus_per_task < 0 or (cpus_per_task or 0) < 0:
        raise ProbekitError("max_retries and resources must be >= 0 and actors_per_model >= 1",
                            fix="e.g. --max-retries 1 --gpus-per-task 0.5")
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
            executor = _LocalExecutor(None if cpus_per_task is None else _threads_for(cpus_per_task))
            results |= _schedule(todo, executor, max_retries, progress)
            loads = executor.close()
        else:
            with _ray_session(address) as ray:
                executor = _RayExecutor(ray, cpus_per_task=cpus_per_task or 1.0, gpus_per_task=gpus_per_task,
                                        actors_per_model=actors_per_model)
                try:
                    results |= _schedule(todo, executor, max_retries, progress)
                finally:
                    loads = executor.close()
    ordered = [results[run.name] for run in sweep.runs]
    table = write_sweep_tables(sweep, ordered)
    atomic_write_text(sweep.out / "sweep.json", json.dumps(
        {"name": sweep.name, "sweep_file": str(sweep.path), "backend": backend, "model_loads": loads,
         "runs": [asdict(r) for r in ordered]}, indent=2) + "\n")
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
                record = dict(record, status=FAILED, retryable=False,
                              error=f"the run finished on a worker but {run.folder} is not complete here: "
                                    "put the sweep's out folder on storage every node shares")
            if record["status"] != OK and record["retryable"] and attempts[run.name] <= max_retries:
                bar.write(f"[retry] {run.name} (attempt {attempts[run.name] + 1}): {record['error']}",
                          file=sys.stderr)
                executor.submit(run)
                continue
            if record["status"] != OK:
                bar.write(f"[fail ] {run.name}: {record['error']}", file=sys.stderr)
            results[run.name] = RunResult(run.name, record["status"], record["error"], attempts[run.name],
                                          round(seconds[run.name], 2))
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
    index = pd.DataFrame([{"run": run.name, **run.grid, "status": status[run.name].status,
                           "error": status[run.name].error, "folder": f"runs/{run.folder.name}"}
                          for run in sweep.runs])
    csv = write_table(index, sweep.out / "sweep.csv")

    tables: dict[str, list] = defaultdict(list)
    for run in sweep.runs:
        if status[run.name].status != OK:
            continue
        found = [("verdicts", "", run.folder / "verdicts.csv")]
        found += [(f"{p.parent.parent.name}.{p.stem}", p.parent.name, p) for p in sorted(run.folder.glob("*/*/*.csv"))]
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
    lines = [f"# Sweep {sweep.name}", "",
             f"{len(results)} runs of `{sweep.path.name}`: {counts[OK]} ok, {counts[FAILED]} failed. "
             "Each run folder holds its own REPORT.md; `tables/` holds every run's tables concatenated.", "",
             "## Runs", "", markdown_table(index.drop(columns="folder").assign(
                 report=[f"[REPORT.md](runs/{r.folder.name}/REPORT.md)" for r in sweep.runs])), ""]
    verdicts = combined.get("verdicts")
    if verdicts is not None and not verdicts.empty:
        pivot = verdicts.pivot_table(index=["claim", "model"], columns="run", values="verdict",
                                     aggfunc="first", sort=False)
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
