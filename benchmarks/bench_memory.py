"""Benchmark 2: does capture stay linear in time and flat in memory as the input grows?

``probekit.activations.capture`` (every layer's resid_post + attention, a fresh cache folder) of MiniLM on
100, 1,000 and 10,000 sentences, each size in a fresh process so its peak memory is its own. EWT dev has
2,001 sentences; bigger sizes cycle it with new sentence ids (same token statistics, new cache entries).
Every size starts with the same `LONGEST` longest EWT sentences (by MiniLM tokens), and the rest are
narrower than all of them, so that the two widest batches -- whose activations set the peak: capture
stores one batch while the next runs its forward -- are the same at every size and only the number of
sentences changes. (With 16, one batch, the cycled copies of long sentences made the large inputs'
second batch wider than the small ones': 85 vs 62 tokens; `scripts/trace_capture_memory.py`.)
Goal: peak anonymous memory (RssAnon: heap, tensors, arrays) independent of the number of sentences,
within `FLAT_TOLERANCE_MB`. ``capture-mmap-1mb`` repeats the smallest and the largest size with glibc's
mmap threshold fixed (`MMAP_THRESHOLD`), to separate the allocator's share of the peak from capture's.
SmolLM2 is left out: about 7× slower per token, it would not fit the 10 minutes this benchmark is
allowed, and the flatness question is the same.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from probekit import bench

#: (model, variant) -> sizes
FULL_PLAN = {
    ("minilm-l6", "probekit-capture"): (100, 1000, 10000),
    ("minilm-l6", "capture-mmap-1mb"): (100, 10000),
}
#: (quick mode runs in this process: no `capture-mmap-1mb`, whose mallopt would outlive the benchmark)
QUICK_PLAN = {("tiny-bert", "probekit-capture"): (20, 40)}
#: repeated in the full run when --repeats asks for more than one (the others run once)
REPEATED = (("minilm-l6", "probekit-capture"), ("minilm-l6", "capture-mmap-1mb"))
#: ``capture-mmap-1mb``: glibc's mmap threshold, fixed (``mallopt(M_MMAP_THRESHOLD)``, as the environment
#: variable ``MALLOC_MMAP_THRESHOLD_=1048576`` would), so every allocation above 1 MiB is its own mapping,
#: unmapped when freed, and the threshold no longer rises to the size of freed blocks
MMAP_THRESHOLD = 2**20
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
#: the longest sentences every size starts with: two batches of capture's default size, the two alive at once
LONGEST = 32
#: "flat": the largest size's peak RssAnon within this many MB of the smallest size's
FLAT_TOLERANCE_MB = 16.0


def sentences_for(model, n: int, data: str | None = None):
    """``n`` sentences: the `LONGEST` longest of the source (by ``model``'s tokens, ids prefixed
    ``long:``) followed by the first ``n - LONGEST`` of `probekit.bench.bench_sentences` (cycled) that are
    narrower than every one of them."""
    from dataclasses import replace

    from probekit.activations.align import align

    ctx = bench.BenchContext(data=data)
    pool, source = bench.bench_sentences(2001, ctx)
    pool = list({s.id: s for s in pool}.values())
    width = {s.id: align(model, s).n_tokens for s in pool}
    order = sorted(range(len(pool)), key=lambda i: (-width[pool[i].id], i))[: min(LONGEST, n)]
    longest = [replace(pool[i], id=f"long:{pool[i].id}") for i in order]
    below = min(width[pool[i].id] for i in order)
    kept = {s.id for s in pool if width[s.id] < below}  # the cycled copies keep their source's width
    need, base = n - len(longest), []
    ask = need
    while len(base) < need:  # cycled sentences get new ids: filter by the source sentence's width
        ask = 2 * ask + 16
        cycled, _ = bench.bench_sentences(ask, ctx)
        base = [s for s in cycled if _source_id(s.id) in kept]
    return longest + base[:need], f"{source}; the {len(longest)} longest first, then only narrower ones"


def _source_id(sentence_id: str) -> str:
    """The EWT id a cycled sentence was made from (`bench.bench_sentences` names copies ``r1:<id>``, ...)."""
    return re.sub(r"^r\d+:", "", sentence_id)


def child(model: str, n: int, variant: str = "probekit-capture", data: str | None = None) -> dict:
    """In a fresh process: load, warm up on 16 sentences, mark the baseline, capture ``n`` sentences
    (``capture-bridge``: with capture's forward through the bridge, as before plain HF modules;
    ``capture-mmap-1mb``: with glibc's mmap threshold fixed at `MMAP_THRESHOLD` before anything is
    allocated, to separate the allocator's share of the heap peak from capture's)."""
    from probekit.activations.capture import capture
    from probekit.models import load_model

    if variant not in ("probekit-capture", "capture-bridge", "capture-mmap-1mb"):
        raise ValueError(f"unknown variant {variant!r}")
    if variant == "capture-mmap-1mb":
        import ctypes
        import ctypes.util

        if not ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
            raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: not glibc?")
    if variant == "capture-bridge":  # the same capture with its forward through the bridge
        import importlib

        importlib.import_module("probekit.activations.forward")._hf_can_fill = lambda model, names: False

    m = load_model(model, device="cpu")
    sentences, source = sentences_for(m, n, data)
    root = Path(tempfile.mkdtemp(prefix="probekit-bench-memory-"))
    try:
        capture(m, sentences[:16], cache=True, cache_dir=root / "warm", progress=False)
        shutil.rmtree(root / "warm", ignore_errors=True)
        bench.mark_baseline()
        start = time.perf_counter()
        cap = capture(
            m,
            sentences,
            resid=("resid_post",),
            attention=True,
            cache=True,
            cache_dir=root / "run",
            progress=False,
        )
        seconds = time.perf_counter() - start
        n_tokens = int(sum(cap.meta["n_tokens"]))
        n_words = int(cap.n_words.sum())
        output_mb = sum(p.stat().st_size for p in cap.path.iterdir()) / 2**20
        return {
            "seconds": seconds,
            "n_tokens": n_tokens,
            "n_words": n_words,
            "output_mb": output_mb,
            "max_tokens": int(max(cap.meta["n_tokens"])),
            "source": source,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    ctx = ctx or bench.BenchContext(quick=quick)
    plan = QUICK_PLAN if quick else FULL_PLAN
    repeats = 1 if quick else (ctx.repeats if ctx.repeats is not None else 1)
    jobs = [(model, variant, n) for (model, variant), sizes in plan.items() for n in sizes]
    rows = []
    for r in range(repeats):
        for model, variant, n in jobs if r % 2 == 0 else jobs[::-1]:
            if r > 0 and (model, variant) not in REPEATED:
                continue
            ctx.say(f"memory: {model} {variant} on {n} sentences, repeat {r} (fresh process)")
            kwargs = {"model": model, "n": n, "variant": variant, "data": ctx.data}
            if quick:  # a fresh interpreter costs ~10 s; quick mode only checks the plumbing
                out = bench.measure_in_process(lambda kw=kwargs: child(**kw))
            else:
                out = bench.measure_in_subprocess(__file__, "child", kwargs, threads=ctx.threads)
            rows.append(
                {
                    "benchmark": "memory",
                    "variant": variant,
                    "model": model,
                    "n_sentences": n,
                    "repeat": r,
                    "tokens_per_s": out["n_tokens"] / out["seconds"],
                    "threads": ctx.threads,
                    **out,
                    "capture_anon_mb": (
                        None
                        if out.get("baseline_anon_mb") is None
                        else out["run_peak_anon_mb"] - out["baseline_anon_mb"]
                    ),
                }
            )
            ctx.say(
                f"  {out['seconds']:.1f} s, run peak {out['run_peak_rss_mb']} MB, output "
                f"{out['output_mb']:.0f} MB"
            )
    frame = pd.DataFrame(rows)
    frame.attrs["table"], frame.attrs["notes"] = render(frame, ctx)
    return frame


def render(frame: pd.DataFrame, ctx: bench.BenchContext) -> tuple[pd.DataFrame, str]:
    """The report table and notes from the rows (as in benchmarks.csv)."""
    frame = frame.copy()
    frame["seconds_per_1k_tokens"] = frame["seconds"] / frame["n_tokens"] * 1000
    source = (
        str(frame["source"].dropna().iloc[0]) if "source" in frame and frame["source"].notna().any() else ""
    )
    repeats = int(frame.groupby(["model", "variant", "n_sentences"]).size().max())
    return _table(frame), _notes(frame, source, repeats)


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (model, variant, n), g in frame.groupby(["model", "variant", "n_sentences"], sort=False):
        rows.append(
            {
                "model": model,
                "variant": variant,
                "n_sentences": n,
                "n_tokens": int(g.n_tokens.iloc[0]),
                "repeats": len(g),
                "median_s": g.seconds.median(),
                "min_s": g.seconds.min(),
                "max_s": g.seconds.max(),
                "s_per_1k_tokens": g.seconds_per_1k_tokens.median(),
                "tokens_per_s": g.tokens_per_s.median(),
                "baseline_rss_mb": g.baseline_rss_mb.median(),
                "run_peak_rss_mb": g.run_peak_rss_mb.median(),
                "baseline_anon_mb": g.baseline_anon_mb.median(),
                "run_peak_anon_mb": g.run_peak_anon_mb.median(),
                "capture_anon_mb": g.capture_anon_mb.median(),
                "run_peak_file_mb": g.run_peak_file_mb.median(),
                "peak_rss_mb (ru_maxrss)": g.peak_rss_mb.median(),
                "output_mb": g.output_mb.median(),
            }
        )
    return pd.DataFrame(rows).sort_values(["model", "variant", "n_sentences"], kind="stable")


def _notes(frame: pd.DataFrame, source: str, repeats: int) -> str:
    lines = [
        f"Input: {source or 'see benchmark 1'} (sizes beyond its length cycle it with new ids). Each size "
        f"runs in its own fresh process ({repeats} repetition(s) for "
        + " and ".join(f"{m} {v}" for m, v in REPEATED)
        + ", 1 otherwise), capture of every layer's resid_post + attention into a fresh cache folder. "
        f"Memory: {frame.rss_method.iloc[0] if 'rss_method' in frame else 'not measured'}.",
        "",
    ]
    for (model, variant), g in frame.groupby(["model", "variant"], sort=False):
        t = g.groupby("n_sentences")[
            [
                "seconds_per_1k_tokens",
                "run_peak_anon_mb",
                "baseline_anon_mb",
                "capture_anon_mb",
                "run_peak_file_mb",
                "run_peak_rss_mb",
                "baseline_rss_mb",
                "output_mb",
                "peak_rss_mb",
            ]
        ].median()
        if "max_tokens" not in g:
            g = g.assign(max_tokens=np.nan)
        if len(t) < 2:
            continue
        t.index = t.index.astype(int)
        lo, hi = t.index.min(), t.index.max()
        spt, anon, rss, file_, out_mb = (
            t["seconds_per_1k_tokens"],
            t["run_peak_anon_mb"],
            t["run_peak_rss_mb"],
            t["run_peak_file_mb"],
            t["output_mb"],
        )
        text = (
            f"**{model}, {variant}.** Time per 1k tokens {spt[lo]:.2f} s at {lo} sentences, {spt[hi]:.2f} s "
            f"at {hi} ({spt[hi] / spt[lo]:.2f}×; 1.0 = linear). Resident memory at peak "
            + " → ".join(f"{rss[k]:.0f}" for k in t.index)
            + " MB over a baseline of "
            f"{t['baseline_rss_mb'][hi]:.0f} MB (ru_maxrss {t['peak_rss_mb'][lo]:.0f} → "
            f"{t['peak_rss_mb'][hi]:.0f} MB), of which file-backed (RssFile) "
            + " → ".join(f"{file_[k]:.0f}" for k in t.index)
            + " MB while the output grows "
            + " → ".join(f"{out_mb[k]:.0f}" for k in t.index)
            + " MB, and heap (RssAnon) "
            + " → ".join(f"{anon[k]:.0f}" for k in t.index)
            + " MB."
        )
        if "max_tokens" in g and g["max_tokens"].notna().all():
            mt = g.groupby("n_sentences")["max_tokens"].max()
            mt.index = mt.index.astype(int)
            text += (
                " The longest sentence has "
                + " → ".join(f"{int(mt[k])}" for k in t.index)
                + " tokens; the heap peak follows the widest batch (its cached activations)."
            )
        own = t["capture_anon_mb"]  # capture's heap above the loaded process
        base = t["baseline_anon_mb"]
        growth = float(own[hi] - own[lo])
        steps = ", ".join(f"{a} → {b}: {own[b] - own[a]:+.0f} MB" for a, b in itertools.pairwise(t.index))
        spread = _spread_by_size(g)
        verdict = "**MET**" if abs(growth) <= FLAT_TOLERANCE_MB else "**NOT MET**"
        text += (
            " Before capture starts, the process's heap (model, warm-up, and the input: the caller's list of "
            "Sentence objects) is "
            + " → ".join(f"{base[k]:.0f}" for k in t.index)
            + " MB; capture's own peak above it is "
            + " → ".join(f"{own[k]:.0f}" for k in t.index)
            + f" MB. Goal (capture's peak RssAnon independent of the number of sentences, within "
            f"{FLAT_TOLERANCE_MB:.0f} MB from {lo} to {hi} sentences): {verdict}, {growth:+.0f} MB "
            f"({steps}); the absolute peak, which also counts the growing input, moves "
            f"{anon[hi] - anon[lo]:+.0f} MB."
        )
        if int(g.groupby("n_sentences").size().max()) > 1:
            text += (
                " Between repetitions of one size (fresh processes, same input), capture's peak differs by "
                "up to " + " / ".join(f"{spread[k]:.0f}" for k in t.index) + " MB."
            )
        lines.append(text)
    lines += [
        "",
        "Why resident memory grows with the output: pages written through an open memory map stay "
        "mapped (resident, file-backed) in the process until the map is closed, so RSS and `ru_maxrss` grow "
        "with the output even though the data are page cache the kernel can write back and drop under "
        "pressure. It is not a leak, but RSS-based monitors and schedulers see it as one, so "
        "`probekit.capture._compute` calls `madvise(MADV_DONTNEED)` on every output map after each batch "
        "(numpy's memmap keeps the `mmap` object in `._mmap`; `mmap.madvise` exists since Python 3.8); for a "
        "shared file mapping the kernel keeps the dirty data in the page cache, so nothing is lost and no "
        "`msync` is needed. RssFile in the rows above shows the effect.",
        "",
        "Why the heap grew with the input (previous reports: +57 MB from 1,000 to 4,000 sentences; +76 MB "
        "from 100 to 10,000, same longest sentence), and what removed it: capture's batches are sorted by "
        "length and ran narrowest first, so each asked for slightly larger tensors than the last; glibc "
        "raises its mmap threshold to the size of each freed large block and serves the next requests from "
        "the heap, where a freed block too small for the next, larger request stays resident -- the heap "
        "ratcheted up batch by batch, more often the more sentences there were. The same batches now run "
        "widest first (`probekit.activations.capture._compute`): the first batch sets the peak and every "
        "later one fits in blocks it freed; no stored number changes. Second, the per-sentence state held "
        "for the whole run: every sentence's token ids and word spans, aligned up front to sort by length, "
        "were Python tuples (15 MB for 10,000 sentences, tracemalloc); they are now packed into two int32 "
        "arrays (`probekit.activations.align.PackedEncodings`). What is left grows by a few hundred bytes a "
        "sentence: the 16-byte chunk digests of every output file (for the checksums), the packed "
        "encodings, and `meta.json`'s sentence ids and word lists while they are written. The "
        "`malloc_trim(0)` guard (past 32 MB above the first batch's level) stays as a safety net.",
        "",
        "The allocator's share: the `capture-mmap-1mb` rows run the same capture with glibc's mmap "
        "threshold fixed at 1 MiB (`mallopt(M_MMAP_THRESHOLD)` in the fresh process, what "
        "`MALLOC_MMAP_THRESHOLD_=1048576` in the environment does), so each tensor above 1 MiB is mapped for "
        "itself and unmapped when freed, instead of being served from heap blocks whose freed pages stay "
        "resident until a trim. " + _allocator_verdict(frame) + " `scripts/trace_capture_memory.py` shows "
        "where in a run the peak comes (a peak early in the run and never exceeded afterwards is not "
        "per-sentence state). probekit does not fix the threshold itself: it is a setting of the whole "
        "process, and it slows forward-heavy work down (`scripts/time_malloc_threshold.py`, quoted in "
        "docs/methods/capture.md). Set the variable where flat memory matters more than that.",
    ]
    return "\n".join(lines)


def _allocator_verdict(frame: pd.DataFrame) -> str:
    """One sentence comparing capture's heap peak (growth from the smallest to the largest size, and the
    spread between repetitions) with and without the fixed mmap threshold, from the rows."""
    stats = {}
    for variant in ("probekit-capture", "capture-mmap-1mb"):
        g = frame[(frame["variant"] == variant) & frame["capture_anon_mb"].notna()]
        if g["n_sentences"].nunique() < 2:
            return "(Not measured in this run.)"
        med = g.groupby("n_sentences")["capture_anon_mb"].median()
        stats[variant] = (
            med.index.min(),
            med.index.max(),
            med.iloc[0],
            med.iloc[-1],
            _spread_by_size(g).max(),
        )
    (lo, hi, a0, a1, sa), (_, _, b0, b1, sb) = stats["probekit-capture"], stats["capture-mmap-1mb"]
    return (
        f"From {lo:.0f} to {hi:.0f} sentences capture's peak (median) goes {a0:.0f} → {a1:.0f} MB "
        f"({a1 - a0:+.0f}) by default and {b0:.0f} → {b1:.0f} MB ({b1 - b0:+.0f}) with the threshold fixed; "
        f"repetitions of one size differ by up to {sa:.0f} and {sb:.0f} MB. At the peak, `tracemalloc` sees "
        "about half a kilobyte per sentence held on purpose (chunk digests, packed encodings, batch order: "
        "docs/methods/capture.md)."
    )


def _spread_by_size(g: pd.DataFrame) -> pd.Series:
    """Per number of sentences: the largest minus the smallest capture heap peak over the repetitions."""
    spread = g.groupby("n_sentences")["capture_anon_mb"].agg(lambda x: x.max() - x.min())
    spread.index = spread.index.astype(int)
    return spread
