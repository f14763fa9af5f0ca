"""Executing sweep runs: one run in a worker (`execute_run`), its finished marker (`is_finished`), and
the two backends that take runs with ``submit`` and hand back finished ones with ``next_finished``.

``local`` runs them one after the other in this process; ``ray`` starts one long-lived actor
(`ModelWorker`) per model group and sends it that group's runs, so weights are loaded once per actor.
Why the thread count must match between backends, and what travels between processes, is in
``docs/methods/experiments.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import traceback
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError
from probekit.experiment.config import ExperimentConfig
from probekit.experiment.run import run_experiment
from probekit.parallel.shards import FORWARDED_ENV
from probekit.report.tables import atomic_write_text

OK, FAILED = "ok", "failed"
DONE_MARKER = ".sweep-done"
ERROR_FILE = "ERROR.txt"


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its name, its grid values (as labels) and its resolved config."""

    name: str
    grid: dict[str, str]
    config: ExperimentConfig

    @property
    def folder(self) -> Path:
        """The run folder, ``<sweep out>/runs/<run name>``."""
        return Path(self.config.out)

    @property
    def model_key(self) -> tuple[str, ...]:
        """Runs with the same key share a worker (and its loaded weights)."""
        return tuple(self.config.models)

    def digest(self) -> str:
        """Hash of the resolved config without ``out``: what the ``.sweep-done`` marker holds."""
        return hashlib.sha256(self.config.model_dump_json(exclude={"out"}).encode()).hexdigest()[:16]


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

    def load(
        self, name_or_path, device: str | None = None, *, allow_network: bool | None = None, seed: int = 0
    ):
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
        with pinned_torch_threads(threads):
            run_experiment(cfg, out=folder, progress=False, load_model=models.load)
    except Exception as err:  # a failed run is reported, not raised
        models.clear()
        with contextlib.suppress(OSError):
            atomic_write_text(folder / ERROR_FILE, traceback.format_exc())
        return _failure(name, err, retryable=not isinstance(err, ProbekitError), seconds=_since(start))
    (folder / ERROR_FILE).unlink(missing_ok=True)
    atomic_write_text(folder / DONE_MARKER, run.digest() + "\n")
    return {"name": name, "status": OK, "error": "", "retryable": False, "seconds": _since(start)}


def threads_for(cpus: float) -> int:
    """The torch threads of a run given ``cpus`` CPUs (at least 1)."""
    return max(1, int(cpus))


@contextlib.contextmanager
def pinned_torch_threads(threads: int | None) -> Iterator[None]:
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
    """True when the run's folder holds ``manifest.json``, ``REPORT.md`` and a ``.sweep-done`` marker with
    this config's `SweepRun.digest` (``out`` excluded, so a moved sweep folder still counts)."""
    marker = run.folder / DONE_MARKER
    needed = (marker, run.folder / "manifest.json", run.folder / "REPORT.md")
    try:
        return all(p.exists() for p in needed) and marker.read_text().strip() == run.digest()
    except OSError:
        return False


def _failure(name: str, err: BaseException, retryable: bool, seconds: float) -> dict:
    """The status record of a failed run (the keys of `execute_run`'s record, in its order)."""
    return {
        "name": name,
        "status": FAILED,
        "error": _one_line(err),
        "retryable": retryable,
        "seconds": seconds,
    }


def _one_line(err: BaseException, limit: int = 500) -> str:
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)


# --------------------------------------------------------------------------------------------------
# backends: an executor takes runs with `submit` and hands back finished ones with `next_finished`


class LocalExecutor:
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


class RayExecutor:
    """Sends each model group's runs to its own actor(s); ``next_finished`` waits with `ray.wait`."""

    def __init__(self, ray, *, cpus_per_task: float, gpus_per_task: float, actors_per_model: int):
        have = ray.cluster_resources()
        for resource, need in (("CPU", cpus_per_task), ("GPU", gpus_per_task)):
            if need > have.get(resource, 0):  # the actor would wait forever for a node that fits it
                raise ProbekitError(
                    f"each actor asks for {need:g} {resource} but the Ray cluster has "
                    f"{have.get(resource, 0):g}",
                    fix="lower --gpus-per-task/--cpus-per-task, or join a cluster that has "
                    "them with --address",
                )
        self.ray = ray
        self.actor_class = ray.remote(ModelWorker).options(
            num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_restarts=0
        )
        self.threads = threads_for(cpus_per_task)
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
            record = _failure(run.name, err, retryable=True, seconds=0.0)
            self.actors[key].remove(actor)
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
            actor = self._spawn(key)
        except RayError as err:
            record = _failure(run.name, err, retryable=True, seconds=0.0)
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
