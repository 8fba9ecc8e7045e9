"""The report as one document: a title, sections and the blocks they hold, rendered by two thin templates.

A report is built once as a `Document` (plain frozen dataclasses: `Section`, `Paragraph`, `Bullets`, `Table`,
`Facts`, `Figure`, `Code`, `Folded`) and rendered to HTML and Markdown by `templates/report.html.j2` and
`templates/report.md.j2`, so a section is written once and appears in both. The templates only lay blocks
out; every word and number is in the document. Text may mark code with backticks (`like this`): Markdown
keeps them, HTML shows `<code>`. HTML escapes every text (autoescape); Markdown escapes every text too
(`markdown_text`: no live HTML, no broken heading, list or table row), keeping code spans where HTML does.

`combine(title, [(name, document), ...])` makes a document whose sections are other documents (one per
sub-study, say): each becomes a section named `name`, its sections one level deeper, and its figures' file
names prefixed with `name` so they cannot collide in `report_files/`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import ClassVar

import jinja2
from markupsafe import Markup, escape

PLOT_DIR = "report_files"  # the figures' folder beside report.md (report.html embeds them)
_NUMBER_LIKE = re.compile(  # cells right-aligned in HTML tables: numbers, mean ± std, intervals, p-values
    r"^(?:[-+]?[\d,.]+(?: ± [\d.]+)?(?: \(\d+×\d+\))?|\[[-\d., ]+\]|—|p [<=] [\d.]+|[\d.]+e[-+]?\d+)$"
)
_CODE_SPAN = re.compile(r"`([^`]+)`")
_MARKDOWN_SPECIAL = re.compile(r"[\\`]")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A paragraph; `style` is `note` (small print under a table) or `summary` (the line under the title)."""

    text: str
    style: str = ""
    kind: ClassVar[str] = "paragraph"


@dataclasses.dataclass(frozen=True)
class Bullets:
    """A bulleted list of sentences."""

    items: tuple[str, ...]
    kind: ClassVar[str] = "bullets"


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of text cells; rows whose `highlighted` entry is true are drawn as the best row."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    highlighted: tuple[bool, ...] = ()
    kind: ClassVar[str] = "table"


@dataclasses.dataclass(frozen=True)
class Facts:
    """(name, value) pairs: a two-column table in HTML, a bulleted `name: value` list in Markdown."""

    items: tuple[tuple[str, str], ...]
    kind: ClassVar[str] = "facts"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG with a title and caption; `name` is its file stem in report_files/ (HTML embeds the bytes)."""

    name: str
    title: str
    caption: str
    png: bytes
    kind: ClassVar[str] = "figure"


@dataclasses.dataclass(frozen=True)
class Code:
    """Preformatted text (a spec, a configuration, per-epoch lines)."""

    text: str
    language: str = "text"
    kind: ClassVar[str] = "code"


@dataclasses.dataclass(frozen=True)
class Folded:
    """Blocks under a summary line: a `<details>` element in HTML, a sub-heading in Markdown."""

    summary: str
    blocks: tuple[Block, ...]
    open: bool = False
    kind: ClassVar[str] = "folded"


Block = Paragraph | Bullets | Table | Facts | Figure | Code | Folded


@dataclasses.dataclass(frozen=True)
class Section:
    """A headed part of the document: its blocks, then its subsections (one heading level deeper)."""

    title: str
    blocks: tuple[Block, ...] = ()
    sections: tuple[Section, ...] = ()


@dataclasses.dataclass(frozen=True)
class Document:
    """A whole report: its title, the blocks under the title, and its sections."""

    title: str
    blocks: tuple[Block, ...] = ()
    sections: tuple[Section, ...] = ()

    @property
    def figures(self) -> list[Figure]:
        """Every figure of the document, in reading order: what report_files/ holds."""
        return list(_figures(self.blocks, self.sections))

    def section(self, title: str) -> Section | None:
        """The first section (at any depth) with this title, None when there is none."""
        return next((found for found in _walk(self.sections) if found.title == title), None)


def combine(title: str, parts: Sequence[tuple[str, Document]], blocks: Sequence[Block] = ()) -> Document:
    """A document whose sections are other documents: each `(name, document)` becomes a section `name`
    holding the document's blocks and sections; its figures are renamed `<name>-<figure>` so the files of
    two parts never collide."""
    sections = []
    for name, part in parts:
        prefix = _SLUG.sub("_", name).strip("_") or "part"
        sections.append(
            Section(
                name,
                tuple(_prefixed(block, prefix) for block in part.blocks),
                tuple(_prefixed_section(section, prefix) for section in part.sections),
            )
        )
    return Document(title, tuple(blocks), tuple(sections))


def render_markdown(document: Document) -> str:
    """report.md: headings, pipe tables, figures linked from report_files/, code fences."""
    template = _environment(markdown=True).get_template("report.md.j2")
    text = template.render(document=document, plot_dir=PLOT_DIR)
    return text.rstrip("\n") + "\n"


def render_html(document: Document) -> str:
    """report.html: one self-contained page (inline CSS, figures as base64 data URIs), all text escaped."""
    return _environment(markdown=False).get_template("report.html.j2").render(document=document)


def _figures(blocks: Sequence[Block], sections: Sequence[Section]) -> Iterator[Figure]:
    for block in blocks:
        if isinstance(block, Figure):
            yield block
        elif isinstance(block, Folded):
            yield from _figures(block.blocks, ())
    for section in sections:
        yield from _figures(section.blocks, section.sections)


def _walk(sections: Sequence[Section]) -> Iterator[Section]:
    for section in sections:
        yield section
        yield from _walk(section.sections)


def _prefixed(block: Block, prefix: str) -> Block:
    if isinstance(block, Figure):
        return dataclasses.replace(block, name=f"{prefix}-{block.name}")
    if isinstance(block, Folded):
        return dataclasses.replace(block, blocks=tuple(_prefixed(inner, prefix) for inner in block.blocks))
    return block


def _prefixed_section(section: Section, prefix: str) -> Section:
    return Section(
        section.title,
        tuple(_prefixed(block, prefix) for block in section.blocks),
        tuple(_prefixed_section(inner, prefix) for inner in section.sections),
    )


def _environment(*, markdown: bool) -> jinja2.Environment:
    """The templates' environment: autoescape for HTML, block tags that leave no blank lines behind."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cnnlab.report", "templates"),
        autoescape=not markdown,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(md_cells=_md_cells, inline=_html_inline, base64=_base64, fence=_fence)
    environment.filters.update(md=markdown_text, md_inline=lambda text: markdown_text(text, code_spans=True))
    environment.tests["number_like"] = lambda cell: bool(_NUMBER_LIKE.match(str(cell)))
    return environment


def _md_cells(cells: Sequence[str]) -> str:
    """A Markdown table row, every cell escaped (`markdown_text`) and `|` in a cell too."""
    return "| " + " | ".join(markdown_text(cell).replace("|", "\\|") for cell in cells) + " |"


def visible_controls(text: str) -> str:
    """Control characters and line breaks as visible escapes (`\\n`, `\\x1b`): one line stays one line."""
    return "".join(_visible(char) for char in str(text))


def _visible(char: str) -> str:
    if unicodedata.category(char) not in ("Cc", "Zl", "Zp"):
        return char
    return repr(char)[1:-1] if char.isascii() else f"\\u{ord(char):04x}"


def markdown_text(text: str, code_spans: bool = False) -> str:
    """Text as literal Markdown: HTML escaped, backslash and backtick escaped, control characters visible, so
    a user's string can neither become live HTML nor split a heading, list item or table row. With
    `code_spans`, the document's `code` spans are kept (as HTML shows them in paragraphs, lists, captions)."""
    pieces = _CODE_SPAN.split(str(text)) if code_spans else [str(text)]
    return "".join(
        f"`{visible_controls(piece)}`" if index % 2 else _markdown_literal(piece)
        for index, piece in enumerate(pieces)
    )


def _markdown_literal(text: str) -> str:
    escaped = html.escape(visible_controls(text), quote=False)
    return _MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(0), escaped)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _html_inline(text: str) -> Markup:
    """Escaped text with `code` spans as <code>."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
