"""Writing results: atomic deterministic tables, figures, and the run report (REPORT.md).

Every file is written to a temporary name in the same folder and renamed into place, so a killed run
never leaves a half-written file; CSVs use a fixed float format so the same numbers give the same bytes.
"""

from probekit.report.figures import (
    plot_head_heatmap,
    plot_probe_curves,
    plot_word_attention,
    pyplot,
    save_fig,
)
from probekit.report.tables import (
    FLOAT_FORMAT,
    atomic_write_text,
    latex_table,
    markdown_table,
    write_table,
    write_tables,
)

__all__ = [
    "FLOAT_FORMAT",
    "atomic_write_text",
    "latex_table",
    "markdown_table",
    "plot_head_heatmap",
    "plot_probe_curves",
    "plot_word_attention",
    "pyplot",
    "save_fig",
    "write_table",
    "write_tables",
]
