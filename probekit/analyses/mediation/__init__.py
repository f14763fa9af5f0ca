"""Causal mediation of head roles: counterfactual pairs (`pairs`), per-head effects (`effects`) and the
analysis with its statistics (`analysis`: `mediate`, `MediationResult`). ``docs/methods/mediation.md``.
"""

from probekit.analyses.mediation.analysis import (
    MediationResult,
    attention_scores,
    mediate,
    mediation_markdown,
    signflip_p,
    spearman_perm,
)
from probekit.analyses.mediation.effects import EFFECTS, ProbeReadout, head_effects, make_donors
from probekit.analyses.mediation.pairs import (
    RELATIONS,
    binding_pairs,
    blimp_agreement_pairs,
    det_noun_pairs,
    make_pairs,
    masked_agreement_pairs,
    other_verb_form,
)

__all__ = [
    "EFFECTS",
    "RELATIONS",
    "MediationResult",
    "ProbeReadout",
    "attention_scores",
    "binding_pairs",
    "blimp_agreement_pairs",
    "det_noun_pairs",
    "head_effects",
    "make_donors",
    "make_pairs",
    "masked_agreement_pairs",
    "mediate",
    "mediation_markdown",
    "other_verb_form",
    "signflip_p",
    "spearman_perm",
]
