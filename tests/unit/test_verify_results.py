"""`scripts/verify_results.py`: byte identity first, then a number-by-number account of what differs.

A rerun on another CPU model moves the last digits of float sums (MKL and torch take other code paths),
so a byte diff alone cannot tell rounding-level drift from a real change; the script's comparison must.
These tests build small results folders with manifests and hand them over as reruns (``--rerun-dir``),
so nothing is rerun.
"""

from __future__ import annotations

import base64
import doctest
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from probekit.report import provenance

SCRIPT = provenance.REPO / "scripts" / "verify_results.py"


@pytest.fixture(scope="module")
def vr():
    spec = importlib.util.spec_from_file_location("verify_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _folder(root: Path, files: dict[str, str]) -> Path:
    """A results folder ``root/run`` holding ``files`` and a manifest recording their hashes."""
    folder = root / "run"
    folder.mkdir(parents=True)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    prov = {"command": "probekit run experiments/x.yaml", "files": provenance.file_hashes(folder)}
    (folder / "manifest.json").write_text(json.dumps({"provenance": prov}))
    return folder


def _rerun(root: Path, folder: Path, changes: dict[str, str]) -> Path:
    """A copy of ``folder`` under ``root/rerun`` with ``changes`` written over it."""
    rerun = root / "rerun" / folder.name
    shutil.copytree(folder, rerun)
    for rel, text in changes.items():
        (rerun / rel).write_text(text)
    return rerun.parent


TABLE = "model,layer,effect,p\nm,0,0.512345,0.0123\nm,1,3.28066e-07,0.813606\n"


def _main(vr, folder, rerun_dir, *extra):
    return vr.main([str(folder), "--rerun-dir", str(rerun_dir), *extra])


def test_the_script_doctests_pass(vr):
    result = doctest.testmod(vr)
    assert result.attempted >= 6 and result.failed == 0


def test_an_identical_rerun_passes(vr, tmp_path, capsys):
    folder = _folder(tmp_path, {"t.csv": TABLE, "REPORT.md": "effect 0.512"})
    assert _main(vr, folder, _rerun(tmp_path, folder, {})) == 0
    assert "run: identical (2 files)" in capsys.readouterr().out


def test_rounding_level_drift_is_named_and_passes_only_when_tolerated(vr, tmp_path, capsys):
    folder = _folder(tmp_path, {"t.csv": TABLE})
    drift = TABLE.replace("0.512345", "0.512346")  # 1e-6: float sums split another way
    rerun = _rerun(tmp_path, folder, {"t.csv": drift})
    assert _main(vr, folder, rerun) == 1  # bytes differ: strict by default
    out = capsys.readouterr().out
    assert "1 of 6 numbers differ, max |diff| 1e-06, all within tolerance" in out
    assert "all numbers within rtol=0.0001, atol=1e-06" in out
    assert _main(vr, folder, rerun, "--tolerant") == 0


def test_a_moved_p_value_is_reported_with_its_place(vr, tmp_path, capsys):
    folder = _folder(tmp_path, {"t.csv": TABLE})
    moved = TABLE.replace("0.813606", "0.455397")
    assert _main(vr, folder, _rerun(tmp_path, folder, {"t.csv": moved}), "--tolerant") == 1
    out = capsys.readouterr().out
    assert "worst at line 3, column p: 0.813606 -> 0.455397" in out
    assert "run: DIFFERENT (1 file(s) beyond" in out


def test_changed_words_are_a_real_difference(vr, tmp_path, capsys):
    folder = _folder(tmp_path, {"v.csv": "claim,verdict\nC1,supported\n"})
    rerun = _rerun(tmp_path, folder, {"v.csv": "claim,verdict\nC1,not supported\n"})
    assert _main(vr, folder, rerun, "--tolerant") == 1
    assert "words differ (line 2, column verdict: 'supported' vs 'not supported')" in capsys.readouterr().out


def test_a_missing_file_fails(vr, tmp_path, capsys):
    folder = _folder(tmp_path, {"t.csv": TABLE, "u.csv": TABLE})
    rerun = _rerun(tmp_path, folder, {})
    (rerun / "run" / "u.csv").unlink()
    assert _main(vr, folder, rerun, "--tolerant") == 1
    assert "missing: u.csv" in capsys.readouterr().out


def test_base64_weights_one_level_apart_are_rounding(vr):
    def b64(values):
        return base64.b64encode(bytes(values)).decode()

    weights = list(range(0, 255, 7))  # 37 bytes: a base64 run of 52 characters
    one_level = [*weights[:-1], weights[-1] + 1]
    far = [*weights[:-1], weights[-1] - 40]
    same = vr.compare_text(f'{{"a":"{b64(weights)}"}}', f'{{"a":"{b64(one_level)}"}}', rtol=0, atol=0)
    assert same.within and same.n_changed == 1
    moved = vr.compare_text(f'{{"a":"{b64(weights)}"}}', f'{{"a":"{b64(far)}"}}', rtol=1e-4, atol=1e-6)
    assert not moved.within and moved.n_beyond == 1
