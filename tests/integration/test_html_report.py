"""REPORT.html in a real headless browser (Debian's ``chromium``, driven by its own command line).

The page runs a self-test when its URL ends in ``#selftest`` (`probekit.report.html`): it records
uncaught errors, ``console.error`` calls and Content-Security-Policy violations from the first script on,
selects another head in the attention explorer and compares the drawn arcs, lists the resources the page
fetched (Resource Timing), and writes the result as JSON into ``<pre id="selftest-result">``, which
``chromium --dump-dom`` prints. The browser's own console log (``--enable-logging=stderr``) is checked too.
A copy of the page with a broken script and an external image shows that each check can fail.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import pytest

from probekit.experiment.config import validate_config
from probekit.experiment.run import run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

CFG = {
    "name": "html_browser",
    "seed": 0,
    "out": "o",
    "models": ["tiny-bert", "tiny-llama"],
    "batch_size": 8,
    "data": {"svo": "template:svo_adj?n=30"},
    "analyses": {
        "check_attention": {},
        "heads": {"data": ["svo"], "n_boot": 100, "n_perm": 10},
        "explore": {"data": ["svo"], "n_sentences": 2},
    },
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    return run_experiment(validate_config(CFG), out=tmp_path_factory.mktemp("html") / "run", progress=False)


def selftest(page, profile) -> tuple[dict, str]:
    """The page's self-test result and chromium's console log."""
    if BROWSER is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    out = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{page.as_uri()}#selftest",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="selftest-result">(.*?)</pre>', out.stdout, re.S)
    assert found, f"no self-test result in the dumped DOM; chromium said: {out.stderr[-2000:]}"
    console = "\n".join(line for line in out.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line)
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")), console


def test_page_works_in_a_real_browser(run_dir, tmp_path):
    result, console = selftest(run_dir / "REPORT.html", tmp_path / "profile")
    assert result["errors"] == [] and not re.search("Uncaught|violates|Error", console), (
        result["errors"],
        console,
    )
    with open(run_dir / "verdicts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    claims = {r["claim"] for r in rows}
    assert len(rows) == result["verdict_rows"] == len(claims) * len(CFG["models"])  # a row per claim × model
    assert {"C1", "C4"} <= claims
    assert result["explorer_models"] == 2 and result["grid_cells"] == 2 * 4  # tiny-bert: 2 layers × 4 heads
    assert result["arcs_before"] > 0 and result["gold_arcs"] > 0
    assert result["arcs_changed"] and result["selected"] == [0, 1]  # another head, other arcs
    assert result["head_rows"] > 0
    assert result["resources"] == []  # no request left the page


def test_the_checks_can_fail(run_dir, tmp_path):
    page = tmp_path / "broken.html"
    text = (run_dir / "REPORT.html").read_text()
    page.write_text(
        text.replace(
            "</main>",
            '<img src="http://example.invalid/x.png" alt="x"><script>notDefined();</script></main>',
            1,
        )
    )
    result, console = selftest(page, tmp_path / "profile")
    assert any("notDefined" in e for e in result["errors"]) and "Uncaught ReferenceError" in console
    assert result["resources"] == ["http://example.invalid/x.png"] and "example.invalid" in console
