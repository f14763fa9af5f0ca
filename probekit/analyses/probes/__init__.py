"""Linear probes on residual-stream activations, with the baselines that make their accuracy meaningful.

Modules: `estimators` (`RidgeProbe`, `LogisticProbe`, skops I/O), `mdl` (Voita & Titov 2020), `tasks`
(task instances, Hewitt & Liang 2019 control task), `streams` (captured residual streams lined up with
the instances), `layers` (the per-layer driver), `summary` (`probe_summary`, `ProbeResult`). The method
is described in ``docs/methods/probes.md``.
"""

from probekit.analyses.probes.estimators import (
    DEFAULT_ALPHAS,
    DEFAULT_CS,
    TRUSTED_TYPES,
    LinearProbe,
    LogisticProbe,
    RidgeProbe,
    load_probe,
    save_probe,
)
from probekit.analyses.probes.layers import (
    PROBE_FAMILIES,
    analyze_probes,
    probe_layers,
    probe_with_baselines,
    resolve_probe_family,
)
from probekit.analyses.probes.mdl import MDL_FRACTIONS, mdl_online_codelength
from probekit.analyses.probes.summary import ProbeResult, probe_summary
from probekit.analyses.probes.tasks import BUILTIN_TASKS, TaskInstances, control_labels, task_instances

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "MDL_FRACTIONS",
    "PROBE_FAMILIES",
    "TRUSTED_TYPES",
    "LinearProbe",
    "LogisticProbe",
    "ProbeResult",
    "RidgeProbe",
    "TaskInstances",
    "analyze_probes",
    "control_labels",
    "load_probe",
    "mdl_online_codelength",
    "probe_layers",
    "probe_summary",
    "probe_with_baselines",
    "resolve_probe_family",
    "save_probe",
    "task_instances",
]
