"""Every committed results folder is what its command wrote: checked against its manifest, fast.

`probekit.report.provenance.check_folder` compares each ``results/*`` folder with the provenance
record in its ``manifest.json`` (the command and config that wrote it, a sha256 of each file, and of
each probekit module the run imported). A hand edit, a file nobody's command wrote, a changed config
or changed code (without a ``STALE`` note saying why the folder stays) fails here. ``make
verify-results`` reruns every command and diffs byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probekit.report import provenance

RESULTS = Path(__file__).resolve().parents[2] / "results"
FOLDERS = sorted(p for p in RESULTS.iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", FOLDERS, ids=[p.name for p in FOLDERS])
def test_committed_results_match_their_manifest(folder):
    problems = provenance.check_folder(folder)
    assert not problems, "\n".join(map(str, problems))


def test_results_hold_no_code():
    code = [p.relative_to(RESULTS) for p in RESULTS.rglob("*") if p.suffix in (".py", ".sh", ".ipynb")]
    assert not code, f"code under results/: {code}; move it to scripts/ or benchmarks/"


def test_every_manifest_names_a_committed_config_or_make_bench():
    for manifest in RESULTS.glob("*/manifest.json"):
        prov = json.loads(manifest.read_text())["provenance"]
        if prov["config"] is not None:
            assert (provenance.REPO / prov["config"]["path"]).is_file(), manifest
            assert prov["command"].startswith("probekit run "), manifest
        else:
            assert prov["command"].startswith(("make bench", "probekit bench")), manifest


def test_the_check_catches_edits_additions_and_removals(tmp_path):
    folder = tmp_path / "run"
    (folder / "stage").mkdir(parents=True)
    for name in ("a.csv", "b.md", "stage/c.png"):
        (folder / name).write_bytes(name.encode())
    (folder / ".done").write_text("markers are not results")
    record = provenance.record(folder, "probekit run experiments/x.yaml", None)
    assert sorted(record["files"]) == ["a.csv", "b.md", "stage/c.png"]
    (folder / "manifest.json").write_text(json.dumps({"provenance": record}))
    assert provenance.check_folder(folder, code=False) == []
    (folder / "a.csv").write_bytes(b"a.csv ")
    (folder / "extra.csv").write_text("a\n")
    (folder / "stage" / "c.png").unlink()
    kinds = sorted(p.kind for p in provenance.check_folder(folder, code=False))
    assert kinds == ["file added", "file changed", "file missing"]


def test_changed_code_makes_a_folder_stale_unless_it_says_why(tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "t.csv").write_text("a\n1\n")
    record = provenance.record(copy, "probekit run experiments/x.yaml", None)
    record["code"] = {"probekit/errors.py": "0" * 64}  # as if errors.py had other bytes at run time
    (copy / "manifest.json").write_text(json.dumps({"provenance": record}))
    assert [p.kind for p in provenance.check_folder(copy)] == ["code changed"]
    (copy / "STALE").write_text(
        "errors.py changed only a message; rerun with `probekit run experiments/x.yaml`\n"
    )
    assert provenance.check_folder(copy) == []
    assert provenance.check_folder(copy, code=False) == []


def test_code_fingerprint_ignores_layout_docstrings_and_annotations_only(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text("def f(x):\n    return x + 1\n")
    b.write_text(
        '"""Doc."""\n\n\ndef f(x: int) -> int:  # comment\n'
        '    """More doc."""\n    return (x\n            + 1)\n'
    )
    c.write_text("def f(x):\n    return x + 2\n")
    assert provenance.code_fingerprint(a) == provenance.code_fingerprint(b)
    assert provenance.code_fingerprint(a) != provenance.code_fingerprint(c)
