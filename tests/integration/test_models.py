"""The bundled pretrained models through the bridge: exact agreement with Hugging Face, offline loading."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import probekit as pk
from probekit.activations.align import align, sentence_from_text

pytestmark = pytest.mark.integration

SENT = "The curious cat explored the mysterious room."


def test_smollm_bridge_logits_equal_hf(smollm):
    from transformers import AutoModelForCausalLM

    from probekit.models import _smollm_dir

    hf = AutoModelForCausalLM.from_pretrained(
        _smollm_dir(), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([align(smollm, sentence_from_text(SENT)).input_ids])
    with torch.inference_mode():
        bridge_logits = smollm.bridge(ids)
        hf_logits = hf(ids).logits
    assert (bridge_logits - hf_logits).abs().max().item() == 0.0


def test_minilm_hidden_states_equal_hf_bertmodel(minilm):
    from transformers import BertModel

    from probekit.models import _minilm_dir

    hf = BertModel.from_pretrained(_minilm_dir(), attn_implementation="eager").eval()
    ids = torch.tensor([align(minilm, sentence_from_text(SENT)).input_ids])
    names = {f"blocks.{i}.hook_resid_post" for i in range(minilm.n_layers)}
    with torch.inference_mode():
        _, cache = minilm.bridge.run_with_cache(ids, names_filter=lambda n: n in names)
        hidden = hf(ids, output_hidden_states=True).hidden_states
    for layer in range(minilm.n_layers):
        assert (cache[f"blocks.{layer}.hook_resid_post"] - hidden[layer + 1]).abs().max().item() == 0.0


def test_model_facts(smollm, minilm):
    assert (smollm.n_layers, smollm.n_heads, smollm.n_kv_heads, smollm.d_model, smollm.d_head) == (
        30,
        9,
        3,
        576,
        64,
    )
    assert smollm.is_causal and smollm.has_lm_head
    assert (minilm.n_layers, minilm.n_heads, minilm.d_model) == (6, 12, 384)
    assert not minilm.is_causal and not minilm.has_lm_head  # random MLM head: never report its logits


@pytest.mark.parametrize("fixture", ["smollm", "minilm"])
def test_check_attention_on_bundled_models(fixture, request):
    model = request.getfixturevalue(fixture)
    df = pk.check_attention(model, SENT)
    assert len(df) == model.n_layers
    assert df.max_abs_diff.max() <= 1e-5


def test_loading_opens_no_socket(smollm, monkeypatch):
    """With HF_HUB_OFFLINE=1 and the fp32 copy cached, loading never touches the network."""
    opened = []

    def refuse(*args, **kwargs):
        opened.append(args)
        raise OSError("network disabled by test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("smollm2-135m", "minilm-l6", "random:minilm-l6"):
        pk.load_model(name, device="cpu")
    assert opened == []


def test_fresh_process_loads_offline():
    code = (
        "import socket, probekit as pk\n"
        "def refuse(*a, **k): raise SystemExit('socket opened')\n"
        "socket.socket.connect = refuse\n"
        "m = pk.load_model('minilm-l6'); print(m.n_layers)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(__import__("pathlib").Path.home())},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("6")


@pytest.mark.parametrize("fixture", ["smollm", "minilm"])
def test_real_model_capture_attention_rows(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    tricky = '"I don\'t know," said the U.S. mother-in-law of 1,000 cats.'
    cap = pk.capture(
        model,
        [SENT, tricky],
        layers=[0, model.n_layers - 1],
        resid=("resid_post",),
        cache_dir=tmp_path,
        progress=False,
    )
    for i in range(2):
        att = cap.attention(i)
        np.testing.assert_allclose(att.sum(-1) + cap.special_mass(i), 1.0, atol=1e-5)
        if model.is_causal:
            assert np.all(np.triu(att, k=1) == 0.0)


def _checksums(model, sentences, root, bridge: bool) -> dict:
    """``checksums.json`` of a capture of every layer's resid_pre, resid_post and attention."""
    import importlib
    import json

    fwdmod = importlib.import_module("probekit.activations.forward")
    with pytest.MonkeyPatch.context() as m:
        if bridge:
            m.setattr(fwdmod, "_hf_can_fill", lambda model, names: False)
        cap = pk.capture(
            model, sentences, resid=("resid_pre", "resid_post"), cache_dir=root / str(bridge), progress=False
        )
    return json.loads((cap.path / "checksums.json").read_text())


@pytest.mark.parametrize("fixture", ["smollm", "minilm"])
def test_plain_hf_forward_stores_the_bridges_bytes(fixture, request, shared_data, tmp_path):
    """Capture through plain HF modules sharing the weights (the default for these models) stores exactly
    what capture through the bridge stores: every file's BLAKE2b checksum, on 48 EWT sentences."""
    model = request.getfixturevalue(fixture)
    assert model.hf_body is not None
    data = pk.load_dataset(f"ud:{shared_data / 'ud-en-ewt' / 'en_ewt-ud-dev.conllu'}", max_sentences=48)
    plain, bridged = (_checksums(model, data, tmp_path, bridge) for bridge in (False, True))
    stored = {"resid_pre.0.npy", "attention.npy", "special_mass.npy"}
    stored |= {f"resid_post.{layer}.npy" for layer in range(model.n_layers)}
    assert plain == bridged and stored <= set(plain["files"])
