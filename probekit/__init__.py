"""probekit: test claims about attention heads and representations, with baselines.

The public API is small and re-exported here (imported lazily, so `import probekit` is fast):

    import probekit as pk
    model = pk.load_model("smollm2-135m")
    data = pk.load_dataset("seed:explored")
    cap = pk.capture(model, data, layers=[3, 6], attention=True)
    heads = pk.score_heads(model, pk.load_dataset("template:svo_adj"))
"""

from __future__ import annotations

import importlib

# `align` and `capture` are both modules and functions; bind the functions eagerly so that importing the
# submodules cannot shadow them.
from probekit.activations.align import align
from probekit.activations.capture import capture
from probekit.errors import ProbekitError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # models
    "load_model": "probekit.models",
    "Model": "probekit.models",
    "list_models": "probekit.models",
    # data
    "Sentence": "probekit.data",
    "MinimalPair": "probekit.data",
    "Dataset": "probekit.data",
    "load_dataset": "probekit.data",
    # alignment and capture
    "word_attention": "probekit.activations.align",
    "Capture": "probekit.activations.capture",
    "check_attention": "probekit.analyses.attention",
    # analyses
    "score_heads": "probekit.analyses.heads",
    "positional_heads": "probekit.analyses.heads",
    "analyze_heads": "probekit.analyses.heads",
    "weighted_attention": "probekit.analyses.heads",
    "compare_weightings": "probekit.analyses.heads",
    "WeightingComparison": "probekit.analyses.heads",
    "LogisticProbe": "probekit.analyses.probes",
    "LinearProbe": "probekit.analyses.probes",
    "RidgeProbe": "probekit.analyses.probes",
    "probe_layers": "probekit.analyses.probes",
    "analyze_probes": "probekit.analyses.probes",
    "probe_summary": "probekit.analyses.probes",
    "control_labels": "probekit.analyses.probes",
    "DistanceProbe": "probekit.analyses.trees.structural",
    "DepthProbe": "probekit.analyses.trees.structural",
    "fit_structural_probes": "probekit.analyses.trees.structural",
    "StructuralProbeResult": "probekit.analyses.trees.structural",
    "score_pairs": "probekit.analyses.scoring",
    "ablate_heads": "probekit.analyses.interventions",
    "patch_heads": "probekit.analyses.interventions",
    "attribution_patch": "probekit.analyses.interventions",
    "specialists_vs_random": "probekit.analyses.interventions",
    "mediate": "probekit.analyses.mediation",
    "MediationResult": "probekit.analyses.mediation",
    "analyze_trees": "probekit.analyses.trees",
    "TreesResult": "probekit.analyses.trees",
    "mst_undirected": "probekit.analyses.trees",
    "mst_directed": "probekit.analyses.trees",
    "uuas": "probekit.analyses.trees",
    "uas": "probekit.analyses.trees",
    # running
    "run_experiment": "probekit.experiment",
    "ExperimentConfig": "probekit.experiment",
}

__all__ = ["ProbekitError", "__version__", "align", "capture", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probekit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(__all__)
