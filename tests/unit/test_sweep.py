"""Sweeps: grid expansion and validation, retries, failure reports and resume (with a fake run, fast),
and a 2 × 2 sweep of the tiny models on Ray whose tables must be byte-identical to the local backend's."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import probekit.experiment.sweep_backends as backends
from probekit.cli import main
from probekit.errors import ProbekitError
from probekit.experiment.sweep import is_finished, load_sweep, run_sweep
from probekit.report import write_table

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "name": "unit-sweep",
    "seed": 0,
    "models": ["tiny-llama"],
    "data": {"svo": "template:svo_adj?n=20"},
    "analyses": {
        "check_attention": {},
        "probes": [
            {"data": "svo", "tasks": ["upos"], "layers": [0, 2], "seeds": [0], "random_baseline": False}
        ],
    },
}
GRID = {"models": [["tiny-llama"], ["tiny-bert"]], "analyses.probes.0.seeds": [[0], [1]]}


def _write_sweep(
    folder: Path, grid: dict, base: dict | str | None = None, name: str = "unit.sweep.yaml", **extra
) -> Path:
    path = folder / name
    path.write_text(
        yaml.safe_dump(
            {"out": "sweep-out", "base": BASE if base is None else base, "grid": grid, **extra},
            sort_keys=False,
        )
    )
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".csv", ".md")
    }


# --------------------------------------------------------------------------------------------------
# the sweep file (no models)


def test_grid_expands_in_file_order_with_deterministic_names(tmp_path):
    grid = {
        "models": [["tiny-llama"], ["tiny-bert", "tiny-llama"]],
        "seed": [0, 1],
        "analyses.probes.0.data": ["svo", "template:svo_adj?n=20"],
    }
    sweep = load_sweep(_write_sweep(tmp_path, grid))
    assert sweep.name == "unit" and sweep.out == (tmp_path / "sweep-out").resolve()
    assert len(sweep.runs) == 8
    first, last = sweep.runs[0], sweep.runs[-1]
    assert first.name == "models=tiny-llama,seed=0,analyses.probes.0.data=svo"
    assert last.name == "models=tiny-bert+tiny-llama,seed=1,analyses.probes.0.data=template:svo_adj?n=20"
    assert (
        last.folder
        == sweep.out
        / "runs"
        / "models=tiny-bert+tiny-llama,seed=1,analyses.probes.0.data=template_svo_adj_n=20"
    )
    assert last.config.models == ["tiny-bert", "tiny-llama"] and last.config.seed == 1
    assert last.config.analyses.probes[0].data == "template:svo_adj?n=20"
    assert last.model_key == ("tiny-bert", "tiny-llama")
    assert [r.name for r in load_sweep(tmp_path / "unit.sweep.yaml").runs] == [r.name for r in sweep.runs]


def test_base_path_and_data_paths_resolve_against_their_files(tmp_path):
    (tmp_path / "configs").mkdir()
    base = dict(BASE, out="ignored", data={"svo": "template:svo_adj?n=30", "mine": "text:corpus.txt"})
    (tmp_path / "configs" / "exp.yaml").write_text(yaml.safe_dump(base))
    sweep = load_sweep(
        _write_sweep(tmp_path, {"seed": [3]}, base="configs/exp.yaml"), out=tmp_path / "elsewhere"
    )
    cfg = sweep.runs[0].config
    assert cfg.data["mine"] == f"text:{(tmp_path / 'configs' / 'corpus.txt').resolve()}"
    assert cfg.out == str((tmp_path / "elsewhere" / "runs" / "seed=3").resolve()) and cfg.seed == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"gird": {"seed": [0]}}, r"unknown sweep key 'gird'[\s\S]*did you mean 'grid'"),
        ({"grid": {"seed": 0}}, r"sweep key 'grid.seed'.*valid list"),
        ({"grid": {"seed": []}}, r"sweep key 'grid.seed'.*at least 1"),
        ({"grid": {"sed": [0]}}, r"unknown config key 'sed'[\s\S]*did you mean 'seed'"),
        ({"grid": {"out": ["a"]}}, r"cannot set `out`"),
        (
            {"grid": {"analyses.probes.3.data": ["svo"]}},
            r"'analyses.probes' is a list of 1 items, so '3' must be an index",
        ),
        ({"grid": {"seed.x": [0]}}, r"'seed' is a value, not a section"),
        ({"grid": {"seed": ["zero"]}}, r"config key 'seed'[\s\S]*run seed=zero"),
        ({"base": "missing.yaml"}, r"missing.yaml does not exist"),
    ],
)
def test_bad_sweep_files_are_user_errors(tmp_path, change, message):
    raw = {"out": "o", "base": BASE, "grid": {"seed": [0]}} | change
    if "gird" in change:
        raw.pop("grid")
    path = tmp_path / "bad.sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProbekitError, match=message):
        load_sweep(path)


def test_shipped_sweep_files_validate():
    files = sorted((REPO / "experiments").glob("*.sweep.yaml"))
    assert files
    for path in files:
        assert load_sweep(path).runs


def test_cli_dry_run_and_backend_options(tmp_path, capsys):
    path = _write_sweep(tmp_path, GRID)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "to run    models=tiny-bert,analyses.probes.0.seeds=1" in out and "4 runs" in out
    assert main(["sweep", str(path), "--gpus-per-task", "0.5"]) == 2  # local backend: a user error
    assert "apply to the ray backend" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# retries, failure reports and resume, with a fake run (the scheduler is the same for both backends)


def test_retries_failure_reports_and_resume(tmp_path, monkeypatch):
    calls = []

    def fake_run(cfg, out=None, progress=True, load_model=None):
        out = Path(out)
        calls.append(cfg.seed)
        if cfg.seed == 1 and calls.count(1) == 1:
            raise RuntimeError("flaky worker")  # fails once, then works
        if cfg.seed == 2:
            raise ProbekitError("bad input", fix="fix it")  # a user error: never retried
        if cfg.seed == 3:
            raise RuntimeError("always broken")
        write_table(
            pd.DataFrame({"seed": [7], "value": [cfg.seed / 3]}), out / "fake" / "stage" / "numbers.csv"
        )
        (out / "manifest.json").write_text("{}\n")
        (out / "REPORT.md").write_text("# fake\n")
        return out

    monkeypatch.setattr(backends, "run_experiment", fake_run)
    path = _write_sweep(tmp_path, {"seed": [0, 1, 2, 3]})
    result = run_sweep(path, max_retries=1, progress=False)
    status = {r.name: (r.status, r.attempts) for r in result.results}
    assert status == {
        "seed=0": ("ok", 1),
        "seed=1": ("ok", 2),
        "seed=2": ("failed", 1),
        "seed=3": ("failed", 2),
    }
    assert sorted(calls) == [0, 1, 1, 2, 3, 3]

    out = result.sweep.out
    index = pd.read_csv(out / "sweep.csv")
    assert list(index.columns) == ["run", "seed", "status", "error", "folder"]
    assert index.error[2] == "ProbekitError: bad input what to do: fix it"
    assert index.error[3] == "RuntimeError: always broken"
    assert "always broken" in (out / "runs" / "seed=3" / "ERROR.txt").read_text()
    numbers = pd.read_csv(
        out / "tables" / "fake.numbers.csv"
    )  # only finished runs; `seed` clashes -> grid.seed
    assert list(numbers.columns) == ["run", "grid.seed", "stage", "seed", "value"]
    assert numbers.run.tolist() == ["seed=0", "seed=1"] and numbers["grid.seed"].tolist() == [0, 1]
    assert "| seed=3 | 3 | failed | RuntimeError: always broken |" in (out / "sweep.md").read_text()

    calls.clear()  # a rerun retries only the failed runs and keeps the finished ones
    table = (out / "sweep.csv").read_bytes()
    again = run_sweep(path, max_retries=1, progress=False)
    assert sorted(calls) == [2, 3, 3] and again.reused == ["seed=0", "seed=1"]
    assert (out / "sweep.csv").read_bytes() == table


# --------------------------------------------------------------------------------------------------
# Ray: one session for the module


@pytest.fixture(scope="module")
def ray_session():
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install 'probekit-mi[ray]'), so the Ray backend is not tested")
    temp = tempfile.mkdtemp(prefix="pkray-")  # short: Ray's socket paths must stay under 107 characters
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        object_store_memory=80 * 1024**2,
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def swept(ray_session, tmp_path_factory, tiny_llama):
    """The same 2 × 2 sweep on the local backend and on Ray (one torch thread per run on both). Each
    backend gets a capture cache of its own, so Ray computes its activations instead of reading the
    local run's; the model files are shared (``tiny_llama`` makes sure they exist)."""
    from probekit.models import cache_root

    root = tmp_path_factory.mktemp("sweep")
    path = _write_sweep(root, GRID)
    caches = {}
    for backend in ("local", "ray"):
        caches[backend] = root / f"cache-{backend}"
        caches[backend].mkdir()
        (caches[backend] / "models").symlink_to(cache_root() / "models", target_is_directory=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PROBEKIT_CACHE", str(caches["local"]))
        local = run_sweep(path, out=root / "local", cpus_per_task=1, progress=False)
        env.setenv("PROBEKIT_CACHE", str(caches["ray"]))  # the Ray actors get it from the driver
        ray = run_sweep(path, backend="ray", out=root / "ray", progress=False)
    for cache in caches.values():
        assert len(list((cache / "capture").iterdir())) == 2  # one capture per model, made here
    return path, local, ray


def test_ray_sweep_matches_local_byte_for_byte(swept):
    _, local, ray = swept
    assert [r.status for r in ray.results] == ["ok"] * 4 and not local.failed
    local_files, ray_files = _files(local.sweep.out), _files(ray.sweep.out)
    assert set(local_files) == set(ray_files)
    assert {
        "sweep.csv",
        "sweep.md",
        "tables/check_attention.check_attention.csv",
        "tables/probes.probes.csv",
        "tables/verdicts.csv",
    } <= set(ray_files)
    different = [name for name in ray_files if ray_files[name] != local_files[name]]
    assert different == []
    probes = pd.read_csv(ray.sweep.out / "tables" / "probes.probes.csv")
    assert probes.groupby("run").size().tolist() == [2, 2, 2, 2]
    # one actor per model, each loading its weights once for its two runs
    assert ray.model_loads == {
        "tiny-llama": {"requests": 2, "loads": 1},
        "tiny-bert": {"requests": 2, "loads": 1},
    }


def test_rerun_does_no_new_work(swept):
    path, _, ray = swept
    out = ray.sweep.out
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    table = (out / "sweep.csv").read_bytes()
    start = time.perf_counter()
    again = run_sweep(path, backend="ray", out=out, progress=False)
    assert again.ran == [] and len(again.reused) == 4 and again.model_loads == {}
    assert time.perf_counter() - start < 5
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before
    assert (out / "sweep.csv").read_bytes() == table
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["reused"] is True


def test_failed_task_is_reported_and_finished_runs_are_kept(swept, tmp_path):
    _, _, ray = swept
    out = tmp_path / "with-failure"
    shutil.copytree(ray.sweep.out, out)  # the finished runs; a moved sweep folder still counts as finished
    path = _write_sweep(tmp_path, {**GRID, "models": [*GRID["models"], ["no-such-model"]]})
    result = run_sweep(path, backend="ray", out=out, max_retries=2, progress=False)
    assert len(result.reused) == 4 and len(result.ran) == 2
    failed = [r for r in result.results if r.status == "failed"]
    assert (
        [r.name for r in failed]
        == result.failed
        == [
            "models=no-such-model,analyses.probes.0.seeds=0",
            "models=no-such-model,analyses.probes.0.seeds=1",
        ]
    )
    assert all(r.attempts == 1 and "unknown model 'no-such-model'" in r.error for r in failed)  # user error
    index = pd.read_csv(out / "sweep.csv")
    assert index.status.tolist() == ["ok"] * 4 + ["failed"] * 2
    assert all(is_finished(run) for run in result.sweep.runs[:4])
    assert (out / "runs" / "models=no-such-model,analyses.probes.0.seeds=0" / "ERROR.txt").exists()
    probes = pd.read_csv(out / "tables" / "probes.probes.csv")
    assert probes.equals(pd.read_csv(ray.sweep.out / "tables" / "probes.probes.csv"))


def test_asking_for_more_gpus_than_the_cluster_has_is_a_user_error(ray_session, tmp_path):
    with pytest.raises(ProbekitError, match=r"each actor asks for 1000 GPU but the Ray cluster has"):
        run_sweep(_write_sweep(tmp_path, GRID), backend="ray", gpus_per_task=1000, progress=False)
