"""The tables of a run folder that probekit reads back, and the columns it reads.

A stage writes its tables into ``<run>/<stage>/<model>[__<data>]/`` (`probekit.report.write_tables`); the
claim verdicts (`probekit.experiment.verdicts`), REPORT.md and `compare_runs` (`probekit.report.markdown`)
read some of them back. Each `TableSchema` below names one such file, the stage folder that holds it and
the columns the readers use, so that a renamed or missing column fails in `probekit.report.read_table`
with the file, the column and what to do, instead of an ``AttributeError`` deep inside a verdict rule.

Only the columns that are read are listed: a stage may write more. This module is pure data (no pandas)
and lives in ``report`` because the readers are there; writers and readers both depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableSchema:
    """One CSV file of a run folder and the columns that are read from it.

    Parameters
    ----------
    file
        The file name, e.g. ``"check_attention.csv"``.
    stage
        The run folder's subfolder whose per-model folders hold the file (``"check_attention"`` for
        ``check_attention/<model>/check_attention.csv``); ``None`` for a file in the run folder itself.
    columns
        Columns every reader needs.
    optional
        Columns read only when present (written only for some models or options).
    writer
        The code that writes the file, named in error messages.

    Examples
    --------
    >>> CHECK_ATTENTION.pattern
    'check_attention/*/check_attention.csv'
    >>> CHECK_ATTENTION.missing(["model", "q_hook"])[:2]
    ('k_hook', 'n_heads')
    """

    file: str
    stage: str | None
    columns: tuple[str, ...]
    optional: tuple[str, ...] = ()
    writer: str = ""

    @property
    def pattern(self) -> str:
        """Where the file lives, relative to the run folder (a glob)."""
        return self.file if self.stage is None else f"{self.stage}/*/{self.file}"

    def missing(self, present, columns: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The required ``columns`` (default: `columns`) that are not among ``present``, in order."""
        have = set(present)
        return tuple(c for c in (self.columns if columns is None else columns) if c not in have)


CHECK_ATTENTION = TableSchema(
    "check_attention.csv",
    "check_attention",
    ("model", "q_hook", "k_hook", "n_heads", "n_kv_heads", "scale", "max_abs_diff"),
    writer="the check_attention stage (probekit.analyses.attention.check_attention)",
)

BANK_SUMMARY = TableSchema(
    "bank_summary.csv",
    "claims",
    (
        "model",
        "bank",
        "sense",
        "testable",
        "own_cues_visible",
        "other_cues_visible",
        "heads_own_gt_other",
        "n_heads",
        "mean_own",
        "mean_other",
    ),
    writer="the claims stage (probekit.analyses.claims)",
)

BANK_CUE_SUMMARY = TableSchema(
    "bank_cue_summary.csv",
    "claims",
    (
        "n_sentences",
        "best_head",
        "best_cue_attention",
        "its_random_word_attention",
        "its_offset_matched_attention",
        "median_head_cue_attention",
        "null_best_mean",
        "p_value",
        "heads_cue_gt_offset",
        "n_heads",
    ),
    writer="the claims stage (probekit.analyses.claims)",
)

#: a causal model has ``mean_room_to_explored``/``max_room_to_explored`` ('room' cannot be seen from
#: 'explored'), a bidirectional one ``mean_explored_to_room``
EXPLORED_SUMMARY = TableSchema(
    "explored_summary.csv",
    "claims",
    (
        "model",
        "n_heads",
        "closest_head",
        "closest_cat",
        "closest_room",
        "heads_within_0.1",
        "mean_explored_to_cat",
        "max_explored_to_cat",
        "heads_argmax_cat",
        "mean_explored_to_sink",
    ),
    optional=("mean_room_to_explored", "max_room_to_explored", "mean_explored_to_room"),
    writer="the claims stage (probekit.analyses.claims)",
)

HEAD_VERDICTS = TableSchema(
    "verdicts.csv",
    "heads",
    (
        "model",
        "data",
        "relation",
        "direction",
        "layer",
        "head",
        "accuracy",
        "ci_low",
        "ci_high",
        "offset_accuracy",
        "verdict",
        "also_passes",
        "relation_verdict",
    ),
    # the C4 rule (probekit.experiment.verdicts.c4_rule_table); tables written before it lack p_offset
    optional=(
        "n",
        "delta",
        "p_offset",
        "p_perm",
        "random_accuracy",
        "head_positional",
        "share_at_top_offset",
    ),
    writer="the heads stage (HeadAnalysis.write in probekit.analyses.heads)",
)

#: the heads stage's attention scores per head (the mediate stage reads them to rank attention heads)
HEAD_SCORES = TableSchema(
    "heads.csv",
    "heads",
    (
        "model",
        "data",
        "relation",
        "direction",
        "layer",
        "head",
        "n",
        "attention_mass",
        "n_dev",
        "dev_attention_mass",
    ),
    writer="the heads stage (probekit.analyses.heads.analyze_heads)",
)

#: the mediate stage's summary (probekit.analyses.mediation.MediationResult), read for C4's causal evidence
MEDIATION_SUMMARY = TableSchema(
    "mediation_summary.csv",
    "mediate",
    (
        "model",
        "relation",
        "readout",
        "n_report",
        "total_effect",
        "te_ci_low",
        "te_ci_high",
        "top_attention_layer",
        "top_attention_head",
        "top_attention_share",
        "share_attention_top",
        "share_causal_top",
        "share_random_mean",
        "p_attention_vs_random",
        "spearman",
        "spearman_p_perm",
        "k",
    ),
    writer="the mediate stage (probekit.analyses.mediation.mediate)",
)


MEDIATION_EFFECTS = TableSchema(
    "mediation_effects.csv",
    "mediate",
    ("model", "relation", "effect_type", "layer", "head", "share", "p_holm"),
    writer="the mediate stage (probekit.analyses.mediation.mediate)",
)

#: ``best_layer`` and ``first_layer_within`` are chosen on the dev halves (``dev_accuracy``, optional so
#: tables written before the dev/test halves still read); ``accuracy``, its CI and the baselines are on
#: the test halves (`probekit.analyses.probes.probe_summary`)
PROBES_SUMMARY = TableSchema(
    "probes_summary.csv",
    "probes",
    (
        "model",
        "data",
        "task",
        "split",
        "n_seeds",
        "best_layer",
        "accuracy",
        "ci_low",
        "ci_high",
        "first_layer_within",
        "layer0_accuracy",
        "control_accuracy",
        "selectivity",
        "majority_accuracy",
    ),
    optional=("dev_accuracy", "random_init_accuracy", "random_init_best_layer"),
    writer="the probes stage or `probekit probe` (probekit.analyses.probes.probe_summary)",
)

MINIMAL_PAIRS = TableSchema(
    "minimal_pairs.csv",
    "score",
    ("model", "data", "paradigm", "accuracy", "ci_low", "ci_high"),
    writer="the score stage (probekit.analyses.scoring)",
)

SPECIALISTS_VS_RANDOM = TableSchema(
    "specialists_vs_random.csv",
    "ablate",
    (
        "model",
        "relation",
        "metric",
        "method",
        "specialists_delta",
        "random_mean_delta",
        "effect_size",
        "p_value",
        "diff_ci_low",
        "diff_ci_high",
    ),
    writer="the ablate stage (probekit.analyses.interventions.specialists_vs_random)",
)

SPECIALISTS = TableSchema(
    "specialists.csv",
    "ablate",
    ("layer", "head"),
    writer="the ablate stage (probekit.analyses.interventions.specialists_vs_random)",
)

#: the weighting stage's tables, read by REPORT.md's "Attention weighting" section
WEIGHTING_COMPARISON = TableSchema(
    "weighting_comparison.csv",
    "weighting",
    ("model", "data", "weighting", "relation", "direction", "conclusion", "conclusion_changed"),
    writer="the weighting stage (probekit.analyses.heads.compare_weightings)",
)

WEIGHTING_SINK = TableSchema(
    "weighting_sink.csv",
    "weighting",
    ("model", "layer", "head", "sink_raw", "sink_norm"),
    writer="the weighting stage (probekit.analyses.heads.compare_weightings)",
)

#: the claim verdicts of a run (`probekit.experiment.verdicts`), in the run folder itself
CLAIM_VERDICTS = TableSchema(
    "verdicts.csv",
    None,
    ("claim", "model", "verdict", "evidence", "tables"),
    writer="`probekit report` (probekit.experiment.verdicts)",
)

#: the trees stage (`probekit.analyses.trees.analyze_trees`): one row per (model, method) on the test part
TREES_SUMMARY = TableSchema(
    "trees_summary.csv",
    "trees",
    (
        "model",
        "data",
        "method",
        "detail",
        "n_sentences",
        "n_arcs",
        "uuas",
        "uuas_low",
        "uuas_high",
        "uas",
        "uas_low",
        "uas_high",
    ),
    writer="the trees stage or `probekit trees` (probekit.analyses.trees.TreesResult)",
)

#: the train/dev/test parts of the trees stage
TREES_PARTS = TableSchema(
    "trees_parts.csv",
    "trees",
    ("part", "fraction", "n_sentences"),
    writer="the trees stage or `probekit trees` (probekit.analyses.trees.TreesResult)",
)

#: Hewitt & Manning structural probes, written into the trees stage's folders when it runs them
STRUCTURAL_PROBES = TableSchema(
    "structural_probes.csv",
    "trees",
    ("model", "layer", "probe", "baseline", "uuas"),
    optional=("target", "dspr", "root_acc", "nspr"),
    writer="the trees stage with structural: true (probekit.analyses.trees.structural)",
)

#: every schema, for checks over a whole run folder
SCHEMAS = (
    CHECK_ATTENTION,
    BANK_SUMMARY,
    BANK_CUE_SUMMARY,
    EXPLORED_SUMMARY,
    HEAD_VERDICTS,
    HEAD_SCORES,
    MEDIATION_SUMMARY,
    MEDIATION_EFFECTS,
    PROBES_SUMMARY,
    MINIMAL_PAIRS,
    SPECIALISTS_VS_RANDOM,
    SPECIALISTS,
    CLAIM_VERDICTS,
    TREES_SUMMARY,
    TREES_PARTS,
    STRUCTURAL_PROBES,
    WEIGHTING_COMPARISON,
    WEIGHTING_SINK,
)
