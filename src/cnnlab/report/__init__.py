"""Study reports drawn from result files only: tables, paired comparisons, figures, HTML/Markdown/CSV.

`write_report(study_dir)` writes `report.html` (self-contained), `report.md`, `results.csv` and
`report_files/*.png`; `format_results_table(study_dir)` is the same table as terminal text. The report is one
`Document` (`build_document(study_dir)`), rendered to HTML and Markdown by two templates;
`combine(title, [(name, document), ...])` makes a document of several, and `write_report(folder, document)`
writes any document. Nothing here builds a model or imports the training stack.
"""

from __future__ import annotations

from cnnlab.report.collect import Configuration, EnsembleRecord, ReportError, RunRecord, Study, load_study
from cnnlab.report.document import Document, Section, combine, render_html, render_markdown
from cnnlab.report.render import ReportPaths, build_document, build_report, format_results_table, write_report
from cnnlab.report.statistics import (
    ConfigurationRow,
    PairedComparison,
    Summary,
    TwoFactorGrid,
    configuration_rows,
    paired_comparisons,
    summarize,
    two_factor_grid,
)

__all__ = [
    "Configuration",
    "ConfigurationRow",
    "Document",
    "EnsembleRecord",
    "PairedComparison",
    "ReportError",
    "ReportPaths",
    "RunRecord",
    "Section",
    "Study",
    "Summary",
    "TwoFactorGrid",
    "build_document",
    "build_report",
    "combine",
    "configuration_rows",
    "format_results_table",
    "load_study",
    "paired_comparisons",
    "render_html",
    "render_markdown",
    "summarize",
    "two_factor_grid",
    "write_report",
]
