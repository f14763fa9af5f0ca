"""`probekit bench`: the harness and the --quick run produce well-formed outputs.

Nothing here times anything: the benchmarks' numbers are checked for shape and sanity only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from probekit import bench

#: a benchmark module whose run() returns one row
ONE_ROW_BENCHMARK = (
    "import pandas as pd\ndef run(quick):\n    return pd.DataFrame({'variant': ['x'], 'seconds': [1.0]})\n"
)


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
    (folder / "bench_memory.py").write_text(ONE_ROW_BENCHMARK)
    out = tmp_path / "out"
    code = main(
        ["bench", "--quick", "--only", "capture,memory", "--out", str(out), "--benchmarks-dir", str(folder)]
    )
    assert code == 1
    assert "1 benchmark(s) failed: capture" in capsys.readouterr().err
    frame = pd.read_csv(out / "benchmarks.csv")
    assert frame.benchmark.tolist() == ["memory"] and frame.seconds.tolist() == [1.0]
    assert "boom" in (out / "benchmarks.md").read_text()


def _fake_benchmarks(folder, broken: str | None = None, rows: str = "") -> None:
    """One module per benchmark name, each returning two rows with timings (``broken`` returns ``rows``)."""
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(bench.BENCHMARKS):
        body = (
            rows
            if name == broken
            else (
                f"{{'variant': ['a', 'b'], 'model': 'tiny', 'n_tokens': [10, 20], "
                f"'seconds': [{i + 1}.5, 0.25], 'tokens_per_s': [4.0, 80.0], "
                "'peak_rss_mb': [100.0, float('nan')]}"
            )
        )
        (folder / f"bench_{name}.py").write_text(
            f"import pandas as pd\ndef run(quick):\n    return pd.DataFrame({body})\n"
        )


def _section_tables(md: str) -> dict[str, list[list[str]]]:
    """The first Markdown table of each ``## `` section, as rows of cells (header row first)."""
    out = {}
    for section in re.split(r"\n(?=## )", md):
        rows = [line for line in section.splitlines() if line.startswith("| ")]
        rows = [r for r in rows if not set(r) <= set("|-: ")]
        out[section.splitlines()[0]] = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    return out


def test_every_section_reports_finite_positive_numbers(tmp_path):
    from probekit.cli import main

    folder = tmp_path / "benchmarks"
    _fake_benchmarks(folder)
    out = tmp_path / "out"
    assert (
        main(["bench", "--quick", "--repeats", "2", "--out", str(out), "--benchmarks-dir", str(folder)]) == 0
    )
    provenance = json.loads((out / "manifest.json").read_text())["provenance"]
    assert (
        provenance["command"] == f"probekit bench --quick --repeats 2 --out {out}"
    )  # every flag that matters
    frame = pd.read_csv(out / "benchmarks.csv")
    assert list(frame.columns[: len(bench.COLUMNS)]) == list(bench.COLUMNS)
    assert list(dict.fromkeys(frame.benchmark)) == list(bench.BENCHMARKS)
    for name, sub in frame.groupby("benchmark"):
        assert len(sub) == 2, name
        assert np.isfinite(sub.seconds).all() and (sub.seconds > 0).all(), name
        assert bench.check_rows(sub) is None, name
    assert frame.threads.eq(1).all()
    tables = _section_tables((out / "benchmarks.md").read_text())
    for name in bench.BENCHMARKS:
        (heading,) = [h for h in tables if h == f"## {bench.TITLES[name]}"]
        header, *rows = tables[heading]
        assert rows, heading  # a table with the benchmark's rows, not a "Not available" note
        times = [header.index(c) for c in ("median_s", "min_s", "max_s")]
        assert all(np.isfinite(float(r[c])) and float(r[c]) > 0 for r in rows for c in times), heading


@pytest.mark.parametrize(
    "rows, problem",
    [
        ("{'variant': ['x'], 'seconds': [float('nan')]}", "no row gives seconds"),
        ("{'variant': ['x', 'y'], 'seconds': [1.0, -1.0]}", "seconds is not finite and > 0 in 1 of 2"),
        ("{'variant': ['x'], 'seconds': [0.0]}", "seconds is not finite and > 0"),
        (
            "{'variant': ['x'], 'seconds': [1.0], 'tokens_per_s': [float('inf')]}",
            "tokens_per_s is not finite",
        ),
        ("{'variant': ['x'], 'seconds': ['fast']}", "seconds is not finite"),
        ("{'variant': ['x']}", "no row gives seconds"),
        ("{'variant': []}", "no row gives seconds"),
    ],
)
def test_a_benchmark_with_invalid_numbers_fails_the_command(tmp_path, capsys, rows, problem):
    from probekit.cli import main

    folder = tmp_path / "benchmarks"
    _fake_benchmarks(folder, broken="probes", rows=rows)
    out = tmp_path / "out"
    code = main(["bench", "--quick", "--out", str(out), "--benchmarks-dir", str(folder)])
    assert code == 1
    assert "1 benchmark(s) failed: probes" in capsys.readouterr().err
    frame = pd.read_csv(out / "benchmarks.csv")
    assert "probes" not in set(frame.benchmark) and len(frame) == 2 * (len(bench.BENCHMARKS) - 1)
    md = (out / "benchmarks.md").read_text()
    assert problem in md and "Not available" in md


def test_e2e_skips_without_manifest(tmp_path):
    ctx = bench.BenchContext(quick=True, out=tmp_path, manifest=tmp_path / "nope.json")
    frame, note, _ = bench.run_benchmark("e2e", ctx, bench.default_benchmarks_dir())
    assert frame.empty
    assert "Skipped" in note


def test_every_bench_name_the_benchmarks_use_is_exported():
    used = set()
    for path in sorted(bench.default_benchmarks_dir().glob("bench_*.py")):
        used |= set(re.findall(r"\bbench\.([A-Za-z_]\w*)", path.read_text()))
    assert used, "no benchmark module uses probekit.bench"
    assert used <= set(bench.__all__), sorted(used - set(bench.__all__))
    assert all(hasattr(bench, name) for name in bench.__all__)


def test_mark_baseline_marks_the_innermost_measurement_only():
    bench.mark_baseline()  # outside a measurement: nothing to mark, no error
    with bench.sampling() as outer:
        with bench.sampling() as inner:
            bench.mark_baseline()
        assert inner.baseline_rss_mb is not None and outer.baseline_rss_mb is None
        bench.mark_baseline()
    assert outer.baseline_rss_mb is not None
    out = bench.measure_in_process(lambda: {"x": 1})  # a new measurement starts without a baseline
    assert out["x"] == 1 and out["baseline_rss_mb"] is None and out["run_peak_rss_mb"] is None
    assert out["peak_rss_mb"] > 0 and out["rss_method"].startswith("in-process")


def test_child_entry_point_prints_usage_on_bad_arguments(capsys):
    from probekit.bench.__main__ import main

    assert main(["nonsense"]) == 2
    assert "python -m probekit.bench child" in capsys.readouterr().err


def test_a_run_renders_its_notes_from_the_rows_it_wrote(tmp_path):
    """The report a run writes equals `render_only`'s from the CSV, even where rounding the CSV's
    six significant digits then the note's three differs from rounding the full value once."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_memory.py").write_text(
        "import pandas as pd\n"
        "def run(quick):\n"
        "    return pd.DataFrame({'variant': ['x'], 'seconds': [0.82949999]})\n"
        "def render(frame, ctx):\n"
        "    return None, f'ratio {frame.seconds.iloc[0]:.3g}'\n"
    )
    out = tmp_path / "out"
    bench.run_all(
        bench.BenchContext(quick=True, out=out, log=lambda msg: None), only=["memory"], folder=folder
    )
    written = (out / "benchmarks.md").read_text()
    assert "ratio 0.83" in written  # 0.82949999 -> "0.8295" in the CSV -> "0.83"; rounded once: "0.829"
    assert bench.render_only(bench.BenchContext(out=out), folder).read_text() == written


def test_building_the_command_line_does_not_import_the_bench_harness():
    """A run's manifest hashes every probekit module imported; `probekit run` builds every subcommand's
    parser, so a harness import there would make each run folder stale whenever the harness changes."""
    import subprocess
    import sys

    code = (
        "import sys; from probekit.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('probekit.bench')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_render_only_reads_the_run_settings_without_changing_the_context(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_memory.py").write_text(ONE_ROW_BENCHMARK)
    out = tmp_path / "out"
    bench.run_all(
        bench.BenchContext(quick=True, out=out, log=lambda msg: None), only=["memory"], folder=folder
    )
    written = (out / "benchmarks.md").read_text()
    ctx = bench.BenchContext(quick=False, out=out, threads=3)
    assert bench.render_only(ctx, folder).read_text() == written  # mode and threads from run.json
    assert (ctx.quick, ctx.threads) == (False, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.quick = True  # type: ignore[misc]


def test_an_old_report_is_read_back_into_its_wall_times_and_notes(tmp_path):
    frame = pd.DataFrame(
        {
            "benchmark": ["memory", "probes"],
            "variant": ["x", "y"],
            "seconds": [1.0, 2.0],
            "tokens_per_s": [5.0, 6.0],
        }
    )
    text = bench.render_report(
        frame,
        {"memory": "Memory note.", "probes": "Probe note."},
        {"verbatim": "- 2 CPU(s)"},
        bench.BenchContext(quick=True),
        {"memory": 90.0, "probes": 30.0},
    )
    (tmp_path / "benchmarks.md").write_text(text)
    meta = bench.meta_from_report(tmp_path / "benchmarks.md")
    assert meta["machine"] == {"verbatim": "- 2 CPU(s)"}
    assert meta["wall_s"] == {"memory": 90.0, "probes": 30.0}
    assert meta["benchmarks"] == ["memory", "probes"]
    assert meta["notes"]["probes"].endswith("Probe note.") and "| y |" in meta["notes"]["probes"]


@pytest.mark.slow
def test_quick_bench_writes_well_formed_outputs(tmp_path):
    from probekit.cli import main

    manifest = tmp_path / "manifest.json"
    commit = "0123abcd" * 5  # (a real hash has letters; an all-digit one reads back as a number)
    manifest.write_text(
        json.dumps(
            {
                "name": "seed_claims",
                "git_commit": commit,
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
    for name, sub in frame.groupby("benchmark"):  # every row: finite, positive timings where given
        assert bench.check_rows(sub) is None, (name, bench.check_rows(sub))
    assert frame["threads"].dropna().eq(1).all()

    cap = frame[frame.benchmark == "capture"]
    assert {
        "hf-forward",
        "bridge-forward",
        "tl-cache-all",
        "tl-cache-filter",
        "probekit-capture",
        "capture-serial",
        "capture-bridge",
    } <= set(cap.variant)
    # capture through plain HF modules stores the same bytes as through the bridge, on both architectures
    assert cap.groupby("model").bridge_capture_identical.first().astype(bool).all()
    assert set(cap.model) == {"tiny-llama", "tiny-bert"}
    assert (cap.seconds > 0).all() and np.isfinite(cap.tokens_per_s).all() and (cap.n_tokens > 0).all()
    assert np.allclose(cap[cap.variant == "hf-forward"].ratio_vs_floor, 1.0)

    mem = frame[frame.benchmark == "memory"]
    assert len(mem) >= 2 and mem.n_sentences.nunique() >= 2
    assert (mem.run_peak_rss_mb >= mem.baseline_rss_mb * 0.5).all() and (mem.output_mb > 0).all()
    for col in ("seconds", "peak_rss_mb", "baseline_rss_mb", "run_peak_rss_mb", "n_tokens", "tokens_per_s"):
        assert (mem[col] > 0).all(), col

    abl = frame[frame.benchmark == "ablation"]
    assert set(abl.variant) == {"naive", "fast", "fast-unpacked", "tl-exact", "fast-exact", "attribution"}
    assert (abl.seconds > 0).all() and (abl.heads > 0).all() and (abl.n_items > 0).all()
    sweep, patching = abl[abl.workload == "sweep"], abl[abl.workload == "patching"]
    assert set(sweep.variant) == {"naive", "fast", "fast-unpacked"} and set(patching.variant) == {
        "tl-exact",
        "fast-exact",
        "attribution",
    }
    assert np.isfinite(sweep.speedup_vs_naive).all() and (sweep.speedup_vs_naive > 0).all()
    assert np.allclose(sweep[sweep.variant == "naive"].speedup_vs_naive, 1.0)
    assert np.isfinite(patching.speedup_vs_tl).all() and (patching.speedup_vs_tl > 0).all()
    assert np.allclose(patching[patching.variant == "tl-exact"].speedup_vs_tl, 1.0)
    assert (sweep.max_abs_diff < 1e-3).all()  # the fast engine computes what the naive loop computes
    assert (sweep[sweep.variant == "fast-unpacked"].max_abs_diff == 0).all()  # bit for bit without packing
    assert (sweep.gflop > 0).all() and (sweep[sweep.variant == "fast"].work_ratio_vs_naive > 1).all()
    assert (patching[patching.variant == "fast-exact"].max_abs_diff < 1e-3).all()
    attribution = patching[patching.variant == "attribution"]
    assert attribution.spearman.between(-1, 1).all() and attribution.topk_overlap.between(0, 1).all()

    probes = frame[frame.benchmark == "probes"]
    assert set(probes.variant) == {"sklearn-logreg", "probekit-ridge"}
    assert probes.accuracy.between(0, 1).all() and probes.accuracy.notna().all()
    assert (probes.seconds > 0).all() and (probes.n_train > 0).all() and (probes.n_test > 0).all()
    assert probes.groupby("variant").layer.nunique().eq(probes.layer.nunique()).all()

    e2e = frame[frame.benchmark == "e2e"]
    assert math.isclose(e2e.seconds.sum(), 8.0) and e2e.seconds.isna().sum() == 1  # null = time not recorded

    md = (out / "benchmarks.md").read_text()
    sections = re.split(r"\n(?=## )", md)
    for heading in (
        "## Machine",
        "## 1. Capture",
        "## 2. Memory",
        "## 3. Head-ablation",
        "## 4. Probe sweep",
        "## 5. End to end",
    ):
        section = next((s for s in sections if s.startswith(heading)), None)
        assert section is not None, heading
        if heading != "## Machine":
            assert "\n| " in section and "Not available" not in section, heading  # each benchmark has a table
    assert "torch threads: **1**" in md
    assert "| model | variant |" in md  # the capture table
    assert (out / "profiles" / "capture_tiny-llama_cprofile.txt").exists()
    provenance = json.loads((out / "manifest.json").read_text())["provenance"]
    assert provenance["command"] == f"probekit bench --quick --manifest {manifest} --out {out}"
    assert {"benchmarks.csv", "benchmarks.md", "run.json"} <= set(provenance["files"])

    # the report can be rebuilt from the CSV and the files beside it, without rerunning anything
    (out / "benchmarks.md").unlink()
    assert main(["bench", "--render-only", "--out", str(out), "--manifest", str(manifest)]) == 0
    rebuilt = (out / "benchmarks.md").read_text()
    assert (
        "torch threads: **1**" in rebuilt
        and "| model | variant |" in rebuilt
        and "## 4. Probe sweep" in rebuilt
    )
    assert rebuilt == md


def test_capture_streams_is_the_probe_benchmarks_capture(tiny_llama, tmp_path):
    # bench_probes and bench_trees share this one capture: every stream layer, resid_pre and resid_post,
    # no attention (the full runs' cache entry, so a rerun of either reuses it)
    sentences, _ = bench.bench_sentences(3, bench.BenchContext(data="template:svo_adj?n=3"))
    cap = bench.capture_streams(tiny_llama, sentences, tmp_path)
    settings = cap.meta["settings"]
    assert settings["layers"] == list(range(tiny_llama.n_layers)) and settings["attention"] is False
    assert sorted(settings["resid"]) == ["resid_post", "resid_pre"]
    assert cap.stream_layers == list(range(tiny_llama.n_layers + 1))
    assert cap.path.parent == tmp_path
    again = bench.capture_streams(tiny_llama, sentences, tmp_path)
    assert again.path == cap.path  # cached: the second call reads the first one's entry


def test_throughput_notes_break_down_two_workers_vs_one():
    """The throughput report splits each Ray run into start-up + model loads (``ray-load-k``) and the rest,
    from the rows alone; without the load rows it leaves the breakdown out rather than guessing."""
    from benchmarks import bench_throughput

    rows = [
        ("local", 0, 20.0, 15.0, 1.0, 21.0),
        ("ray-1", 1, 30.0, math.nan, math.nan, math.nan),
        ("ray-2", 2, 20.0, math.nan, math.nan, math.nan),
        ("ray-load-1", 1, 8.0, math.nan, math.nan, math.nan),
        ("ray-load-2", 2, 10.0, math.nan, math.nan, math.nan),
    ]
    frame = pd.DataFrame(
        [
            {"benchmark": "throughput", "variant": v, "workers": w, "seconds": s, "shard_s": sh,
             "stats_s": st, "cpu_s": c, "n_sentences": 256, "model": "m", "sentences_per_s": 256 / s}
            for v, w, s, sh, st, c in rows
        ]
    )  # fmt: skip
    _, notes = bench_throughput.render(frame, bench.BenchContext(quick=True))
    assert "2 workers vs 1: 1.50x" in notes
    assert "8.0 s for one worker and 10.0 s for two at once" in notes
    assert "took 22.0 s on one worker and 10.0 s on two, 2.20x" in notes  # 30-8 and 20-10
    assert "The loads are 50% of the 2-worker run" in notes
    no_loads = frame[~frame.variant.str.startswith("ray-load")]
    _, without = bench_throughput.render(no_loads, bench.BenchContext())
    assert "Where 2 workers vs 1 goes" not in without and "2 workers vs 1: 1.50x" in without

    # three repetitions: ratios per repetition, then their median and range; the table gives medians
    slower = frame.assign(repeat=1, seconds=frame.seconds * [1, 1, 1.5, 1, 1])  # ray-2 30 s: 1.00x
    faster = frame.assign(repeat=2, seconds=frame.seconds * [1, 1, 0.75, 1, 1])  # ray-2 15 s: 2.00x
    table, notes = bench_throughput.render(
        pd.concat([frame.assign(repeat=0), slower, faster]), bench.BenchContext()
    )
    assert "2 workers vs 1: median 1.50x (per repetition 1.00-2.00x)" in notes
    assert "on two, median 2.20x (per repetition 1.10-4.40x)" in notes  # 22/10, 22/20, 22/5
    ray2 = table.set_index("variant").loc["ray-2"]
    assert (ray2.repeats, ray2.median_s, ray2.min_s, ray2.max_s) == (3, 20.0, 15.0, 30.0)


def test_e2e_reports_the_cores_each_stage_kept_busy(tmp_path):
    """CPU seconds over wall seconds per stage, from the manifest's ``cpu_s``; a stage without one is NaN."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "name": "seed_claims",
                "git_commit": "0123abcd" * 5,
                "machine": {"cpu_count": 2, "torch_threads": 2},
                "timings_s": {"probes/m__ewt": 90.0, "heads/m__svo": 10.0, "claims/m": 1.0, "total": 102.0},
                "cpu_s": {"probes/m__ewt": 171.0, "heads/m__svo": 10.0, "total": 190.0},
            }
        )
    )
    ctx = bench.BenchContext(quick=True, out=tmp_path, manifest=manifest)
    _, note, table = bench.run_benchmark("e2e", ctx, bench.default_benchmarks_dir())
    cores = dict(zip(table.stage, table.cores_busy, strict=True))
    assert math.isclose(cores["probes/m__ewt"], 1.9) and math.isclose(cores["heads/m__svo"], 1.0)
    assert math.isnan(cores["claims/m"])
    assert math.isclose(cores["sum of recorded stages"], 181.0 / 101.0)
    assert "kept 1.81 cores busy on average, of 2" in note and "`probes/m__ewt` 1.90" in note
    assert "`heads/m__svo`" not in note  # under a tenth of the recorded time


def _memory_module():
    return bench.load_module(bench.default_benchmarks_dir() / "bench_memory.py")


def test_memory_child_with_a_fixed_mmap_threshold(tmp_path):
    """``capture-mmap-1mb`` captures in a fresh process after fixing glibc's threshold (mallopt succeeds);
    an unknown variant is refused."""
    memory = _memory_module()
    kwargs = {"model": "tiny-bert", "n": 20, "variant": "capture-mmap-1mb"}
    out = bench.measure_in_subprocess(memory.__file__, "child", kwargs, threads=1, timeout=300)
    assert out["n_tokens"] > 20 and out["n_words"] > 20 and out["run_peak_anon_mb"] >= out["baseline_anon_mb"]
    with pytest.raises(ValueError, match="unknown variant"):
        memory.child("tiny-bert", 4, variant="capture-mmap")


def test_memory_notes_compare_the_allocator_settings():
    memory = _memory_module()
    rows = [
        {"variant": v, "n_sentences": n, "capture_anon_mb": mb}
        for v, n, mb in [
            ("probekit-capture", 100, 70.0),
            ("probekit-capture", 100, 90.0),
            ("probekit-capture", 10000, 100.0),
            ("capture-mmap-1mb", 100, 60.0),
            ("capture-mmap-1mb", 10000, 64.0),
            ("capture-mmap-1mb", 10000, 66.0),
        ]
    ]
    text = memory._allocator_verdict(pd.DataFrame(rows))
    assert "80 → 100 MB (+20) by default and 60 → 65 MB (+5) with the threshold fixed" in text
    assert "differ by up to 20 and 2 MB" in text
    assert memory._allocator_verdict(pd.DataFrame(rows[:3])) == "(Not measured in this run.)"
