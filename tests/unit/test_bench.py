"""`probekit bench`: the harness and the --quick run produce well-formed outputs.

Nothing here times anything: the benchmarks' numbers are checked for shape and sanity only.
"""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pandas as pd
import pytest

from probekit import bench


def test_interleaved_warms_up_rotates_and_cleans_up():
    calls, cleaned = [], []

    def variant(name):
        def fn():
            calls.append(name)
            return lambda: cleaned.append(name)

        return fn

    rows = bench.interleaved({"a": variant("a"), "b": variant("b"), "c": variant("c")}, repeats=3)
    assert calls[:3] == ["a", "b", "c"]  # one warm-up each
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated every repetition
    assert len(cleaned) == len(calls)
    assert [(r["variant"], r["repeat"]) for r in rows][:3] == [("a", 0), ("b", 0), ("c", 0)]
    assert all(r["seconds"] >= 0 for r in rows)


def test_interleaved_chunks_alternates_within_chunks_and_sums():
    calls = []
    chunks = [{v: (lambda v=v, k=k: calls.append((v, k))) for v in ("a", "b")} for k in range(2)]
    rows = bench.interleaved_chunks(chunks, repeats=2)
    assert calls[:2] == [("a", 0), ("b", 0)]  # warm-up on chunk 0
    assert calls[2:] == [
        ("a", 0),
        ("b", 0),
        ("b", 1),
        ("a", 1),  # repeat 0: order rotates per chunk
        ("b", 0),
        ("a", 0),
        ("a", 1),
        ("b", 1),
    ]  # repeat 1
    assert [(r["variant"], r["repeat"]) for r in rows] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]


def test_per_repeat_ratio_pairs_each_repeat_with_its_reference():
    frame = pd.DataFrame(
        {
            "model": ["m"] * 4,
            "variant": ["ref", "x", "ref", "x"],
            "repeat": [0, 0, 1, 1],
            "seconds": [2.0, 3.0, 4.0, 4.0],
        }
    )
    ratio = bench.per_repeat_ratio(frame, "ref")
    assert ratio.tolist() == [1.0, 1.5, 1.0, 1.0]


def test_measure_in_subprocess_reports_the_child_not_the_parent(tmp_path):
    if not bench.RssSampler().available:
        pytest.skip("needs /proc/self/status")
    module = tmp_path / "child_mod.py"
    module.write_text(
        textwrap.dedent("""
        import numpy as np
        from probekit import bench

        def child(mb):
            bench.mark_baseline()
            block = np.ones(mb * 2**20 // 8)  # touched, so resident
            return {"total": float(block.sum())}
    """)
    )
    parent_block = np.ones(300 * 2**20 // 8)  # the parent's high-water mark must not leak into the child's
    out = bench.measure_in_subprocess(module, "child", {"mb": 120}, threads=1, timeout=300)
    assert out["total"] == 120 * 2**20 // 8
    assert out["run_peak_rss_mb"] - out["baseline_rss_mb"] > 60
    assert out["peak_rss_mb"] < out["baseline_rss_mb"] + 250  # not the parent's 300 MB + its own
    assert "fresh process" in out["rss_method"]
    del parent_block


def test_missing_benchmark_module_is_reported_not_raised(tmp_path):
    frame, note, table = bench.run_benchmark(
        "ablation", bench.BenchContext(quick=True, out=tmp_path), tmp_path
    )
    assert frame.empty and table is None
    assert "Not available yet" in note


def test_failing_benchmark_module_is_reported_not_raised(tmp_path):
    (tmp_path / "bench_ablation.py").write_text("def run(quick):\n    raise RuntimeError('boom')\n")
    frame, note, _ = bench.run_benchmark("ablation", bench.BenchContext(quick=True, out=tmp_path), tmp_path)
    assert frame.empty
    assert "boom" in note and "Not available" in note


def test_cli_exits_non_zero_when_a_benchmark_fails(tmp_path, capsys):
    from probekit.cli import main

    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_capture.py").write_text("def run(quick):\n    raise RuntimeError('boom')\n")
    (folder / "bench_memory.py").write_text(
        "import pandas as pd\ndef run(quick):\n    return pd.DataFrame({'variant': ['x'], 'seconds': [1.0]})\n"
    )
    out = tmp_path / "out"
    code = main(
        ["bench", "--quick", "--only", "capture,memory", "--out", str(out), "--benchmarks-dir", str(folder)]
    )
    assert code == 1
    assert "1 benchmark(s) failed: capture" in capsys.readouterr().err
    frame = pd.read_csv(out / "benchmarks.csv")
    assert frame.benchmark.tolist() == ["memory"] and frame.seconds.tolist() == [1.0]
    assert "boom" in (out / "benchmarks.md").read_text()


def test_e2e_skips_without_manifest(tmp_path):
    ctx = bench.BenchContext(quick=True, out=tmp_path, manifest=tmp_path / "nope.json")
    frame, note, _ = bench.run_benchmark("e2e", ctx, bench.default_benchmarks_dir())
    assert frame.empty
    assert "Skipped" in note


@pytest.mark.slow
def test_quick_bench_writes_well_formed_outputs(tmp_path):
    from probekit.cli import main

    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "name": "seed_claims",
                "git_commit": "0" * 40,
                "machine": {"cpu_count": 2, "torch_threads": 2},
                "timings_s": {
                    "check_attention/minilm-l6": 3.0,
                    "claims/minilm-l6__bank": 5.0,
                    "heads/minilm-l6__svo": None,
                    "total": 10.0,
                },
            }
        )
    )
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--out", str(out), "--manifest", str(manifest)]) == 0

    frame = pd.read_csv(out / "benchmarks.csv")
    for col in bench.COLUMNS:
        assert col in frame.columns
    assert {"capture", "memory", "probes", "e2e"} <= set(frame.benchmark)
    assert frame["threads"].dropna().eq(1).all()

    cap = frame[frame.benchmark == "capture"]
    assert {"hf-forward", "bridge-forward", "tl-cache-all", "tl-cache-filter", "probekit-capture"} <= set(
        cap.variant
    )
    assert set(cap.model) == {"tiny-llama", "tiny-bert"}
    assert (cap.seconds > 0).all() and np.isfinite(cap.tokens_per_s).all() and (cap.n_tokens > 0).all()
    assert np.allclose(cap[cap.variant == "hf-forward"].ratio_vs_floor, 1.0)

    mem = frame[frame.benchmark == "memory"]
    assert len(mem) >= 2 and mem.n_sentences.nunique() >= 2
    assert (mem.run_peak_rss_mb >= mem.baseline_rss_mb * 0.5).all() and (mem.output_mb > 0).all()

    probes = frame[frame.benchmark == "probes"]
    assert set(probes.variant) == {"sklearn-logreg", "probekit-ridge"}
    assert probes.accuracy.between(0, 1).all()
    assert probes.groupby("variant").layer.nunique().eq(probes.layer.nunique()).all()

    e2e = frame[frame.benchmark == "e2e"]
    assert math.isclose(e2e.seconds.sum(), 8.0) and e2e.seconds.isna().sum() == 1  # null = time not recorded

    md = (out / "benchmarks.md").read_text()
    for heading in (
        "## Machine",
        "## 1. Capture",
        "## 2. Memory",
        "## 3. Head-ablation",
        "## 4. Probe sweep",
        "## 5. End to end",
    ):
        assert heading in md
    assert "torch threads: **1**" in md
    assert "| model | variant |" in md  # the capture table
    assert (out / "profiles" / "capture_tiny-llama_cprofile.txt").exists()

    # the report can be rebuilt from the CSV and the files beside it, without rerunning anything
    (out / "benchmarks.md").unlink()
    assert main(["bench", "--render-only", "--out", str(out), "--manifest", str(manifest)]) == 0
    rebuilt = (out / "benchmarks.md").read_text()
    assert (
        "torch threads: **1**" in rebuilt
        and "| model | variant |" in rebuilt
        and "## 4. Probe sweep" in rebuilt
    )
