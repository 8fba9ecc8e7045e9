"""The report of a suite folder: each sub-study's own report, then one report.html / report.md with a section
per sub-study (`combine` of the sub-studies' documents, in the suite's order)."""

from __future__ import annotations

from pathlib import Path

from cnnlab.report.document import Paragraph, combine
from cnnlab.report.render import build_document, build_report, write_report
from cnnlab.runfolder import suite_name, suite_studies

SUITE_TITLE = "Suite report: {name}"


def write_suite_report(folder: str | Path) -> tuple[Path, Path]:
    """Write every sub-study's report (each built once), then the suite's report.html and report.md with a
    section per sub-study; returns their paths. A sub-study not started yet is named, not shown."""
    folder = Path(folder)
    studies = suite_studies(folder)
    parts = []
    for study, path in studies:
        if not (path / "study.json").is_file():
            continue
        report = build_report(path)
        write_report(report)  # the sub-study's own report.html, report.md, results.csv and figures
        parts.append((study, build_document(report)))
    missing = [study for study, path in studies if not (path / "study.json").is_file()]
    note = f"Studies, each a section (and a folder of its own): {', '.join(name for name, _ in parts)}."
    blocks = [Paragraph(note, "summary")]
    if missing:
        blocks.append(Paragraph(f"Not started yet: {', '.join(missing)}.", "note"))
    paths = write_report(folder, combine(SUITE_TITLE.format(name=suite_name(folder)), parts, blocks))
    return paths.html, paths.markdown
