"""capture's forward stops before the final norm / LM or MLM head, and written pages are released, without
changing a single stored number (so `CACHE_VERSION` stays 1); the checksums of an entry are computed while
it is written, sentence chunk by chunk, and combined in file order (see docs/methods/capture.md)."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import mmap

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap

import probekit as pk

capmod = importlib.import_module(
    "probekit.activations.capture"
)  # the module; `probekit.activations.capture` is the function
fwdmod = importlib.import_module("probekit.activations.forward")

SENTS = [
    '"I don\'t know," said the U.S. mother-in-law of 1,000 cats.',
    "The cat sat .",
    "Dogs bark at night near the old river bank .",
    "A b c .",
    "She gave him the book yesterday .",
]
ALL_RESID = ("resid_pre", "resid_mid", "resid_post")
#: what fires only when the final norm or the head actually runs (their hook_in is where capture stops)
HEAD_OUTPUTS = ("ln_final.hook_out", "unembed.hook_out", "mlm_head.hook_out")


def _capture(model, **kw):
    kw = {"resid": ALL_RESID, "attention": True, "batch_size": 2, "cache": False, "progress": False, **kw}
    return pk.capture(model, SENTS, **kw)


def _old_behaviour(monkeypatch):
    """capture as it was before: the head runs (no stop hooks), written pages are not released."""
    monkeypatch.setattr(fwdmod, "HEAD_ENTRY_HOOKS", ())
    monkeypatch.setattr(capmod, "_release", lambda arr: None)


class _HeadCounter:
    def __init__(self, model):
        self.names = [n for n in HEAD_OUTPUTS if n in model.bridge.hook_dict]
        self.calls = 0

    def hook(self, tensor, *, hook):
        self.calls += 1

    def hooks(self):
        return [(n, self.hook) for n in self.names]


@pytest.mark.parametrize("pool", ["first", "last", "mean"])
def test_capture_without_head_is_bit_identical(tiny_model, monkeypatch, pool, stored_arrays):
    new = _capture(tiny_model, pool=pool)
    with monkeypatch.context() as m:
        _old_behaviour(m)
        old = _capture(tiny_model, pool=pool)
    assert new.key == old.key  # same settings, same CACHE_VERSION: cached entries stay valid
    a, b = stored_arrays(new), stored_arrays(old)
    assert a.keys() == b.keys() and f"resid_post.{tiny_model.n_layers - 1}" in a
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert np.array_equal(a[name], b[name]), name  # bit for bit, the last block included


def test_last_block_matches_run_with_cache_with_head(tiny_model):
    """Independent of capture's own code path: the last block's pooled resid_post equals a plain
    run_with_cache (head running) on the same padded batch."""
    from probekit.activations.align import align, as_sentences, pad_batch, pooling_matrix

    last = tiny_model.n_layers - 1
    cap = _capture(tiny_model, layers=[last], resid=("resid_post",), attention=False, batch_size=8)
    encs = [align(tiny_model, s) for s in as_sentences(SENTS)]
    order = sorted(range(len(encs)), key=lambda i: (encs[i].n_tokens, i))
    ids, mask = pad_batch([encs[i] for i in order], tiny_model.pad_token_id)
    name = f"blocks.{last}.hook_resid_post"
    with torch.inference_mode():
        logits, cache = tiny_model.bridge.run_with_cache(
            ids, attention_mask=mask, names_filter=lambda n: n == name
        )
    assert logits.shape == (*ids.shape, tiny_model.bridge.cfg.d_vocab)  # the head ran
    got = cap.resid("resid_post", last)
    for b, i in enumerate(order):
        enc = encs[i]
        pool = torch.from_numpy(pooling_matrix(enc, "last" if tiny_model.is_causal else "first"))
        want = (pool @ cache[name][b, : enc.n_tokens].float()).numpy()
        assert np.array_equal(got[cap.sentence_rows(i)], want)


@pytest.mark.parametrize("layers", [None, "last", [0]])
def test_head_never_runs_during_capture(tiny_model, layers):
    if layers == "last":
        layers = [tiny_model.n_layers - 1]
    counter = _HeadCounter(tiny_model)
    assert counter.names  # both tiny models have a final norm / head hook point
    with tiny_model.bridge.hooks(fwd_hooks=counter.hooks()):
        cap = _capture(tiny_model, layers=layers)
    assert counter.calls == 0
    assert len(cap) == len(SENTS)


def test_head_runs_without_the_stop_hooks(tiny_model, monkeypatch):
    """Positive control for the counter above: with the old behaviour the head fires once per batch."""
    monkeypatch.setattr(fwdmod, "HEAD_ENTRY_HOOKS", ())
    counter = _HeadCounter(tiny_model)
    with tiny_model.bridge.hooks(fwd_hooks=counter.hooks()):
        _capture(tiny_model, batch_size=2)
    n_batches = -(-len(SENTS) // 2)
    assert counter.calls == n_batches * len(counter.names)


def test_stop_hooks_are_removed_after_capture(tiny_model):
    _capture(tiny_model)
    ids = torch.tensor([[tiny_model.pad_token_id, tiny_model.pad_token_id]])
    counter = _HeadCounter(tiny_model)
    with torch.inference_mode(), tiny_model.bridge.hooks(fwd_hooks=counter.hooks()):
        logits = tiny_model.bridge(ids)
    assert counter.calls == len(counter.names)  # the full forward runs again, head included
    assert logits.shape == (1, 2, tiny_model.bridge.cfg.d_vocab)


def test_stop_hooks_are_removed_when_capture_fails(tiny_llama, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(capmod, "word_attention", boom)
    with pytest.raises(RuntimeError, match="boom"):
        _capture(tiny_llama)
    monkeypatch.undo()
    counter = _HeadCounter(tiny_llama)
    with torch.inference_mode(), tiny_llama.bridge.hooks(fwd_hooks=counter.hooks()):
        tiny_llama.bridge(torch.tensor([[1, 2, 3]]))
    assert counter.calls == len(counter.names)


def test_release_keeps_written_data(tmp_path):
    arr = open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(1000, 64))
    data = np.arange(arr.size, dtype=np.float32).reshape(arr.shape)
    arr[:500] = data[:500]
    capmod._release(arr)
    arr[500:] = data[500:]
    capmod._release(arr)
    assert np.array_equal(arr, data)  # pages fault back in from the page cache
    arr.flush()
    del arr
    assert np.array_equal(np.load(tmp_path / "x.npy"), data)


def test_release_is_a_noop_without_madv_dontneed(tmp_path, monkeypatch):
    arr = open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(10,))
    arr[:] = 3.0
    monkeypatch.delattr(mmap, "MADV_DONTNEED", raising=False)
    capmod._release(arr)
    capmod._release(np.zeros(3, dtype=np.float32))  # not a memory map at all
    assert np.array_equal(arr, np.full(10, 3.0, dtype=np.float32))


# ---- checksums computed while writing (issue 15) -------------------------------------------------------

#: keys of a fixed input, as the code before checksums (commit 0f90614) computed them: format 2 keeps them
PINNED_KEYS = {
    "tiny-bert": "ebb886bf53e1c6d423e5c355cb55bae1",
    "tiny-llama": "a1efe8249764fd440bfa69af6be30884",
}


def test_cache_keys_are_unchanged_by_the_format_change(tiny_model, tmp_path):
    cap = pk.capture(
        tiny_model,
        ["The cat sat on the mat .", "Dogs bark ."],
        resid=("resid_pre", "resid_post"),
        cache_dir=tmp_path,
        progress=False,
    )
    assert cap.key == PINNED_KEYS[tiny_model.name]


def _documented_digest(path, chunk_bytes) -> str:
    """docs/methods/capture.md, computed independently of probekit: blake2b-256(npy header || d_0 || ...),
    d_i = blake2b-128(sentence i's bytes), in file order."""
    data = path.read_bytes()
    header = len(data) - int(chunk_bytes[-1])
    assert header == np.load(path, mmap_mode="r").offset  # the data follow the .npy header
    parts = [data[:header]] + [
        hashlib.blake2b(data[header + a : header + b], digest_size=16).digest()
        for a, b in itertools.pairwise(chunk_bytes)
    ]
    return hashlib.blake2b(b"".join(parts), digest_size=32).hexdigest()


def test_checksums_follow_the_documented_scheme(tiny_model, tmp_path):
    cap = pk.capture(tiny_model, SENTS, resid=ALL_RESID, batch_size=2, cache_dir=tmp_path, progress=False)
    record = json.loads((cap.path / "checksums.json").read_text())
    assert record["format"] == 2
    files = record["files"]
    assert set(files) == {p.name for p in cap.path.iterdir()} - {"checksums.json"}
    meta = (cap.path / "meta.json").read_bytes()
    assert files["meta.json"] == {
        "size": len(meta),
        "blake2b": hashlib.blake2b(meta, digest_size=32).hexdigest(),
    }
    item = 4  # float32
    for name in files:
        if name == "meta.json":
            continue
        path = cap.path / name
        if name == "attention.npy":
            chunks = cap._att_offsets * item
        elif name == "special_mass.npy":
            chunks = cap._mass_offsets * item
        else:
            chunks = cap.offsets * tiny_model.d_model * item
        assert files[name]["size"] == path.stat().st_size
        assert files[name]["blake2b"] == _documented_digest(path, chunks), name


def test_each_chunk_is_hashed_once_as_it_is_written(tiny_model, monkeypatch):
    """No second pass: every sentence chunk of every file is hashed exactly once, in write (length) order,
    and the hashed bytes add up to the file's data."""
    calls = []
    add = capmod.ChunkHasher.add

    def spy(self, i, written):
        calls.append((id(self), i, written.nbytes))
        add(self, i, written)

    monkeypatch.setattr(capmod.ChunkHasher, "add", spy)
    cap = _capture(tiny_model, batch_size=2)
    n_files = len(cap.meta["hooks"]) + 2
    per_file: dict[int, list] = {}
    for h, i, nbytes in calls:
        per_file.setdefault(h, []).append((i, nbytes))
    assert len(per_file) == n_files
    order = [i for i, _ in next(iter(per_file.values()))]
    assert sorted(order) == list(range(len(SENTS)))  # each sentence once
    assert order != sorted(order)  # written in length order, not file order: hence per-chunk digests
    record = json.loads((cap.path / "checksums.json").read_text())["files"]
    data_bytes = sorted(sum(n for _, n in v) for v in per_file.values())
    headers = {
        name: np.load(cap.path / name, mmap_mode="r").offset for name in record if name.endswith(".npy")
    }
    assert data_bytes == sorted(record[name]["size"] - headers[name] for name in headers)


def test_damage_after_the_check_is_a_probekit_error(tiny_bert, tmp_path):
    """A file that goes bad while a Capture holds the entry: a ProbekitError naming the folder, not a raw
    ValueError from numpy's memory map."""
    cap = pk.capture(tiny_bert, SENTS, cache_dir=tmp_path, progress=False)
    att = cap.path / "attention.npy"
    att.write_bytes(att.read_bytes()[:200])
    again = capmod.Capture(cap.path, cap.sentences)
    with pytest.raises(pk.ProbekitError, match="probekit cache verify") as err:
        again.attention(0)
    assert str(cap.path) in str(err.value)
    (cap.path / "meta.json").write_text("{")
    with pytest.raises(pk.ProbekitError, match="damaged"):
        capmod.Capture(cap.path, cap.sentences)


def test_capture_offers_the_heap_back_after_every_batch(tiny_llama, cache_dir, monkeypatch):
    """The old memory growth came from glibc's heap ratcheting up over length-sorted batches; capture runs
    its heap guard (`_heap_trimmer`) once after every batch."""
    import probekit.activations.capture as capmod

    calls = []
    monkeypatch.setattr(capmod, "_heap_trimmer", lambda: lambda: calls.append(1))
    sents = [f"The cat number {i} sat on the mat ." for i in range(10)]
    capmod.capture(tiny_llama, sents, batch_size=4, cache_dir=cache_dir, progress=False)
    assert len(calls) == 3  # ceil(10 / 4) batches


def test_heap_guard_trims_only_past_the_slack(monkeypatch):
    import platform

    import probekit.activations.capture as capmod

    guard = capmod._heap_trimmer()
    guard()  # the first batch sets the level
    guard()  # within the slack: nothing to do
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert guard.__name__ == "guard"  # reads /proc/self/statm and calls malloc_trim, not the no-op
        monkeypatch.setattr(capmod, "TRIM_SLACK_BYTES", -(2**40))  # any level is past the slack
        guard()  # calls malloc_trim(0) and raises the level; must not fail


def test_widest_batch_runs_first(tiny_llama, monkeypatch):
    """Batches run in decreasing width, so the first batch sets the heap's peak and later ones reuse its
    freed blocks (increasing widths made the heap ratchet up with the number of sentences)."""
    widths = []
    pad = capmod.pad_batch

    def spy(encoded, pad_token_id):
        ids, mask = pad(encoded, pad_token_id)
        widths.append(ids.shape[1])
        return ids, mask

    monkeypatch.setattr(capmod, "pad_batch", spy)
    _capture(tiny_llama, batch_size=2)
    assert len(widths) == 3 and widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def test_capture_does_not_wait_for_the_disk(tiny_model, monkeypatch):
    """No msync of the output maps: readers see the data through the page cache at once, and an entry a
    crash cuts short fails its checksums on reuse."""
    flushed = []
    monkeypatch.setattr(np.memmap, "flush", lambda self: flushed.append(1))
    cap = _capture(tiny_model)
    assert not flushed
    assert capmod.check_entry(cap.path) is None  # complete and checksummed without a flush


def test_packed_encodings_are_the_aligned_sentences(tiny_model):
    from probekit.activations.align import PackedEncodings

    sents = pk.activations.align.as_sentences(SENTS)
    packed = PackedEncodings.encode(tiny_model, sents)
    encs = [pk.align(tiny_model, s) for s in sents]
    assert len(packed) == len(encs)
    assert [packed[i] for i in range(len(packed))] == encs
    assert packed.n_tokens.tolist() == [e.n_tokens for e in encs]
    assert packed.n_words.tolist() == [len(e.word_spans) for e in encs]
    assert any(b - a > 1 for e in encs for a, b in e.word_spans)  # multi-token words are covered


def test_packed_encodings_index_like_a_list(tiny_llama):
    from probekit.activations.align import PackedEncodings

    sents = pk.activations.align.as_sentences(SENTS)
    packed = PackedEncodings.encode(tiny_llama, sents)
    encs = [pk.align(tiny_llama, s) for s in sents]
    assert packed[-1] == encs[-1] and packed[1:3] == encs[1:3] and list(packed) == encs
    with pytest.raises(IndexError):
        packed[len(sents)]


@pytest.mark.parametrize("pool", ["first", "last", "mean"])
def test_overlapped_storing_is_bit_identical_to_a_serial_loop(tiny_model, monkeypatch, pool, stored_arrays):
    """Batch k is pooled, written and hashed on a worker thread while batch k+1 runs its forward; the
    stored arrays and checksums are those of storing every batch right after its forward (the benchmark's
    synchronous executor, which its ``capture-serial`` variant times)."""
    from benchmarks.bench_capture import SerialExecutor

    overlapped = _capture(tiny_model, pool=pool, renormalize=pool == "mean")
    with monkeypatch.context() as m:
        m.setattr(capmod, "ThreadPoolExecutor", SerialExecutor)
        serial = _capture(tiny_model, pool=pool, renormalize=pool == "mean")
    a, b = stored_arrays(overlapped), stored_arrays(serial)
    assert a.keys() == b.keys() and "attention" in a
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    sums = [json.loads((c.path / "checksums.json").read_text())["files"] for c in (overlapped, serial)]
    assert sums[0] == sums[1]


def test_storing_a_batch_overlaps_the_next_forward(tiny_llama, monkeypatch):
    """While batch k is stored (word attention, on the worker thread), the main thread pads and runs batch
    k+1: every store but the last sees the next batch start before it finishes."""
    import threading

    padded = threading.Condition()
    n_padded = [0]
    seen: list[tuple[bool, bool]] = []  # per stored batch: (on the main thread, next batch padded meanwhile)
    pad, attend = capmod.pad_batch, capmod.word_attention

    def pad_spy(encoded, pad_token_id):
        with padded:
            n_padded[0] += 1
            padded.notify_all()
        return pad(encoded, pad_token_id)

    def attend_spy(pattern, enc, renormalize=False):  # batch size 1: one call per stored batch
        k = len(seen)
        with padded:
            overlapped = padded.wait_for(lambda: n_padded[0] >= k + 2, timeout=5 if k < 5 else 0.5)
        seen.append((threading.current_thread() is threading.main_thread(), overlapped))
        return attend(pattern, enc, renormalize=renormalize)

    monkeypatch.setattr(capmod, "pad_batch", pad_spy)
    monkeypatch.setattr(capmod, "word_attention", attend_spy)
    sents = [f"The cat number {i} sat ." for i in range(6)]
    capmod.capture(tiny_llama, sents, batch_size=1, cache=False, progress=False)
    assert not any(main for main, _ in seen)  # stored on the worker thread
    assert [ok for _, ok in seen] == [True] * 5 + [False]  # the last batch has no next forward


def test_an_error_while_storing_stops_capture_and_leaves_no_entry(tiny_llama, cache_dir, monkeypatch):
    calls = []

    def boom(pattern, enc, renormalize=False):
        calls.append(1)
        raise ValueError("storing failed")

    monkeypatch.setattr(capmod, "word_attention", boom)
    sents = [f"The cat number {i} sat ." for i in range(8)]
    with pytest.raises(ValueError, match="storing failed"):
        capmod.capture(tiny_llama, sents, batch_size=2, cache_dir=cache_dir, progress=False)
    assert len(calls) == 1  # raised at the next batch: no batch is stored after a failed one
    assert not [p for p in cache_dir.iterdir() if p.is_dir()]  # neither an entry nor a temporary folder
