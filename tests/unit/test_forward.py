"""capture's forward through plain Hugging Face modules (`HfForward`) that share the bridge's weights: the
same hook tensors as the bridge's ``run_with_cache``, bit for bit, on the three architectures it is used
for; no second copy of the weights; the head and later blocks never run; and the bridge is used whenever
the plain forward cannot give what was asked (``resid_mid``, hooks attached to the bridge, a tensor
without counterpart)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import probekit as pk
from probekit.activations import hooks as hook_names
from probekit.activations.align import align, as_sentences, pad_batch
from probekit.activations.forward import BridgeForward, HfForward, forward_for, plain_body

fwdmod = importlib.import_module("probekit.activations.forward")

MODELS = ["tiny-llama", "tiny-bert", "tiny-gemma3"]
#: short enough for tiny-gemma3's 8-token sliding window (capture refuses attention past it)
SHORT = ["The cat sat .", "Dogs bark .", "A b c .", "She ran home ."]
#: longer than that window: the sliding layer's mask matters for the residuals
LONG = [
    "The old man who lived near the river bank sold his small boat to a young fisherman .",
    "Dogs bark at night near the old river bank when the moon is full .",
    "Yes .",
]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    return pk.load_model(request.param, device="cpu")


def _batch(model, sentences):
    encs = [align(model, s) for s in as_sentences(sentences)]
    return pad_batch(encs, model.pad_token_id)  # (input_ids, attention_mask), right-padded


def _all_names(model, stop: int) -> set[str]:
    return {hook_names.block(i, h) for i in range(stop) for h in fwdmod.HF_HOOKS}


@pytest.mark.parametrize("sentences", [SHORT, LONG], ids=["short", "long"])
@pytest.mark.parametrize("where", ["first", "last"])
def test_hooks_are_the_bridges_bit_for_bit(model, sentences, where):
    stop = 1 if where == "first" else model.n_layers
    names = _all_names(model, stop)
    ids, mask = _batch(model, sentences)
    bridge = BridgeForward(model, names, stop)
    with torch.inference_mode(), bridge.attached():
        want = bridge(ids, mask)
        got = HfForward(model.hf_body, names, stop)(ids, mask)
    assert set(got) == set(want) == names
    for name in sorted(names):
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert torch.equal(got[name], want[name]), name  # padding positions included


def test_body_shares_the_models_tensors(model):
    body = model.hf_body
    assert body is not None and body is model.hf_body  # built once per model
    owned = {t.data_ptr() for t in [*model.hf_model.parameters(), *model.hf_model.buffers()]}
    tensors = [*body.parameters(), *body.buffers()]
    assert tensors and not any(t.is_meta for t in tensors)
    assert all(t.data_ptr() in owned for t in tensors)  # no copy: the bridge's own storage
    assert not any(type(m).__name__.endswith("Bridge") for m in body.modules())  # no bridge component inside


def test_the_head_and_later_blocks_never_run(model):
    body = model.hf_body
    blocks, _ = HfForward.blocks(body)
    ran: list[str] = []
    watched = [("block 1", blocks[1])]
    if isinstance(getattr(body, "norm", None), torch.nn.Module):
        watched.append(("final norm", body.norm))
    handles = [m.register_forward_hook(lambda *a, n=n: ran.append(n)) for n, m in watched]
    ids, mask = _batch(model, SHORT)
    try:
        with torch.inference_mode():
            HfForward(body, _all_names(model, 1), 1)(ids, mask)
            assert ran == []  # stops on entering block 1
            HfForward(body, _all_names(model, model.n_layers), model.n_layers)(ids, mask)
            assert ran == ["block 1"]  # every block ran; the final norm did not
            body(input_ids=ids, attention_mask=mask)  # positive control: a plain forward runs both
            assert ran == ["block 1", *[n for n, _ in watched]]
    finally:
        for handle in handles:
            handle.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in body.modules())  # capture's removed


class _Spy:
    """Counts the calls of `HfForward` and `BridgeForward` during a capture."""

    def __init__(self, monkeypatch):
        self.calls = {"hf": 0, "bridge": 0}
        for kind, cls in (("hf", HfForward), ("bridge", BridgeForward)):
            monkeypatch.setattr(cls, "__call__", self._counting(kind, cls.__call__))

    def _counting(self, kind, call):
        def counted(forward, *args):
            self.calls[kind] += 1
            return call(forward, *args)

        return counted


@pytest.mark.parametrize("pool", ["first", "last", "mean"])
def test_capture_stores_the_same_bytes_either_way(model, monkeypatch, pool, stored_arrays):
    sentences = SHORT + (LONG if model.name != "tiny-gemma3" else [])
    kw = {"resid": ("resid_pre", "resid_post"), "pool": pool, "batch_size": 2, "cache": False}
    spy = _Spy(monkeypatch)
    plain = pk.capture(model, sentences, progress=False, **kw)
    assert spy.calls == {"hf": -(-len(sentences) // 2), "bridge": 0}  # one call per batch, all plain
    with monkeypatch.context() as m:
        m.setattr(fwdmod, "_hf_can_fill", lambda model, names: False)
        bridged = pk.capture(model, sentences, progress=False, **kw)
    assert spy.calls["bridge"] > 0
    assert plain.key == bridged.key  # the engine is not part of the cache key: same bytes, same entry
    a, b = stored_arrays(plain), stored_arrays(bridged)
    assert a.keys() == b.keys() and "attention" in a
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_which_forward_capture_runs(tiny_llama, monkeypatch):
    spy = _Spy(monkeypatch)

    def run(**kw):
        spy.calls = {"hf": 0, "bridge": 0}
        pk.capture(tiny_llama, SHORT, batch_size=4, cache=False, progress=False, **kw)
        return "hf" if spy.calls["hf"] and not spy.calls["bridge"] else "bridge"

    assert run(resid=("resid_post",), attention=True) == "hf"
    assert run(resid=("resid_pre",), attention=False, layers=[0]) == "hf"
    assert run(resid=("resid_mid",), attention=False) == "bridge"  # not a hook HF modules give
    seen: list[str] = []
    user_hook = ("blocks.0.hook_resid_post", lambda tensor, *, hook: seen.append(hook.name))
    with tiny_llama.bridge.hooks(fwd_hooks=[user_hook]):  # a hook on the bridge must still fire
        assert run(resid=("resid_post",), attention=True) == "bridge"
    assert len(seen) == 1  # once: one batch, the name the bridge gives that hook point
    assert run(resid=("resid_post",), attention=True) == "hf"  # and after it is removed, HF again


def test_no_plain_body_without_every_tensor(monkeypatch, stored_arrays):
    """A body tensor without counterpart in the bridged model (here: the rotary buffers): no plain body,
    and capture falls back to the bridge with the same bytes."""
    fresh = pk.load_model("tiny-llama", device="cpu")
    reference = stored_arrays(pk.capture(fresh, SHORT, cache=False, progress=False))
    monkeypatch.setattr(fresh.hf_model, "named_buffers", lambda **kw: iter(()))
    assert plain_body(fresh.hf_model) is None
    other = pk.load_model("tiny-llama", device="cpu")
    monkeypatch.setattr(other.hf_model, "named_buffers", lambda **kw: iter(()))
    assert other.hf_body is None
    spy = _Spy(monkeypatch)
    got = stored_arrays(pk.capture(other, SHORT, cache=False, progress=False))
    assert spy.calls["hf"] == 0 and spy.calls["bridge"] > 0
    assert got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in got)


def test_forward_for_picks_and_releases(tiny_bert):
    names = _all_names(tiny_bert, tiny_bert.n_layers)
    with forward_for(tiny_bert, names, tiny_bert.n_layers) as forward:
        assert isinstance(forward, HfForward)
    with forward_for(tiny_bert, names | {"blocks.0.hook_resid_mid"}, tiny_bert.n_layers) as forward:
        assert isinstance(forward, BridgeForward)
        stops = [n for n in fwdmod.HEAD_ENTRY_HOOKS if n in tiny_bert.bridge.hook_dict]
        assert stops and all(fwdmod._has_user_hook(tiny_bert.bridge.hook_dict[n]) for n in stops)  # attached
    assert not any(map(fwdmod._has_user_hook, tiny_bert.bridge.hook_dict.values()))  # and removed after
    # the bridge's own permanent hooks (BERT wires alias hook points with them) do not count as a user's
    assert any(h.is_permanent for hp in tiny_bert.bridge.hook_dict.values() for h in hp.fwd_hooks)


def test_detector_scores_are_the_bridges(model, monkeypatch):
    """`detector_scores` reads its patterns through `forward_for`; the scores equal those from the bridge's
    own ``run_with_cache`` (the forward `detect_head` runs without a cache) exactly, and the plain
    forward is the one that ran."""
    from transformer_lens.head_detector import detect_head

    from probekit.analyses.heads.positional import DETECTOR_PATTERNS, detector_scores

    texts = [s for s in SHORT + LONG if len(s.split()) < 8]  # doubled, still inside the small context
    spy = _Spy(monkeypatch)
    got = detector_scores(model, texts)
    assert spy.calls == {"hf": len(texts), "bridge": 0}  # one plain forward per text
    for pattern in DETECTOR_PATTERNS:
        column = f"tl_{pattern.removesuffix('_head')}"
        with torch.inference_mode():
            want = sum(
                detect_head(model.bridge, f"{t} {t}", pattern, exclude_bos=True).float().numpy() / len(texts)
                for t in texts
            )
        np.testing.assert_array_equal(got[column].to_numpy(), want.ravel().astype(float))
