"""The state of one experiment run: its folder, models, datasets and stage bookkeeping (`Run`).

A *stage* is one (analysis, model, data) combination with its own folder. `Run.stage` runs it unless a
finished stage with the same options exists, and marks it done with the hash of those options, so a rerun
after a kill resumes from the finished stages (see ``docs/methods/experiments.md``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probekit.experiment.config import PATH_SCHEMES, ExperimentConfig
from probekit.report.tables import atomic_write_text

#: the file that marks a finished stage: ``<options hash> <seconds it took> <CPU seconds it took>``
DONE_MARKER = ".done"
#: models a run keeps loaded (least recently used dropped first): the bundled pair and their random-init
#: baselines, about 1.3 GB in float32; two meant a reload in nearly every stage (``results/*/manifest.json``)
MODELS_KEPT = 4


class Run:
    """The state of one run: its folder, the data resolver, stage bookkeeping and timings.

    Parameters
    ----------
    cfg : ExperimentConfig
        The resolved config.
    out : Path
        The run folder.
    progress : bool
        Progress bars in the analyses.
    load_model : callable, optional
        Replaces `probekit.models.load_model` (a sweep worker passes one that keeps models resident).
    git : dict, optional
        ``{"commit", "dirty"}`` of the code this run starts with (recorded in ``manifest.json``).

    Examples
    --------
    >>> import tempfile
    >>> from probekit.experiment.config import validate_config
    >>> cfg = validate_config({"name": "x", "seed": 0, "out": "o", "models": ["tiny-bert"],
    ...                        "data": {"svo": "template:svo_adj?n=4"}})
    >>> run = Run(cfg, Path(tempfile.mkdtemp()), progress=False)
    >>> run.spec("svo"), len(run.dataset("svo"))
    ('template:svo_adj?n=4', 4)
    >>> folder = run.stage("demo", "tiny-bert", "svo", {}, lambda folder: None)
    >>> (folder / ".done").exists(), run.reused
    (True, [])
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        out: Path,
        progress: bool = True,
        load_model: Callable[..., Any] | None = None,
        git: dict | None = None,
        parallel: Callable[..., Any] | None = None,
    ):
        from probekit.models import load_model as default_loader

        self.cfg, self.out, self.progress = cfg, out, progress
        self._load_model = load_model or default_loader
        self.timings: dict[str, float] = {}
        #: CPU seconds of this process (all its threads) per stage: with `timings`, how many cores a stage
        #: kept busy (Ray workers are other processes and are not counted)
        self.cpu_timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.reused: list[str] = []
        self._models: dict[str, Any] = {}
        self._data: dict[Any, Any] = {}
        self.git = git or {"commit": None, "dirty": None}
        #: None (local), or ``partial(probekit.parallel.sharded_model, options=..., shard_size=...)``:
        #: the heads and probes stages then capture through Ray workers (same tables; in no options hash)
        self.parallel = parallel

    def spec(self, name_or_spec: str) -> str | None:
        """A data name -> its spec (None if it is optional and absent); anything else is a spec."""
        if name_or_spec in self.cfg.data:
            return self.cfg.data[name_or_spec]
        if name_or_spec in self.cfg.optional_data:
            spec = self.cfg.optional_data[name_or_spec]
            return spec if spec_path_exists(spec) else None
        return name_or_spec

    def dataset(self, name_or_spec: str, max_items: int | None = None):
        """Load (or reuse) a dataset by data name or spec, seeded with the config's seed.

        An ``optional_data`` name whose path does not exist raises `ProbekitError` (check
        ``run.spec(name) is None`` first, as the stages do, to skip it)."""
        from probekit.data import load_dataset
        from probekit.errors import ProbekitError

        spec = self.spec(name_or_spec)
        if spec is None:
            raise ProbekitError(
                f"optional data {name_or_spec!r} is not available: its path "
                f"{self.cfg.optional_data[name_or_spec]!r} does not exist",
                where="Run.dataset",
                fix="create the path, or skip the analysis when run.spec(name) is None",
            )
        key = (spec, max_items)
        if key not in self._data:
            self._data[key] = load_dataset(spec, max_sentences=max_items, seed=self.cfg.seed)
        return self._data[key]

    def model(self, name: str):
        """Load (or reuse) a model; ``random:<name>`` baselines are models too.

        The `MODELS_KEPT` most recently used stay loaded: the stages run stage by stage over the models,
        so two models and their random-init baselines are each loaded (and fingerprinted) once."""
        if name in self._models:
            self._models[name] = self._models.pop(name)  # most recently used last
        else:
            if len(self._models) >= MODELS_KEPT:  # keep memory bounded: drop the least recently used
                self._models.pop(next(iter(self._models)))
            self._models[name] = self._load_model(name, seed=self.cfg.seed)
        return self._models[name]

    def stage(self, analysis: str, model: str, data: str, options: dict, fn: Callable[[Path], Any]) -> Path:
        """Run ``fn(stage_dir)`` unless a finished stage with the same options exists; return the folder."""
        folder = self.out / analysis / (f"{slug(model)}__{slug(data)}" if data else slug(model))
        digest = hashlib.sha256(
            json.dumps(
                {
                    "model": model,
                    "data": data,
                    "seed": self.cfg.seed,
                    "batch_size": self.cfg.batch_size,
                    "options": options,
                },
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
        marker = folder / DONE_MARKER
        label = f"{analysis}/{folder.name}"
        done = marker.read_text().split() if marker.exists() else []
        if done and done[0] == digest:
            # the time it took when it was computed, so the manifest still shows what each stage costs
            self.timings.setdefault(label, float(done[1]) if len(done) > 1 else float("nan"))
            self.cpu_timings.setdefault(label, float(done[2]) if len(done) > 2 else float("nan"))
            self.reused.append(label)
            log(f"[skip] {label} (finished earlier)")
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        log(f"[run ] {label}")
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(folder)
        self.timings[label] = round(time.perf_counter() - start, 2)
        self.cpu_timings[label] = round(time.process_time() - start_cpu, 2)
        atomic_write_text(marker, f"{digest} {self.timings[label]} {self.cpu_timings[label]}\n")
        return folder


def spec_path_exists(spec: str) -> bool:
    """False only for a ``ud:``/``blimp:``/``text:`` spec whose path does not exist."""
    scheme, _, arg = spec.partition(":")
    return scheme not in PATH_SCHEMES or Path(arg).exists()


def display_spec(spec: str) -> str:
    """A spec without machine-specific absolute paths, for tables and reports.

    Examples
    --------
    >>> display_spec("ud:/home/me/data/ud/en_ewt-ud-test.conllu")
    'ud:ud/en_ewt-ud-test.conllu'
    >>> display_spec("template:svo_adj?n=20")
    'template:svo_adj?n=20'
    """
    scheme, _, arg = spec.partition(":")
    if scheme in PATH_SCHEMES:
        p = Path(arg)
        return f"{scheme}:{'/'.join(p.parts[-2:])}"
    return spec


def slug(text: str) -> str:
    """A model name or spec as a folder name: `display_spec`, then anything but ``[A-Za-z0-9_-]`` -> ``-``."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in display_spec(text)).strip("-")


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)
