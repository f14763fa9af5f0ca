"""Minimal-pair scoring, head ablation, patching and specialists-vs-random on tiny random-init models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import probekit as pk
import probekit.analyses.interventions as A  # noqa: N812 (the module as a short name)
from probekit.analyses.interventions import engine
from probekit.analyses.interventions.interventions import (
    DonorActivations,
    HeadSite,
    MeanAblation,
    Patch,
    ResampleAblation,
    StackedHeadSites,
    ZeroAblation,
    ZLayout,
    collect_z,
)
from probekit.analyses.interventions.plan import make_plan, relation_arcs
from probekit.analyses.scoring import encode_pair, pair_scores, score_pairs, token_logprobs
from probekit.data.schema import MinimalPair
from probekit.errors import ProbekitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs():
    return pk.load_dataset("template:agreement?n=9")


@pytest.fixture(scope="module")
def sentences():
    return pk.load_dataset("template:agreement_sentences?n=6")


def _fwd_hook_count(model) -> int:
    return sum(
        len(getattr(hp, "fwd_hooks", [])) + len(hp._forward_hooks) for hp in model.bridge.hook_dict.values()
    )


def _toy_pair(pid="t-0", **kw):
    base = {
        "id": pid,
        "paradigm": "toy",
        "good": "The dogs bark loudly.",
        "bad": "The dogs barks loudly.",
        "prefix": "The dogs",
        "good_word": "bark",
        "bad_word": "barks",
    }
    base.update(kw)
    return MinimalPair(**base)


# --------------------------------------------------------------------------------------------------
# scoring


def test_score_pairs_columns_and_ranges(tiny_llama, pairs):
    summary, per_pair = score_pairs(tiny_llama, pairs, by="attractor", return_pairs=True, n_boot=200)
    for col in ("model", "attractor", "n", "accuracy", "mean_margin", "ci_low", "ci_high"):
        assert col in summary.columns
    assert list(summary["attractor"]) == ["none", "pp", "rc", "all"]
    assert summary["n"].tolist() == [3, 3, 3, 9]
    assert ((summary.ci_low <= summary.accuracy) & (summary.accuracy <= summary.ci_high)).all()
    assert np.allclose(per_pair["logprob_diff"], per_pair["good_logprob"] - per_pair["bad_logprob"])
    assert (per_pair["correct"] == (per_pair["logprob_diff"] > 0)).all()


def test_whole_sentence_logprob_and_multi_token_margin_by_hand(tiny_llama):
    pair = _toy_pair(
        good="The dogs photosynthesize loudly.",
        bad="The dogs photosynthesizes loudly.",
        good_word="photosynthesize",
        bad_word="photosynthesizes",
    )
    enc = encode_pair(tiny_llama, pair)
    assert enc.good_word_tokens > 1 and enc.bad_word_tokens > 1
    tok = tiny_llama.tokenizer
    whole = (tiny_llama.sink_token_id, *tok(pair.good, add_special_tokens=False).input_ids)
    assert enc.good_ids == whole  # segment-wise tokenization = whole-sentence tokenization here
    row = pair_scores(tiny_llama, [pair]).iloc[0]
    with torch.inference_mode():
        for ids, span, total_col in (
            (enc.good_ids, enc.good_span, "good_logprob"),
            (enc.bad_ids, enc.bad_span, "bad_logprob"),
        ):
            t = torch.tensor([ids])
            lp = torch.log_softmax(tiny_llama.bridge(t)[0].float(), -1)
            per_tok = [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]
            assert row[total_col] == pytest.approx(sum(per_tok), abs=1e-4)
            if total_col == "good_logprob":
                good_word = sum(per_tok[i - 1] for i in range(*span))
            else:
                bad_word = sum(per_tok[i - 1] for i in range(*span))
    assert row["margin"] == pytest.approx(good_word - bad_word, abs=1e-4)  # summed over the word's tokens
    assert row["margin_kind"] == "critical_word"


def test_two_prefix_pairs_score_the_next_word(tiny_llama):
    pair = _toy_pair(
        good="The students perform.",
        bad="The student perform.",
        prefix="The",
        good_word="students",
        bad_word="student",
        labels={"method": "two_prefix"},
    )
    enc = encode_pair(tiny_llama, pair)
    assert enc.margin_kind == "continuation"
    nxt = tiny_llama.tokenizer(" perform", add_special_tokens=False).input_ids
    assert list(enc.good_ids[enc.good_span[0] : enc.good_span[1]]) == nxt
    assert list(enc.bad_ids[enc.bad_span[0] : enc.bad_span[1]]) == nxt


def test_token_logprobs_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    out = token_logprobs(logits, ids)
    ref = torch.log_softmax(logits, -1)
    assert out[:, 0].abs().max() == 0
    assert torch.allclose(out[:, 1:], ref[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1), atol=1e-6)


def test_encoders_are_refused(tiny_bert, pairs):
    with pytest.raises(ProbekitError, match=r"masked-word|language-model head"):
        score_pairs(tiny_bert, pairs)
    with pytest.raises(ProbekitError):
        A.ablate_heads(tiny_bert, pairs, [(0, 0)])


def test_critical_word_must_follow_prefix(tiny_llama):
    with pytest.raises(ProbekitError, match="critical word"):
        encode_pair(tiny_llama, _toy_pair(prefix="A cat"))
    with pytest.raises(ProbekitError, match="identical"):
        encode_pair(tiny_llama, _toy_pair(bad="The dogs bark loudly.", bad_word="bark"))


def test_no_pairs_is_an_error(tiny_llama, sentences):
    with pytest.raises(ProbekitError, match="no minimal pairs"):
        score_pairs(tiny_llama, sentences)


# --------------------------------------------------------------------------------------------------
# heads and errors


def test_parse_heads(tiny_llama):
    assert len(A.parse_heads(tiny_llama, "all")) == tiny_llama.n_layers * tiny_llama.n_heads
    assert A.parse_heads(tiny_llama, "1.3,0.0") == [(1, 3), (0, 0)]
    assert A.parse_heads(tiny_llama, [(1, 2), (1, 2)]) == [(1, 2)]
    for bad in ("2.0", "0.4", [(0, -1)], "1-2", [(0, 1.5)], []):
        with pytest.raises(ProbekitError):
            A.parse_heads(tiny_llama, bad)
    with pytest.raises(ProbekitError, match="out of range"):
        A.ablate_heads(tiny_llama, pk.load_dataset("template:agreement?n=3"), [(0, 4)])


def test_unknown_method_and_metric(tiny_llama, pairs):
    with pytest.raises(ProbekitError, match="method"):
        A.ablate_heads(tiny_llama, pairs, [(0, 0)], method="knockout")
    with pytest.raises(ProbekitError, match="does not apply"):
        A.ablate_heads(tiny_llama, pairs, [(0, 0)], metric="relation_loss")
    with pytest.raises(ProbekitError, match="needs a relation"):
        A.ablate_heads(tiny_llama, pk.load_dataset("template:agreement_sentences?n=3"), [(0, 0)])
    with pytest.raises(ProbekitError, match="sweep"):
        A.ablate_heads(tiny_llama, pairs, [(0, 0)], sweep="turbo")


# --------------------------------------------------------------------------------------------------
# ablation is what it says


def test_zero_ablation_equals_zeroing_the_slice_by_hand(tiny_llama, pairs):
    ids = torch.tensor([encode_pair(tiny_llama, pairs[0]).good_ids])
    layer, head = 1, 2

    def by_hand(z, hook):
        z = z.clone()
        z[:, :, head, :] = 0.0
        return z

    with torch.inference_mode():
        clean = tiny_llama.bridge(ids)
        manual = tiny_llama.bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", by_hand)])
        with A.ablated(tiny_llama, [(layer, head)]):
            ours = tiny_llama.bridge(ids)
        after = tiny_llama.bridge(ids)
    assert (ours - manual).abs().max().item() == 0.0
    assert (clean - manual).abs().max().item() > 0  # the head matters at all
    assert (after - clean).abs().max().item() == 0.0  # the context manager removed its hook
    # and the metrics of ablate_heads are computed from exactly such a forward
    with A.ablated(tiny_llama, [(layer, head)]):
        manual_pairs = pair_scores(tiny_llama, pairs)
    abl = A.ablate_head_sets(tiny_llama, pairs, [[(layer, head)]], sweep="naive").ablated
    assert np.allclose(abl["margin"][0], manual_pairs["margin"], atol=1e-5)
    assert np.allclose(abl["logprob_diff"][0], manual_pairs["logprob_diff"], atol=1e-5)


def test_ablation_under_gqa_is_per_query_head(tiny_llama, pairs):
    assert tiny_llama.n_kv_heads < tiny_llama.n_heads
    df = A.ablate_heads(tiny_llama, pairs, [(0, 0), (0, 1)], metric="logprob_diff", sweep="naive")
    # query heads 0 and 1 share a key/value head but are ablated separately: different effects
    assert df["ablated"].iloc[0] != df["ablated"].iloc[1]


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_fast_sweep_equals_naive_loop_pairs(tiny_llama, pairs, method):
    specs = [[h] for h in A.parse_heads(tiny_llama, "all")] + [[(0, 1), (1, 3)]]
    fast = A.ablate_head_sets(
        tiny_llama, pairs, specs, method=method, sweep="fast", max_tokens=256, batch_size=4
    )  # several batches, several forwards per batch
    naive = A.ablate_head_sets(tiny_llama, pairs, specs, method=method, sweep="naive")
    fc, fa, nc, na = fast.clean, fast.ablated, naive.clean, naive.ablated
    for m in ("margin", "logprob_diff"):
        assert np.abs(fc[m] - nc[m]).max() <= 1e-4
        assert np.abs(fa[m] - na[m]).max() <= 1e-4
    assert np.abs(fa["margin"] - fc["margin"][None]).max() > 0  # ablations changed something


@pytest.mark.parametrize("method", ["zero", "resample"])
def test_fast_sweep_equals_naive_loop_sentences(tiny_llama, sentences, method):
    kw = {
        "method": method,
        "relation": "nsubj",
        "metric": ["relation_loss", "loss", "relation_attention"],
        "n_boot": 10,
    }
    fast = A.ablate_heads(tiny_llama, sentences, "all", sweep="fast", **kw)
    naive = A.ablate_heads(tiny_llama, sentences, "all", sweep="naive", **kw)
    assert (fast["ablated"] - naive["ablated"]).abs().max() <= 1e-4
    knock = fast[(fast.metric == "relation_attention") & (fast.layer == 0)]
    assert knock["delta"].abs().max() > 0  # layer-0 ablations move layer-1 attention


def test_fast_sweep_on_encoder_attention(tiny_bert, sentences):
    kw = {"relation": "nsubj", "n_boot": 10}
    fast = A.ablate_heads(tiny_bert, sentences, "all", sweep="fast", **kw)
    naive = A.ablate_heads(tiny_bert, sentences, "all", sweep="naive", **kw)
    assert set(fast.metric) == {"relation_attention"}
    assert (fast["ablated"] - naive["ablated"]).abs().max() <= 1e-6
    with pytest.raises(ProbekitError, match="pattern-preserving"):
        A.ablate_heads(tiny_bert, sentences, [(0, 0)], relation="nsubj", preserve_patterns=True)


def test_pattern_preserving_ablation(tiny_llama, sentences):
    kw = {
        "relation": "nsubj",
        "metric": ["relation_loss", "relation_attention"],
        "preserve_patterns": True,
        "n_boot": 10,
    }
    fast = A.ablate_heads(tiny_llama, sentences, "all", **kw)
    naive = A.ablate_heads(tiny_llama, sentences, "all", sweep="naive", **kw)
    assert (fast["ablated"] - naive["ablated"]).abs().max() <= 1e-4
    att = fast[fast.metric == "relation_attention"]
    assert att["delta"].abs().max() == 0.0  # frozen patterns: no knock-on on attention, by construction
    plain = A.ablate_heads(tiny_llama, sentences, "all", relation="nsubj", metric="relation_loss", n_boot=10)
    frozen = fast[fast.metric == "relation_loss"]
    assert not np.allclose(plain["ablated"].to_numpy(), frozen["ablated"].to_numpy())


def test_resample_and_mean_are_deterministic(tiny_llama, pairs):
    def run(method, seed):
        return A.ablate_head_sets(tiny_llama, pairs, [[(0, 1)], [(1, 0)]], method=method, seed=seed).ablated[
            "logprob_diff"
        ]

    assert np.array_equal(run("resample", 3), run("resample", 3))
    assert not np.array_equal(run("resample", 3), run("resample", 4))
    assert np.array_equal(run("mean", 0), run("mean", 1))  # no randomness in mean ablation
    plan = make_plan(tiny_llama, pairs, None)
    r1 = ResampleAblation.fit(tiny_llama, plan, [0], seed=5)
    r2 = ResampleAblation.fit(tiny_llama, plan, [0], seed=5)
    assert r1.donor_of_item == r2.donor_of_item
    # donors are other items, at least as long whenever one exists
    firsts = [plan.item_rows[i][0] for i in range(plan.n_items)]
    for i, j in enumerate(r1.donor_of_item):
        assert j != i
        longer = [
            x for x in range(plan.n_items) if x != i and len(plan.seqs[firsts[x]]) >= plan.item_length(i)
        ]
        if longer:
            assert j in longer


def test_mean_ablation_keeps_the_sink(tiny_llama, pairs):
    plan = make_plan(tiny_llama, pairs, None)
    mean = MeanAblation.fit(tiny_llama, plan, [1])
    clean = collect_z(tiny_llama, plan.seqs[:3], [1])
    for z in clean:  # the sink sees only itself: its head outputs are the same in every sentence
        assert torch.allclose(z[0, 0], mean.sink_mean[1], atol=1e-5)


def test_mean_ablation_reference_dataset(tiny_llama, pairs):
    other = pk.load_dataset("template:agreement?n=6", seed=3)
    a = A.ablate_heads(tiny_llama, pairs, [(1, 1)], method="mean", metric="margin")
    b = A.ablate_heads(tiny_llama, pairs, [(1, 1)], method="mean", metric="margin", reference=other)
    assert a["clean"].iloc[0] == b["clean"].iloc[0] and a["ablated"].iloc[0] != b["ablated"].iloc[0]


@pytest.mark.parametrize("sweep", ["fast", "naive"])
def test_hooks_are_removed_when_a_metric_raises(tiny_llama, pairs, sweep):
    ids = torch.tensor([encode_pair(tiny_llama, pairs[0]).good_ids])
    with torch.inference_mode():
        before = tiny_llama.bridge(ids)
    layers_before = list(engine.block_list(tiny_llama)[0])
    calls = {"n": 0}

    def exploding(logits, input_ids):
        calls["n"] += 1
        if calls["n"] > 1:  # the clean pass succeeds, the first ablated pass raises
            raise RuntimeError("metric failed")
        return torch.zeros(logits.shape[0])

    with pytest.raises(RuntimeError, match="metric failed"):
        A.ablate_heads(tiny_llama, pairs, "all", metric=exploding, sweep=sweep, preserve_patterns=True)
    assert _fwd_hook_count(tiny_llama) == 0
    assert list(engine.block_list(tiny_llama)[0]) == layers_before  # skipped blocks are back
    with torch.inference_mode():
        after = tiny_llama.bridge(ids)
    assert (after - before).abs().max().item() == 0.0


def test_custom_metric_and_joint_ablation(tiny_llama, pairs):
    def mean_logit(logits, input_ids):
        return logits.mean(dim=(1, 2))

    df = A.ablate_heads(tiny_llama, pairs, [(0, 1), (1, 2)], metric=mean_logit, joint=True)
    assert list(df[["layer", "head", "heads", "metric"]].iloc[0]) == [-1, -1, "0.1+1.2", "mean_logit"]
    for col in A.FRAME_COLUMNS:
        assert col in df.columns


# --------------------------------------------------------------------------------------------------
# each intervention alone, on hand-made tensors


def _z(rows=2, width=4, heads=3, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, heads, d, generator=g) + 5.0  # never 0 by accident


def test_zero_ablation_writes_zeros_at_the_selected_heads_only():
    z = _z()
    before = z.clone()
    rep = ZeroAblation().replacement(0, ZLayout(2, 4, 3, 2))
    assert rep.shape == (1, 4, 3, 2) and rep.abs().max() == 0
    out = HeadSite(0, (1,)).write(z, rep)
    assert out[:, :, 1].abs().max() == 0
    assert torch.equal(out[:, :, [0, 2]], before[:, :, [0, 2]])


def test_mean_ablation_gives_the_reference_mean_and_the_sink_mean():
    tok, sink = torch.arange(6.0).reshape(3, 2), torch.full((3, 2), -1.0)
    mean = MeanAblation({4: tok}, {4: sink})
    rep = mean.replacement(4, ZLayout(1, 3, 3, 2))
    assert torch.equal(rep[0, 0], sink) and torch.equal(rep[0, 1], tok) and torch.equal(rep[0, 2], tok)
    # packed rows: every position of depth 0 (a sink) gets the sink mean, the others the token mean
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    rep = mean.replacement(4, ZLayout(1, 5, 3, 2, position_ids=pos))
    for t, depth in enumerate(pos[0].tolist()):
        assert torch.equal(rep[0, t], sink if depth == 0 else tok)


def test_mean_ablation_fit_is_the_mean_over_the_reference(tiny_llama, pairs):
    plan = make_plan(tiny_llama, pairs, None)
    mean = MeanAblation.fit(tiny_llama, plan, [1])
    z = collect_z(tiny_llama, plan.seqs, [1])  # [1 layer, pos, head, d_head] per sequence
    tokens = torch.cat([x[0, 1:] for x in z]).double()  # real tokens, the sink excluded
    assert torch.allclose(mean.token_mean[1].double(), tokens.mean(0), atol=1e-6)
    assert torch.allclose(
        mean.sink_mean[1].double(), torch.stack([x[0, 0] for x in z]).double().mean(0), atol=1e-6
    )


@pytest.mark.parametrize("sweep", ["fast", "naive"])
def test_mean_ablation_matches_a_plain_transformer_lens_hook(tiny_llama, pairs, sweep):
    """Independent of probekit's interventions: the mean of hook_z over the pairs' real tokens from
    run_with_cache, one sequence at a time, written by a plain hook on hook_z."""
    layer, head = 1, 2
    name = f"blocks.{layer}.attn.hook_z"
    seqs = [
        ids
        for p in pairs
        for ids in (encode_pair(tiny_llama, p).good_ids, encode_pair(tiny_llama, p).bad_ids)
    ]
    with torch.inference_mode():
        zs = [
            tiny_llama.bridge.run_with_cache(torch.tensor([ids]), names_filter=name)[1][name][0]
            for ids in seqs
        ]
    mean = torch.cat([z[1:, head] for z in zs]).double().mean(0).float()  # [d_head], the sink excluded

    def write_mean(z, hook):
        z = z.clone()
        z[:, 1:, head, :] = mean  # position 0 (the sink) keeps its own value, the same in every sequence
        return z

    with torch.inference_mode(), tiny_llama.bridge.hooks(fwd_hooks=[(name, write_mean)]):
        by_hand = pair_scores(tiny_llama, pairs)
    ours = A.ablate_head_sets(tiny_llama, pairs, [[(layer, head)]], method="mean", sweep=sweep)
    assert np.allclose(ours.ablated["logprob_diff"][0], by_hand["logprob_diff"], atol=1e-4)
    assert np.allclose(ours.ablated["margin"][0], by_hand["margin"], atol=1e-4)
    clean = pair_scores(tiny_llama, pairs)
    assert np.abs(by_hand["logprob_diff"] - clean["logprob_diff"]).max() > 1e-3  # the ablation matters


def test_mean_ablation_without_reference_sequences_is_an_error(tiny_llama):
    with pytest.raises(ProbekitError, match="reference sequences"):
        MeanAblation.from_sequences(tiny_llama, [], [1])
    with pytest.raises(ProbekitError, match="besides the sink"):
        MeanAblation.from_sequences(tiny_llama, [(tiny_llama.sink_token_id,)], [1])


def test_resample_ablation_gives_the_donors_values():
    stored = {0: _z(1, 5, 3, 2, seed=1), 1: _z(1, 2, 3, 2, seed=2)}  # donor -> [layer, pos, head, d_head]
    calls = []

    def compute(donors):
        calls.append(list(donors))
        return [stored[d] for d in donors]

    fill = MeanAblation({7: torch.full((3, 2), 9.0)}, {7: torch.zeros(3, 2)})
    abl = ResampleAblation([1, 0], DonorActivations(compute, layers=[7]), fill)
    # item 0 (row 0, 4 tokens) draws from donor 1 (2 tokens); item 1 (row 1, 3 tokens) from donor 0
    layout = ZLayout(2, 4, 3, 2, blocks=((0, 0, 4, 0), (1, 0, 3, 1)))
    rep = abl.replacement(7, layout)
    assert torch.equal(rep[0, :2], stored[1][0]) and (rep[0, 2:] == 9.0).all()  # beyond the donor: the mean
    assert torch.equal(rep[1, :3], stored[0][0, :3]) and (rep[1, 3] == 0).all()  # padding stays 0
    abl.replacement(7, layout)
    assert calls == [[0, 1]]  # donors are computed once per forward
    # packed rows: the donor is read at each token's depth
    pos = torch.tensor([[0, 1, 0, 1, 2]])
    rep = abl.replacement(7, ZLayout(1, 5, 3, 2, position_ids=pos, blocks=((0, 0, 2, 0), (0, 2, 3, 1))))
    assert torch.equal(rep[0, :2], stored[1][0, [0, 1]]) and torch.equal(rep[0, 2:], stored[0][0, [0, 1, 2]])


def test_patch_gives_the_clean_values():
    clean = {0: _z(1, 3, 3, 2, seed=3), 1: _z(1, 3, 3, 2, seed=4)}
    patch = Patch(DonorActivations(lambda ds: [clean[d] for d in ds], layers=[2]))
    rep = patch.replacement(2, ZLayout(2, 3, 3, 2, blocks=((0, 0, 3, 1), (1, 0, 3, 0))))
    assert torch.equal(rep[0], clean[1][0]) and torch.equal(rep[1], clean[0][0])
    z = _z(2, 3, 3, 2, seed=5)
    out = HeadSite(2, (0, 2)).write(z.clone(), rep)
    assert torch.equal(out[:, :, [0, 2]], rep[:, :, [0, 2]]) and torch.equal(out[:, :, 1], z[:, :, 1])


def test_stacked_sites_intervene_per_copy():
    rows, copies = 2, 3
    z = _z(copies * rows, 4, 3, 2, seed=6)
    mask = torch.tensor([[True, False, False], [False, False, False], [False, True, True]])
    rep = torch.full((1, 4, 3, 2), 0.5)
    out = StackedHeadSites(0, mask).write(z.clone(), rep).view(copies, rows, 4, 3, 2)
    zz = z.view(copies, rows, 4, 3, 2)
    for c in range(copies):
        for h in range(3):
            expected = torch.full_like(zz[c, :, :, h], 0.5) if mask[c, h] else zz[c, :, :, h]
            assert torch.equal(out[c, :, :, h], expected)


def test_method_names_map_to_classes(tiny_llama, pairs):
    assert {"zero": ZeroAblation, "mean": MeanAblation, "resample": ResampleAblation} == A.METHODS
    by_name = A.ablate_heads(tiny_llama, pairs, "0.1", method="mean", metric="margin", n_boot=10)
    by_class = A.ablate_heads(tiny_llama, pairs, "0.1", method=MeanAblation, metric="margin", n_boot=10)
    pd.testing.assert_frame_equal(by_name, by_class, check_exact=True)
    with pytest.raises(ProbekitError, match="method"):
        A.ablate_heads(tiny_llama, pairs, "0.1", method=Patch)


# --------------------------------------------------------------------------------------------------
# the engine


@pytest.mark.parametrize("off", [*A.EngineOptions.__dataclass_fields__, "all"])
def test_every_engine_option_gives_the_naive_numbers(tiny_llama, pairs, off):
    fields = A.EngineOptions.__dataclass_fields__
    options = (
        A.EngineOptions(**dict.fromkeys(fields, False)) if off == "all" else A.EngineOptions(**{off: False})
    )
    specs = [[h] for h in A.parse_heads(tiny_llama, "all")] + [[(0, 1), (1, 3)]]
    naive = A.ablate_head_sets(tiny_llama, pairs, specs, method="resample", sweep="naive", n_boot=10)
    fast = A.ablate_head_sets(
        tiny_llama, pairs, specs, method="resample", options=options, max_tokens=256, batch_size=4, n_boot=10
    )
    for m in ("margin", "logprob_diff"):
        assert np.abs(fast.clean[m] - naive.clean[m]).max() <= 1e-4
        assert np.abs(fast.ablated[m] - naive.ablated[m]).max() <= 1e-4
    assert np.abs(fast.ablated["margin"] - fast.clean["margin"][None]).max() > 0


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_unpacked_fast_sweep_equals_the_naive_loop_bit_for_bit(tiny_llama, pairs, method):
    """Packing is the one optimisation that reorders float sums (the other branch's masked keys sit
    between a packed position's own); without it the engine computes exactly what the loop computes."""
    specs = [[h] for h in A.parse_heads(tiny_llama, "all")] + [[(0, 1), (1, 3)]]
    naive = A.ablate_head_sets(tiny_llama, pairs, specs, method=method, sweep="naive", n_boot=10)
    fast = A.ablate_head_sets(
        tiny_llama, pairs, specs, method=method, options=A.EngineOptions(pack=False), n_boot=10
    )
    for m in naive.ablated:
        assert np.array_equal(fast.clean[m], naive.clean[m]), m
        assert np.array_equal(fast.ablated[m], naive.ablated[m]), m


def test_engine_options_change_the_work_not_the_numbers(tiny_llama, pairs):
    specs = [[h] for h in A.parse_heads(tiny_llama, "all")]
    stacked = A.ablate_head_sets(tiny_llama, pairs, specs, n_boot=10)
    one_by_one = A.ablate_head_sets(
        tiny_llama, pairs, specs, n_boot=10, options=A.EngineOptions(copies=False)
    )
    assert one_by_one.forwards > stacked.forwards  # copies=False: one forward per head and batch
    assert np.abs(one_by_one.ablated["margin"] - stacked.ablated["margin"]).max() <= 1e-4


def test_a_fast_sweep_sets_nothing_on_the_model(tiny_llama, pairs):
    engine._BLOCK_LISTS.pop(tiny_llama, None)  # the block list is looked up again in this sweep
    before = dict(vars(tiny_llama))
    A.ablate_heads(tiny_llama, pairs, "all", n_boot=10)
    assert tiny_llama in engine._BLOCK_LISTS  # the lookup happened (and is cached off the model)
    after = vars(tiny_llama)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_relation_arcs_use_the_relation_api(sentences):
    sents = list(sentences.sentences)
    nsubj = relation_arcs(sents, "nsubj")
    for s, arcs in zip(sents, nsubj, strict=True):
        assert arcs == [
            (d, h) for d, (h, rel) in enumerate(zip(s.heads, s.deprels, strict=True)) if rel == "nsubj"
        ]
    assert relation_arcs(sents, "dobj") == relation_arcs(sents, "obj")  # RELATION_ALIASES apply
    assert any(relation_arcs(sents, "obj"))


# --------------------------------------------------------------------------------------------------
# result objects


def test_ablation_result_writes_the_table_and_one_heatmap(tiny_llama, pairs, tmp_path):
    result = A.ablate(tiny_llama, pairs, "0.1,1.2", metric=["margin", "accuracy"], n_boot=10)
    paths = result.write(tmp_path, title="t")
    assert [p.name for p in paths] == ["ablation.csv", "ablation_heatmap.png"]  # a panel per metric
    written = pd.read_csv(paths[0], dtype={"heads": str})
    pd.testing.assert_frame_equal(written, result.frame, check_exact=False, atol=1e-6, check_dtype=False)
    assert result.ablated["margin"].shape == (2, len(pairs)) and result.clean["margin"].shape == (len(pairs),)
    frame = pk.ablate_heads(tiny_llama, pairs, "0.1,1.2", metric=["margin", "accuracy"], n_boot=10)
    pd.testing.assert_frame_equal(frame, result.frame, check_exact=True)  # the old name returns the frame


def test_specialists_result_writes_the_stage_files(tiny_llama, pairs, tmp_path):
    result = A.specialists_vs_random(tiny_llama, pairs, [(0, 1)], n_draws=3, metric="margin", n_boot=10)
    assert result.specialists.to_dict("list") == {"criterion": ["given"], "layer": [0], "head": [1]}
    paths = result.write(tmp_path)
    names = {
        f"{t}.{ext}"
        for t in ("specialists", "specialists_vs_random", "random_draws")
        for ext in ("csv", "md", "tex")
    }
    assert {p.name for p in paths} == names | {"specialists_vs_random.png", "summary.md"}
    assert {p.name for p in tmp_path.iterdir()} == names | {"specialists_vs_random.png", "summary.md"}


# --------------------------------------------------------------------------------------------------
# specialists vs random


def test_matched_random_sets(tiny_llama):
    spec = [(0, 1), (1, 2), (1, 3)]
    draws = A.matched_random_sets(tiny_llama, spec, n_draws=20, seed=1)
    assert draws == A.matched_random_sets(tiny_llama, spec, n_draws=20, seed=1)
    for d in draws:
        assert sorted(layer for layer, _ in d) == [0, 1, 1]
        assert not set(d) & set(spec)
    with pytest.raises(ProbekitError, match="non-specialist"):
        A.matched_random_sets(tiny_llama, [(0, 0), (0, 1), (0, 2)], n_draws=2)


def test_specialists_vs_random(tiny_llama, pairs):
    result = A.specialists_vs_random(
        tiny_llama, pairs, [(0, 1), (1, 2)], n_draws=8, seed=0, metric=["margin", "accuracy"], n_boot=100
    )
    out, draws = result.summary, result.draws
    assert list(out["metric"]) == ["margin", "accuracy"]
    for col in (
        "specialists_delta",
        "random_mean_delta",
        "effect_size",
        "p_value",
        "diff_ci_low",
        "diff_ci_high",
    ):
        assert col in out.columns
    assert ((out.p_value > 0) & (out.p_value <= 1)).all()
    assert len(draws) == 16 and draws["draw"].nunique() == 8
    # the specialists' delta is the joint ablation of the two heads
    joint = A.ablate_heads(tiny_llama, pairs, [(0, 1), (1, 2)], joint=True, metric="margin")
    assert out["specialists_delta"].iloc[0] == pytest.approx(joint["delta"].iloc[0], abs=1e-5)


# --------------------------------------------------------------------------------------------------
# patching


def test_patch_pairs_filter_token_length(tiny_llama):
    pp = A.PatchPairs.from_strings(
        tiny_llama,
        ["The key", "The cat"],
        ["The keys", "The photosynthesizers"],
        ["is", "is"],
        ["are", "are"],
    )
    assert len(pp) == 1 and pp.dropped == {"different token length": 1}
    with pytest.raises(ProbekitError, match="no usable"):
        A.PatchPairs.from_strings(tiny_llama, ["The cat"], ["The photosynthesizers"], ["is"], ["are"])


def test_exact_patching_three_ways_and_attribution(tiny_llama):
    data = pk.load_dataset("template:agreement?n=12")
    pp = A.make_patch_pairs(tiny_llama, data)
    assert len(pp) + sum(pp.dropped.values()) == 12
    assert all(len(c) == len(x) for c, x in zip(pp.clean, pp.corrupted, strict=False))
    frames = {sw: A.patch_heads(tiny_llama, pp, sweep=sw, n_boot=50) for sw in ("tl", "fast", "naive")}
    assert (frames["tl"]["patched"] - frames["fast"]["patched"]).abs().max() <= 1e-4
    assert (frames["naive"]["patched"] - frames["fast"]["patched"]).abs().max() <= 1e-4
    exact = frames["fast"]
    assert exact["clean"].nunique() == 1 and exact["corrupted"].nunique() == 1
    attr = A.attribution_patch(tiny_llama, pp, n_boot=50)
    assert list(attr[["layer", "head"]].itertuples(index=False)) == list(
        exact[["layer", "head"]].itertuples(index=False)
    )
    assert attr["corrupted"].iloc[0] == pytest.approx(exact["corrupted"].iloc[0], abs=1e-5)
    comp = A.compare_patching(exact, attr, k=3)
    assert {"spearman", "topk_overlap", "chance_overlap"} <= set(comp.columns)
    assert -1 <= comp["spearman"].iloc[0] <= 1
    assert _fwd_hook_count(tiny_llama) == 0


def test_attribution_is_exact_for_a_linear_effect(tiny_llama):
    """Patching the last layer's heads at the last position only changes the logits linearly in z up
    to the final norm, so attribution and exact patching must be close there."""
    pp = A.make_patch_pairs(tiny_llama, pk.load_dataset("template:agreement?n=6"))
    last = [(tiny_llama.n_layers - 1, h) for h in range(tiny_llama.n_heads)]
    exact = A.patch_heads(tiny_llama, pp, last, n_boot=20)
    attr = A.attribution_patch(tiny_llama, pp, last, n_boot=20)
    assert np.allclose(exact["delta"], attr["delta"], atol=2e-3)


# --------------------------------------------------------------------------------------------------
# command line


def test_cli_score_and_ablate(tmp_path, capsys):
    from probekit.cli import main

    assert (
        main(
            [
                "score",
                "--model",
                "tiny-llama",
                "--data",
                "template:agreement?n=6",
                "--by",
                "attractor",
                "--n-boot",
                "50",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "s" / "minimal_pairs.csv")
    assert {"attractor", "data", "accuracy", "ci_low", "ci_high"} <= set(table.columns)
    assert (tmp_path / "s" / "minimal_pairs.md").exists()  # PairScores.write: the score stage's files
    assert (
        main(
            [
                "ablate",
                "--model",
                "tiny-llama",
                "--data",
                "template:agreement?n=6",
                "--heads",
                "0.1,1.3",
                "--method",
                "resample",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    abl = pd.read_csv(tmp_path / "a" / "ablation.csv")
    assert {"layer", "head", "method", "metric", "clean", "ablated", "delta"} <= set(abl.columns)
    assert len(abl) == 2 * 3 and (abl.method == "resample").all()
    assert (tmp_path / "a" / "ablation_heatmap.png").stat().st_size > 1000  # one panel per metric
    assert (
        main(
            [
                "ablate",
                "--model",
                "tiny-llama",
                "--data",
                "template:agreement?n=6",
                "--heads",
                "0.1,1.3",
                "--joint",
                "--metric",
                "margin",
                "--out",
                str(tmp_path / "j"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["ablation.csv"]  # no heatmap of a set


def test_cli_errors_propagate(tmp_path, capsys):
    from probekit.cli import main

    assert (
        main(
            [
                "ablate",
                "--model",
                "tiny-llama",
                "--data",
                "template:agreement?n=3",
                "--heads",
                "7.0",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "out of range" in capsys.readouterr().err
    assert (
        main(["score", "--model", "tiny-bert", "--data", "template:agreement?n=3", "--out", str(tmp_path)])
        == 2
    )
    assert "masked-word" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"sentence_good": "A b.", "sentence_bad": "A c.", "UID": "x", "pairID": "0"}) + "\n"
    )
    assert main(["score", "--model", "tiny-llama", "--data", f"blimp:{bad}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "one_prefix_prefix" in err and f"{bad}:1" in err


# --------------------------------------------------------------------------------------------------
# specialists vs random: statistics by hand, criteria, disjoint selection data


def test_difference_ci_by_hand():
    # no item noise: each replicate is the specialists (0) minus one random set (-1 or +1)
    assert A.difference_ci(np.zeros(3), np.array([[-1.0] * 3, [1.0] * 3]), n_boot=2000) == (-1.0, 1.0)
    # one random set, two items [0, 1]: a resample's mean is 0, 0.5 or 1 (p = 1/4, 1/2, 1/4)
    assert A.difference_ci(np.array([0.0, 1.0]), np.zeros((1, 2)), n_boot=4000) == (0.0, 1.0)
    # both: mean in {0, .5, 1} minus a set in {-1, +1}: support -1 .. 2, each end with p = 1/8 > 2.5%;
    # a CI over items of "specialists - mean of the sets" (the sets' spread ignored) would be (0, 1)
    d_rand = np.array([[-1.0, -1.0], [1.0, 1.0]])
    assert A.difference_ci(np.array([0.0, 1.0]), d_rand, n_boot=4000) == (-1.0, 2.0)
    assert A.difference_ci(np.array([0.0, 1.0]), d_rand, n_boot=500, seed=3) == A.difference_ci(
        np.array([0.0, 1.0]), d_rand, n_boot=500, seed=3
    )
    with pytest.raises(ProbekitError, match="d_rand"):
        A.difference_ci(np.zeros(3), np.zeros((2, 4)))


def test_specialists_p_value_and_ci_by_hand(tiny_llama, pairs):
    heads = {"a": [(0, 1), (1, 2)], "b": [(1, 0)]}
    result = A.specialists_vs_random(tiny_llama, pairs, heads, n_draws=6, seed=0, metric="margin", n_boot=300)
    draws = A.coupled_random_sets(tiny_llama, list(heads.values()), 6, seed=0)
    for (name, spec), sets in zip(heads.items(), draws, strict=True):
        row = result.summary[result.summary.criterion == name].iloc[0]
        assert row.heads == A.head_label(spec)
        tab = result.draws[result.draws.criterion == name]
        assert tab.heads.tolist() == [A.head_label(d) for d in sets]  # the coupled draws, in order
        per_item = A.ablate_head_sets(tiny_llama, pairs, [spec, *sets], metric="margin")
        d = per_item.ablated["margin"] - per_item.clean["margin"][None]  # [1 + draws, item]
        spec_delta, rand = d[0].mean(), d[1:].mean(1)
        assert row.specialists_delta == pytest.approx(spec_delta, abs=1e-6)
        assert np.allclose(tab.delta, rand, atol=1e-6)
        # p = (1 + #{draws at least as damaging}) / (1 + n_draws), counted by hand
        hand_p = (1 + sum(r <= spec_delta + 1e-9 for r in rand)) / 7
        assert row.p_value == pytest.approx(hand_p)
        assert row.difference == pytest.approx(spec_delta - rand.mean(), abs=1e-6)
        lo, hi = A.difference_ci(d[0], d[1:], n_boot=300, seed=0)
        assert (row.diff_ci_low, row.diff_ci_high) == pytest.approx((lo, hi), abs=1e-6)


def test_coupled_random_sets_share_the_draws(tiny_llama):
    a, b = A.coupled_random_sets(tiny_llama, [[(0, 1)], [(0, 2)]], n_draws=40, seed=0)
    same = A.coupled_random_sets(tiny_llama, [[(0, 1)], [(0, 1)]], n_draws=40, seed=0)
    assert same[0] == same[1] == a  # one shuffle per draw: identical sets get identical draws
    for x, y in zip(a, b, strict=True):
        # the same shuffle: the sets differ only where it puts the other set's specialist first
        assert x == y or x == [(0, 2)] or y == [(0, 1)]
    assert sum(x == y for x, y in zip(a, b, strict=True)) > 10
    assert all((0, 1) not in d for d in a) and all((0, 2) not in d for d in b)
    # each set alone is a uniform draw among its layer's other heads
    many = A.coupled_random_sets(tiny_llama, [[(0, 1)], [(1, 0), (1, 1)]], n_draws=3000, seed=1)
    counts = pd.Series([h for d in many[0] for _, h in d]).value_counts(normalize=True)
    assert set(counts.index) == {0, 2, 3} and (counts - 1 / 3).abs().max() < 0.03
    assert all(sorted(d) == d and {h for _, h in d} == {2, 3} for d in many[1])


def test_head_selection_must_not_use_the_evaluated_sentences():
    pairs = pk.load_dataset("template:agreement?n=30")
    A.check_disjoint(pk.load_dataset("template:agreement_sentences?n=60&seed=1"), pairs)
    with pytest.raises(ProbekitError, match=r"30 of the 60 head-selection sentences[\s\S]*seed=1"):
        A.check_disjoint(pk.load_dataset("template:agreement_sentences?n=60"), pairs)
    # a bad sentence counts too, and sentences can be the evaluated items
    bad = pk.load_dataset("template:agreement_sentences?n=1").sentences[0]
    with pytest.raises(ProbekitError, match="1 of the 1"):
        A.check_disjoint([bad], [SimpleNamespace(good="Another sentence.", bad=bad.text.replace(" ", "  "))])
    with pytest.raises(ProbekitError, match="1 of the 1"):
        A.check_disjoint([bad], [bad])


def test_attention_criterion_is_the_raw_attention_along_the_arcs(tiny_llama, sentences):
    from probekit.analyses.heads import score_heads
    from probekit.data.relations import relation_instances

    scored = score_heads(
        tiny_llama,
        sentences,
        relations=["nsubj"],
        directions=("head_to_dep",),
        n_boot=20,
        n_perm=10,
        progress=False,
    )
    table = A.select_heads(scored, "attention", top_k=tiny_llama.n_layers * tiny_llama.n_heads)
    cap = pk.capture(tiny_llama, sentences, attention=True, resid=(), cache=False, progress=False)
    inst = relation_instances(sentences, ["nsubj"], ["head_to_dep"])
    inst = inst[(inst.tgt < inst.src)]  # visible to a causal model, never the word itself
    by_hand = np.mean([cap.attention(r.sentence_idx)[:, :, r.src, r.tgt] for r in inst.itertuples()], axis=0)
    got = np.zeros_like(by_hand)
    got[table["layer"].to_numpy(), table["head"].to_numpy()] = table["attention"].to_numpy()
    assert np.allclose(got, by_hand, atol=1e-6)
    assert table.attention.is_monotonic_decreasing and table["rank"].tolist()[:2] == [1, 2]
    top = A.select_heads(scored, "heads_score", top_k=2)
    assert top.accuracy.is_monotonic_decreasing and list(top.criterion) == ["heads_score"] * 2


def test_summary_prose_quotes_the_table_and_marks_the_commentary(tiny_llama, pairs):
    heads = {"a": [(0, 1)], "b": [(0, 1), (1, 2)]}
    result = A.specialists_vs_random(tiny_llama, pairs, heads, n_draws=3, metric="margin", n_boot=20)
    text = A.specialists_markdown(result.summary, result.specialists, commentary="Both pick head one.")
    for r in result.summary.itertuples():
        assert (
            f"{r.specialists_delta:+.3f}" in text and f"[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]" in text
        )
    assert "a and b share 1 of their heads (0.1)." in text
    assert text.endswith(
        "## Commentary (hand-written, number-free; the numbers are above)\n\nBoth pick head one.\n"
    )
    with pytest.raises(ProbekitError, match="digits"):
        A.specialists_markdown(result.summary, result.specialists, commentary="head 0.1 matters")
