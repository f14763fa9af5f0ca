"""Benchmark 1: word-level capture of every layer's resid_post and attention pattern.

Same sentences, same right-padded, length-sorted batches of 16 for every variant:

- ``hf-forward``: a pristine Hugging Face model (same weights, eager attention, no bridge) — the floor.
  (``model.hf_model`` cannot serve: the bridge swaps its own components into it.)
- ``hf-body-forward``: the same without the LM/MLM head (``hf.base_model``): the work capture needs.
- ``bridge-forward``: ``model.bridge(input_ids, attention_mask=...)`` with no hooks.
- ``tl-cache-all``: ``bridge.run_with_cache`` caching every hook.
- ``tl-cache-filter``: ``run_with_cache`` with capture's ``names_filter`` (resid_post + hook_pattern).
- ``probekit-capture``: ``probekit.capture`` into a fresh cache folder (tokenising, pooling words,
  word attention and writing the memory maps included; the folder is deleted after the clock stops).
- ``proposed-capture``: the same call with ``probekit.capture._compute`` swapped for `proposed_compute`
  below (a prototype of changes proposed for capture.py; same files, same numbers, checked).
- ``proposed-keep-head`` (attribution run on 128 sentences only): the prototype without its first change
  (it still computes the LM/MLM head), so that the gain of each change can be told apart.

Every variant also runs once in a fresh process for its peak memory (see `probekit.bench`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import mmap
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probekit import bench
from probekit.align import align, pad_batch, word_attention

VARIANTS = ("hf-forward", "hf-body-forward", "bridge-forward", "tl-cache-all", "tl-cache-filter", "probekit-capture",
            "proposed-capture")
#: the attribution run (a subset): which of the prototype's changes buys what
ATTRIBUTION = ("hf-forward", "probekit-capture", "proposed-keep-head", "proposed-capture")
FLOOR = "hf-forward"
RSS_KEYS = ("peak_rss_mb", "baseline_rss_mb", "run_peak_rss_mb", "run_peak_anon_mb", "run_peak_file_mb",
            "rss_method")
BATCH_SIZE = 16
CHUNK_BATCHES = 4  # variants alternate every 4 batches (64 sentences)


# --------------------------------------------------------------------------------------------------
# the workload


class Workload:
    """Sentences aligned and cut into the same batches `probekit.capture` makes (sorted by length)."""

    def __init__(self, model, sentences, batch_size: int = BATCH_SIZE):
        self.model, self.sentences, self.batch_size = model, list(sentences), batch_size
        self.encs = [align(model, s) for s in self.sentences]
        order = sorted(range(len(self.encs)), key=lambda i: (self.encs[i].n_tokens, i))
        self.batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.padded = [pad_batch([self.encs[i] for i in b], model.pad_token_id) for b in self.batches]
        self.n_tokens = int(sum(e.n_tokens for e in self.encs))
        self.n_padded = int(sum(ids.numel() for ids, _ in self.padded))
        layers = range(model.n_layers)
        self.names = ({f"blocks.{layer}.hook_resid_post" for layer in layers}
                      | {f"blocks.{layer}.attn.hook_pattern" for layer in layers})

    def chunks(self, n_batches: int) -> list[Workload]:
        """Consecutive groups of ``n_batches`` batches as workloads of their own; `probekit.capture` on a
        chunk's sentences forms exactly these batches again (same length order, same cut points)."""
        out = []
        for k in range(0, len(self.batches), n_batches):
            idx = [i for b in self.batches[k:k + n_batches] for i in b]
            out.append(Workload(self.model, [self.sentences[i] for i in idx], self.batch_size))
        return out


def load_pristine_hf(name: str, with_tokenizer: bool = False):
    """The same weights as ``load_model(name)`` in a plain HF model (no bridge components inside)."""
    from probekit.models import _load_hf, _quiet

    with _quiet():
        hf, tokenizer, causal, _ = _load_hf(name, None, 0, random_init=False)
    return (hf.eval(), tokenizer, causal) if with_tokenizer else hf.eval()


def make_variants(work: Workload, hf, tmp_root: Path, include: tuple[str, ...] = VARIANTS) -> dict:
    """Variant name -> zero-argument callable (returns a cleanup callable or None), for ``include``."""
    from probekit.capture import capture

    model = work.model
    names = work.names

    def hf_forward():
        with torch.inference_mode():
            for ids, mask in work.padded:
                hf(input_ids=ids, attention_mask=mask)

    def hf_body_forward():
        with torch.inference_mode():
            for ids, mask in work.padded:
                hf.base_model(input_ids=ids, attention_mask=mask)

    def bridge_forward():
        with torch.inference_mode():
            for ids, mask in work.padded:
                model.bridge(ids, attention_mask=mask)

    def cache_all():
        with torch.inference_mode():
            for ids, mask in work.padded:
                _, cache = model.bridge.run_with_cache(ids, attention_mask=mask)
                del cache

    def cache_filter():
        with torch.inference_mode():
            for ids, mask in work.padded:
                _, cache = model.bridge.run_with_cache(ids, attention_mask=mask,
                                                       names_filter=lambda n: n in names)
                del cache

    def run_capture(compute=None):
        def fn():
            folder = Path(tempfile.mkdtemp(prefix="cap-", dir=tmp_root))
            with _swapped_compute(compute):
                cap = capture(model, work.sentences, layers=None, resid=("resid_post",), attention=True,
                              batch_size=work.batch_size, cache=True, cache_dir=folder, progress=False)
            del cap
            return lambda: shutil.rmtree(folder, ignore_errors=True)
        return fn

    variants = {"hf-forward": hf_forward, "hf-body-forward": hf_body_forward, "bridge-forward": bridge_forward, "tl-cache-all": cache_all,
                "tl-cache-filter": cache_filter, "probekit-capture": run_capture(),
                "proposed-keep-head": run_capture(functools.partial(proposed_compute, skip_head=False)),
                "proposed-capture": run_capture(proposed_compute)}
    if hf is None:
        variants.pop("hf-forward")
        variants.pop("hf-body-forward")
    return {k: v for k, v in variants.items() if k in include}


@contextlib.contextmanager
def _swapped_compute(compute):
    import importlib

    capmod = importlib.import_module("probekit.capture")  # `probekit.capture` is also the function
    if compute is None:
        yield
        return
    original = capmod._compute
    capmod._compute = compute
    try:
        yield
    finally:
        capmod._compute = original


# --------------------------------------------------------------------------------------------------
# the proposed change to probekit.capture._compute (a prototype; capture.py itself is not touched)


def proposed_compute(model, encs, settings: dict, folder: Path, progress: bool, skip_head: bool = True) -> None:
    """Drop-in replacement for ``probekit.capture._compute``: the same files with the same numbers.

    Three changes. (0) When the last block is among the captured layers, the run still stops right after
    it (a hook on ``ln_final.hook_in`` / ``mlm_head.hook_in`` / ``unembed.hook_in`` raises the bridge's
    ``StopAtLayerException``), so the final norm and the LM/MLM head — whose logits capture never reads, a
    ``[batch, pos, vocab]`` tensor — are not computed. (1) After each batch the written pages of the output memory maps are released from the
    process (``madvise(MADV_DONTNEED)``; for a shared file mapping the kernel keeps the data, dirty, in
    the page cache and writes it back as usual), so resident memory stays flat instead of growing with
    the output (see benchmark 2). (2) How a batch's cache is turned into word rows. The current loop issues several
    torch ops per (sentence, hooked layer) — a one-hot pooling matmul, a slice, ``.float()``, ``.cpu()`` —
    and per sentence a ``torch.stack`` of every layer's pattern: about ``n_sentences × (n_layers + 2)``
    tiny ops, each paying torch's dispatch and intra-op thread hand-off. Here every cached tensor of the
    batch is viewed as a numpy array once (zero-copy on CPU), word rows are gathered with one fancy
    index per hook and batch (``first``/``last``) or ``np.add.reduceat`` (``mean``), and the per-sentence
    attention slices are stacked in numpy. No torch op remains in the per-sentence loop.
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    from probekit.capture import CACHE_VERSION, _physical_hooks

    folder.mkdir(parents=True)
    layers, attention, pool = settings["layers"], settings["attention"], settings["pool"]
    hooks = _physical_hooks(settings["resid"], layers)
    n_words = np.array([len(e.word_spans) for e in encs])
    word_offsets = np.concatenate([[0], np.cumsum(n_words)])
    n_att_layers, n_heads = (len(layers), model.n_heads) if attention else (0, 0)
    att_offsets = np.concatenate([[0], np.cumsum(n_att_layers * n_heads * n_words**2)])
    mass_offsets = np.concatenate([[0], np.cumsum(n_att_layers * n_heads * n_words)])
    resid_out = {hl: open_memmap(folder / f"{hl[0]}.{hl[1]}.npy", mode="w+", dtype=np.float32,
                                 shape=(int(word_offsets[-1]), model.d_model)) for hl in hooks}
    if attention:
        att_out = open_memmap(folder / "attention.npy", mode="w+", dtype=np.float32, shape=(int(att_offsets[-1]),))
        mass_out = open_memmap(folder / "special_mass.npy", mode="w+", dtype=np.float32,
                               shape=(int(mass_offsets[-1]),))
    outputs = [*resid_out.values(), *((att_out, mass_out) if attention else ())]
    names = {f"blocks.{layer}.hook_{h}" for h, layer in hooks}
    if attention:
        names |= {f"blocks.{layer}.attn.hook_pattern" for layer in layers}
    stop = max(layers) + 1
    stop_at_layer = stop if stop < model.n_layers else None
    head_stops = [] if stop_at_layer is not None or not skip_head else [
        (name, _stop_here) for name in HEAD_ENTRY_HOOKS if name in model.bridge.hook_dict]
    order = sorted(range(len(encs)), key=lambda i: (encs[i].n_tokens, i))
    batches = [order[i:i + settings["batch_size"]] for i in range(0, len(order), settings["batch_size"])]
    bar = tqdm(total=len(encs), desc=f"capture {model.name}", unit="sent", disable=not progress, leave=False)
    device = model.device
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=head_stops):
        for batch in batches:
            benc = [encs[i] for i in batch]
            input_ids, attention_mask = pad_batch(benc, model.pad_token_id)
            _, cache = model.bridge.run_with_cache(
                input_ids.to(device), attention_mask=attention_mask.to(device),
                names_filter=lambda name: name in names, stop_at_layer=stop_at_layer)
            if hooks:
                starts = np.concatenate([[0], np.cumsum([len(e.word_spans) for e in benc])])
                if pool == "mean":
                    spans = [(b, a, z) for b, e in enumerate(benc) for a, z in e.word_spans]
                    tok_b = np.concatenate([np.full(z - a, b) for b, a, z in spans])
                    tok_t = np.concatenate([np.arange(a, z) for _, a, z in spans])
                    lengths = np.array([z - a for _, a, z in spans], dtype=np.float32)
                    seg = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
                else:
                    tok_b = np.concatenate([np.full(len(e.word_spans), b) for b, e in enumerate(benc)])
                    tok_t = np.array([a if pool == "first" else z - 1 for e in benc for a, z in e.word_spans])
                for h, layer in hooks:
                    x = cache[f"blocks.{layer}.hook_{h}"].float().cpu().numpy()  # [B, T, d], a view on CPU
                    rows = x[tok_b, tok_t]
                    if pool == "mean":
                        rows = np.add.reduceat(rows, seg, axis=0) / lengths[:, None]
                    out = resid_out[(h, layer)]
                    for j, i in enumerate(batch):
                        out[word_offsets[i]:word_offsets[i + 1]] = rows[starts[j]:starts[j + 1]]
            if attention:
                pats = [cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu().numpy() for layer in layers]
                for b, i in enumerate(batch):
                    n_tok = encs[i].n_tokens
                    pattern = np.stack([p[b, :, :n_tok, :n_tok] for p in pats])  # [L, H, T, T]
                    word_att, mass = word_attention(pattern, encs[i], renormalize=settings["renormalize"])
                    att_out[att_offsets[i]:att_offsets[i + 1]] = word_att.ravel()
                    mass_out[mass_offsets[i]:mass_offsets[i + 1]] = mass.ravel()
            bar.update(len(batch))
            del cache
            for arr in outputs:
                _release(arr)
    bar.close()
    for arr in resid_out.values():
        arr.flush()
    if attention:
        att_out.flush()
        mass_out.flush()
    meta = {
        "version": CACHE_VERSION, "model": model.name, "settings": settings,
        "hooks": [list(hl) for hl in hooks], "d_model": model.d_model, "n_heads": n_heads,
        "sentence_ids": [e.sentence.id for e in encs], "words": [list(e.sentence.words) for e in encs],
        "n_tokens": [e.n_tokens for e in encs],
    }
    (folder / "meta.json").write_text(json.dumps(meta))


#: hook points that fire after the last block, before the final norm / LM or MLM head
HEAD_ENTRY_HOOKS = ("ln_final.hook_in", "mlm_head.hook_in", "unembed.hook_in")


def _stop_here(tensor, *, hook):
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(tensor)


def _release(arr: np.memmap) -> None:
    """Drop a memory map's resident pages from this process (data stays in the page cache / on disk)."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def check_proposed(model, sentences, tmp_root: Path) -> dict:
    """Max |difference| between probekit's capture and the proposed one, for every pooling."""
    from probekit.capture import capture

    out = {}
    for pool in ("first", "last", "mean"):
        caps = []
        for compute in (None, proposed_compute):
            with _swapped_compute(compute):
                caps.append(capture(model, sentences, resid=("resid_post",), attention=True, pool=pool,
                                    cache=True, cache_dir=Path(tempfile.mkdtemp(dir=tmp_root)), progress=False))
        a, b = caps
        diff = max(float(np.max(np.abs(a.resid("resid_post", layer) - b.resid("resid_post", layer))))
                   for layer in a.layers)
        diff = max(diff, float(np.max(np.abs(a._array("attention") - b._array("attention")))),
                   float(np.max(np.abs(a._array("special_mass") - b._array("special_mass")))))
        out[pool] = diff
    return out


# --------------------------------------------------------------------------------------------------
# fresh-process entry point (peak memory)


def child(model: str, variant: str, n: int, data: str | None = None) -> dict:
    """Load, warm up on one batch, mark the baseline RSS, run ``variant`` once on ``n`` sentences."""
    from probekit.models import load_model

    ctx = bench.BenchContext(data=data)
    sentences, _ = bench.bench_sentences(n, ctx)
    tmp_root = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        every = (*VARIANTS, *ATTRIBUTION)
        if variant in (FLOOR, "hf-body-forward"):  # only the plain HF model: the floor needs nothing else in memory
            hf, tokenizer, causal = load_pristine_hf(model, with_tokenizer=True)
            m = _TokenizerOnly(model, tokenizer, causal)
            work = Workload(m, sentences)
            fn = make_variants(work, hf, tmp_root, every)[variant]
            warm = make_variants(Workload(m, sentences[:BATCH_SIZE]), hf, tmp_root, every)[variant]
        else:
            m = load_model(model, device="cpu")
            work = Workload(m, sentences)
            fn = make_variants(work, None, tmp_root, every)[variant]
            warm = make_variants(Workload(m, sentences[:BATCH_SIZE]), None, tmp_root, every)[variant]
        cleanup = warm()
        if callable(cleanup):
            cleanup()
        bench.mark_baseline()
        start = time.perf_counter()
        cleanup = fn()
        seconds = time.perf_counter() - start
        if callable(cleanup):
            cleanup()
        return {"seconds": seconds, "n_tokens": work.n_tokens}
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


class _TokenizerOnly:
    """What `align`/`pad_batch` need from a Model, without loading the bridge."""

    def __init__(self, name: str, tok, causal: bool):
        from probekit.models import SMOLLM_SINK

        self.tokenizer, self.is_causal, self.name = tok, causal, name
        self.n_layers = 0
        self.n_ctx = 10**9
        if causal:
            self.sink_token_id = tok.convert_tokens_to_ids(SMOLLM_SINK)
            self.pad_token_id = int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))
            self.cls_token_id = self.sep_token_id = None
        else:
            self.sink_token_id = None
            self.cls_token_id, self.sep_token_id = tok.cls_token_id, tok.sep_token_id
            self.pad_token_id = int(tok.pad_token_id or 0)


# --------------------------------------------------------------------------------------------------
# the benchmark


def run(quick: bool = False, ctx: bench.BenchContext | None = None) -> pd.DataFrame:
    from probekit.models import load_model

    ctx = ctx or bench.BenchContext(quick=quick)
    models = ["tiny-llama", "tiny-bert"] if quick else ["smollm2-135m", "minilm-l6"]
    n = 12 if quick else 512
    sentences, source = bench.bench_sentences(n, ctx)
    rows, checks = [], {}
    profile_dir = ctx.out / "profiles"
    profile_dir.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix="probekit-bench-capture-"))
    try:
        for name in models:
            bench.set_threads(ctx.threads)
            ctx.say(f"capture: loading {name}")
            model = load_model(name, device="cpu")
            hf = load_pristine_hf(name)
            work = Workload(model, sentences)
            chunks = [make_variants(c, hf, tmp_root) for c in work.chunks(CHUNK_BATCHES)]
            checks[name] = _check_same_outputs(model, hf, work, sentences[: 4 if quick else BATCH_SIZE], tmp_root)
            timed = bench.interleaved_chunks(chunks, ctx.n_repeats, ctx.say, f"capture {name}")
            model_rows = [{"benchmark": "capture", "model": name, "n_sentences": len(sentences), "source": source,
                           "n_tokens": work.n_tokens, "padded_tokens": work.n_padded, "threads": ctx.threads,
                           "tokens_per_s": work.n_tokens / r["seconds"], **checks[name], **r} for r in timed]
            # peak memory: each variant in a fresh process (skipped with --quick: ~10 s per process)
            if not quick:
                for variant in chunks[0]:
                    ctx.say(f"capture {name}: peak memory of {variant} (fresh process)")
                    try:
                        m = bench.measure_in_subprocess(
                            __file__, "child", {"model": name, "variant": variant, "n": n, "data": ctx.data},
                            threads=ctx.threads)
                    except Exception as err:  # report, don't abort the benchmark
                        ctx.say(f"  failed: {err}")
                        continue
                    for row in model_rows:
                        if row["variant"] == variant:
                            row.update({k: m[k] for k in RSS_KEYS}, rss_run_seconds=m["seconds"])
            rows += model_rows
            # profiles of probekit's capture on a subset
            _profiles(model, sentences[: (len(sentences) if quick else 64)], tmp_root, profile_dir, name)
            # attribution of the prototype's gains, and thread sensitivity, on subsets
            if not quick:
                rows += attribution(model, hf, sentences[:128], tmp_root, ctx)
                if (os.cpu_count() or 1) >= 2:
                    rows += _thread_sensitivity(model, hf, sentences[:32], tmp_root, ctx, name)
            bench.set_threads(ctx.threads)
            del model, hf, work, chunks
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    frame = pd.DataFrame(rows)
    frame["ratio_vs_floor"] = bench.per_repeat_ratio(frame, FLOOR, by=("model", "n_sentences", "threads"))
    frame.attrs["table"], frame.attrs["notes"] = render(frame, ctx)
    return frame


def render(frame: pd.DataFrame, ctx: bench.BenchContext) -> tuple[pd.DataFrame, str]:
    """The report table and notes, from the rows (as in benchmarks.csv) and ``ctx.out/profiles``."""
    frame = frame.copy()
    frame["ratio_vs_floor"] = bench.per_repeat_ratio(frame, FLOOR, by=("model", "n_sentences", "threads"))
    return _table(frame), _notes(frame, ctx)


def _check_same_outputs(model, hf, work: Workload, sentences, tmp_root: Path) -> dict:
    """Sanity checks on one batch: the pristine HF model and the bridge give the same residual stream (the
    logits are not compared: MiniLM's MLM head is randomly initialised at every load); the prototype's
    capture equals probekit's."""
    ids, mask = work.padded[0]
    real = mask.bool()
    n_layers = model.n_layers
    with torch.inference_mode():
        hidden = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        _, cache = model.bridge.run_with_cache(ids, attention_mask=mask,
                                               names_filter=lambda n: n.endswith("hook_resid_post"))
    # hidden_states[k] is block k-1's output (the last one is after the final norm in Llama, so stop before it)
    diff = max(float((hidden[k] - cache[f"blocks.{k - 1}.hook_resid_post"]).abs()[real].max())
               for k in range(1, n_layers))
    out = {"hf_vs_bridge_resid_max_abs_diff": diff}
    out.update({f"proposed_vs_probekit_max_abs_diff_{k}": v for k, v in check_proposed(model, sentences, tmp_root).items()})
    return out


def attribution(model, hf, sentences, tmp_root: Path, ctx: bench.BenchContext) -> list[dict]:
    """`ATTRIBUTION` variants on a subset, interleaved per batch: tells the prototype's changes apart."""
    work = Workload(model, sentences)
    chunks = [make_variants(c, hf, tmp_root, ATTRIBUTION) for c in work.chunks(1)]
    rows = bench.interleaved_chunks(chunks, ctx.n_repeats, ctx.say, f"capture {model.name} attribution")
    return [{"benchmark": "capture", "model": model.name, "n_sentences": len(sentences), "n_tokens": work.n_tokens,
             "padded_tokens": work.n_padded, "threads": ctx.threads, "tokens_per_s": work.n_tokens / r["seconds"],
             "subset": "attribution", **r} for r in rows]


def _thread_sensitivity(model, hf, sentences, tmp_root: Path, ctx: bench.BenchContext, name: str) -> list[dict]:
    work = Workload(model, sentences)
    keep = ("hf-forward", "probekit-capture", "proposed-capture")
    chunks = [{k: v for k, v in make_variants(c, hf, tmp_root).items() if k in keep} for c in work.chunks(1)]
    rows = []
    counts = sorted({1, 2})
    for t in counts:  # warm-up at each setting
        bench.set_threads(t)
        for fn in chunks[0].values():
            cleanup = fn()
            if callable(cleanup):
                cleanup()
    for r in range(ctx.n_repeats):
        for t in (counts if r % 2 == 0 else counts[::-1]):
            bench.set_threads(t)
            for row in bench.interleaved_chunks(chunks, 1, warmup=False):
                row["repeat"] = r
                seconds = row["seconds"]
                rows.append({"benchmark": "capture", "variant": row["variant"], "model": name,
                             "n_sentences": len(sentences), "n_tokens": work.n_tokens, "repeat": r,
                             "seconds": seconds, "tokens_per_s": work.n_tokens / seconds, "threads": t,
                             "padded_tokens": work.n_padded, "subset": "thread-sensitivity"})
                ctx.say(f"capture {name} threads={t} repeat {r} {row['variant']}: {seconds:.2f} s")
    return rows


def _profiles(model, sentences, tmp_root: Path, profile_dir: Path, name: str) -> dict:
    from probekit.capture import capture

    def once():
        folder = Path(tempfile.mkdtemp(dir=tmp_root))
        capture(model, sentences, resid=("resid_post",), attention=True, cache=True, cache_dir=folder, progress=False)
        shutil.rmtree(folder, ignore_errors=True)

    once()  # warm
    cprof = bench.cprofile_top(once, top=18)
    tprof = bench.torch_profile_top(once, top=12)
    (profile_dir / f"capture_{name}_cprofile.txt").write_text(cprof + "\n")
    (profile_dir / f"capture_{name}_torch.txt").write_text(tprof + "\n")
    return {"cprofile": cprof, "torch": tprof, "n": len(sentences)}


def _main_rows(frame: pd.DataFrame) -> pd.DataFrame:
    if "subset" not in frame:
        return frame
    return frame[frame["subset"].isna()]


def _ratios(main: pd.DataFrame, model: str) -> dict[str, float]:
    f = main[main.model == model]
    return {v: float(f[f.variant == v]["ratio_vs_floor"].median()) for v in f.variant.unique()}


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    table = bench.summarize(_main_rows(frame), ("model", "variant", "n_sentences", "threads"), ("ratio_vs_floor",))
    return table.dropna(axis=1, how="all")


def _profile_numbers(text: str) -> dict[str, float]:
    """Pull a few numbers out of the saved profiles (total, LM-head addmm, word-attention einsum...)."""
    out = {}
    m = re.search(r"in ([0-9.]+) seconds", text)
    if m:
        out["total"] = float(m.group(1))
    for key, pat in {"einsum": r"^\s*\d+\s+([0-9.]+)\s+\S+\s+\S+\s+\S+\s+\{built-in method numpy.*c_einsum\}",
                     "compute_self": r"^\s*\d+\s+([0-9.]+)\s+.*capture.py:\d+\(_compute\)",
                     "linear": r"^\s*\d+\s+([0-9.]+)\s+.*torch._C._nn.linear\}"}.items():
        m = re.search(pat, text, re.M)
        if m:
            out[key] = float(m.group(1))
    for op in ("aten::addmm", "aten::mm"):
        m = re.search(rf"^\s*{op}\s+[0-9.]+%\s+([0-9.]+)(ms|s|us)\s+.*?(\d+)\s*$", text, re.M)
        if m:
            scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m.group(2)]
            out[op] = float(m.group(1)) * scale
            out[op + "_calls"] = int(m.group(3))
    m = re.search(r"Self CPU time total: ([0-9.]+)(ms|s)", text)
    if m:
        out["torch_total"] = float(m.group(1)) * (1.0 if m.group(2) == "s" else 1e-3)
    return out


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _notes(frame: pd.DataFrame, ctx: bench.BenchContext) -> str:
    main = _main_rows(frame)
    n = int(main.n_sentences.iloc[0])
    source = main["source"].iloc[0] if "source" in main else "EWT dev (see benchmark 1's input)"
    lines = [f"Input: {source}, first {n} sentences; batches of {BATCH_SIZE}, sorted by length, right-padded "
             f"(the same batches for every variant); the variants alternate every {CHUNK_BATCHES} batches, and a "
             "repetition's time is the sum over chunks. `ratio_vs_floor` = seconds / seconds of `hf-forward` in the "
             "same repetition, median over repetitions. Tokens/s counts real tokens (sink/[CLS]/[SEP] included, "
             "padding excluded). Every variant computes the same forward; `hf-body-forward` leaves out the LM/MLM "
             "head, which no capture needs.", ""]
    proposals = []
    for model in main.model.unique():
        r = _ratios(main, model)
        f = main[main.model == model]
        get = functools.partial(lambda ratios, v: ratios.get(v, float("nan")), r)
        cap, filt, bridge, body = get("probekit-capture"), get("tl-cache-filter"), get("bridge-forward"), get("hf-body-forward")
        goal = "**meets**" if cap <= 1.15 else "**misses**"
        text = (f"**{model}.** probekit's capture runs at **{cap:.2f}×** the bare HF forward, so it {goal} the "
                f"1.15× goal (min/max over repetitions {f[f.variant == 'probekit-capture'].ratio_vs_floor.min():.2f}–"
                f"{f[f.variant == 'probekit-capture'].ratio_vs_floor.max():.2f}). Where the time goes, as median ratios "
                f"to the floor: the bridge with no hooks {bridge:.2f}×; `run_with_cache` with capture's filter "
                f"{filt:.2f}× (every hook: {get('tl-cache-all'):.2f}×); probekit's own work on top of that — "
                f"tokenising, pooling, word attention, writing the memory maps — takes capture from {filt:.2f}× to "
                f"{cap:.2f}×. The head: `hf-body-forward` is {body:.2f}×, i.e. {1 - body:.0%} of the floor is the "
                f"LM/MLM head, which capture computes (with every layer requested `_compute` passes "
                "`stop_at_layer=None`) and never reads.")
        if "proposed-capture" in r:
            text += (f" The prototype `proposed_compute` runs at **{get('proposed-capture'):.2f}×**"
                     + (f"; without its head skip (`proposed-keep-head`) at {get('proposed-keep-head'):.2f}×"
                        if "proposed-keep-head" in r else "") + ".")
        if "hf_vs_bridge_resid_max_abs_diff" in f and f["hf_vs_bridge_resid_max_abs_diff"].notna().any():
            c = f.iloc[0]
            text += (f" Checks: HF hidden states vs bridge `resid_post` (blocks 0..L-2) max |diff| "
                     f"{c.hf_vs_bridge_resid_max_abs_diff:.1e}; prototype vs "
                     f"probekit outputs max |diff| with first/last/mean pooling "
                     f"{c.proposed_vs_probekit_max_abs_diff_first:.1e}/{c.proposed_vs_probekit_max_abs_diff_last:.1e}/"
                     f"{c.proposed_vs_probekit_max_abs_diff_mean:.1e}.")
        lines.append(text)
        if "run_peak_rss_mb" in f and f["run_peak_rss_mb"].notna().any():
            g = f.groupby("variant")[["run_peak_rss_mb", "baseline_rss_mb", "run_peak_file_mb"]].median()
            parts = [f"{v} +{g.loc[v, 'run_peak_rss_mb'] - g.loc[v, 'baseline_rss_mb']:.0f} MB"
                     for v in VARIANTS if v in g.index]
            lines.append(f"Memory while running, over each fresh process's loaded baseline: {'; '.join(parts)}.")
        cprof = _profile_numbers(_read(ctx.out / "profiles" / f"capture_{model}_cprofile.txt"))
        tprof = _profile_numbers(_read(ctx.out / "profiles" / f"capture_{model}_torch.txt"))
        if cprof.get("total") and tprof.get("torch_total"):
            bits = []
            n_batches = -(-min(64, n) // BATCH_SIZE)
            if tprof.get("aten::addmm_calls") == n_batches:  # Llama: the bridge's unembed is the only biased linear
                bits.append(f"`aten::addmm` — the head's vocabulary projection, one call per batch — "
                            f"{tprof['aten::addmm']:.2f} s of {tprof['torch_total']:.2f} s of torch time "
                            f"({tprof['aten::addmm'] / tprof['torch_total']:.0%})")
            if "einsum" in cprof:
                bits.append(f"numpy `einsum` (word attention) {cprof['einsum']:.2f} s of {cprof['total']:.2f} s")
            if "compute_self" in cprof:
                bits.append(f"`_compute`'s own lines (indexing, the pooling matmuls, memory-map writes) "
                            f"{cprof['compute_self']:.2f} s")
            if "aten::mm_calls" in tprof:
                bits.append(f"`aten::mm` is called {tprof['aten::mm_calls']} times: the model's linear layers plus one "
                            "pooling matmul per (sentence, layer)")
            lines.append(f"Profile of `capture()` on the first {min(64, n)} sentences (details below): "
                         + "; ".join(bits) + ".")
        sens = frame[(frame.model == model) & (frame["subset"] == "thread-sensitivity")] if "subset" in frame else None
        if sens is not None and not sens.empty:
            ratio = sens.groupby(["threads", "variant"])["ratio_vs_floor"].median()
            sec = sens.groupby(["threads", "variant"])["seconds"].median()
            t = [int(x) for x in sorted(sens.threads.unique())]
            lines.append(
                f"Threads ({int(sens.n_sentences.iloc[0])}-sentence subset, both settings interleaved): the floor takes "
                + " vs ".join(f"{sec.get((k, 'hf-forward'), float('nan')):.1f} s at {k} thread(s)" for k in t)
                + "; capture/floor " + " vs ".join(f"{ratio.get((k, 'probekit-capture'), float('nan')):.2f}×" for k in t)
                + "; prototype/floor " + " vs ".join(f"{ratio.get((k, 'proposed-capture'), float('nan')):.2f}×" for k in t)
                + ".")
        att = frame[(frame.model == model) & (frame["subset"] == "attribution")] if "subset" in frame else None
        if att is not None and not att.empty:
            a = att.groupby("variant")["ratio_vs_floor"]
            med, lo, hi = a.median(), a.min(), a.max()
            lines.append(
                f"Attribution ({int(att.n_sentences.iloc[0])}-sentence subset, variants alternating every batch, "
                f"{att.repeat.nunique()} repetitions; ratio to the floor, median [min–max]): "
                + ", ".join(f"{v} {med.get(v, float('nan')):.2f} [{lo.get(v, float('nan')):.2f}–{hi.get(v, float('nan')):.2f}]"
                            for v in ATTRIBUTION if v in med.index) + ".")
            proposals.append((model, med.get("probekit-capture"), med.get("proposed-keep-head"),
                              med.get("proposed-capture"), body))
        lines.append("")
    head_share = {m: 1 - _ratios(main, m).get("hf-body-forward", float("nan")) for m in main.model.unique()}
    top = max(head_share, key=lambda m: head_share[m] if head_share[m] == head_share[m] else -1)
    lines += ["**Where probekit loses, and why.** Measured against the bare forward, capture pays three things. "
              "(1) TransformerLens: the bridge replaces HF's attention and norm modules with its own (hook points, "
              "pattern materialised for `hook_pattern`), and `run_with_cache` adds hook dispatch and copies — that is "
              "the step from 1.0× to the `tl-cache-filter` ratio, and probekit cannot remove it short of bypassing "
              "the bridge. (2) The LM/MLM head, computed for nothing whenever the last block is captured: the "
              f"`hf-body-forward` rows show its share ({', '.join(f'{m} {v:.0%}' for m, v in head_share.items())} of "
              f"the floor; largest for {top}). (3) probekit's own post-processing, the step from "
              "`tl-cache-filter` to `probekit-capture`."]
    if proposals:
        lines += ["", "**Proposed changes to capture.py** (prototype: `proposed_compute` in `benchmarks/bench_capture.py`; "
                  "outputs checked equal):", "",
                  "1. *Stop before the head.* When `stop_at_layer` is None, also add forward hooks on `ln_final.hook_in`, "
                  "`mlm_head.hook_in` and `unembed.hook_in` (those present in `bridge.hook_dict`) that raise "
                  "`transformer_lens.model_bridge.exceptions.StopAtLayerException` — the same exception the bridge "
                  "uses for `stop_at_layer` and catches in `forward` — via `with bridge.hooks(fwd_hooks=...)` around "
                  "the batch loop. Measured gain (attribution run, `proposed-keep-head` → `proposed-capture`): "
                  + "; ".join(f"{m} {kh:.2f}× → {pc:.2f}× of the floor" for m, _, kh, pc, _ in proposals)
                  + ". It also drops the `[batch, pos, vocab]` logits tensor from peak memory.",
                  "2. *Release written pages* after each batch with `madvise(MADV_DONTNEED)` on every output map, so "
                  "resident memory stays flat (benchmark 2). Its time is not measured alone: it is inside change 3's "
                  "comparison, which shows gather + release together.",
                  "3. *Batch-level gather* instead of per-(sentence, layer) torch ops (attribution run, "
                  "`probekit-capture` → `proposed-keep-head`, which also includes change 2): "
                  + "; ".join(f"{m} {c:.2f}× → {kh:.2f}×" for m, c, kh, _, _ in proposals)
                  + (". No gain measured at one thread (the per-op overhead it removes is small next to the "
                     "forward): not worth changing capture.py for." if all(kh >= c - 0.03 for _, c, kh, _, _ in proposals)
                     else ". Compare with the spread over repetitions above before adopting it.")]
    for model in main.model.unique():
        cprof = _read(ctx.out / "profiles" / f"capture_{model}_cprofile.txt")
        tprof = _read(ctx.out / "profiles" / f"capture_{model}_torch.txt")
        if cprof:
            lines += ["", f"<details><summary>{model}: cProfile of <code>capture()</code> on {min(64, n)} sentences "
                      "(top entries by "
                      "self time) and torch.profiler top ops</summary>", "", "```", cprof.strip(), "```", "", "```",
                      tprof.strip(), "```", "", "</details>"]
    if ctx.quick:
        lines += ["", "_Quick mode: tiny random models on a handful of sentences; no fresh-process memory "
                  "measurement and no thread-sensitivity run. These numbers say nothing about performance._"]
    return "\n".join(lines)
