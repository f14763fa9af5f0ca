"""Dependency trees read off a model: structural probes (`structural`, Hewitt & Manning 2019)."""

from probekit.analyses.trees.structural import (
    DepthProbe,
    DistanceProbe,
    StructuralProbeResult,
    fit_structural_probes,
    random_tree_heads,
    structural_metrics,
    tree_depths,
    tree_distances,
)

__all__ = [
    "DepthProbe",
    "DistanceProbe",
    "StructuralProbeResult",
    "fit_structural_probes",
    "random_tree_heads",
    "structural_metrics",
    "tree_depths",
    "tree_distances",
]
