"""Batched capture of word-level residuals and attention, streamed to a self-checking disk cache.

`capture` aligns sentences to tokens, runs the model only up to the last requested layer, pools
sub-token residuals into words and turns token attention into word attention (Clark et al. 2019), writing
straight into memory-mapped ``.npy`` files. Results live in ``$PROBEKIT_CACHE/capture/<key>/`` (key: a hash
of the weights, sentences and settings); every file's size and BLAKE2b checksum is recorded while it is
written and checked on reuse, and a damaged entry is evicted with a `CacheWarning` and recomputed.
The method, the cache layout and the checksum scheme are described in ``docs/methods/capture.md``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from probekit.activations import hooks as hook_names
from probekit.activations.align import (
    Encoded,
    PackedEncodings,
    as_sentences,
    pad_batch,
    pooling_matrix,
    word_attention,
)
from probekit.activations.cache import (
    FORMAT_VERSION,
    META,
    CacheWarning,
    ChunkHasher,
    check_entry,
    damaged_entry_error,
    default_cache_dir,
    evict,
    heartbeat,
    remove_stale_temp,
    sentence_offsets,
    temp_name,
    write_record,
)
from probekit.activations.forward import forward_for
from probekit.data.schema import Sentence
from probekit.errors import ProbekitError

#: Part of the cache key. Bump when a change alters any stored number, so that old entries are no longer
#: reused. Checksums (format 2) changed no number, so it stays 1 and keys are unchanged.
CACHE_VERSION = 1
RESID_HOOKS = ("resid_pre", "resid_mid", "resid_post")
#: the heap is trimmed after a batch once resident anonymous memory grew this much (see `_heap_trimmer`)
TRIM_SLACK_BYTES = 32 * 2**20


def capture(
    model,
    sentences,
    *,
    layers=None,
    resid=("resid_post",),
    attention: bool = True,
    pool: str | None = None,
    renormalize: bool = False,
    batch_size: int = 16,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Capture:
    """Capture word-level residuals ``[n_words_total, d_model]`` and attention ``[layer, head, w, w]``.

    Word attention follows Clark et al. (2019): attention *to* a word sums over its tokens, *from* a word
    averages over them, special tokens are dropped. See ``docs/methods/capture.md``.

    Parameters
    ----------
    model : probekit.Model
    sentences : Dataset, Sentences, word lists, ``(text, words)`` pairs or strings
    layers : list of int or None
        Block indices (0-based) whose hooks to capture; ``None`` = all.
    resid : tuple of str
        Residual hooks among ``resid_pre``, ``resid_mid``, ``resid_post``; ``()`` for none.
    attention : bool
        Also capture ``attn.hook_pattern`` as word-level attention.
    pool : {"first", "last", "mean"} or None
        Sub-token pooling; default ``last`` for causal models and ``first`` for encoders.
    renormalize : bool
        Rescale word-attention rows to sum to 1 after dropping special tokens.
    batch_size : int
        Sentences per forward pass.
    cache : bool
        Reuse/write the disk cache under ``cache_dir`` (default ``$PROBEKIT_CACHE/capture``). A reused
        entry is checked first (sizes and checksums, `check_entry`); a bad one is evicted with a
        `CacheWarning` and recomputed. Stale temporary folders of killed captures are removed
        (`remove_stale_temp`). With ``cache=False`` results still stream to a temporary folder, removed
        with the object.
    cache_dir : path, optional
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    Capture

    Examples
    --------
    >>> import tempfile, probekit as pk
    >>> model = pk.load_model("tiny-bert")
    >>> root = tempfile.TemporaryDirectory()
    >>> cap = pk.capture(model, ["The cat sat ."], cache_dir=root.name, progress=False)
    >>> cap.attention(0).shape == (model.n_layers, model.n_heads, 4, 4)
    True
    >>> check_entry(cap.path) is None
    True
    """
    sents = as_sentences(sentences)
    layers = _check_layers(model, layers)
    resid = (resid,) if isinstance(resid, str) else tuple(resid)
    for hook in resid:
        if hook not in RESID_HOOKS:
            raise ProbekitError(f"unknown residual hook {hook!r}", fix=f"use some of {RESID_HOOKS}")
    if not resid and not attention:
        raise ProbekitError(
            "nothing to capture: resid=() and attention=False", fix="ask for a residual hook or for attention"
        )
    pool = pool or ("last" if model.is_causal else "first")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ProbekitError(f"batch_size must be a positive integer, not {batch_size!r}")
    encs = PackedEncodings.encode(model, sents)  # kept for the whole run: packed, ~0.3 KB a sentence
    if attention:
        check_windows(model, encs, layers)
    settings = {
        "layers": layers,
        "resid": sorted(resid),
        "attention": bool(attention),
        "pool": pool,
        "renormalize": bool(renormalize),
        "batch_size": batch_size,
    }
    key = cache_key(model, sents, settings)

    if cache:
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temp(root)
        folder = root / key
        if folder.exists():
            problem = check_entry(folder)
            if problem is None:
                return Capture(folder, sents)
            warnings.warn(
                f"capture cache entry {folder}: {problem}; evicting it and recomputing",
                CacheWarning,
                stacklevel=2,
            )
            evict(folder)
    else:
        root = Path(tempfile.mkdtemp(prefix="probekit-capture-"))
        folder = root / key
    tmp = root / temp_name(key)
    try:
        _compute(model, encs, settings, tmp, progress)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same key first; its result is identical if intact
            if check_entry(folder, checksums=False) is not None:
                evict(folder)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = Capture(folder, sents)
    if not cache:
        weakref.finalize(result, shutil.rmtree, root, True)
    return result


def check_windows(model, encs: Sequence[Encoded], layers: list[int]) -> None:
    """Refuse word-level attention from a sliding-window layer over a sentence longer than its window.

    The word-level analyses (head scores, their offset and positional baselines, the C2/C3 examples) count
    every earlier word as visible to a causal model. Beyond a sliding window (Gemma 3: 512 tokens on five
    of every six layers) a word is unseen exactly as a future word is, so such a sentence would be scored
    against partners the head cannot see; rather than mislabel them, capture stops here."""
    window_of = getattr(model, "window", None)
    if window_of is None or not getattr(model, "is_causal", False):
        return
    windows = {layer: window_of(layer) for layer in layers}
    windows = {layer: w for layer, w in windows.items() if w is not None}
    if not windows:
        return
    smallest = min(windows.values())
    long = [encs[i] for i in range(len(encs)) if encs[i].n_tokens > smallest]
    if long:
        layer = min(windows, key=windows.__getitem__)
        raise ProbekitError(
            f"sentence {long[0].sentence.id!r} has {long[0].n_tokens} tokens (with the sink), more than the "
            f"{smallest}-token sliding window of layer {layer} of {model.name}; "
            f"{len(long)} sentence(s) are that long",
            where=long[0].sentence.id,
            fix="drop or split the sentences longer than the window, or "
            "capture only the global layers (layers=...)",
        )


def cache_key(model, sentences: list[Sentence], settings: dict) -> str:
    """sha256 of everything that determines the captured numbers."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "weights": model.fingerprint,
                "sink": model.sink_token_id,
                "cls": model.cls_token_id,
                "settings": settings,
            },
            sort_keys=True,
        ).encode()
    )
    for s in sentences:
        h.update(json.dumps([s.id, s.words, s.space_after]).encode())
    return h.hexdigest()[:32]


def _check_layers(model, layers) -> list[int]:
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(model.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    layers = sorted(set(layers))
    bad = [x for x in layers if not isinstance(x, (int, np.integer)) or not 0 <= x < model.n_layers]
    if bad or not layers:
        raise ProbekitError(
            f"layers {bad or layers} are out of range for {model.name}",
            fix=f"use block indices 0..{model.n_layers - 1}",
        )
    return [int(x) for x in layers]


def _physical_hooks(resid: list[str], layers: list[int]) -> list[tuple[str, int]]:
    """(hook, layer) pairs to store; resid_pre l>0 is an alias of resid_post l-1 when that is stored."""
    want = [(h, layer) for h in resid for layer in layers]
    return [
        (h, layer)
        for h, layer in want
        if not (h == "resid_pre" and layer > 0 and ("resid_post", layer - 1) in want)
    ]


def _compute(model, encs: PackedEncodings, settings: dict, folder: Path, progress: bool) -> None:
    folder.mkdir(parents=True)
    layers, attention = settings["layers"], settings["attention"]
    hooks = _physical_hooks(settings["resid"], layers)
    n_words = encs.n_words  # [sentence]
    n_att_layers, n_heads = (len(layers), model.n_heads) if attention else (0, 0)
    offsets = sentence_offsets(n_words, n_att_layers, n_heads)
    word_offsets, att_offsets, mass_offsets = offsets["words"], offsets["attention"], offsets["special_mass"]
    trim_heap = _heap_trimmer()

    resid_out = {
        hl: open_memmap(
            folder / f"{hl[0]}.{hl[1]}.npy",
            mode="w+",
            dtype=np.float32,
            shape=(int(word_offsets[-1]), model.d_model),
        )
        for hl in hooks
    }
    if attention:
        att_out = open_memmap(
            folder / "attention.npy", mode="w+", dtype=np.float32, shape=(int(att_offsets[-1]),)
        )
        mass_out = open_memmap(
            folder / "special_mass.npy", mode="w+", dtype=np.float32, shape=(int(mass_offsets[-1]),)
        )
    files = {f"{h}.{layer}.npy": arr for (h, layer), arr in resid_out.items()}
    if attention:
        files |= {"attention.npy": att_out, "special_mass.npy": mass_out}
    hashers = {name: ChunkHasher(arr, folder / name, len(encs)) for name, arr in files.items()}
    names = {hook_names.resid(layer, h) for h, layer in hooks}
    if attention:
        names |= {hook_names.pattern(layer) for layer in layers}
    stop = max(layers) + 1  # the forward ends on entering block `stop` (or the final norm / head)

    order = sorted(range(len(encs)), key=lambda i: (int(encs.n_tokens[i]), i))
    batches = [order[i : i + settings["batch_size"]] for i in range(0, len(order), settings["batch_size"])]
    bar = tqdm(total=len(encs), desc=f"capture {model.name}", unit="sent", disable=not progress, leave=False)
    device = model.device

    def store(batch: list[int], batch_encs: list[Encoded], cache) -> None:
        """Pool, turn into word attention, write and hash one batch's hooks (runs on the worker thread)."""
        with torch.inference_mode():  # thread-local: the worker enters it too
            if hooks:
                pooled = _pool_batch(cache, batch_encs, hooks, settings["pool"], device)
                for (h, layer), words in pooled.items():  # words  # [words in the batch, d_model]
                    start = 0
                    for i in batch:
                        n = int(n_words[i])
                        resid_out[(h, layer)][word_offsets[i] : word_offsets[i + 1]] = words[
                            start : start + n
                        ]
                        hashers[f"{h}.{layer}.npy"].add(i, words[start : start + n])
                        start += n
            if attention:
                patterns = [cache[hook_names.pattern(layer)] for layer in layers]  # [batch, H, T, T] each
                for b, i in enumerate(batch):
                    enc = batch_encs[b]
                    n_tok = enc.n_tokens
                    stacked = torch.stack([p[b, :, :n_tok, :n_tok] for p in patterns])  # [L, H, T, T]
                    pattern = stacked.float().cpu().numpy()
                    word_att, mass = word_attention(pattern, enc, renormalize=settings["renormalize"])
                    att_out[att_offsets[i] : att_offsets[i + 1]] = word_att.ravel()
                    mass_out[mass_offsets[i] : mass_offsets[i + 1]] = mass.ravel()
                    hashers["attention.npy"].add(i, word_att)
                    hashers["special_mass.npy"].add(i, mass)
        for arr in files.values():
            _release(arr)
        trim_heap()
        bar.update(len(batch))

    # The forward of batch k+1 overlaps the post-processing of batch k (`store`) on one worker thread:
    # numpy's einsum and copies and BLAKE2b release the GIL, so where a core is free (torch running fewer
    # threads than there are cores) the worker runs beside the forward; with every core in the forward it
    # gains nothing measurable (docs/methods/capture.md). One batch at a time: `store` calls run in batch
    # order, each writes only its own sentences' rows and chunk digests, and at most two batches' hook
    # tensors are alive (the one being stored and the one being computed). The stored bytes are those of
    # a serial loop; any error in `store` is raised here, at the next batch or at the end.
    with (
        torch.inference_mode(),
        forward_for(model, names, stop) as forward,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="probekit-capture") as worker,
    ):
        pending: Future | None = None
        # Widest batch first: its tensors set the heap's peak, and every later (narrower) batch fits in
        # blocks already freed. In increasing order each batch needed slightly more than the one before and
        # the heap ratcheted up with the number of sentences (see `_heap_trimmer`). The batches themselves
        # are the same either way, so every stored number is too.
        for batch in reversed(batches):
            batch_encs = [encs[i] for i in batch]
            input_ids, attention_mask = pad_batch(batch_encs, model.pad_token_id)
            cache = forward(input_ids.to(device), attention_mask.to(device))
            if pending is not None:
                pending.result()  # the previous batch is stored (or its error raised) before the next starts
            pending = worker.submit(store, batch, batch_encs, cache)
            del cache
            heartbeat(folder)
        if pending is not None:
            pending.result()
    bar.close()
    # No msync: the maps are shared file mappings, so every reader sees the data through the page cache
    # at once, and the kernel writes them back on its own. Waiting for the disk here cost up to a tenth of
    # SmolLM2's capture time. An entry cut short by a crash before write-back fails its checksums on
    # reuse and is recomputed (`check_entry`); the maps are closed (and, on NFS, written back) when
    # this function returns, before `capture` renames the folder into place.
    meta = {
        "version": CACHE_VERSION,
        "format": FORMAT_VERSION,
        "model": model.name,
        "settings": settings,
        "hooks": [list(hl) for hl in hooks],
        "d_model": model.d_model,
        "n_heads": n_heads,
        "sentence_ids": [s.id for s in encs.sentences],
        "words": [list(s.words) for s in encs.sentences],
        "n_tokens": encs.n_tokens.tolist(),
    }
    write_record(folder, meta, hashers)  # meta.json, then checksums.json last


def _pool_batch(
    cache, batch_encs: list[Encoded], hooks, pool: str, device
) -> dict[tuple[str, int], np.ndarray]:
    """Every stored residual hook pooled into words for one batch: ``(hook, layer) -> [words, d_model]``,
    the batch's sentences one after another.

    ``first``/``last`` pooling picks one token per word, so one gather per hook serves the whole batch
    (bit-identical to multiplying by the one-hot `pooling_matrix`); ``mean`` multiplies each sentence by its
    pooling matrix, as before."""
    if pool == "mean":
        mats = [torch.from_numpy(pooling_matrix(enc, pool)).to(device) for enc in batch_encs]  # [W, T] each
        return {
            (h, layer): np.concatenate(
                [
                    (m @ cache[hook_names.resid(layer, h)][b, : enc.n_tokens].float()).cpu().numpy()
                    for b, (m, enc) in enumerate(zip(mats, batch_encs, strict=True))
                ]
            )
            for h, layer in hooks
        }
    picks = [
        (b, (a if pool == "first" else e - 1)) for b, enc in enumerate(batch_encs) for a, e in enc.word_spans
    ]
    rows = torch.tensor([b for b, _ in picks], device=device)  # [words in the batch]
    tokens = torch.tensor([t for _, t in picks], device=device)  # [words in the batch]
    return {
        (h, layer): cache[hook_names.resid(layer, h)][rows, tokens].float().cpu().numpy()
        for h, layer in hooks
    }


def _heap_trimmer():
    """A callable to run after each batch: returns the heap's free pages to the system (glibc
    ``malloc_trim(0)``) once resident anonymous memory after a batch exceeds, by `TRIM_SLACK_BYTES`, its
    level after the first batch (or after the last trim, if higher); a no-op where there is no glibc or no
    ``/proc/self/statm``.

    Why capture has it: batches ran narrowest first, so every batch asked for slightly larger tensors
    (activations, patterns, word-level buffers) than the one before. glibc serves requests above its mmap
    threshold from the heap once a larger block has been freed (the threshold rises to the freed size), and
    a freed heap block too small for the next, larger request stays resident: the heap ratcheted up batch by
    batch, so peak anonymous memory grew with the number of sentences (+57 MB from 1,000 to 4,000 EWT
    sentences on MiniLM, with the longest sentence the same). `_compute` now runs the widest batch first,
    which removes the ratchet; this guard stays as a safety net for whatever else grows the heap. Trimming
    hands the free pages back (``MADV_DONTNEED``). A trim costs tens of ms and the next batch faults its
    pages back in, so it runs only past the slack (trimming after every batch slowed MiniLM's capture by up
    to a fifth).
    """
    import ctypes
    import ctypes.util

    statm = Path("/proc/self/statm")
    name = ctypes.util.find_library("c") if os.name == "posix" and statm.exists() else None
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    page = os.sysconf("SC_PAGE_SIZE")

    def anon() -> int:
        fields = statm.read_text().split()
        return (int(fields[1]) - int(fields[2])) * page  # resident - shared (file-backed) pages

    level: list[int] = []  # resident anonymous bytes after the first batch, or after the last trim if more

    def guard() -> None:
        now = anon()
        if not level:  # the first batch sets the level
            level.append(now)
        elif now > level[0] + TRIM_SLACK_BYTES:
            trim(0)
            level[0] = max(level[0], anon())

    return guard


def _release(arr: np.memmap) -> None:
    """Drop a memory map's resident pages from this process. For a shared file mapping the kernel keeps the
    written (dirty) data in the page cache and writes it back as usual: nothing is lost, no msync needed.
    A no-op where ``mmap.MADV_DONTNEED`` is missing (e.g. Windows)."""
    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


@dataclass(eq=False)
class Capture:
    """The result of `capture`: memory-mapped arrays in a cache folder.

    - ``index``: pandas MultiIndex ``(sentence_id, word_id, word)``, one row per word, in input order.
    - ``resid(hook, layer)``: ``[n_words_total, d_model]`` float32 (memory-mapped).
    - ``stream(l)``: residual stream layer l in 0..n_layers (0 = embeddings).
    - ``attention(i)``: ``[layer, head, n_words, n_words]`` for sentence i (layers = ``attn_layers``).
    - ``special_mass(i)``: ``[layer, head, n_words]``, attention sent to sink/[CLS]/[SEP].

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-bert", device="cpu")
    >>> cap = pk.capture(model, pk.load_dataset("seed:explored"), layers=[1], progress=False)
    >>> cap.resid("resid_post", 1).shape == (8, model.d_model), cap.attention(0).shape
    (True, (1, 4, 8, 8))
    """

    path: Path
    sentences: list[Sentence]

    def __post_init__(self):
        self.path = Path(self.path)
        try:
            self.meta = json.loads((self.path / META).read_text())
        except (OSError, ValueError) as err:
            raise damaged_entry_error(self.path, err) from err
        self.settings = self.meta["settings"]
        self.layers: list[int] = self.settings["layers"]
        self.attn_layers: list[int] = self.layers if self.settings["attention"] else []
        self.sentence_ids: list[str] = self.meta["sentence_ids"]
        self.n_words = np.array([len(w) for w in self.meta["words"]])
        self.offsets = np.concatenate([[0], np.cumsum(self.n_words)]).astype(np.int64)
        self.n_heads = self.meta["n_heads"]
        offsets = sentence_offsets(self.n_words, len(self.attn_layers), self.n_heads)
        self._att_offsets, self._mass_offsets = offsets["attention"], offsets["special_mass"]
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def index(self) -> pd.MultiIndex:
        rows = [
            (sid, j, w)
            for sid, words in zip(self.sentence_ids, self.meta["words"], strict=True)
            for j, w in enumerate(words)
        ]
        return pd.MultiIndex.from_tuples(rows, names=["sentence_id", "word_id", "word"])

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            try:
                self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as err:  # changed on disk after capture() checked it
                raise damaged_entry_error(self.path, err) from err
        return self._arrays[name]

    def resid(self, hook: str, layer: int) -> np.ndarray:
        """``blocks.{layer}.hook_{hook}`` pooled per word: ``[n_words_total, d_model]``."""
        stored = {tuple(x) for x in self.meta["hooks"]}
        if (hook, layer) in stored:
            return self._array(f"{hook}.{layer}")
        if hook == "resid_pre" and ("resid_post", layer - 1) in stored:
            return self._array(f"resid_post.{layer - 1}")
        raise ProbekitError(
            f"{hook_names.resid(layer, hook)} was not captured",
            fix=f"capture it: capture(..., layers=[{layer}], resid=('{hook}',)); "
            f"this capture has {sorted(stored)}",
        )

    @property
    def stream_layers(self) -> list[int]:
        """Residual-stream layers available through `stream` (0 = embeddings)."""
        out = []
        stored = {tuple(x) for x in self.meta["hooks"]}
        if ("resid_pre", 0) in stored:
            out.append(0)
        out += [layer + 1 for h, layer in sorted(stored, key=lambda x: x[1]) if h == "resid_post"]
        return out

    def stream(self, layer: int) -> np.ndarray:
        return self.resid("resid_pre", 0) if layer == 0 else self.resid("resid_post", layer - 1)

    def attention(self, i: int) -> np.ndarray:
        """Word attention of sentence i: ``[layer, head, from_word, to_word]``."""
        if not self.attn_layers:
            raise ProbekitError("attention was not captured", fix="capture(..., attention=True)")
        n = int(self.n_words[i])
        flat = self._array("attention")[self._att_offsets[i] : self._att_offsets[i + 1]]
        return np.asarray(flat).reshape(len(self.attn_layers), self.n_heads, n, n)

    def special_mass(self, i: int) -> np.ndarray:
        """Attention each word sends to special/sink tokens: ``[layer, head, n_words]``."""
        if not self.attn_layers:
            raise ProbekitError("attention was not captured", fix="capture(..., attention=True)")
        n = int(self.n_words[i])
        flat = self._array("special_mass")[self._mass_offsets[i] : self._mass_offsets[i + 1]]
        return np.asarray(flat).reshape(len(self.attn_layers), self.n_heads, n)

    def sentence_rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def __len__(self) -> int:
        return len(self.sentence_ids)
