"""Whole dependency trees: from attention heads, from a learned mix of heads, and baselines.

Modules: `mst` (spanning trees, UUAS/UAS; shared with the structural probes), `attention` (one tree per
head), `words_probe` (Clark et al. 2019's attention probe), `baselines` (chains, best fixed offset),
`analysis` (`analyze_trees`), `result` (`TreesResult`). The method is described in
``docs/methods/trees.md``.
"""

from probekit.analyses.trees.analysis import DEFAULT_SPLIT, analyze_trees, split_parts
from probekit.analyses.trees.mst import (
    NO_HEAD,
    gold_edges,
    heads_from_edges,
    mst_directed,
    mst_undirected,
    mst_undirected_batch,
    punctuation_words,
    uas,
    uuas,
)
from probekit.analyses.trees.result import TreesResult

__all__ = [
    "DEFAULT_SPLIT",
    "NO_HEAD",
    "TreesResult",
    "analyze_trees",
    "gold_edges",
    "heads_from_edges",
    "mst_directed",
    "mst_undirected",
    "mst_undirected_batch",
    "punctuation_words",
    "split_parts",
    "uas",
    "uuas",
]
