"""Running a config: every stage of `probekit.experiment.stages.STAGES`, then ``manifest.json``,
``REPORT.md`` and ``REPORT.html`` (see ``docs/methods/experiments.md``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from probekit.activations.cache import default_cache_dir
from probekit.experiment.config import ExperimentConfig, load_config
from probekit.experiment.context import Run, display_spec
from probekit.experiment.replication import write_replication
from probekit.experiment.stages import STAGES
from probekit.experiment.verdicts import CLAIMS, judge_claims
from probekit.report import provenance
from probekit.report.html import write_html_report
from probekit.report.outdir import check_writable
from probekit.report.tables import atomic_write_text

#: distributions whose versions the manifest records
MANIFEST_PACKAGES = (
    "probekit-mi",
    "torch",
    "transformer-lens",
    "transformers",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "pydantic",
)


def run_experiment(
    config: str | os.PathLike | ExperimentConfig,
    out: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    load_model: Callable[..., Any] | None = None,
    parallel: Callable[..., Any] | None = None,
) -> Path:
    """Run every stage of a config; return the run folder (which holds REPORT.md).

    Parameters
    ----------
    config : str, PathLike or ExperimentConfig
        A YAML config file, or a config already loaded (`load_config`).
    out : str or PathLike, optional
        The run folder (default: the config's ``out``).
    overrides : list of str, optional
        ``key=value`` items applied to a config file (see `load_config`).
    progress : bool
        Progress bars.
    load_model : callable, optional
        Replaces `probekit.models.load_model` for this run (a sweep worker passes one that keeps models
        resident across runs).
    parallel : callable, optional
        ``functools.partial(probekit.parallel.sharded_model, options=RayOptions(...), shard_size=...)``:
        the heads and probes stages then capture (and, for heads, reduce) shards on Ray workers, with
        the same tables (``docs/scale-out.md``). Not part of any stage's options hash.

    Returns
    -------
    Path
        The run folder: one folder per stage, ``manifest.json``, ``REPORT.md`` and ``REPORT.html``.

    Examples
    --------
    >>> import tempfile
    >>> from probekit.experiment.config import validate_config
    >>> cfg = validate_config({"name": "x", "seed": 0, "out": "o", "models": ["tiny-llama"],
    ...                        "analyses": {"check_attention": {}}})
    >>> folder = run_experiment(cfg, out=tempfile.mkdtemp(), progress=False)
    >>> sorted(p.name for p in folder.iterdir())
    ['REPORT.html', 'REPORT.md', 'check_attention', 'manifest.json', 'verdicts.csv']
    """
    cfg = config if isinstance(config, ExperimentConfig) else load_config(config, overrides)[0]
    out_dir = Path(out).resolve() if out else Path(cfg.out)
    # before any model is loaded: the run folder and the capture cache must be writable (docs: outdir.py).
    # A run resumes stage by stage (each stage's tables are written atomically, then its .done marker),
    # so it writes in place rather than through a temporary sibling.
    check_writable(out_dir, what="--out" if out else "the config's out")
    check_writable(default_cache_dir(), what="the capture cache (PROBEKIT_CACHE)")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = None if isinstance(config, ExperimentConfig) else Path(config)
    run = Run(cfg, out_dir, progress, load_model, git=git_state(), parallel=parallel)
    total, total_cpu = time.perf_counter(), time.process_time()
    for name, stage in STAGES.items():
        options = getattr(cfg.analyses, name)
        if options is not None:
            stage(run, options)
    run.timings["total"] = round(time.perf_counter() - total, 2)
    run.cpu_timings["total"] = round(time.process_time() - total_cpu, 2)
    write_manifest(run)  # REPORT.md reads the skipped stages (and the title) from it
    verdicts = judge_claims(out_dir)
    write_replication(out_dir, verdicts.rows, CLAIMS)  # only for >= 3 models; REPORT.md includes it
    verdicts.write(out_dir)  # verdicts.csv, c4_rule.csv, REPORT.md (what build_report writes)
    write_html_report(out_dir, CLAIMS)  # REPORT.html, from the same files
    write_manifest(run, config_file, command=_command(config_file, out_dir, cfg, overrides))  # + provenance
    return out_dir


def _command(
    config_file: Path | None, out_dir: Path, cfg: ExperimentConfig, overrides: list[str] | None
) -> str:
    """The command line that regenerates this run folder (recorded in the manifest)."""
    if config_file is None:
        return "probekit run <config object>"
    words = ["probekit", "run", provenance.repo_relative(config_file) or config_file.name]
    if out_dir.resolve() != Path(cfg.out).resolve():
        words += ["--out", provenance.repo_relative(out_dir) or str(out_dir)]
    words += [f"--set {item}" for item in overrides or []]
    return " ".join(words)


def write_manifest(run: Run, config_file: str | os.PathLike | None = None, command: str = "") -> Path:
    """Write ``manifest.json``: resolved config and its hash, skipped and reused stages, package
    versions, git commit, machine, per-stage wall and CPU times, and the provenance record
    (`probekit.report.provenance`: the command, the config file's hash, a sha256 of every file the
    run wrote and of every probekit module it imported). Written last, after REPORT.md. Returns its
    path."""
    packages = {}  # type: dict[str, str | None]
    for dist in MANIFEST_PACKAGES:
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            packages[dist] = None
    manifest = {
        "name": run.cfg.name,
        "config": json.loads(run.cfg.model_dump_json()) | {"out": display_path(run.cfg.out)},
        "config_hash": run.cfg.config_hash(),
        "seed": run.cfg.seed,
        "skipped": list(dict.fromkeys(run.skipped)),
        "reused_stages": run.reused,
        "packages": packages,
        "git_commit": run.git["commit"],
        "git_dirty": run.git["dirty"],
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_model": provenance.cpu_model(),
            "torch_cpu_capability": provenance.torch_cpu_capability(),
            "torch_threads": torch_thread_count(),
        },
        # a stage reused from a run made before its cost was recorded has no timing (null)
        "timings_s": {k: (None if v != v else v) for k, v in run.timings.items()},
        # CPU seconds of the run's own process per stage (all threads): cpu_s / timings_s = cores kept busy
        "cpu_s": {k: (None if v != v else v) for k, v in run.cpu_timings.items()},
    }
    manifest["config"]["data"] = {k: display_spec(v) for k, v in run.cfg.data.items()}
    manifest["config"]["optional_data"] = {k: display_spec(v) for k, v in run.cfg.optional_data.items()}
    if command:  # the provenance record hashes the finished folder: written last, after REPORT.md
        manifest["provenance"] = provenance.record(run.out, command, config_file)
    return atomic_write_text(run.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def display_path(path: str) -> str:
    """``path`` relative to the working directory, or only its name when it is elsewhere."""
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def git_state() -> dict:
    """The checkout's HEAD commit and whether the code that makes results — the tracked files of
    ``probekit/`` and ``experiments/`` — differs from it (``dirty``); both None outside a git checkout
    (e.g. an installed wheel)."""
    package = Path(__file__).resolve().parents[1]  # probekit/

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=package, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    status = (
        git("status", "--porcelain", "--untracked-files=no", "--", ".", "../experiments") if commit else None
    )
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def torch_thread_count() -> int:
    """torch's intra-op thread count (`torch.get_num_threads`), recorded in the manifest."""
    import torch

    return torch.get_num_threads()
