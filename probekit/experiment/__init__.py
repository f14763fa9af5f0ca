"""Experiments: a YAML config -> a run folder of tables, plots, ``manifest.json`` and ``REPORT.md``.

- `probekit.experiment.config`: the pydantic config models, `load_config`, `read_yaml`, `config_reference`;
- `probekit.experiment.context`: `Run`, the state of one run (models, datasets, stages);
- `probekit.experiment.stages`: one function per analysis, registered in `STAGES`;
- `probekit.experiment.run`: `run_experiment` and the manifest;
- `probekit.experiment.sweep` / `sweep_backends`: one config × a grid of values, locally or on Ray.
"""

from probekit.experiment.config import (
    AblateOptions,
    Analyses,
    CheckAttentionOptions,
    ClaimsOptions,
    ExperimentConfig,
    HeadsOptions,
    ProbesOptions,
    ScoreOptions,
    config_reference,
    load_config,
    read_yaml,
    validate_config,
)
from probekit.experiment.context import Run, display_spec
from probekit.experiment.run import run_experiment, write_manifest
from probekit.experiment.stages import STAGES
from probekit.experiment.sweep import Sweep, SweepResult, SweepRun, is_finished, load_sweep, run_sweep

__all__ = [
    "STAGES",
    "AblateOptions",
    "Analyses",
    "CheckAttentionOptions",
    "ClaimsOptions",
    "ExperimentConfig",
    "HeadsOptions",
    "ProbesOptions",
    "Run",
    "ScoreOptions",
    "Sweep",
    "SweepResult",
    "SweepRun",
    "config_reference",
    "display_spec",
    "is_finished",
    "load_config",
    "load_sweep",
    "read_yaml",
    "run_experiment",
    "run_sweep",
    "validate_config",
    "write_manifest",
]
