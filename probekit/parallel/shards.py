"""Shards of a corpus, their finished results on disk, and the Ray workers that compute them.

A shard is a set of sentences that one worker captures in one go. `plan_shards` cuts the corpus along
the *capture batches*: `probekit.activations.capture.capture` sorts sentences by token count and runs
them ``batch_size`` at a time, so a shard made of whole batches of that order runs exactly the forward
passes, with exactly the same padding, that the one-process capture runs. That is what makes a sharded
analysis byte-identical to the local one (at the same torch thread count); shards cut at arbitrary
sentence indices would pad sentences differently and change the last bits of some activations.

`ShardStore` keeps each finished shard's reduced statistics under ``$PROBEKIT_CACHE/shards/<key>``, with
a ``done.json`` marker holding the key and the sha256 of the data, so a rerun (or a run after a crash)
reuses every shard whose inputs hash matches and computes only the rest. `run_on_ray` sends shards to a
pool of actors (`ShardWorker`, one model load per worker), retries a failed shard and replaces a dead
worker. The design and what a real cluster needs: ``docs/scale-out.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probekit.errors import ProbekitError

#: Part of every shard key: bump when a change alters any stored statistic.
SHARD_VERSION = 1
#: Sentences per shard unless asked otherwise (rounded up to a multiple of the capture batch size).
DEFAULT_SHARD_SIZE = 256
#: Environment variables a Ray worker needs to behave like this process (offline, same cache).
FORWARDED_ENV = (
    "PROBEKIT_CACHE",
    "PROBEKIT_ALLOW_NETWORK",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)
DONE = "done.json"
DATA = "stats.npz"


@dataclass(frozen=True)
class Shard:
    """Shard ``id``: the sentence indices ``indices`` (ascending) of the corpus."""

    id: int
    indices: tuple[int, ...]


def plan_shards(n_tokens, batch_size: int, shard_size: int = DEFAULT_SHARD_SIZE) -> list[Shard]:
    """Cut a corpus into shards of whole capture batches.

    The sentences are ordered as `capture` orders them (by token count, then index) and cut every
    ``shard_size`` sentences, ``shard_size`` rounded up to a multiple of ``batch_size``; each shard lists
    its sentences in corpus order. Capturing a shard's sentences then runs the same batches as
    capturing the whole corpus, so each sentence's activations are the same numbers.

    Parameters
    ----------
    n_tokens : token count of every sentence (``probekit.activations.align.align(model, s).n_tokens``).
    batch_size : the capture batch size.
    shard_size : sentences per shard (the last shard may be smaller).

    Returns
    -------
    list of Shard
        Shard ids 0, 1, ... in the order of the sorted corpus; the same inputs give the same shards.

    Examples
    --------
    >>> [s.indices for s in plan_shards([5, 3, 9, 3, 4], batch_size=2, shard_size=3)]
    [(0, 1, 3, 4), (2,)]
    """
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ProbekitError(f"{name} must be a positive integer, got {v!r}", where="plan_shards")
    size = -(-int(shard_size) // int(batch_size)) * int(batch_size)
    order = sorted(range(len(n_tokens)), key=lambda i: (int(n_tokens[i]), i))
    return [
        Shard(k, tuple(sorted(order[start : start + size])))
        for k, start in enumerate(range(0, len(order), size))
    ]


def shard_key(kind: str, payload: dict) -> str:
    """sha256 (32 hex digits) of a shard's inputs: ``kind``, `SHARD_VERSION` and a JSON-able ``payload``."""
    text = json.dumps({"kind": kind, "version": SHARD_VERSION, **payload}, sort_keys=True, default=_json)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _json(x):
    if isinstance(x, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(x).tobytes() + str(x.dtype).encode()).hexdigest()
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    raise TypeError(f"cannot hash {type(x).__name__}")


@dataclass
class ShardStore:
    """Finished shards on disk: ``<root>/<key>/stats.npz`` and ``done.json`` (key + sha256 of the data).

    An entry counts only when its marker names its key and the data's checksum matches; anything else
    is treated as missing and recomputed. Entries are written to a temporary folder and renamed.
    """

    root: Path

    @classmethod
    def default(cls) -> ShardStore:
        """The store under ``$PROBEKIT_CACHE/shards``."""
        from probekit.models import cache_root

        return cls(cache_root() / "shards")

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        folder = self.root / key
        try:
            done = json.loads((folder / DONE).read_text())
            data = (folder / DATA).read_bytes()
        except (OSError, ValueError):
            return None
        if done.get("key") != key or done.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        with np.load(folder / DATA, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save(self, key: str, stats: dict[str, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            np.savez(tmp / DATA, **stats)  # type: ignore[arg-type]  # numpy stub: **kwds also matches allow_pickle: bool
            digest = hashlib.sha256((tmp / DATA).read_bytes()).hexdigest()
            (tmp / DONE).write_text(json.dumps({"key": key, "sha256": digest}) + "\n")
            final = self.root / key
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ShardJob:
    """One shard to compute: ``compute(model, spec)`` in a `ShardWorker` (a module-level function, e.g.
    `probekit.parallel.heads.reduce_shard`); ``key`` names its entry in the store."""

    shard: Shard
    key: str
    compute: Callable[[Any, dict], dict]
    spec: dict


@dataclass
class RayOptions:
    """How `run_on_ray` uses Ray: ``workers`` actors of ``cpus_per_worker`` CPUs (and torch threads)
    and ``gpus_per_worker`` GPUs each; ``address`` of an existing cluster (None: start Ray here, or
    use the session this process already has); ``max_retries`` per shard; ``faults`` maps a shard id
    to ``"raise"`` or ``"exit"`` (the worker process dies) on its first attempt, or ``"raise-always"``
    (fault injection for tests). ``pool`` holds the live workers between calls in one Ray session, so
    every shard pool of a command (trained and random-init model, every stage of a run) reuses the same
    worker processes; it is filled in by `run_on_ray`."""

    workers: int = 2
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    address: str | None = None
    max_retries: int = 2
    faults: dict[int, str] = field(default_factory=dict)
    pool: WorkerPool | None = field(default=None, repr=False, compare=False)


@dataclass
class WorkerPool:
    """The `ShardWorker` actors of one Ray session (``session``: the driver's node and job ids)."""

    session: tuple[str, str]
    actors: list = field(default_factory=list)


class ShardWorker:
    """The Ray actor: loads each model it needs once (on first use) and computes shards with it.

    ``env`` carries the driver's offline/cache settings to workers on other nodes; torch is pinned to
    ``threads`` intra-op threads, the count the local run must use to give the same bits. It keeps at
    most `MAX_MODELS` models (the least recently used goes first).
    """

    MAX_MODELS = 2

    def __init__(self, env: dict[str, str], threads: int):
        os.environ.update(env)
        import torch

        torch.set_num_threads(threads)
        self.models: dict[tuple, Any] = {}
        self.loads = 0

    def model(self, name: str, device: str | None, seed: int):
        key = (name, device, seed)
        if key not in self.models:
            from probekit.models import load_model

            while len(self.models) >= self.MAX_MODELS:
                self.models.pop(next(iter(self.models)))
            self.models[key] = load_model(name, device, seed=seed)
            self.loads += 1
        self.models[key] = self.models.pop(key)  # most recently used last
        return self.models[key]

    def run(self, compute: Callable, spec: dict, attempt: int, fault: str | None) -> dict:
        if fault is not None and (attempt == 0 or fault == "raise-always"):
            if fault == "exit":
                os._exit(1)  # a lost worker (crash, OOM kill, node gone)
            raise RuntimeError(f"injected fault in shard {spec.get('shard')}")
        return compute(self.model(spec["model"], spec["device"], spec["seed"]), spec)

    def stats(self) -> dict[str, int]:
        return {"loads": self.loads, "pid": os.getpid()}


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Connect to Ray: reuse a session this process already started (``ray.init`` in a notebook or a
    test), else start or join one and shut it down afterwards. The one session helper of the shard pools
    (`run_on_ray`, ``--backend ray``) and of sweeps (`probekit.experiment.sweep`)."""
    try:
        import ray
    except ImportError:
        raise ProbekitError(
            "the ray backend needs the optional package 'ray'",
            fix="pip install 'probekit-mi[ray]' (make install does this), or use --backend local",
        ) from None
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_on_ray(
    jobs: list[ShardJob],
    options: RayOptions,
    store: ShardStore | None,
    usable: Callable[[dict], bool] | None = None,
) -> dict[int, dict]:
    """Compute ``jobs`` on a pool of `ShardWorker` actors; return ``{shard id: result}``.

    Shards whose key is finished in ``store`` are read back and never sent (a rerun with every shard
    finished does not start Ray; ``usable`` can reject a stored result, e.g. one naming a capture that
    is gone). Each finished shard is saved at once, so a crash loses only the shards
    in flight. A shard that raises, or whose worker dies, is retried up to ``options.max_retries`` times
    (a dead worker is replaced); a `ProbekitError` is a user error and is raised at once.
    """
    results: dict[int, dict]
    todo: deque[ShardJob]
    results, todo = {}, deque()
    for job in jobs:
        cached = store.load(job.key) if store is not None else None
        if cached is None or (usable is not None and not usable(cached)):
            todo.append(job)
        else:
            results[job.shard.id] = cached
    if not todo:
        return results
    try:
        import ray as ray_module

        owned = not ray_module.is_initialized()  # a session started here ends here, with its workers
    except ImportError:  # ray_session says what to install
        owned = True
    with ray_session(options.address) as ray:
        from ray.exceptions import RayActorError, RayTaskError

        have = ray.cluster_resources()
        for resource, need in (("CPU", options.cpus_per_worker), ("GPU", options.gpus_per_worker)):
            if need > have.get(resource, 0):
                raise ProbekitError(
                    f"each shard worker asks for {need:g} {resource} but the Ray cluster has "
                    f"{have.get(resource, 0):g}",
                    fix="lower --workers' share of resources, or join a cluster that has them with "
                    "--ray-address",
                )
        actor_class = ray.remote(ShardWorker).options(
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker, max_restarts=0
        )
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        threads = max(1, int(options.cpus_per_worker))
        context = ray.get_runtime_context()
        session = (context.get_node_id(), context.get_job_id())
        if options.pool is None or options.pool.session != session:
            options.pool = WorkerPool(session)
        pool = options.pool
        while len(pool.actors) < min(options.workers, len(todo)):
            pool.actors.append(actor_class.remote(env, threads))
        idle = list(pool.actors)
        attempts: dict[int, int] = {}
        in_flight: dict[Any, tuple[Any, ShardJob]] = {}
        try:
            while todo or in_flight:
                while todo and idle:
                    actor, job = idle.pop(), todo.popleft()
                    attempt = attempts.get(job.shard.id, 0)
                    fault = options.faults.get(job.shard.id)
                    ref = actor.run.remote(job.compute, job.spec, attempt, fault)
                    in_flight[ref] = (actor, job)
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                actor, job = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, RayTaskError) as err:
                    if isinstance(err, RayActorError):  # the worker died: replace it
                        with contextlib.suppress(Exception):
                            ray.kill(actor)
                        pool.actors.remove(actor)
                        actor = actor_class.remote(env, threads)
                        pool.actors.append(actor)
                    cause = getattr(err, "cause", None)
                    if isinstance(cause, ProbekitError):
                        raise cause from None
                    attempts[job.shard.id] = attempts.get(job.shard.id, 0) + 1
                    if attempts[job.shard.id] > options.max_retries:
                        raise ProbekitError(
                            f"shard {job.shard.id} failed {attempts[job.shard.id]} times: {_last_line(err)}",
                            where=f"{job.compute.__name__} shard {job.shard.id}",
                            fix="see the worker logs under /tmp/ray/session_latest/logs; finished "
                            "shards are kept, so rerunning computes only the rest",
                        ) from None
                    todo.appendleft(job)
                else:
                    if store is not None:
                        store.save(job.key, result)
                    results[job.shard.id] = result
                idle.append(actor)
        finally:
            if owned or in_flight:  # interrupted, or the session ends now: no worker is kept
                for actor in pool.actors:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                options.pool = None
    return results


def _last_line(err: BaseException) -> str:
    lines = [x for x in "".join(traceback.format_exception_only(type(err), err)).splitlines() if x.strip()]
    return lines[-1].strip()[:300] if lines else type(err).__name__
