"""REPORT.html (probekit.report.html) and the explore stage that feeds its attention explorer."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

import probekit as pk
from probekit.cli import main
from probekit.experiment.config import validate_config
from probekit.experiment.run import run_experiment
from probekit.report.html import ExplorerSample, figure_alt, quantise, write_html_report

pytestmark = pytest.mark.usefixtures("one_thread")

# a 1x1 PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_quantise_matches_a_hand_computation():
    # round(255 w): 0 -> 0, 0.2 -> 51, 0.5 -> 127.5 -> 128 (half to even), 1 -> 255; out of range is clipped
    got = np.frombuffer(base64.b64decode(quantise(np.array([0.0, 0.2, 0.5, 1.0, 1.5, -0.1]))), np.uint8)
    assert got.tolist() == [0, 51, 128, 255, 255, 0]


def test_explorer_sample_round_trips_within_the_quantisation_step(tmp_path):
    s = pk.Sentence("s1", ("The", "cat", "sat"), heads=(1, 2, -1), deprels=("det", "nsubj", "root"))
    rng = np.random.default_rng(0)
    att = rng.dirichlet(np.ones(3), size=(2, 4, 3)) * 0.9  # [layer, head, from, to]
    sink = 1 - att.sum(-1)  # [layer, head, from]
    sample = ExplorerSample("m", "d", True, 2, 4, [s], [att], [sink])
    path = sample.write(tmp_path)
    first = path.read_bytes()
    assert sample.write(tmp_path).read_bytes() == first  # deterministic bytes
    row = json.loads(first)["sentences"][0]
    back = np.frombuffer(base64.b64decode(row["attention"]), np.uint8).reshape(2, 4, 3, 3) / 255
    assert np.abs(back - att).max() <= 0.5 / 255 + 1e-12
    assert row["heads"] == [1, 2, -1] and row["deprels"] == ["det", "nsubj", "root"]
    with pytest.raises(ValueError, match="do not match"):
        ExplorerSample("m", "d", True, 2, 4, [s], [att[:, :, :2]], [sink]).payload()


def _fake_run(folder):
    (folder / "heads" / "m__d").mkdir(parents=True)
    (folder / "probes" / "m__d").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "fake"}))
    (folder / "verdicts.csv").write_text(
        "claim,model,verdict,evidence,tables\n"
        "C4,m,supported,a </script> b,heads/m__d/verdicts.csv\n"
        "C4,n,not supported,c,heads/m__d/verdicts.csv\n"
    )
    (folder / "heads" / "m__d" / "heatmap_nsubj.png").write_bytes(PNG)
    (folder / "probes" / "m__d" / "curve.png").write_bytes(PNG)
    (folder / "heads" / "m__d" / "heads.csv").write_text(
        "model,data,relation,direction,layer,head,accuracy,offset_accuracy,ci_low,ci_high,p_holm,head_positional\n"
        "m,d,nsubj,dep_to_head,0,1,0.5,0.25,0.4,0.6,0.01,False\n"
        "m,d,det,head_to_dep,1,0,,0.5,,,1,True\n"
    )


def test_page_places_figures_in_their_claim_section_and_is_self_contained(tmp_path):
    _fake_run(tmp_path)
    text = write_html_report(tmp_path, {"C4": "one head per relation"}).read_text()
    c4, heads = text.index('<section id="claim-C4">'), text.index('<section id="heads">')
    other = text.index('<section id="figures">')
    heatmap = text.index(f'alt="{figure_alt("heads/m__d/heatmap_nsubj.png")}"')
    curve = text.index('alt="curve — probes stage, m on d (probes/m__d/curve.png)"')
    assert c4 < heatmap < heads and curve > other  # the heatmap in C4's section, the curve at the end
    # one verdict row per claim × model, each linking to its evidence
    assert re.findall(r'<tr data-claim="([^"]+)" data-model="([^"]+)">', text) == [("C4", "m"), ("C4", "n")]
    assert 'href="#claim-C4-m"' in text and 'id="claim-C4-m"' in text
    # the evidence's "</script>" cannot end a script early: only the page's two scripts and the data close
    assert text.count("</script>") == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing loads from elsewhere
    data = json.loads(re.search(r'id="pk-data">(.*?)</script>', text, re.S).group(1).replace("<\\/", "</"))
    heads = data["heads"]
    assert heads["levels"]["relation"] == ["nsubj", "det"]
    assert heads["rows"][1] == [0, 0, 1, 1, 1, 0, None, 0.5, None, None, 1, True]


def test_page_without_explorer_data_says_how_to_get_it_and_rebuilds_identically(tmp_path):
    _fake_run(tmp_path)
    first = write_html_report(tmp_path).read_bytes()
    assert write_html_report(tmp_path).read_bytes() == first
    assert b"add the explore stage (analyses.explore)" in first


CFG = {
    "name": "html",
    "seed": 0,
    "out": "o",
    "models": ["tiny-llama"],
    "data": {"svo": "template:svo_adj?n=6"},
    "analyses": {"explore": {"data": ["svo"], "n_sentences": 2}},
}


def test_explore_stage_is_deterministic_and_the_cli_rebuilds_the_same_page(tmp_path, capsys):
    a = run_experiment(validate_config(CFG), out=tmp_path / "a", progress=False)
    b = run_experiment(validate_config(CFG), out=tmp_path / "b", progress=False)
    sample = a / "explore" / "tiny-llama__svo" / "explorer.json"
    assert sample.read_bytes() == (b / "explore" / "tiny-llama__svo" / "explorer.json").read_bytes()
    payload = json.loads(sample.read_text())
    assert payload["causal"] is True and len(payload["sentences"]) == 2
    s = payload["sentences"][0]
    n = len(s["words"])
    att = np.frombuffer(base64.b64decode(s["attention"]), np.uint8).reshape(2, payload["n_heads"], n, n)
    assert att[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]].max() == 0  # causal: no future
    assert att.max() > 0 and s["heads"] is not None
    page = (a / "REPORT.html").read_bytes()
    assert page == (b / "REPORT.html").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert "REPORT.html" in manifest["provenance"]["files"]
    (a / "REPORT.html").unlink()
    assert main(["report", str(a), "--html"]) == 0
    assert (a / "REPORT.html").read_bytes() == page
    assert "REPORT.html" in capsys.readouterr().out


def test_explore_options_are_validated():
    with pytest.raises(pk.ProbekitError, match="n_sentences"):
        validate_config(CFG | {"analyses": {"explore": {"data": ["svo"], "n_sentences": 0}}})
