"""Causal tests of attention heads: ablation, activation patching and attribution patching.

Attention is correlation, not use: a head "handles subject-verb agreement" only if removing it hurts
what depends on it. Methods, metrics and the fast engine: ``docs/methods/interventions.md``.

- `heads`: head specifications, labels, layer-matched random sets (coupled across head sets);
- `plan` / `layout`: what is run and measured, and how items become the rows of a forward;
- `interventions`: where (`HeadSite`) and what (`ZeroAblation`, `MeanAblation`, `ResampleAblation`, `Patch`);
- `engine`: the naive and fast sweeps (`run_sweep`, `EngineOptions`);
- `ablate`, `specialists`, `patching`, `attribution`: the public analyses and their result objects.
"""

from probekit.analyses.interventions.ablate import (
    FRAME_COLUMNS,
    METHODS,
    AblationResult,
    ablate,
    ablate_head_sets,
    ablate_heads,
    ablated,
)
from probekit.analyses.interventions.attribution import attribution_patch, compare_patching
from probekit.analyses.interventions.engine import SWEEPS, EngineOptions, SweepResult, run_sweep
from probekit.analyses.interventions.heads import (
    Head,
    coupled_random_sets,
    head_label,
    matched_random_sets,
    parse_heads,
)
from probekit.analyses.interventions.interventions import (
    DonorActivations,
    HeadSite,
    Intervention,
    MeanAblation,
    Patch,
    ResampleAblation,
    ZeroAblation,
    ZLayout,
)
from probekit.analyses.interventions.patching import PatchPairs, make_patch_pairs, patch_heads
from probekit.analyses.interventions.plan import PAIR_METRICS, SENTENCE_METRICS, Plan, make_plan
from probekit.analyses.interventions.specialists import (
    SELECTION_CRITERIA,
    SpecialistsResult,
    check_disjoint,
    difference_ci,
    select_heads,
    specialists_markdown,
    specialists_vs_random,
)

__all__ = [
    "FRAME_COLUMNS",
    "METHODS",
    "PAIR_METRICS",
    "SELECTION_CRITERIA",
    "SENTENCE_METRICS",
    "SWEEPS",
    "AblationResult",
    "DonorActivations",
    "EngineOptions",
    "Head",
    "HeadSite",
    "Intervention",
    "MeanAblation",
    "Patch",
    "PatchPairs",
    "Plan",
    "ResampleAblation",
    "SpecialistsResult",
    "SweepResult",
    "ZLayout",
    "ZeroAblation",
    "ablate",
    "ablate_head_sets",
    "ablate_heads",
    "ablated",
    "attribution_patch",
    "check_disjoint",
    "compare_patching",
    "coupled_random_sets",
    "difference_ci",
    "head_label",
    "make_patch_pairs",
    "make_plan",
    "matched_random_sets",
    "parse_heads",
    "patch_heads",
    "run_sweep",
    "select_heads",
    "specialists_markdown",
    "specialists_vs_random",
]
