"""Result objects of claims C1 (`AttentionCheck`) and C2/C3 (`ClaimsAnalysis`): what they hold and write."""

from __future__ import annotations

import pandas as pd
import pytest

import probekit as pk
from probekit.analyses import claims as claims_lib
from probekit.analyses.attention import AttentionCheck, analyze_attention, check_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def test_attention_check_writes_its_table(tiny_llama, tmp_path):
    res = analyze_attention(tiny_llama, "The curious cat explored the mysterious room.")
    assert isinstance(res, AttentionCheck) and res.model == "tiny-llama"
    pd.testing.assert_frame_equal(
        res.table, check_attention(tiny_llama, "The curious cat explored the mysterious room.")
    )
    assert (res.table.max_abs_diff < 1e-5).all()
    written = res.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in written) == [
        "check_attention.csv",
        "check_attention.md",
        "check_attention.tex",
    ]


@pytest.fixture(scope="module")
def claims(tiny_bert):
    return claims_lib.analyze_claims(
        tiny_bert,
        pk.load_dataset("seed:bank").sentences[0],
        pk.load_dataset("seed:explored").sentences[0],
        pk.load_dataset("template:bank_sense?n=12"),
        n_perm=20,
        bank_label="my:bank",
    )


def test_claims_analysis_matches_the_separate_functions(claims, tiny_bert):
    bank = pk.load_dataset("seed:bank").sentences[0]
    explored = pk.load_dataset("seed:explored").sentences[0]
    pd.testing.assert_frame_equal(claims.bank_attention, claims_lib.bank_attention(tiny_bert, bank))
    pd.testing.assert_frame_equal(claims.bank_summary, claims_lib.bank_summary(claims.bank_attention))
    frame = claims_lib.explored_weights(tiny_bert, explored)
    pd.testing.assert_frame_equal(claims.explored_weights, frame)
    # the analysis captures its sentences in other batches than the separate calls: the float sums may
    # split differently (bit-equal on some CPUs, 1e-8 apart on others), so compare to rounding
    pd.testing.assert_frame_equal(
        claims.explored_summary.iloc[[0]].reset_index(drop=True),
        pd.DataFrame([claims_lib.explored_summary(frame, False)]),
        check_dtype=False,
        rtol=1e-6,
    )
    heads, summary = claims_lib.bank_cue_heads(
        tiny_bert, pk.load_dataset("template:bank_sense?n=12"), n_perm=20
    )
    pd.testing.assert_frame_equal(claims.bank_cue_heads, heads)
    # the views draw the heads the tables single out
    assert claims.bank_view.heads == (tuple(int(x) for x in summary["best_head"].split(".")),)
    assert claims.explored_view.heads[1] == (tiny_bert.n_layers - 1, 0)
    assert claims.bank_view.title == "tiny-bert: my:bank"
    assert claims.explored_view.attention.shape[-1] == len(explored.words)


def test_claims_analysis_writes_six_tables_and_two_views(claims, tmp_path):
    written = claims.write(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in written) == names
    tables = (
        "bank_attention",
        "bank_summary",
        "bank_cue_heads",
        "bank_cue_summary",
        "explored_weights",
        "explored_summary",
    )
    assert set(names) == {f"{t}.{e}" for t in tables for e in ("csv", "md", "tex")} | {
        "bank_attention.png",
        "explored_attention.png",
    }
