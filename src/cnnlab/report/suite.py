"""The report of a suite folder: each sub-study's own report, then one report.html / report.md with a section
per sub-study (`combine` of the sub-studies' documents, in the suite's order). What is left to do (each
sub-study's study-incomplete line, the studies not started yet) is said under the suite's summary and
returned for the terminal, as one study's report does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cnnlab.report.document import Paragraph, combine, visible_controls
from cnnlab.report.render import (
    ReportPaths,
    build_document,
    build_report,
    report_folder,
    status_lines,
    write_report,
)
from cnnlab.runfolder import PLAN_FILE, suite_name, suite_studies

SUITE_TITLE = "Suite report: {name}"
NOT_STARTED = "Not started yet: {names}; run `cnnlab study run` again (same spec, same --out) to start them."


def write_suite_report(folder: str | Path, into: str | Path | None = None) -> ReportPaths:
    """Write every sub-study's report (each built once), then the suite's report.html and report.md with a
    section per sub-study; with `into`, into that folder instead (each sub-study's into `into/<name>/`).
    Returns the suite report's paths; its `table` is the lines saying what is left to do (`cv: Study
    incomplete: ...`, `Not started yet: ...`), empty for a finished suite."""
    folder = Path(folder)
    studies = suite_studies(folder)
    report_folder(folder, into)  # refused before any sub-study's report is written
    parts, lines = [], []
    for study, path in studies:
        if not (path / PLAN_FILE).is_file():
            continue
        study_into = None if into is None else report_folder(path, Path(into) / study)
        report = build_report(path, study_into)
        write_report(report, into=study_into)  # the sub-study's report.html, report.md, results.csv, figures
        parts.append((study, build_document(report)))
        lines += [f"{study}: {line}" for line in status_lines(report.study)]
    missing = [study for study, path in studies if not (path / PLAN_FILE).is_file()]
    if missing:
        lines.append(NOT_STARTED.format(names=", ".join(missing)))
    note = f"Studies, each a section (and a folder of its own): {', '.join(name for name, _ in parts)}."
    blocks = [Paragraph(note, "summary"), *(Paragraph(line) for line in lines)]
    document = combine(SUITE_TITLE.format(name=suite_name(folder)), parts, blocks)
    paths = write_report(folder, document, into=into)
    return dataclasses.replace(paths, table="\n".join(visible_controls(line) for line in lines))
