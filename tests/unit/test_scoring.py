"""`PairScores`: one result object, one set of files, for the `score` stage and `probekit score`."""

from __future__ import annotations

import pandas as pd
import pytest

import probekit as pk
from probekit.analyses.scoring import PairScores, analyze_pairs, score_pairs
from probekit.report import markdown_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs():
    return pk.load_dataset("template:agreement?n=6")


@pytest.fixture(scope="module")
def result(tiny_llama, pairs):
    return analyze_pairs(tiny_llama, pairs, by="attractor", n_boot=50, data_label="shown:spec")


def test_analyze_pairs_holds_summary_and_pairs(result, tiny_llama, pairs):
    assert isinstance(result, PairScores)
    assert (result.model, result.data, result.by) == ("tiny-llama", "shown:spec", "attractor")
    assert len(result.per_pair) == 6 and result.summary["n"].iloc[-1] == 6
    same = score_pairs(tiny_llama, pairs, by="attractor", n_boot=50)
    pd.testing.assert_frame_equal(same, result.summary)
    assert analyze_pairs(tiny_llama, pairs, n_boot=50).data == pairs.spec


def test_write_is_the_summary_with_data_second(result, tmp_path):
    written = result.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in tmp_path.iterdir())
    assert sorted(p.name for p in written) == ["minimal_pairs.csv", "minimal_pairs.md", "minimal_pairs.tex"]
    table = pd.read_csv(tmp_path / "minimal_pairs.csv", keep_default_na=False)
    assert list(table.columns[:3]) == ["model", "data", "attractor"]
    assert set(table["data"]) == {"shown:spec"}
    assert list(table["attractor"]) == list(result.summary["attractor"])
    assert (tmp_path / "minimal_pairs.md").read_text() == markdown_table(result.table())
    assert "data" not in result.summary.columns  # table() copies; the summary is left alone


def test_cli_writes_the_same_files_as_the_result(tiny_llama, tmp_path, capsys):
    from probekit.cli import main

    spec = "template:agreement?n=6"
    assert (
        main(
            [
                "score",
                "--model",
                "tiny-llama",
                "--data",
                spec,
                "--n-boot",
                "50",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    analyze_pairs(tiny_llama, pk.load_dataset(spec), n_boot=50).write(tmp_path / "api")
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "api").iterdir())
    for name in names:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
