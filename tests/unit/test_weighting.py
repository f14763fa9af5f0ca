"""Norm-weighted (Kobayashi et al. 2020) and rollout (Abnar & Zuidema 2020) attention as head scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import probekit as pk
from probekit.activations import hooks
from probekit.activations.align import align
from probekit.analyses.heads import WEIGHTINGS, analyze_heads, compare_weightings, score_heads
from probekit.analyses.heads.compare import WeightingComparison, conclusion
from probekit.analyses.heads.weighting import (
    kv_heads,
    norm_weighted,
    rollout,
    token_attention,
    value_norms,
    weighted_attention,
)
from probekit.errors import ProbekitError

SVO = "template:svo_adj?n=12"


# --------------------------------------------------------------------------------------------------
# the norm weighting by hand


def test_norm_weighting_of_a_hand_built_layer_matches_a_hand_computation():
    # 2 query heads sharing 1 key/value head (GQA), 3 tokens, d_head = d_model = 2
    pattern = np.array(
        [
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]],  # head 0
            [[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]],  # head 1
        ]
    )  # [head, q_tok, k_tok]
    v = np.array([[[3.0, 4.0]], [[1.0, 0.0]], [[0.0, 2.0]]])  # [k_tok, kv_head=1, d_head]
    w_o = np.array([np.eye(2), [[2.0, 0.0], [0.0, 0.0]]])  # [head, d_head, d_model]: head 1 keeps 2*v[0]
    kv = kv_heads(2, 1)
    # ||f_0(x_j)|| = ||v_j|| = 5, 1, 2;  ||f_1(x_j)|| = 2|v_j[0]| = 6, 2, 0
    assert value_norms(v, w_o, kv).tolist() == [[5.0, 1.0, 2.0], [6.0, 2.0, 0.0]]
    raw_norms = norm_weighted(pattern, v, w_o, kv, renormalize=False)
    expected = np.array(
        [
            [[5.0, 0.0, 0.0], [2.5, 0.5, 0.0], [1.0, 0.3, 1.0]],
            [[6.0, 0.0, 0.0], [1.5, 1.5, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    np.testing.assert_allclose(raw_norms, expected, rtol=1e-6)
    rows = norm_weighted(pattern, v, w_o, kv)
    np.testing.assert_allclose(rows[0, 1], [2.5 / 3, 0.5 / 3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(rows[0, 2], [1.0 / 2.3, 0.3 / 2.3, 1.0 / 2.3], rtol=1e-6)
    np.testing.assert_allclose(rows[1, 1], [0.5, 0.5, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(rows[1, 2], [0.0, 0.0, 0.0])  # all value norms zero: an all-zero row


def test_norm_weighting_equals_raw_when_value_norms_are_equal_and_differs_when_not():
    pattern = np.array([[[0.5, 0.5], [0.3, 0.7]]])  # [head=1, q, k]
    same = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # equal norms
    np.testing.assert_allclose(norm_weighted(pattern, same, np.eye(2)[None]), pattern, rtol=1e-6)
    other = np.array([[[2.0, 0.0]], [[0.0, 1.0]]])
    assert np.abs(norm_weighted(pattern, other, np.eye(2)[None]) - pattern).max() > 0.1


def test_kv_heads_maps_query_heads_to_shared_key_value_heads():
    assert kv_heads(9, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert kv_heads(4, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ProbekitError):
        kv_heads(4, 3)


# --------------------------------------------------------------------------------------------------
# rollout by hand


def test_rollout_on_three_tokens_and_two_layers_matches_a_hand_computation():
    a0 = np.array(
        [
            [[1, 0, 0], [1, 0, 0], [0.5, 0, 0.5]],
            [[1, 0, 0], [0, 1, 0], [0, 0.5, 0.5]],
        ]
    )  # layer 0, 2 heads; their mean is [[1,0,0],[.5,.5,0],[.25,.25,.5]]
    a1 = np.array([[[1, 0, 0], [1, 0, 0], [0, 0.5, 0.5]], np.eye(3)])  # layer 1, 2 heads
    out = rollout(np.stack([a0, a1]))  # [layer, head, q, k]
    np.testing.assert_allclose(out[0], a0, atol=1e-7)  # layer 0: its own pattern
    # A~_0 = 0.5 * mean + 0.5 * I = [[1,0,0],[.25,.75,0],[.125,.125,.75]]
    np.testing.assert_allclose(out[1, 1], [[1, 0, 0], [0.25, 0.75, 0], [0.125, 0.125, 0.75]], atol=1e-7)
    # head 0 of layer 1: row 2 = 0.5 * [.25,.75,0] + 0.5 * [.125,.125,.75]
    np.testing.assert_allclose(out[1, 0], [[1, 0, 0], [1, 0, 0], [0.1875, 0.4375, 0.375]], atol=1e-7)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# on a real (tiny) model


def test_norm_weighting_on_tiny_llama_reads_the_values_and_w_o_the_heads_use(tiny_llama):
    model = tiny_llama
    assert model.n_kv_heads < model.n_heads  # GQA: 4 query heads over 2 key/value heads
    enc = align(model, pk.load_dataset("seed:explored")[0])
    names = {hooks.pattern(0), hooks.attn(0, "hook_v"), hooks.attn(0, "hook_out"), hooks.z(0)}
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(torch.tensor([enc.input_ids]), names_filter=names.__contains__)
    pattern = cache[hooks.pattern(0)][0].numpy()  # [head, q, k]
    v = cache[hooks.attn(0, "hook_v")][0].numpy()  # [k, kv_head, d_head]
    w_o = model.bridge.blocks[0].attn.W_O.detach().numpy()  # [head, d_head, d_model]
    # W_O's layout: the heads' outputs z_h W_O[h] sum to the attention output (no b_O in Llama)
    z = cache[hooks.z(0)][0].numpy()
    np.testing.assert_allclose(
        np.einsum("qhd,hdm->qm", z, w_o), cache[hooks.attn(0, "hook_out")][0].numpy(), atol=1e-5
    )
    n, group = enc.n_tokens, model.n_heads // model.n_kv_heads
    hand = np.zeros_like(pattern)
    for h in range(model.n_heads):
        for i in range(n):
            w = [pattern[h, i, j] * np.linalg.norm(v[j, h // group] @ w_o[h]) for j in range(n)]
            hand[h, i] = np.array(w) / sum(w)
    got = token_attention(model, [enc], ("norm",))["norm"][0][0]  # sentence 0, layer 0: [head, q, k]
    np.testing.assert_allclose(got, hand, atol=1e-5)
    wrong = np.arange(model.n_heads) % model.n_kv_heads  # another query -> kv map gives other numbers
    assert np.abs(norm_weighted(pattern, v, w_o, wrong) - hand).max() > 1e-3


def test_raw_weighting_reproduces_the_capture_and_the_default_scores(tiny_llama, cache_dir):
    data = pk.load_dataset(SVO)
    cap = pk.capture(tiny_llama, data, progress=False, cache_dir=cache_dir)
    raw = weighted_attention(tiny_llama, data, "raw", batch_size=5, progress=False)
    for i in range(len(data)):
        np.testing.assert_allclose(raw.attention(i), cap.attention(i), atol=1e-6)
        np.testing.assert_allclose(raw.special_mass(i), cap.special_mass(i), atol=1e-6)
    kw = {"relations": ["amod", "prev_word"], "n_boot": 20, "n_perm": 10, "progress": False}
    default = score_heads(tiny_llama, data, capture=cap, **kw)
    pd.testing.assert_frame_equal(score_heads(tiny_llama, data, capture=cap, weighting="raw", **kw), default)
    pd.testing.assert_frame_equal(score_heads(tiny_llama, data, capture=raw, weighting="raw", **kw), default)
    res = analyze_heads(tiny_llama, data, capture=cap, detector=False, **kw)
    assert "weighting" not in res.settings  # the default leaves its settings (and summary) as they were


def test_norm_and_rollout_change_the_word_attention_and_keep_rows_summing_to_one(tiny_model):
    data = pk.load_dataset("template:svo_adj?n=4")
    raw = weighted_attention(tiny_model, data, "raw", progress=False)
    for w in ("norm", "rollout"):
        wa = weighted_attention(tiny_model, data, w, progress=False)
        att, sink = wa.attention(1), wa.special_mass(1)
        np.testing.assert_allclose(att.sum(-1) + sink, 1.0, atol=1e-5)
        assert np.abs(att - raw.attention(1)).max() > 1e-3
    roll = weighted_attention(tiny_model, data, "rollout", progress=False)
    np.testing.assert_allclose(roll.attention(2)[0], raw.attention(2)[0], atol=1e-6)  # layer 0 = raw


def test_weighted_attention_is_deterministic_and_independent_of_reading_order(tiny_llama):
    data = pk.load_dataset("template:svo_adj?n=7")
    a = weighted_attention(tiny_llama, data, "norm", batch_size=3, progress=False)
    b = weighted_attention(tiny_llama, data, "norm", batch_size=3, progress=False)
    forward = [a.attention(i).copy() for i in range(len(data))]
    backward = [b.attention(i).copy() for i in reversed(range(len(data)))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert x.tobytes() == y.tobytes()


def test_unknown_weighting_and_mismatched_capture_are_refused(tiny_bert, cache_dir):
    data = pk.load_dataset("template:svo_adj?n=4")
    with pytest.raises(ProbekitError, match="raw, norm, rollout"):
        score_heads(tiny_bert, data, weighting="attn-norm", progress=False)
    cap = pk.capture(tiny_bert, data, progress=False, cache_dir=cache_dir)
    with pytest.raises(ProbekitError, match="holds 'raw'"):
        score_heads(tiny_bert, data, capture=cap, weighting="norm", n_boot=20, n_perm=10, progress=False)
    with pytest.raises(ProbekitError, match="raw, norm, rollout"):
        compare_weightings(tiny_bert, data, weightings=["raw", "flow"], progress=False)
    assert WEIGHTINGS == ("raw", "norm", "rollout")


# --------------------------------------------------------------------------------------------------
# the comparison


def test_compare_weightings_tables_and_files(tiny_bert, tmp_path):
    data = pk.load_dataset("template:svo_adj?n=40")
    cmp = compare_weightings(
        tiny_bert, data, relations=["amod", "prev_word"], n_boot=20, n_perm=10, progress=False
    )
    c = cmp.comparison
    assert list(dict.fromkeys(c.weighting)) == ["raw", "norm", "rollout"]
    assert not c[c.weighting == "raw"].conclusion_changed.any()
    raw_rows = c[c.weighting == "raw"].set_index(["relation", "direction"])
    for r in c.itertuples():  # conclusion_changed is the C4 conclusion against raw's, per family
        assert r.conclusion_changed == (r.conclusion != raw_rows.loc[(r.relation, r.direction), "conclusion"])
    # the sink table is the positional tables' special mass under raw and norm
    pos = cmp.positional
    np.testing.assert_array_equal(cmp.sink.sink_raw, pos[pos.weighting == "raw"].special_mass)
    np.testing.assert_array_equal(cmp.sink.sink_norm, pos[pos.weighting == "norm"].special_mass)
    assert len(cmp.sink) == tiny_bert.n_layers * tiny_bert.n_heads
    assert np.abs(cmp.sink.sink_raw - cmp.sink.sink_norm).max() > 1e-3  # norm was really scored on
    mass = {w: a.heads.attention_mass.to_numpy() for w, a in cmp.analyses.items()}
    layer0 = cmp.analyses["raw"].heads.layer.to_numpy() == 0
    assert np.abs(mass["norm"] - mass["raw"]).max() > 1e-3
    np.testing.assert_allclose(mass["rollout"][layer0], mass["raw"][layer0], atol=1e-6)  # layer 0 = raw
    assert np.abs(mass["rollout"] - mass["raw"])[~layer0].max() > 1e-4  # (random weights: near-uniform)
    written = {p.name for p in cmp.write(tmp_path / "a")}
    assert {
        "weighting_comparison.csv",
        "weighting_sink.csv",
        "weighting_verdicts.csv",
        "summary.md",
    } <= written
    again = compare_weightings(
        tiny_bert, data, relations=["amod", "prev_word"], n_boot=20, n_perm=10, progress=False
    )
    again.write(tmp_path / "b")
    for name in written:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_comparison_and_summary_columns_keep_their_written_order():
    # COMPARISON_COLUMNS and summary.md's verdict table share SELECTED_HEAD_COLUMNS; the written order is
    # pinned here so that sharing them cannot reorder a table
    from probekit.analyses.heads.compare import COMPARISON_COLUMNS
    from probekit.analyses.heads.result import HeadAnalysis, summary_markdown

    written = [
        *("model", "data", "weighting", "relation", "direction", "n", "layer", "head", "accuracy"),
        *("ci_low", "ci_high", "attention_mass", "offset_accuracy", "verdict", "conclusion"),
        *("relation_verdict", "same_head_as_raw", "conclusion_changed", "relation_conclusion_changed"),
    ]
    assert written == COMPARISON_COLUMNS
    verdict_cols = (
        *("model", "relation", "direction", "n", "layer", "head", "accuracy", "ci_low", "ci_high", "offset"),
        *("offset_accuracy", "random_accuracy", "p_holm", "p_perm", "verdict"),
    )
    row = dict.fromkeys(verdict_cols, 0) | {"model": "m", "relation": "nsubj", "direction": "d2h"}
    verdicts = pd.DataFrame([{**row, "relation_verdict": "none", "also_passes": ""}])
    baselines = pd.DataFrame([{**{k: row[k] for k in ("model", "relation", "direction")}}])
    baselines["chance_accuracy"], baselines["null_max_q95"] = 0.1, 0.2
    res = HeadAnalysis(
        *("m", "d", 1, pd.DataFrame(), baselines, verdicts, pd.DataFrame()),
        positional=pd.DataFrame({"positional": [False]}),
        specificity=pd.DataFrame(),
    )
    header = summary_markdown(res).split("## Verdicts")[1].strip().splitlines()[0]
    shown = [c.strip() for c in header.strip("|").split("|")]
    assert shown == [*verdict_cols, "chance_accuracy", "null_max_q95"]


def test_sink_summary_by_hand():
    sink = pd.DataFrame(
        {"model": "m", "layer": [0, 0, 1], "head": [0, 1, 0], "sink_raw": [0.8, 0.6, 0.1],
         "sink_norm": [0.2, 0.55, 0.05]}
    )  # fmt: skip
    cmp = WeightingComparison("m", "d", pd.DataFrame(), pd.DataFrame(), sink)
    s = cmp.sink_summary()
    assert s["mean_sink_raw"] == pytest.approx(0.5) and s["mean_sink_norm"] == pytest.approx(0.8 / 3)
    assert s["share_removed"] == pytest.approx(1 - 0.8 / 1.5)
    assert (s["sink_heads_raw"], s["sink_heads_still_norm"]) == (2, 1)
    assert conclusion("only positional (0.3)") == "only positional" and conclusion("none") == "none"


# --------------------------------------------------------------------------------------------------
# the experiment


def test_heads_stage_weighting_option_keeps_the_default_hash():
    from probekit.experiment.config import HeadsOptions, WeightingOptions
    from probekit.experiment.stages import heads_options

    default = HeadsOptions(data=["x"])
    assert default.weighting == "raw" and "weighting" not in heads_options(default)
    assert heads_options(HeadsOptions(data=["x"], weighting="norm"))["weighting"] == "norm"
    with pytest.raises(ValueError):
        HeadsOptions(data=["x"], weighting="flow")
    assert WeightingOptions(data=["x"]).weightings == ["raw", "norm", "rollout"]


def test_weighting_stage_and_heads_option_run_in_an_experiment(tmp_path):
    from probekit.experiment import stages
    from probekit.experiment.config import validate_config
    from probekit.experiment.context import Run

    cfg = validate_config(
        {
            "name": "w",
            "seed": 0,
            "out": "o",
            "models": ["tiny-bert"],
            "data": {"svo": "template:svo_adj?n=12"},
            "analyses": {
                "heads": {"data": ["svo"], "relations": ["amod"], "random_baseline": False, "n_boot": 100,
                          "n_perm": 10, "weighting": "rollout"},
                "weighting": {"data": ["svo"], "relations": ["amod"], "weightings": ["norm"], "n_boot": 100,
                              "n_perm": 10},
            },
        }
    )  # fmt: skip
    run = Run(cfg, tmp_path, progress=False)
    stages.STAGES["weighting"](run, cfg.analyses.weighting)
    folder = tmp_path / "weighting" / "tiny-bert__svo"
    table = pd.read_csv(folder / "weighting_comparison.csv")
    assert set(table.weighting) == {"raw", "norm"} and (folder / "weighting_sink.csv").exists()
    from probekit.report.markdown import weighting_lines

    (line,) = weighting_lines(tmp_path)  # REPORT.md's "Attention weighting" line for this folder
    assert line.startswith("- **tiny-bert** on `template:svo_adj?n=12`:") and "disappears" in line
    stages.STAGES["heads"](run, cfg.analyses.heads)
    summary = (tmp_path / "heads" / "tiny-bert__svo" / "summary.md").read_text()
    assert "**rollout**-weighted attention" in summary
