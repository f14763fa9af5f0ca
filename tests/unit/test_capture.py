"""capture's forward stops before the final norm / LM or MLM head, and written pages are released, without
changing a single stored number (so `CACHE_VERSION` stays 1)."""

from __future__ import annotations

import importlib
import mmap

import numpy as np
import pytest
import torch
from numpy.lib.format import open_memmap

import probekit as pk

capmod = importlib.import_module("probekit.activations.capture")  # the module; `probekit.activations.capture` is the function

SENTS = ['"I don\'t know," said the U.S. mother-in-law of 1,000 cats.', "The cat sat .",
         "Dogs bark at night near the old river bank .", "A b c .", "She gave him the book yesterday ."]
ALL_RESID = ("resid_pre", "resid_mid", "resid_post")
#: what fires only when the final norm or the head actually runs (their hook_in is where capture stops)
HEAD_OUTPUTS = ("ln_final.hook_out", "unembed.hook_out", "mlm_head.hook_out")


def _arrays(cap) -> dict[str, np.ndarray]:
    out = {f"{h}.{layer}": np.array(cap.resid(h, layer)) for h, layer in map(tuple, cap.meta["hooks"])}
    if cap.attn_layers:
        out["attention"] = np.array(cap._array("attention"))
        out["special_mass"] = np.array(cap._array("special_mass"))
    return out


def _capture(model, **kw):
    kw = {"resid": ALL_RESID, "attention": True, "batch_size": 2, "cache": False, "progress": False, **kw}
    return pk.capture(model, SENTS, **kw)


def _old_behaviour(monkeypatch):
    """capture as it was before: the head runs (no stop hooks), written pages are not released."""
    monkeypatch.setattr(capmod, "HEAD_ENTRY_HOOKS", ())
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
def test_capture_without_head_is_bit_identical(tiny_model, monkeypatch, pool):
    new = _capture(tiny_model, pool=pool)
    with monkeypatch.context() as m:
        _old_behaviour(m)
        old = _capture(tiny_model, pool=pool)
    assert new.key == old.key  # same settings, same CACHE_VERSION: cached entries stay valid
    a, b = _arrays(new), _arrays(old)
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
        logits, cache = tiny_model.bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda n: n == name)
    assert logits.shape == (*ids.shape, tiny_model.bridge.cfg.d_vocab)  # the head ran
    got = cap.resid("resid_post", last)
    for b, i in enumerate(order):
        enc = encs[i]
        pool = torch.from_numpy(pooling_matrix(enc, "last" if tiny_model.is_causal else "first"))
        want = (pool @ cache[name][b, :enc.n_tokens].float()).numpy()
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
    monkeypatch.setattr(capmod, "HEAD_ENTRY_HOOKS", ())
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
