"""The report of a suite folder: each sub-study's own report, then one report.html / report.md with a section
per sub-study (the sub-reports, headings one level down, in the suite's order)."""

from __future__ import annotations

import html
import re
from pathlib import Path

from cnnlab.report.render import PLOT_DIR, write_report
from cnnlab.safeio import atomic_write_text

_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S)
_HEAD = re.compile(r"^(.*<body[^>]*>)", re.S)
_HEADING = re.compile(r"<(/?)h([1-5])\b")


def write_suite_report(folder: str | Path) -> tuple[Path, Path]:
    """Write every sub-study's report, then the suite's report.html and report.md; returns their paths."""
    from cnnlab.study.suite import suite_name, suite_studies

    folder = Path(folder)
    name = suite_name(folder)
    done = [(study, path) for study, path in suite_studies(folder) if (path / "study.json").is_file()]
    for _, path in done:
        write_report(path)
    markdown = _markdown(name, done)
    page = _html(name, done)
    return atomic_write_text(folder / "report.html", page), atomic_write_text(folder / "report.md", markdown)


def _markdown(name: str, studies: list[tuple[str, Path]]) -> str:
    out = [f"# Suite report: {name}", "", "Studies: " + ", ".join(study for study, _ in studies), ""]
    for study, path in studies:
        text = (path / "report.md").read_text(encoding="utf-8")
        text = text.replace(f"]({PLOT_DIR}/", f"]({study}/{PLOT_DIR}/")
        out += [f"## Study: {study}", "", f"(folder `{study}/`)", "", *_demoted(text.splitlines()), ""]
    return "\n".join(out)


def _demoted(lines: list[str]) -> list[str]:
    """Headings one level down (not `#` lines inside code blocks), without the sub-report's own title."""
    out, in_code = [], False
    for line in lines:
        in_code = in_code != line.startswith("```")
        out.append(f"#{line}" if line.startswith("#") and not in_code else line)
    return out[1:] if out and out[0].startswith("## Study report") else out


def _html(name: str, studies: list[tuple[str, Path]]) -> str:
    head = ""
    sections = []
    for study, path in studies:
        page = (path / "report.html").read_text(encoding="utf-8")
        head = head or (_HEAD.match(page).group(1) if _HEAD.match(page) else "<html><body>")
        body = _BODY.search(page)
        inner = _HEADING.sub(lambda m: f"<{m.group(1)}h{int(m.group(2)) + 1}", body.group(1) if body else "")
        sections.append(
            f"<section id='{html.escape(study)}'><h2>Study: {html.escape(study)}</h2>\n{inner}</section>"
        )
    title = f"Suite report: {html.escape(name)}"
    head = re.sub(r"<title>.*?</title>", f"<title>{title}</title>", head, flags=re.S)
    toc = "".join(f"<li><a href='#{html.escape(s)}'>{html.escape(s)}</a></li>" for s, _ in studies)
    return f"{head}\n<h1>{title}</h1>\n<ul>{toc}</ul>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
