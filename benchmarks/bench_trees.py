"""Benchmark 7: structural probes (Hewitt & Manning 2019) on every residual-stream layer — probekit's
batched trainer versus the plain loop, same numbers.

Workload: `probekit.analyses.trees.fit_structural_probes` with a distance and a depth probe (gold trees,
no control structure, no random-init model) on every layer of SmolLM2-135M (31 stream layers) over the
first 256 sentences of EWT dev (70/10/20 train/dev/test by sentence), rank 64, a fixed 3 epochs
(``patience`` = ``max_epochs``, so both variants run the same number of steps), metrics on the test part.
The residual streams are captured once, outside the timing (probekit's capture cache); each variant reads
one layer at a time from the memory-mapped capture.

- ``plain-loop`` (``engine="loop"``): one probe at a time, one sentence at a time (a Python loop over the
  sentences of each batch; the loss of each sentence from its ``[n, k]`` projection).
- ``probekit-batched`` (``engine="batched"``): both probes of a layer trained together on padded
  ``[batch, words, d]`` tensors (one projection for both probes, pairwise distances by one batched
  Gram-matrix product, masks for the padding), batches of similar length.

Both use the same batches, batch order, seeds and float64 arithmetic, so their tables agree to rounding
(``max_abs_diff``: the largest difference of dev loss, UUAS, DSpr., root accuracy and NSpr. over all rows).
The two sweeps run interleaved and the ratio is taken within each repetition. Peak memory: each variant
once more in a fresh process (``python -m probekit.bench child``), reading the same capture; with
``--quick`` in this process. ``quick`` runs ``tiny-llama`` on 40 sentences, rank 16, 2 epochs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from probekit import bench

VARIANTS = {"plain-loop": "loop", "probekit-batched": "batched"}
#: (model, sentences, rank, epochs)
FULL = ("smollm2-135m", 256, 64, 3)
QUICK = ("tiny-llama", 40, 16, 2)
RSS_KEYS = ("peak_rss_mb", "baseline_rss_mb", "run_peak_rss_mb", "run_peak_anon_mb", "run_peak_file_mb")
_METRICS = ["dev_loss", "uuas", "dspr", "root_acc", "nspr"]


def _fit(model: str, sentences, cap, engine: str, rank: int, epochs: int, layers=None):
    from probekit.analyses.trees.structural import fit_structural_probes

    return fit_structural_probes(
        model,
        sentences,
        layers=layers,
        capture=cap,
        rank=rank,
        max_epochs=epochs,
        patience=epochs,
        control=False,
        random_model=False,
        engine=engine,
        n_boot=200,
    )


def child(model: str, n: int, variant: str, rank: int, epochs: int, capture_path: str, data=None) -> dict:
    """In a fresh process: open the capture, warm up on layer 0 for one epoch, mark the baseline RSS, run
    ``variant`` on every layer."""
    from probekit.activations.capture import Capture

    sentences, _ = bench.bench_sentences(n, bench.BenchContext(data=data))
    cap = Capture(Path(capture_path), sentences)
    _fit(model, sentences, cap, VARIANTS[variant], rank, 1, layers=[0])
    bench.mark_baseline()
    start = time.perf_counter()
    _fit(model, sentences, cap, VARIANTS[variant], rank, epochs)
    return {"seconds": time.perf_counter() - start}


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    from probekit.models import load_model

    ctx = ctx or bench.BenchContext(quick=quick)
    model_name, n, rank, epochs = QUICK if quick else FULL
    sentences, source = bench.bench_sentences(n, ctx)
    tmp = Path(tempfile.mkdtemp(prefix="probekit-bench-trees-"))
    try:
        ctx.say(f"trees: capturing every layer of {model_name} on {n} sentences (not timed)")
        start = time.perf_counter()
        model = load_model(model_name, device="cpu")
        cap = bench.capture_streams(model, sentences, tmp if quick else None)  # full: a rerun reuses it
        capture_s = time.perf_counter() - start
        del model
        results: dict[str, pd.DataFrame] = {}

        def variant(name):
            def go():
                results[name] = _fit(model_name, sentences, cap, VARIANTS[name], rank, epochs).table()

            return go

        warmup = {
            name: (lambda e=engine: _fit(model_name, sentences, cap, e, rank, 1, layers=[0]))
            for name, engine in VARIANTS.items()
        }
        repeats = ctx.repeats if ctx.repeats is not None else (1 if quick else 2)
        ctx.say(f"trees: {len(cap.stream_layers)} layers x 2 probes, {epochs} epochs, rank {rank}")
        timed = pd.DataFrame(
            bench.interleaved(
                {name: variant(name) for name in VARIANTS}, repeats, warmup=warmup, log=ctx.say, label="trees"
            )
        )
        a, b = (results[name].reset_index(drop=True) for name in VARIANTS)
        diff = float(np.nanmax(np.abs(a[_METRICS].to_numpy(float) - b[_METRICS].to_numpy(float))))
        memory = {}
        for name in VARIANTS:
            ctx.say(f"trees: peak memory of {name} ({'in process' if quick else 'fresh process'})")
            kwargs = {
                "model": model_name,
                "n": n,
                "variant": name,
                "rank": rank,
                "epochs": epochs,
                "capture_path": str(cap.path),
                "data": ctx.data,
            }
            try:
                if quick:  # a fresh interpreter costs ~10 s; quick mode only checks the plumbing
                    memory[name] = bench.measure_in_process(lambda kw=kwargs: child(**kw))
                else:
                    memory[name] = bench.measure_in_subprocess(__file__, "child", kwargs, threads=ctx.threads)
            except Exception as err:  # report, don't abort the benchmark
                ctx.say(f"  failed: {err}")
        batched = results["probekit-batched"]
        gold = batched[(batched.model_kind == "trained")]
        linear = batched[batched.model_kind == "linear-position"].set_index("probe")
        info = {
            "benchmark": "trees",
            "model": model_name,
            "n_sentences": n,
            "n_words": int(cap.n_words.sum()),
            "n_train": int(gold.n_train.iloc[0]),
            "n_test": int(gold.n_sentences.iloc[0]),
            "layers": int(gold.layer.nunique()),
            "rank": rank,
            "epochs": epochs,
            "threads": ctx.threads,
            "max_abs_diff": diff,
            "best_uuas": float(gold[gold.probe == "distance"].uuas.max()),
            "best_uuas_layer": int(gold.loc[gold[gold.probe == "distance"].uuas.idxmax(), "layer"]),
            "best_dspr": float(gold[gold.probe == "distance"].dspr.max()),
            "best_root_acc": float(gold[gold.probe == "depth"].root_acc.max()),
            "best_nspr": float(gold[gold.probe == "depth"].nspr.max()),
            "linear_uuas": float(linear.loc["distance", "uuas"]),
            "linear_dspr": float(linear.loc["distance", "dspr"]),
            "capture_s_untimed": capture_s,
            "source": source,
        }
        rows = []
        for r in timed.itertuples(index=False):
            m = memory.get(r.variant, {})
            rows.append(
                {
                    **info,
                    "variant": r.variant,
                    "repeat": r.repeat,
                    "seconds": r.seconds,
                    "tokens_per_s": np.nan,
                    **{k: m.get(k, np.nan) for k in RSS_KEYS},
                    "rss_run_seconds": m.get("seconds", np.nan),
                    "rss_method": m.get("rss_method", ""),
                }
            )
    finally:
        cap = None
        shutil.rmtree(tmp, ignore_errors=True)
    frame = pd.DataFrame(rows)
    for col in RSS_KEYS:  # None where not sampled
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    for col in frame.select_dtypes("float").columns:  # as benchmarks.csv keeps them (%.6g), so that
        frame[col] = [float(f"{v:.6g}") for v in frame[col]]  # render_only gives the same report
    frame.attrs["table"], frame.attrs["notes"] = render(frame, ctx)
    return frame


def render(frame: pd.DataFrame, ctx: bench.BenchContext) -> tuple[pd.DataFrame, str]:
    """The report table and notes from the rows (as in benchmarks.csv)."""
    frame = frame.copy()
    frame["speedup_vs_loop"] = 1.0 / bench.per_repeat_ratio(frame, "plain-loop").to_numpy()
    rows = []
    for variant, g in frame.groupby("variant", sort=False):
        row = {
            "variant": variant,
            "model": g.model.iloc[0],
            "n_sentences": int(g.n_sentences.iloc[0]),
            "layers": int(g.layers.iloc[0]),
            "repeats": len(g),
            "median_s": g.seconds.median(),
            "min_s": g.seconds.min(),
            "max_s": g.seconds.max(),
            "per_layer_s": g.seconds.median() / g.layers.iloc[0],
            "speedup_vs_loop": g.speedup_vs_loop.median(),
        }
        for col in ("baseline_rss_mb", "run_peak_rss_mb", "run_peak_anon_mb", "peak_rss_mb"):
            if col in g and pd.to_numeric(g[col], errors="coerce").notna().any():
                row[col] = pd.to_numeric(g[col], errors="coerce").median()
        rows.append(row)
    table = pd.DataFrame(rows)
    return table, _notes(frame, table)


def _notes(frame: pd.DataFrame, table: pd.DataFrame) -> str:
    f = frame.iloc[0].to_dict()
    t = table.set_index("variant")
    speedup = float(t.loc["probekit-batched", "speedup_vs_loop"]) if "probekit-batched" in t.index else np.nan
    n_layers, epochs = int(f["layers"]), int(f["epochs"])
    lines = [
        f"Data: {f.get('source', '')}, {int(f['n_sentences'])} sentences ({int(f['n_words'])} words): "
        f"{int(f['n_train'])} train, {int(f['n_test'])} test (the rest dev) by sentence; {n_layers} "
        f"residual-stream layers of {f['model']} (0 = embeddings), a distance and a depth probe per layer, "
        f"rank {int(f['rank'])}, {epochs} epochs (no early stop), Adam in float64. Capturing the streams "
        f"took {float(f['capture_s_untimed']):.0f} s and is not timed. Time per sweep = every layer's "
        "training, prediction and metrics (UUAS with its bootstrap, DSpr., root accuracy, NSpr.).",
        "",
        f"**Speed.** The batched trainer is **{speedup:.1f}×** the plain loop's speed (median of the "
        "per-repetition ratios). **Same numbers:** the largest difference between the two tables (dev loss, "
        f"UUAS, DSpr., root accuracy, NSpr., every row) is {float(f['max_abs_diff']):.2g} (required ≤ 1e-6).",
        "",
        f"**What the probes find** (best layer of {n_layers}, test part, {epochs} epochs only: a timing run, "
        f"not the analysis): UUAS {float(f['best_uuas']):.3f} (layer {int(f['best_uuas_layer'])}), DSpr. "
        f"{float(f['best_dspr']):.3f}, root accuracy {float(f['best_root_acc']):.3f}, NSpr. "
        f"{float(f['best_nspr']):.3f}; the linear-position baseline has UUAS {float(f['linear_uuas']):.3f} "
        f"and DSpr. {float(f['linear_dspr']):.3f}. Hewitt & Manning (2019) report about 0.8 UUAS for "
        "BERT's best layers against 0.49 for their linear baseline.",
    ]
    if "run_peak_rss_mb" in t and t["run_peak_rss_mb"].notna().any():
        mem = "; ".join(
            f"{v} +{t.loc[v, 'run_peak_rss_mb'] - t.loc[v, 'baseline_rss_mb']:.0f} MB above its baseline "
            f"({t.loc[v, 'run_peak_rss_mb']:.0f} MB resident at peak)"
            for v in t.index
            if pd.notna(t.loc[v, "run_peak_rss_mb"])
        )
        method = frame.rss_method.dropna().iloc[0] if "rss_method" in frame else "fresh process"
        lines += [
            "",
            f"**Memory** ({method}): "
            f"{mem}. Both read one layer at a time from the memory-mapped capture, so the peak holds one "
            "layer's word vectors (float32) plus the padded float64 batches of that layer, never all layers.",
        ]
    return "\n".join(lines)
