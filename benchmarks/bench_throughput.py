"""Benchmark 8: throughput of `probekit heads` on Ray (`probekit.parallel`) at 1 and 2 workers, and the
projected time for a 1M-sentence corpus on N workers.

Each variant scores the heads of the same sentences (EWT dev's first 256 with SmolLM2 in the full run;
16 with ``tiny-llama`` in ``--quick``) from a cold capture cache (a fresh ``$PROBEKIT_CACHE``; the
model files are linked in, so no variant converts weights), with the detector and the random baseline
off: the time is the capture, the reduction and the driver's statistics.

- ``local``: `analyze_heads` in this process, one torch thread (and capture's store thread, which pools,
  writes and hashes batch k while batch k+1 runs its forward); ``cpu_s`` is this process's CPU time, so
  ``cpu_s / seconds`` is the cores it kept busy.
- ``ray-1``, ``ray-2``: `probekit.parallel.sharded_model` with 1 or 2 workers of one CPU each on a local
  Ray (``ray.init(address="local", num_cpus=2)``: always a fresh local instance, never a cluster another
  job left running), shards of 32 sentences; the worker start-up and model loads are inside the timing,
  since a real run pays them too.
- ``ray-load-1``, ``ray-load-2``: the same Ray workers (`probekit.parallel.shards.ShardWorker`, one CPU
  each), started the same way, each loading the model and doing nothing else: what ``ray-1`` and
  ``ray-2`` spend before their first shard. ``ray-k`` minus ``ray-load-k`` is then the shard work and
  the driver's statistics: the breakdown of 2 vs 1 workers.

The projection assumes: the corpus has EWT dev's mean sentence length; the shard part (capture and
reduction: ``timings["capture"] + timings["score"]`` of the one-thread local run, per sentence) divides
evenly over N workers like the local run (one torch thread plus capture's store thread; ``cpu_s /
seconds`` says how many cores such a process keeps busy, about one here; N workers means N such
processes); the driver's part (bootstrap, tests: ``timings["stats"]``) grows linearly with the
sentences and stays serial; Ray's start-up and the model loads (``ray-1`` minus ``local``) are paid
once. Shards are read and written on local disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from probekit import bench

PROJECT_SENTENCES = 1_000_000
PROJECT_WORKERS = (1, 8, 32, 128)


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    import ray

    from probekit.activations.align import align
    from probekit.analyses.heads import analyze_heads
    from probekit.data.dataset import Dataset
    from probekit.models import cache_root, load_model
    from probekit.parallel import RayOptions, ShardStore, sharded_model
    from probekit.parallel.shards import ShardWorker

    ctx = ctx or bench.BenchContext(quick=quick)
    model_name = "tiny-llama" if quick else "smollm2-135m"
    sentences, source = bench.bench_sentences(8 if quick else 256, ctx)
    sentences = [s for s in sentences if s.heads is not None]
    data = Dataset(spec=source, items=tuple(sentences))
    model = load_model(model_name, device="cpu")
    n_tokens = int(sum(align(model, s).n_tokens for s in sentences))
    kw = {"n_boot": 200, "n_perm": 50, "progress": False, "detector": False, "batch_size": 16}
    models_dir = cache_root() / "models"
    rows = []
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    before = os.environ.get("PROBEKIT_CACHE")
    try:
        variants = (("local", 0), ("ray-1", 1), ("ray-2", 2), ("ray-load-1", 1), ("ray-load-2", 2))
        # every variant once per repetition, the order rotated so that no variant always runs first
        plan = [
            (rep, v)
            for rep in range(ctx.n_repeats)
            for v in variants[rep % len(variants) :] + variants[: rep % len(variants)]
        ]
        for repeat, (variant, workers) in plan:
            cache = Path(tempfile.mkdtemp(prefix="pk-tp-"))
            (cache / "models").symlink_to(models_dir, target_is_directory=True)
            os.environ["PROBEKIT_CACHE"] = str(cache)  # cold capture cache; the workers get it too
            options = None
            try:
                bench.set_threads(1)
                t0, cpu0 = time.perf_counter(), time.process_time()
                res = None
                if workers == 0:
                    res = analyze_heads(model, data, **kw)
                elif variant.startswith("ray-load"):
                    _load_only(ray, ShardWorker, model_name, workers)
                else:
                    options = RayOptions(workers=workers)
                    sm = sharded_model(model, options, shard_size=32, store=ShardStore(cache / "shards"))
                    res = analyze_heads(sm, data, **kw)
                seconds = time.perf_counter() - t0
                cpu_s = time.process_time() - cpu0 if workers == 0 else float("nan")  # Ray: driver only
            finally:
                shutil.rmtree(cache, ignore_errors=True)
                if options is not None and options.pool is not None:  # free their CPUs for the next variant
                    for actor in options.pool.actors:
                        ray.kill(actor)
            rows.append(
                {
                    "benchmark": "throughput",
                    "variant": variant,
                    "model": model_name,
                    "n_sentences": len(sentences),
                    "n_tokens": n_tokens,
                    "repeat": repeat,
                    "seconds": seconds,
                    # a load-only run processes no sentence: no rate
                    "tokens_per_s": n_tokens / seconds if res else float("nan"),
                    "sentences_per_s": len(sentences) / seconds if res else float("nan"),
                    "workers": workers,
                    "shard_s": res.timings["capture"] + res.timings["score"] if res else float("nan"),
                    "stats_s": res.timings["stats"] if res else float("nan"),
                    "cpu_s": cpu_s,
                    "threads": 1,
                }
            )
            ctx.say(f"throughput {variant} (repetition {repeat}): {seconds:.1f} s")
    finally:
        if started:
            ray.shutdown()
        if before is None:
            os.environ.pop("PROBEKIT_CACHE", None)
        else:
            os.environ["PROBEKIT_CACHE"] = before
        bench.set_threads(ctx.threads)
    frame = pd.DataFrame(rows)
    frame["source"] = source
    frame.attrs["table"], frame.attrs["notes"] = render(frame, ctx)
    return frame


def _load_only(ray, worker_class, model_name: str, workers: int) -> None:
    """Start ``workers`` shard workers as `run_on_ray` does (one CPU, one torch thread each) and have each
    load ``model_name``, at once; return when all have loaded it, and end them."""
    from probekit.parallel.shards import FORWARDED_ENV

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    actor_class = ray.remote(worker_class).options(num_cpus=1, num_gpus=0, max_restarts=0)
    actors = [actor_class.remote(env, 1) for _ in range(workers)]
    spec = {"model": model_name, "device": None, "seed": 0}
    loaded = lambda model, spec: {"n_layers": model.n_layers}  # noqa: E731 (a lambda: Ray ships it by value)
    try:
        ray.get([a.run.remote(loaded, spec, 0, None) for a in actors])
    finally:
        for actor in actors:
            ray.kill(actor)


def render(frame: pd.DataFrame, ctx: bench.BenchContext) -> tuple[pd.DataFrame, str]:
    """The throughput table (per variant: the median over repetitions, and min/max seconds) and the
    1M-sentence projection (assumptions in the module docstring), from the medians."""
    main = frame[frame.benchmark == "throughput"] if "benchmark" in frame else frame
    main = main.assign(repeat=main.get("repeat", 0))
    by_repeat = main.pivot_table(index="repeat", columns="variant", values="seconds")  # [repeat, variant]
    measures = [c for c in ("seconds", "sentences_per_s", "shard_s", "stats_s", "cpu_s") if c in main]
    med = main.groupby("variant", sort=False)[measures].median()  # [variant, measure]
    table = main.groupby("variant", sort=False).agg(
        model=("model", "first"),
        n_sentences=("n_sentences", "first"),
        repeats=("seconds", "size"),
        median_s=("seconds", "median"),
        min_s=("seconds", "min"),
        max_s=("seconds", "max"),
    )
    table = table.join(med.drop(columns="seconds")).reset_index()
    local, n = med.loc["local"], float(main["n_sentences"].iloc[0])
    # the local run's one thread is one worker's core: its capture + reduction per sentence is a
    # worker's cost per sentence; what Ray adds (worker start-up, model load, shard overheads) is paid once
    per_sentence = float(local.shard_s) / n
    stats_per_sentence = float(local.stats_s) / n
    overhead = max(0.0, float((by_repeat["ray-1"] - by_repeat["local"]).median()))
    speedup = by_repeat["ray-1"] / by_repeat["ray-2"] if "ray-2" in by_repeat else pd.Series([float("nan")])
    lines = [
        f"Sentences per second of `probekit heads` (detector and random baseline off, cold capture cache), "
        f"{int(n)} sentences of {main['source'].iloc[0] if 'source' in main else 'EWT dev'}; 2 workers vs 1: "
        f"{_median_and_range(speedup)} (this machine has 2 cores, shared with the driver).",
        "",
        *_cores_line(local, float(speedup.median())),
        *_breakdown(by_repeat),
        f"Projected time for {PROJECT_SENTENCES:,} sentences (EWT dev's mean length; the shard part, "
        f"{per_sentence * 1000:.1f} ms per sentence in the one-thread local run, divides evenly over N "
        f"workers like it; the driver's statistics, {stats_per_sentence * 1000:.2f} ms per sentence, "
        "stay serial; "
        f"Ray's start-up and model loads, {overhead:.0f} s (ray-1 minus local), are paid once; medians over "
        "repetitions):",
        "",
        "| workers | projected hours |",
        "|---|---|",
    ]
    for w in PROJECT_WORKERS:
        hours = (overhead + PROJECT_SENTENCES * (per_sentence / w + stats_per_sentence)) / 3600
        lines.append(f"| {w} | {hours:.1f} |")
    lines += [
        "",
        "The driver holds, per relation instance and head, the argmax word (2 bytes) and the gold mass "
        "(4 bytes), so its memory grows with the corpus; the bootstrap runs on the driver.",
    ]
    return table, "\n".join(lines)


def _median_and_range(ratios: pd.Series) -> str:
    """``1.41x`` for one repetition; ``median 1.41x (per repetition 1.04-1.52x)`` for several."""
    ratios = ratios.dropna()
    if len(ratios) <= 1:
        return f"{ratios.median():.2f}x"
    return f"median {ratios.median():.2f}x (per repetition {ratios.min():.2f}-{ratios.max():.2f}x)"


def _cores_line(local: pd.Series, speedup: float) -> list[str]:
    """How many cores the one-thread local run kept busy (capture's store thread runs beside the forward)."""
    if "cpu_s" not in local or pd.isna(local.cpu_s):
        return []
    cores = float(local.cpu_s) / float(local.seconds)
    return [
        f"The one-thread local run kept {cores:.2f} cores busy on average (process CPU time / wall time; "
        "capture stores batch k on a second thread while batch k+1 runs its forward), so a worker like it "
        "needs about one core, and the second core was free for the second worker.",
        "",
    ]


def _breakdown(by_repeat: pd.DataFrame) -> list[str]:
    """ray-k = start-up and model loads (``ray-load-k``) + the rest (shards, driver's statistics), per
    repetition; the text gives the medians."""
    if not {"ray-1", "ray-2", "ray-load-1", "ray-load-2"} <= set(by_repeat.columns):
        return []
    sec = by_repeat.median()
    rest = {k: by_repeat[f"ray-{k}"] - by_repeat[f"ray-load-{k}"] for k in (1, 2)}  # [repeat] each
    loads_share = (by_repeat["ray-load-2"] / by_repeat["ray-2"]).median()
    return [
        "Where 2 workers vs 1 goes: starting the workers and loading the model took "
        f"{sec['ray-load-1']:.1f} s for one worker and {sec['ray-load-2']:.1f} s for two at once "
        f"(`ray-load-1`, `ray-load-2`); the rest of each run (the shards and the driver's statistics) took "
        f"{rest[1].median():.1f} s on one worker and {rest[2].median():.1f} s on two, "
        f"{_median_and_range((rest[1] / rest[2]).where(rest[2] > 0))}. "
        f"The loads are {loads_share:.0%} of the 2-worker run; they are paid once "
        "per worker, so their share falls as the corpus grows.",
        "",
    ]
