"""A self-contained HTML report: one file, images inlined, no script, no network.

One file is what gets mailed, attached to a ticket or opened years later from an
archive, so nothing it shows may come from another file or from the web. A Content
Security Policy in the page enforces that in the browser: only ``data:`` images and the
inline style load. Links (``Section.links``) to pages written beside it, such as each
pair's summary and viewer, load nothing until followed.
"""

from __future__ import annotations

import base64
import errno
import html
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from mschange.io import atomic_path

MISSING = "–"  # en dash: a missing value, distinct from a hyphen or a minus sign

IMAGE_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
}

CONTENT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_POLICY_META = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">'

# The report's style sheet, inlined into every page (package data beside this module).
_CSS = (resources.files("mschange.evaluation") / "report.css").read_text(encoding="utf-8")


@dataclass
class Figure:
    """An image file (PNG, SVG or JPEG) to inline, with its caption."""

    path: str | os.PathLike[str]
    caption: str


@dataclass
class Table:
    """A DataFrame shown as a table; floats through ``float_format``, NaN as an en dash.

    The index is shown only when it has a name (``set_index("subject")``), so the
    row numbers of a plain frame do not clutter the report.
    """

    frame: pd.DataFrame
    caption: str
    float_format: str = "{:.3f}"


@dataclass
class Link:
    """A link to another page written beside this one (a relative path); loads nothing."""

    text: str
    href: str


@dataclass
class Section:
    """A titled part of the report; ``text`` is plain text, paragraphs blank-line separated."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)


@dataclass
class Report:
    title: str
    summary: str
    sections: list[Section]
    footer: str = ""
    summary_tables: list[Table] = field(default_factory=list)


# -- cells ---------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays: not a scalar, so not missing
        return False


def _format_cell(value: Any, float_format: str, integer_column: bool) -> str:
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if integer_column and number.is_integer():
            return str(int(number))
        if math.isinf(number):
            return "∞" if number > 0 else "-∞"
        return float_format.format(number)
    return str(value)


def _label(name: Any) -> str:
    if isinstance(name, tuple):
        return " / ".join(str(part) for part in name)
    return "" if name is None else str(name)


def _cells(frame: pd.DataFrame, float_format: str) -> tuple[list[str], list[bool], list[list[str]]]:
    """Header labels, whether each column is numeric (right-aligned), and formatted rows."""
    shown = frame
    if any(name is not None for name in frame.index.names):
        shown = frame.reset_index()
    header = [_label(column) for column in shown.columns]
    numeric, integer = [], []
    for _, column in shown.items():
        dtype = column.dtype
        is_bool = pd.api.types.is_bool_dtype(dtype)
        numeric.append(pd.api.types.is_numeric_dtype(dtype) and not is_bool)
        integer.append(pd.api.types.is_integer_dtype(dtype) and not is_bool)
    rows = [
        [_format_cell(value, float_format, integer[i]) for i, value in enumerate(row)]
        for row in shown.itertuples(index=False, name=None)
    ]
    return header, numeric, rows


def table_markdown(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub-flavoured markdown pipe table (numbers right-aligned, NaN as "–").

    For a run summary or a pull-request comment; written here so that the report does
    not depend on ``tabulate``.
    """
    header, numeric, rows = _cells(frame, float_format)
    if not header:
        return ""

    def line(cells: list[str]) -> str:
        escaped = [cell.replace("|", "\\|").replace("\r", " ").replace("\n", " ") for cell in cells]
        return "| " + " | ".join(escaped) + " |"

    rule = "| " + " | ".join("---:" if num else "---" for num in numeric) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in rows)]) + "\n"


# -- HTML ----------------------------------------------------------------------------


def _paragraphs(text: str) -> str:
    parts = [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]
    return "".join(f"<p>{html.escape(part)}</p>\n" for part in parts)


def _table_html(table: Table, number: int) -> str:
    header, numeric, rows = _cells(table.frame, table.float_format)
    out = ['<div class="table-wrap"><table>\n<thead><tr>']
    for label, num in zip(header, numeric, strict=True):
        attribute = ' class="num"' if num else ""
        out.append(f'<th scope="col"{attribute}>{html.escape(label)}</th>')
    out.append("</tr></thead>\n<tbody>\n")
    for row in rows:
        out.append("<tr>")
        for cell, num in zip(row, numeric, strict=True):
            classes = " ".join(
                name for name, on in (("num", num), ("missing", cell == MISSING)) if on
            )
            attribute = f' class="{classes}"' if classes else ""
            out.append(f"<td{attribute}>{html.escape(cell)}</td>")
        out.append("</tr>\n")
    if not rows:
        out.append(f'<tr><td colspan="{max(1, len(header))}">(no rows)</td></tr>\n')
    out.append("</tbody></table></div>\n")
    out.append(
        f'<p class="caption"><strong>Table {number}.</strong> {html.escape(table.caption)}</p>\n'
    )
    return "".join(out)


def image_data_uri(path: str | os.PathLike[str]) -> str:
    """The file as a ``data:`` URI, its MIME type from the extension.

    A missing file raises FileNotFoundError: a report that silently lacks a figure
    looks complete and misleads.
    """
    file = Path(path)
    mime = IMAGE_TYPES.get(file.suffix.lower())
    if mime is None:
        raise ValueError(
            f"cannot embed {str(file)!r}: expected one of {', '.join(sorted(IMAGE_TYPES))}"
        )
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, "report figure not found", str(file))
    return f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}"


def _figure_html(figure: Figure, number: int) -> str:
    source = image_data_uri(figure.path)
    caption = html.escape(figure.caption)
    return (
        f'<figure><img src="{source}" alt="{html.escape(figure.caption, quote=True)}">'
        f"<figcaption><strong>Figure {number}.</strong> {caption}</figcaption></figure>\n"
    )


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug or "section"


@dataclass
class _Counters:
    tables: int = 0
    figures: int = 0
    used: set[str] = field(default_factory=lambda: {"summary", "contents", "top"})

    def anchor(self, title: str) -> str:
        base = _slug(title)
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        return candidate


def _tables_html(tables: list[Table], counters: _Counters) -> str:
    out = []
    for table in tables:
        counters.tables += 1
        out.append(_table_html(table, counters.tables))
    return "".join(out)


def _links_html(links: list[Link]) -> str:
    if not links:
        return ""
    items = "".join(
        f'<li><a href="{html.escape(link.href, quote=True)}">{html.escape(link.text)}</a></li>'
        for link in links
    )
    return f'<ul class="links">{items}</ul>\n'


def _section_html(section: Section, depth: int, counters: _Counters, toc: list[str]) -> str:
    """The section's HTML; its table-of-contents entry (nested list) goes onto ``toc``."""
    anchor = counters.anchor(section.title)
    title = html.escape(section.title)
    level = min(depth + 2, 6)
    body = [
        f'<section id="{anchor}">\n<h{level}>{title}</h{level}>\n',
        _paragraphs(section.text),
        _tables_html(section.tables, counters),
        _links_html(section.links),
    ]
    for figure in section.figures:
        counters.figures += 1
        body.append(_figure_html(figure, counters.figures))
    toc.append(f'<li><a href="#{anchor}">{title}</a>')
    if section.subsections:
        toc.append("<ul>")
        for subsection in section.subsections:
            body.append(_section_html(subsection, depth + 1, counters, toc))
        toc.append("</ul>")
    toc.append("</li>\n")
    body.append("</section>\n")
    return "".join(body)


def render_html(report: Report) -> str:
    """The whole report as one HTML document (every text escaped, every image inlined)."""
    counters = _Counters()
    summary = _paragraphs(report.summary) + _tables_html(report.summary_tables, counters)
    toc: list[str] = []
    sections = "".join(_section_html(section, 0, counters, toc) for section in report.sections)
    title = html.escape(report.title)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        _POLICY_META,
        "\n",
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f'<header id="top"><h1>{title}</h1></header>\n',
        f'<div class="summary" id="summary">\n{summary}</div>\n',
    ]
    if toc:
        parts.append(
            f'<nav class="toc" id="contents"><strong>Contents</strong>\n'
            f"<ul>\n{''.join(toc)}</ul></nav>\n"
        )
    parts.append(f"<main>\n{sections}</main>\n")
    if report.footer.strip():
        parts.append(f"<footer>\n{_paragraphs(report.footer)}</footer>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def write_html(report: Report, path: str | os.PathLike[str]) -> Path:
    """Render and write atomically: a figure missing mid-render leaves no partial file."""
    document = render_html(report)
    with atomic_path(path) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return Path(path)
