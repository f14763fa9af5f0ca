"""Causal mediation (probekit.analyses.mediation): a hand-wired model whose answer is known, the pair
builders, the statistics, the disjointness check, the CLI and the config stage on tiny models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import probekit as pk
from probekit.analyses.interventions.patching import PatchPairs
from probekit.analyses.mediation import (
    EFFECTS,
    head_effects,
    make_pairs,
    mediate,
    other_verb_form,
    signflip_p,
    spearman_perm,
)
from probekit.errors import ProbekitError

NUMBER, READ = (
    0,
    3,
)  # residual dims: the subject's number (embeddings), the verb-number read-out (unembedding)
SUBJECTS = [(1000 + 2 * k, 1001 + 2 * k) for k in range(6)]  # (singular, plural) token ids
FILLERS = list(range(2000, 2040))
V_SG, V_PL = 3000, 3001


def wired_model(layer: int, head: int):
    """tiny-llama rewired so that only head (layer, head) moves the subject's number to the last position.

    Embeddings: subject tokens carry +-1 on NUMBER, every other token random values elsewhere; the
    target head has W_Q = 0 (uniform attention over the seen positions), reads NUMBER through its
    key/value head and writes it to READ through W_O; the unembedding reads READ for the two verb
    forms. Every other head has W_O = 0 and every MLP W_down = 0, so no other path carries number.
    """
    model = pk.load_model("tiny-llama")
    hf = model.hf_model.model
    g = torch.Generator().manual_seed(0)
    d_head, n_heads = model.d_head, model.n_heads
    kv = head // (n_heads // model.n_kv_heads)
    with torch.no_grad():
        emb = hf.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=g) * 0.5)
        emb[:, NUMBER] = 0.0
        emb[:, READ] = 0.0
        for sg, pl in SUBJECTS:
            emb[sg, NUMBER], emb[pl, NUMBER] = 3.0, -3.0
        emb[V_SG, READ], emb[V_PL, READ] = 1.0, -1.0  # tied: the unembedding rows of the verb forms
        for i, block in enumerate(hf.layers):
            block.mlp.down_proj.weight.zero_()
            block.self_attn.o_proj.weight.zero_()
            if i == layer:
                attn = block.self_attn
                attn.q_proj.weight[head * d_head : (head + 1) * d_head] = 0.0
                attn.v_proj.weight[kv * d_head : (kv + 1) * d_head] = 0.0
                attn.v_proj.weight[kv * d_head, NUMBER] = 1.0
                attn.o_proj.weight[READ, head * d_head] = 50.0
    return model


def wired_pairs(n: int = 12) -> PatchPairs:
    rng = np.random.default_rng(0)
    pp = PatchPairs([], [], [], [], [], [], {})
    for i in range(n):
        sg, pl = SUBJECTS[i % len(SUBJECTS)]
        plural = i % 2 == 1
        pre, post = rng.choice(FILLERS, 1 + i % 2).tolist(), rng.choice(FILLERS, 3).tolist()
        subj, other = (pl, sg) if plural else (sg, pl)
        pp.ids.append(f"w{i}")
        pp.clean.append((0, *pre, subj, *post))
        pp.corrupted.append((0, *pre, other, *post))
        pp.good.append(V_PL if plural else V_SG)
        pp.bad.append(V_SG if plural else V_PL)
        pp.labels.append({"relation": "agreement"})
    return pp


def fake_heads(model) -> pd.DataFrame:
    rows = []
    for rel, direction in (("nsubj", "head_to_dep"), ("prev_word", "positional"), ("self", "positional")):
        for layer in range(model.n_layers):
            for h in range(model.n_heads):
                att = 0.1 * (layer * model.n_heads + h) if rel == "nsubj" else 0.01 * h
                rows.append(
                    {
                        "model": model.name,
                        "data": "x",
                        "relation": rel,
                        "direction": direction,
                        "layer": layer,
                        "head": h,
                        "n": 10,
                        "n_dev": 10,
                        "accuracy": att,
                        "attention_mass": att,
                        "dev_accuracy": att,
                        "dev_attention_mass": att,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("target", [(1, 2), (1, 0), (0, 3)])
def test_wired_head_is_the_only_mediator(target):
    model = wired_model(*target)
    pp = wired_pairs()
    heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    res = head_effects(model, pp, range(len(pp)), [[h] for h in heads])
    te = res.counterfactual - res.clean
    assert np.all(res.clean > 1.0) and np.all(te < -2.0)  # the clean answer wins; the counterfactual flips it
    for effect in EFFECTS:
        ie = (res.patched[effect] - res.clean).mean(axis=1)
        found = [heads[j] for j in np.flatnonzero(np.abs(ie) > 1e-4)]
        assert found == [target], (effect, dict(zip(heads, ie.round(4), strict=True)))
        # the one head carries the whole effect: its output is the only path from subject to read-out
        assert ie[heads.index(target)] == pytest.approx(te.mean(), rel=1e-3)


def mediate_wired(layer: int, head: int):
    """`mediate` on the hand-wired model with head ``layer.head`` carrying the number, every head exact."""
    model = wired_model(layer, head)
    return mediate(
        model,
        ["agreement"],
        pairs={"agreement": wired_pairs(24)},
        heads=fake_heads(model),
        exact="all",
        n_pairs=24,
        top_k=2,
        n_random=2,
        n_boot=50,
        n_perm=5000,
    )


def test_mediate_names_the_wired_head_and_no_other():
    res = mediate_wired(1, 2)
    row = res.summary.iloc[0]
    assert row.causal_heads == "1.2"
    eff = res.effects[res.effects.effect_type == "all_positions"]
    eff = eff.set_index(eff.layer.astype(str) + "." + eff["head"].astype(str))
    assert eff.loc["1.2", "share"] == pytest.approx(1.0, rel=1e-3)
    assert eff.loc["1.2", "p_holm"] <= 0.05 and (eff.drop("1.2").p_holm == 1.0).all()


def test_wiring_another_head_moves_the_answer():
    """The check the test above relies on: wiring (0, 3) instead makes mediate name 0.3, not 1.2."""
    res = mediate_wired(0, 3)
    assert res.summary.iloc[0].causal_heads == "0.3"


# -- pairs


def test_pairs_equal_length_and_drop_counts():
    model = pk.load_model("tiny-llama")
    for rel in ("agreement", "binding", "det_noun"):
        pp = make_pairs(model, rel, n=20)
        assert all(len(c) == len(x) for c, x in zip(pp.clean, pp.corrupted, strict=True))
        assert all(g != b for g, b in zip(pp.good, pp.bad, strict=True))
        assert {lab["relation"] for lab in pp.labels} == {rel}
    det = pk.analyses.mediation.det_noun_pairs(model, pk.data.bundled.BLIMP_DIR, max_pairs=50)
    assert len(det) + sum(det.dropped.values()) == 50
    unequal = PatchPairs.from_strings(
        model, ["The key", "The cat"], ["The keys", "The xqzvbwkj"], ["is", "is"], ["are", "are"]
    )
    assert len(unequal) == 1 and unequal.dropped == {"different token length": 1}


def test_binding_counterfactual_swaps_the_adjectives():
    model = pk.load_model("tiny-llama")
    pp = pk.analyses.mediation.binding_pairs(model, n=6, seed=3)
    tok = model.tokenizer
    clean, cf = tok.decode(list(pp.clean[0][1:])), tok.decode(list(pp.corrupted[0][1:]))
    a, b = clean.split()[1], clean.split()[5]
    assert cf.split()[1] == b and cf.split()[5] == a
    assert tok.decode([pp.good[0]]).strip() == a  # the first object is queried first


def test_other_verb_form():
    assert [other_verb_form(v) for v in ("is", "were", "talk", "talks", "fixes", "marry")] == [
        "are",
        "was",
        "talks",
        "talk",
        "fix",
        "marries",
    ]


def test_masked_pairs_for_encoders():
    model = pk.load_model("tiny-bert")
    pp = pk.analyses.mediation.masked_agreement_pairs(model, pk.load_dataset("template:agreement?n=12"))
    for i in range(len(pp)):
        c = pp.labels[i]["crit"]
        assert pp.clean[i][c] == pp.corrupted[i][c] == model.tokenizer.mask_token_id
        assert sum(a != b for a, b in zip(pp.clean[i], pp.corrupted[i], strict=True)) >= 1


# -- statistics


def test_signflip_p_by_hand():
    # n = 3, all positive: of the 8 sign patterns, |mean| >= observed only for +++ and ---
    assert signflip_p(np.array([1.0, 2.0, 3.0]), 1000, 0) == pytest.approx(2 / 8)
    # [1, -1]: every pattern has |mean| 0 or 1 >= 0: p = 1
    assert signflip_p(np.array([1.0, -1.0]), 1000, 0) == pytest.approx(1.0)
    assert signflip_p(np.zeros(5), 1000, 0) == 1.0


def test_rounding_level_effects_are_not_tested():
    """A head with no effect shows float32 rounding as per-item "effects": it gets p = 1 (on every
    machine) with the raw mean as its effect; a head with a real effect is tested on its raw items."""
    from probekit.analyses.mediation.analysis import _stats, beyond_rounding

    rng = np.random.default_rng(0)
    clean = rng.uniform(-8, 8, 24)  # logit differences of order 1-10
    noise = rng.normal(0, 2e-5, 24)  # what another split of the float32 sums does to them
    st = _stats(clean + noise + 1e-5, clean, te=1.0, n_boot=200, n_perm=1000, seed=0)
    assert st["p"] == 1.0
    assert st["effect"] == pytest.approx(np.mean(noise) + 1e-5)  # reported from the raw differences
    # a real effect on a few items: the test runs on every item's raw difference, rounding-level ones too
    effect = np.where(np.arange(24) < 6, 0.5, 0.0) + noise
    real = _stats(clean + effect, clean, te=1.0, n_boot=200, n_perm=1000, seed=0)
    assert real["p"] == signflip_p(effect, 1000, 0) and real["p"] < 0.05
    # the floor scales with the read-out: 1e-4 of |8| is 8e-4, of |0.5| still 1e-4
    assert beyond_rounding(np.array([8.0007, 0.50011]), np.array([8.0, 0.5])).tolist() == [False, True]


def test_spearman_perm_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    rho, p = spearman_perm(a, np.array([1.0, 3.0, 2.0, 4.0]), 2000, 0)
    assert rho == pytest.approx(0.8)  # 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15)
    # |rho| >= 0.8 for 4 of the 24 permutations (identity, the two adjacent swaps of the middle... ):
    # exactly: rho in {1, 0.8, 0.8, 0.8} and the mirrored {-1, -0.8, -0.8, -0.8}: 8 / 24
    assert p == pytest.approx(8 / 24, abs=0.04)


def test_holm_over_all_heads():
    from probekit.analyses.mediation.analysis import _holm_all

    adj = _holm_all({(0, 0): 0.01, (1, 1): 0.02}, 2, 2)  # 4 heads; two untested count as p = 1
    assert adj[(0, 0)] == pytest.approx(0.04) and adj[(1, 1)] == pytest.approx(0.06)


def test_selection_and_report_items_are_disjoint():
    model = pk.load_model("tiny-llama")
    pp = make_pairs(model, "agreement", n=30)
    from probekit.analyses.mediation.analysis import _split

    sel, rep = _split(pp, 0)
    prompts = lambda items: {p for i in items for p in (pp.clean[i], pp.corrupted[i])}  # noqa: E731
    assert sel and rep and not prompts(sel) & prompts(rep)


def test_heads_data_sharing_a_prompt_is_refused():
    model = pk.load_model("tiny-llama")
    pp = wired_pairs(8)
    from probekit.analyses.mediation.analysis import _split, _texts

    _, rep = _split(pp, 0)
    leaked = [pk.Sentence("s", tuple(_texts(model, pp, rep)[0].text.split()))]
    with pytest.raises(ProbekitError, match="circular"):
        mediate(
            model,
            ["agreement"],
            pairs={"agreement": pp},
            heads=fake_heads(model),
            heads_data=leaked,
            n_pairs=8,
            top_k=1,
            n_random=1,
            n_boot=20,
            n_perm=20,
        )


def test_mediate_tiny_llama_runs_all_relations_and_writes(tmp_path):
    model = pk.load_model("tiny-llama")
    res = mediate(
        model,
        ["agreement", "binding"],
        heads_data=pk.load_dataset("template:svo_adj?n=8", seed=1),
        n_pairs=10,
        top_k=2,
        n_random=2,
        n_boot=20,
        n_perm=20,
    )
    assert set(res.summary.relation) == {"agreement", "binding"}
    assert set(res.sets.set) >= {"attention_top", "causal_top", "positional", "random_0"}
    paths = res.write(tmp_path)
    assert (tmp_path / "mediation_heatmap_agreement.png").exists() and (tmp_path / "summary.md").exists()
    assert len(paths) == 4 * 3 + 2 + 1 + 1
    again = mediate(
        model,
        ["agreement", "binding"],
        heads_data=pk.load_dataset("template:svo_adj?n=8", seed=1),
        n_pairs=10,
        top_k=2,
        n_random=2,
        n_boot=20,
        n_perm=20,
    )
    pd.testing.assert_frame_equal(res.effects, again.effects)


def test_mediate_encoder_probe_readout():
    model = pk.load_model("tiny-bert")
    res = mediate(
        model,
        ["agreement"],
        heads_data=pk.load_dataset("template:svo_adj?n=8", seed=1),
        n_pairs=12,
        top_k=2,
        n_random=2,
        n_boot=20,
        n_perm=20,
    )
    row = res.summary.iloc[0]
    assert row.readout == f"probe@{model.n_layers}" and 0 <= row.probe_accuracy <= 1
    assert len(res.heads) == model.n_layers * model.n_heads and (res.heads.share_method == "exact").all()
    with pytest.raises(ProbekitError, match="encoder"):
        mediate(model, ["binding"], n_pairs=8)


# -- CLI and config stage


def _cli(*argv: str) -> int:
    from probekit.cli import main

    return main(list(argv))


def test_cli_mediate_tiny(tmp_path, capsys):
    out = tmp_path / "m"
    code = _cli(
        "mediate",
        "--model",
        "tiny-llama",
        "--relations",
        "agreement",
        "--heads-data",
        "template:svo_adj?n=8",
        "--n-pairs",
        "8",
        "--top-k",
        "2",
        "--n-random",
        "1",
        "--n-boot",
        "20",
        "--n-perm",
        "20",
        "--out",
        str(out),
    )
    assert code == 0 and (out / "mediation_summary.csv").exists()
    assert "agreement: total effect" in capsys.readouterr().out
    assert _cli("mediate", "--model", "tiny-llama", "--n-pairs", "0", "--out", str(tmp_path / "x")) == 2


def test_config_stage_tiny_bert_and_c4_evidence(tmp_path):
    from probekit.experiment import run_experiment, validate_config
    from probekit.experiment.verdicts import _mediation_evidence

    cfg = validate_config(
        {
            "name": "m",
            "seed": 0,
            "out": str(tmp_path / "run"),
            "models": ["tiny-bert", "tiny-llama"],
            "data": {"agreement": "template:agreement?n=30", "svo": "template:svo_adj?n=8&seed=1"},
            "analyses": {
                "mediate": {
                    "heads_data": "svo",
                    "blimp": None,
                    "n_pairs": 10,
                    "top_k": 2,
                    "n_random": 1,
                    "n_boot": 100,
                    "n_perm": 100,
                }
            },
        }
    )
    run_experiment(cfg, progress=False)
    folder = tmp_path / "run" / "mediate" / "tiny-bert"
    summary = pd.read_csv(folder / "mediation_summary.csv")
    assert summary.relation.tolist() == ["agreement"] and summary.readout.iloc[0].startswith("probe@")
    assert not (tmp_path / "run" / "mediate" / "tiny-llama").exists()  # random LM head: skipped, and said so
    text = _mediation_evidence(tmp_path / "run", "tiny-bert")
    assert len(text) == 1 and "carries" in text[0] and "Spearman" in text[0]
