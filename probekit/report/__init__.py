"""Writing results: atomic deterministic tables, figures, and the run report (REPORT.md).

Every file is written to a temporary name in the same folder and renamed into place, so a killed run
never leaves a half-written file; CSVs use a fixed float format so the same numbers give the same bytes.
Tables are read back through `read_table`, which checks the columns `probekit.report.schema` lists.
The claim verdicts that REPORT.md shows are decided in `probekit.experiment.verdicts`; this package
never imports ``probekit.experiment``.
"""

from probekit.report.figures import (
    HeadPanel,
    plot_head_heatmap,
    plot_probe_curves,
    plot_word_attention,
    pyplot,
    save_fig,
)
from probekit.report.markdown import (
    compare_runs,
    probe_sentence,
    probe_summaries,
    read_manifest,
    write_report,
)
from probekit.report.schema import TableSchema
from probekit.report.tables import (
    FLOAT_FORMAT,
    atomic_write_text,
    check_columns,
    latex_table,
    markdown_table,
    read_table,
    stage_folders,
    stage_tables,
    write_table,
    write_tables,
)

__all__ = [
    "FLOAT_FORMAT",
    "HeadPanel",
    "TableSchema",
    "atomic_write_text",
    "check_columns",
    "compare_runs",
    "latex_table",
    "markdown_table",
    "plot_head_heatmap",
    "plot_probe_curves",
    "plot_word_attention",
    "probe_sentence",
    "probe_summaries",
    "pyplot",
    "read_manifest",
    "read_table",
    "save_fig",
    "stage_folders",
    "stage_tables",
    "write_report",
    "write_table",
    "write_tables",
]
