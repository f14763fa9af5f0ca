"""Head specialization (claim C4): score every attention head per relation against baselines.

`analyze_heads` returns a `HeadAnalysis` (``.write(folder)``); `score_heads` its per-head frame;
`positional_heads` Voita et al.'s (2019) positional heads; `compare_weightings` reruns them on
norm-weighted and rollout attention (`weighted_attention`, ``docs/methods/weighting.md``). Method:
``docs/methods/heads.md``.
"""

from probekit.analyses.heads.collect import POSITIONAL_DIRECTION
from probekit.analyses.heads.compare import WeightingComparison, compare_weightings
from probekit.analyses.heads.positional import (
    DETECTOR_PATTERNS,
    POSITIONAL_SHARE,
    detector_scores,
    positional_heads,
)
from probekit.analyses.heads.result import HeadAnalysis, plot_heatmaps, summary_markdown, write_report
from probekit.analyses.heads.rules import (
    ALPHA,
    MIN_N,
    MOSTLY_AT_OFFSET,
    SPECIALIST_MARGIN,
    VERDICT_COLUMNS,
    specificity,
    verdicts,
)
from probekit.analyses.heads.score import (
    CORE_RELATIONS,
    UD_RELATIONS,
    analyze_heads,
    offset_baselines,
    resolve_relations,
    score_heads,
)
from probekit.analyses.heads.table import HEAD_COLUMNS, signflip_p
from probekit.analyses.heads.weighting import WEIGHTINGS, WeightedAttention, weighted_attention

__all__ = [
    "ALPHA",
    "CORE_RELATIONS",
    "DETECTOR_PATTERNS",
    "HEAD_COLUMNS",
    "MIN_N",
    "MOSTLY_AT_OFFSET",
    "POSITIONAL_DIRECTION",
    "POSITIONAL_SHARE",
    "SPECIALIST_MARGIN",
    "UD_RELATIONS",
    "VERDICT_COLUMNS",
    "WEIGHTINGS",
    "HeadAnalysis",
    "WeightedAttention",
    "WeightingComparison",
    "analyze_heads",
    "compare_weightings",
    "detector_scores",
    "offset_baselines",
    "plot_heatmaps",
    "positional_heads",
    "resolve_relations",
    "score_heads",
    "signflip_p",
    "specificity",
    "summary_markdown",
    "verdicts",
    "weighted_attention",
    "write_report",
]
