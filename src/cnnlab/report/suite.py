"""The report of a suite folder: each sub-study's own report, then one report.html / report.md with a section
per sub-study (`combine` of the sub-studies' documents, in the suite's order). What is left to do (each
sub-study's study-incomplete line, the studies not started yet) is said under the suite's summary and
returned for the terminal, as one study's report does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cnnlab.report.document import Paragraph, combine, visible_controls
from cnnlab.report.render import ReportPaths, build_document, build_report, status_lines, write_report
from cnnlab.runfolder import PLAN_FILE, suite_name, suite_studies

SUITE_TITLE = "Suite report: {name}"
NOT_STARTED = "Not started yet: {names}; run `cnnlab study run` again (same spec, same --out) to start them."


def write_suite_report(folder: str | Path) -> ReportPaths:
    """Write every sub-study's report (each built once), then the suite's report.html and report.md with a
    section per sub-study. Returns the suite report's paths; its `table` is the lines saying what is left to
    do (`cv: Study incomplete: ...`, `Not started yet: ...`), empty for a finished suite."""
    folder = Path(folder)
    studies = suite_studies(folder)
    parts, lines = [], []
    for study, path in studies:
        if not (path / PLAN_FILE).is_file():
            continue
        report = build_report(path)
        write_report(report)  # the sub-study's own report.html, report.md, results.csv and figures
        parts.append((study, build_document(report)))
        lines += [f"{study}: {line}" for line in status_lines(report.study)]
    missing = [study for study, path in studies if not (path / PLAN_FILE).is_file()]
    if missing:
        lines.append(NOT_STARTED.format(names=", ".join(missing)))
    note = f"Studies, each a section (and a folder of its own): {', '.join(name for name, _ in parts)}."
    blocks = [Paragraph(note, "summary"), *(Paragraph(line) for line in lines)]
    paths = write_report(folder, combine(SUITE_TITLE.format(name=suite_name(folder)), parts, blocks))
    return dataclasses.replace(paths, table="\n".join(visible_controls(line) for line in lines))
