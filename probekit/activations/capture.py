"""Batched capture of word-level residuals and attention, streamed to a content-keyed disk cache.

`capture(model, sentences, ...)`:

1. aligns every sentence to tokens (`probekit.activations.align`), sorts by length and right-pads batches;
2. runs the bridge with a ``names_filter`` so only the requested hooks are cached, and stops right
   after the last requested layer: ``stop_at_layer`` one past it, or, when that is the model's last block,
   a hook on the entry of the final norm / LM or MLM head (`HEAD_ENTRY_HOOKS`) that raises the bridge's
   own ``StopAtLayerException``. Later blocks, the final norm and the head (its ``[batch, pos, vocab]``
   logits) are never computed;
3. pools each word's residual vectors (``first``/``last``/``mean`` sub-token) and turns each sentence's
   token attention into word attention (Clark et al. 2019: to = sum, from = mean, specials dropped);
4. writes the results straight into ``.npy`` memory maps in a temporary folder, which is renamed into
   place when complete, releasing the written pages from the process after every batch
   (``madvise(MADV_DONTNEED)``; the data stay in the page cache and reach the file as usual). Memory
   stays bounded by one batch, whatever the input size, and so does resident memory (RSS).

The folder name is the **cache key**: a sha256 of the weights' fingerprint, the sentences (ids,
words, spacing), and every setting that changes a number (layers, hooks, pooling, renormalisation,
batch size, sink). A rerun with the same key reads the folder instead of recomputing; a changed model,
sentence or setting gets a new key, so a stale entry is never reused. A run killed mid-way leaves only
a ``.tmp-*`` folder, never a half-written entry.

Residual layer numbering
------------------------
``cap.resid("resid_post", l)`` is ``blocks.{l}.hook_resid_post``. ``cap.stream(l)`` numbers the
residual stream 0..n_layers the way probing papers do: 0 is the embeddings
(``blocks.0.hook_resid_pre``) and l is the output of block l-1. ``resid_pre`` of block l>0 *is*
``resid_post`` of block l-1, so it is stored once.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from probekit.activations import hooks as hook_names
from probekit.activations.align import Encoded, align, as_sentences, pad_batch, pooling_matrix, word_attention
from probekit.data.schema import Sentence
from probekit.errors import ProbekitError

#: Bump when a change alters any stored number, so that old cache entries are no longer reused. Skipping
#: the head and releasing written pages changed no number (the head runs after every captured hook, and
#: pooling/word attention are computed exactly as before: outputs are bit-identical), so it stays 1.
CACHE_VERSION = 1
RESID_HOOKS = ("resid_pre", "resid_mid", "resid_post")
#: Hook points that fire after the last block, on entry to the final norm / LM head (causal) or MLM head
#: (encoders). `_compute` raises ``StopAtLayerException`` on those present when the last block is captured.
HEAD_ENTRY_HOOKS = hook_names.HEAD_ENTRY


def capture(model, sentences, *, layers=None, resid=("resid_post",), attention: bool = True,
            pool: str | None = None, renormalize: bool = False, batch_size: int = 16,
            cache: bool = True, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Capture:
    """Capture word-level residuals ``[n_words_total, d_model]`` and attention ``[layer, head, w, w]``.

    Args:
        model: a `probekit.Model`.
        sentences: a Dataset, Sentences, word lists, ``(text, words)`` pairs or strings.
        layers: block indices (0-based) whose hooks to capture; ``None`` = all.
        resid: residual hooks among ``resid_pre``, ``resid_mid``, ``resid_post``; ``()`` for none.
        attention: also capture ``attn.hook_pattern`` as word-level attention.
        pool: ``first``, ``last`` or ``mean`` sub-token; default ``last`` for causal models and
            ``first`` for encoders (see `probekit.activations.align`).
        renormalize: rescale word-attention rows to sum to 1 after dropping special tokens.
        batch_size: sentences per forward pass.
        cache: reuse/write the disk cache under ``cache_dir`` (default ``$PROBEKIT_CACHE/capture``).
            With ``cache=False`` results still stream to a temporary folder, removed with the object.
        progress: show a tqdm bar.
    """
    sents = as_sentences(sentences)
    layers = _check_layers(model, layers)
    resid = (resid,) if isinstance(resid, str) else tuple(resid)
    for hook in resid:
        if hook not in RESID_HOOKS:
            raise ProbekitError(f"unknown residual hook {hook!r}", fix=f"use some of {RESID_HOOKS}")
    if not resid and not attention:
        raise ProbekitError("nothing to capture: resid=() and attention=False",
                            fix="ask for a residual hook or for attention")
    pool = pool or ("last" if model.is_causal else "first")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ProbekitError(f"batch_size must be a positive integer, not {batch_size!r}")
    encs = [align(model, s) for s in sents]
    settings = {"layers": layers, "resid": sorted(resid), "attention": bool(attention), "pool": pool,
                "renormalize": bool(renormalize), "batch_size": batch_size}
    key = cache_key(model, sents, settings)

    if cache:
        root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        folder = root / key
        if (folder / "meta.json").exists():
            return Capture(folder, sents)
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="probekit-capture-"))
        folder = root / key
    tmp = root / f".{key}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _compute(model, encs, settings, tmp, progress)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same key first; its result is identical
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = Capture(folder, sents)
    if not cache:
        weakref.finalize(result, shutil.rmtree, root, True)
    return result


def cache_key(model, sentences: list[Sentence], settings: dict) -> str:
    """sha256 of everything that determines the captured numbers."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "weights": model.fingerprint, "sink": model.sink_token_id,
                         "cls": model.cls_token_id, "settings": settings}, sort_keys=True).encode())
    for s in sentences:
        h.update(json.dumps([s.id, s.words, s.space_after]).encode())
    return h.hexdigest()[:32]


def _default_cache_dir() -> Path:
    from probekit.models import cache_root

    return cache_root() / "capture"


def _check_layers(model, layers) -> list[int]:
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(model.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    layers = sorted(set(layers))
    bad = [x for x in layers if not isinstance(x, (int, np.integer)) or not 0 <= x < model.n_layers]
    if bad or not layers:
        raise ProbekitError(f"layers {bad or layers} are out of range for {model.name}",
                            fix=f"use block indices 0..{model.n_layers - 1}")
    return [int(x) for x in layers]


def _physical_hooks(resid: list[str], layers: list[int]) -> list[tuple[str, int]]:
    """(hook, layer) pairs to store; resid_pre l>0 is an alias of resid_post l-1 when that is stored."""
    want = [(h, layer) for h in resid for layer in layers]
    return [(h, layer) for h, layer in want
            if not (h == "resid_pre" and layer > 0 and ("resid_post", layer - 1) in want)]


def _compute(model, encs: list[Encoded], settings: dict, folder: Path, progress: bool) -> None:
    folder.mkdir(parents=True)
    layers, attention = settings["layers"], settings["attention"]
    hooks = _physical_hooks(settings["resid"], layers)
    n_words = np.array([len(e.word_spans) for e in encs])
    word_offsets = np.concatenate([[0], np.cumsum(n_words)])
    n_att_layers, n_heads = (len(layers), model.n_heads) if attention else (0, 0)
    att_sizes = n_att_layers * n_heads * n_words**2
    att_offsets = np.concatenate([[0], np.cumsum(att_sizes)])
    mass_offsets = np.concatenate([[0], np.cumsum(n_att_layers * n_heads * n_words)])

    resid_out = {hl: open_memmap(folder / f"{hl[0]}.{hl[1]}.npy", mode="w+", dtype=np.float32,
                                 shape=(int(word_offsets[-1]), model.d_model)) for hl in hooks}
    if attention:
        att_out = open_memmap(folder / "attention.npy", mode="w+", dtype=np.float32, shape=(int(att_offsets[-1]),))
        mass_out = open_memmap(folder / "special_mass.npy", mode="w+", dtype=np.float32,
                               shape=(int(mass_offsets[-1]),))
    names = {hook_names.resid(layer, h) for h, layer in hooks}
    if attention:
        names |= {hook_names.pattern(layer) for layer in layers}
    outputs = [*resid_out.values(), *((att_out, mass_out) if attention else ())]
    stop = max(layers) + 1
    stop_at_layer = stop if stop < model.n_layers else None
    # With the last block captured there is no block to stop at: stop on entering the final norm / head
    # instead. The bridge's forward catches StopAtLayerException (as for stop_at_layer) and run_with_cache
    # returns the cache filled so far, which holds every requested hook: all fire before the head.
    head_stops = [] if stop_at_layer is not None else [
        (name, _stop_here) for name in HEAD_ENTRY_HOOKS if name in model.bridge.hook_dict]

    order = sorted(range(len(encs)), key=lambda i: (encs[i].n_tokens, i))
    batches = [order[i:i + settings["batch_size"]] for i in range(0, len(order), settings["batch_size"])]
    bar = tqdm(total=len(encs), desc=f"capture {model.name}", unit="sent", disable=not progress, leave=False)
    device = model.device
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=head_stops):
        for batch in batches:
            input_ids, attention_mask = pad_batch([encs[i] for i in batch], model.pad_token_id)
            _, cache = model.bridge.run_with_cache(
                input_ids.to(device), attention_mask=attention_mask.to(device),
                names_filter=lambda name: name in names, stop_at_layer=stop_at_layer)
            for b, i in enumerate(batch):
                enc, n_tok = encs[i], encs[i].n_tokens
                if hooks:
                    pool = torch.from_numpy(pooling_matrix(enc, settings["pool"])).to(device)  # [W, T]
                    for h, layer in hooks:
                        x = cache[hook_names.resid(layer, h)][b, :n_tok].float()          # [T, d_model]
                        resid_out[(h, layer)][word_offsets[i]:word_offsets[i + 1]] = (pool @ x).cpu().numpy()
                if attention:
                    pattern = torch.stack([cache[hook_names.pattern(layer)][b, :, :n_tok, :n_tok]
                                           for layer in layers]).float().cpu().numpy()   # [L, H, T, T]
                    word_att, mass = word_attention(pattern, enc, renormalize=settings["renormalize"])
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
    (folder / "meta.json").write_text(json.dumps(meta))  # written last: its presence marks completion


def _stop_here(tensor, *, hook):
    """Forward hook: end the forward pass here; the bridge catches this exception and returns."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(tensor)


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
    """

    path: Path
    sentences: list[Sentence]

    def __post_init__(self):
        self.path = Path(self.path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.settings = self.meta["settings"]
        self.layers: list[int] = self.settings["layers"]
        self.attn_layers: list[int] = self.layers if self.settings["attention"] else []
        self.sentence_ids: list[str] = self.meta["sentence_ids"]
        self.n_words = np.array([len(w) for w in self.meta["words"]])
        self.offsets = np.concatenate([[0], np.cumsum(self.n_words)]).astype(np.int64)
        n_heads = self.meta["n_heads"]
        self._att_offsets = np.concatenate([[0], np.cumsum(len(self.attn_layers) * n_heads * self.n_words**2)])
        self._mass_offsets = np.concatenate([[0], np.cumsum(len(self.attn_layers) * n_heads * self.n_words)])
        self.n_heads = n_heads
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def index(self) -> pd.MultiIndex:
        rows = [(sid, j, w) for sid, words in zip(self.sentence_ids, self.meta["words"]) for j, w in enumerate(words)]
        return pd.MultiIndex.from_tuples(rows, names=["sentence_id", "word_id", "word"])

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def resid(self, hook: str, layer: int) -> np.ndarray:
        """``blocks.{layer}.hook_{hook}`` pooled per word: ``[n_words_total, d_model]``."""
        stored = {tuple(x) for x in self.meta["hooks"]}
        if (hook, layer) in stored:
            return self._array(f"{hook}.{layer}")
        if hook == "resid_pre" and ("resid_post", layer - 1) in stored:
            return self._array(f"resid_post.{layer - 1}")
        raise ProbekitError(f"{hook_names.resid(layer, hook)} was not captured",
                            fix=f"capture it: capture(..., layers=[{layer}], resid=('{hook}',)); "
                                f"this capture has {sorted(stored)}")

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
        flat = self._array("attention")[self._att_offsets[i]:self._att_offsets[i + 1]]
        return np.asarray(flat).reshape(len(self.attn_layers), self.n_heads, n, n)

    def special_mass(self, i: int) -> np.ndarray:
        """Attention each word sends to special/sink tokens: ``[layer, head, n_words]``."""
        if not self.attn_layers:
            raise ProbekitError("attention was not captured", fix="capture(..., attention=True)")
        n = int(self.n_words[i])
        flat = self._array("special_mass")[self._mass_offsets[i]:self._mass_offsets[i + 1]]
        return np.asarray(flat).reshape(len(self.attn_layers), self.n_heads, n)

    def sentence_rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def __len__(self) -> int:
        return len(self.sentence_ids)
