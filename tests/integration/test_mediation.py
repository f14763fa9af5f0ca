"""Causal mediation on the bundled SmolLM2: the pipeline runs on a few pairs and the counterfactual flips
the agreement preference (total effect negative); the fast engine equals the naive loop."""

from __future__ import annotations

import numpy as np
import pytest

import probekit as pk
from probekit.analyses.mediation import head_effects, make_pairs

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def test_mediate_smollm_agreement_total_effect_sign(smollm):
    heads = pk.score_heads(
        smollm,
        pk.load_dataset("template:svo_adj?n=12", seed=1),
        relations=["nsubj", "prev_word", "self"],
        n_boot=20,
        n_perm=10,
        progress=False,
    )
    res = pk.mediate(
        smollm, ["agreement"], heads=heads, n_pairs=12, top_k=2, n_random=2, n_boot=50, n_perm=50
    )
    row = res.summary.iloc[0]
    # clean prompts prefer the correct verb; the subject-number counterfactual flips that preference
    assert row.clean > 0 and row.total_effect < 0 and row.te_ci_high < 0
    assert set(res.effects.effect_type) == {"all_positions", "critical_position", "path"}


def test_fast_equals_naive_and_last_layer_effects_coincide(smollm):
    pp = make_pairs(smollm, "agreement", n=4)
    specs = [[(13, 8)], [(29, 0)]]
    fast = head_effects(smollm, pp, range(len(pp)), specs)
    naive = head_effects(smollm, pp, range(len(pp)), specs, sweep="naive")
    for e in fast.patched:
        assert np.abs(fast.patched[e] - naive.patched[e]).max() < 1e-3
    # in the last layer only the read-out position matters: all-positions == critical-position effect
    assert np.allclose(fast.patched["all_positions"][1], fast.patched["critical_position"][1], atol=1e-4)
