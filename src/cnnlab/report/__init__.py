"""Study reports drawn from result files only: tables, paired comparisons, figures, HTML/Markdown/CSV.

`write_report(study_dir)` writes `report.html` (self-contained), `report.md`, `results.csv` and
`report_files/*.png`; `format_results_table(study_dir)` is the same table as terminal text.
Nothing here builds a model or imports the training stack.
"""

from __future__ import annotations

from cnnlab.report.collect import Configuration, EnsembleRecord, ReportError, RunRecord, Study, load_study
from cnnlab.report.render import ReportPaths, build_report, format_results_table, write_report
from cnnlab.report.statistics import (
    ConfigurationRow,
    PairedComparison,
    Summary,
    configuration_rows,
    paired_comparisons,
    summarize,
)

__all__ = [
    "Configuration",
    "ConfigurationRow",
    "EnsembleRecord",
    "PairedComparison",
    "ReportError",
    "ReportPaths",
    "RunRecord",
    "Study",
    "Summary",
    "build_report",
    "configuration_rows",
    "format_results_table",
    "load_study",
    "paired_comparisons",
    "summarize",
    "write_report",
]
