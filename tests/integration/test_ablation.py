"""Minimal pairs and head ablation on the bundled pretrained models and the shared BLiMP files."""

from __future__ import annotations

import numpy as np
import pytest

import probekit as pk
import probekit.analyses.interventions as A  # noqa: N812 (the module as a short name)
from probekit.analyses.scoring import PUBLISHED_BLIMP, score_pairs
from probekit.errors import ProbekitError

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]


def test_smollm_prefers_grammatical_blimp_sentences(smollm, shared_data):
    path = shared_data / "blimp" / "determiner_noun_agreement_1.jsonl"
    data = pk.load_dataset(f"blimp:{path}", max_sentences=60)
    summary = score_pairs(smollm, data, n_boot=200)
    row = summary.iloc[0]
    assert row["paradigm"] == "determiner_noun_agreement_1" and row["n"] == 60
    # GPT-2 gets 0.988 on this paradigm; a 135M model should be far above chance
    assert row["accuracy"] >= 0.85 and row["mean_margin"] > 0
    assert set(PUBLISHED_BLIMP) == {p.stem for p in (shared_data / "blimp").glob("*.jsonl")}


def test_minilm_is_refused(minilm, shared_data):
    data = pk.load_dataset(f"blimp:{shared_data / 'blimp'}", max_sentences=2)
    with pytest.raises(ProbekitError, match="masked-word"):
        score_pairs(minilm, data)


def test_fast_sweep_equals_naive_on_smollm(smollm, shared_data):
    path = shared_data / "blimp" / "regular_plural_subject_verb_agreement_1.jsonl"
    data = pk.load_dataset(f"blimp:{path}", max_sentences=4)
    specs = [[(layer, h)] for layer in (0, 14, 29) for h in (0, 4, 8)] + [[(2, 1), (20, 3)]]
    fast = A.ablate_head_sets(smollm, data, specs, sweep="fast")
    naive = A.ablate_head_sets(smollm, data, specs, sweep="naive")
    fc, fa, nc, na = fast.clean, fast.ablated, naive.clean, naive.ablated
    for m in ("margin", "logprob_diff"):
        assert np.abs(fc[m] - nc[m]).max() <= 1e-4
        assert np.abs(fa[m] - na[m]).max() <= 1e-4
    assert np.array_equal(fa["accuracy"], na["accuracy"])
