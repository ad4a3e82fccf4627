"""A self-contained HTML report: one file, images inlined, no script, no network.

One file is what gets mailed, attached to a ticket or opened years later from an
archive, so nothing in it may point to another file or to the web. A Content Security
Policy in the page enforces that in the browser: only ``data:`` images and the inline
style load.
"""

from __future__ import annotations

import base64
import errno
import html
import math
import numbers
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
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

_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_POLICY_META = f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2330; background: #fff; margin: 0 auto; padding: 1.5em 2em 3em;
       max-width: 1100px; }
h1 { font-size: 1.7em; margin-bottom: 0.3em; }
h2 { font-size: 1.35em; margin-top: 2em; border-bottom: 1px solid #d5d9e0;
     padding-bottom: 0.2em; }
h3, h4, h5, h6 { font-size: 1.1em; margin-top: 1.5em; }
p { margin: 0.6em 0; max-width: 75ch; }
.summary { background: #f3f6fb; border-left: 4px solid #3b6fd8; padding: 0.6em 1.2em;
           margin: 1em 0; }
nav.toc { margin: 1em 0 2em; }
nav.toc ul { margin: 0.2em 0; padding-left: 1.4em; }
nav.toc a { text-decoration: none; color: #2a56b5; }
nav.toc a:hover { text-decoration: underline; }
.table-wrap { max-height: 80vh; overflow: auto; margin: 0.8em 0 0.2em;
              border: 1px solid #d5d9e0; display: inline-block; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.8em; text-align: left; white-space: nowrap; }
thead th { position: sticky; top: 0; background: #e8ecf3; border-bottom: 1px solid #b9c0cc;
           z-index: 1; }
tbody tr:nth-child(even) { background: #f6f8fb; }
tbody tr:hover { background: #eaf1ff; }
th.num, td.num { text-align: right; }
td.missing { color: #8a93a3; }
.caption { font-size: 0.88em; color: #4a5261; margin: 0.2em 0 1.2em; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4ea; }
figcaption { font-size: 0.88em; color: #4a5261; margin-top: 0.3em; max-width: 75ch; }
footer { margin-top: 3em; padding-top: 0.6em; border-top: 1px solid #d5d9e0;
         font-size: 0.85em; color: #5f6775; }
"""


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
class Section:
    """A titled part of the report; ``text`` is plain text, paragraphs blank-line separated."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)


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


def _cells(frame: pd.DataFrame, float_format: str
           ) -> tuple[list[str], list[bool], list[list[str]]]:
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
    rows = [[_format_cell(value, float_format, integer[i]) for i, value in enumerate(row)]
            for row in shown.itertuples(index=False, name=None)]
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
        escaped = [cell.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
                   for cell in cells]
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
            classes = " ".join(name for name, on in (("num", num), ("missing", cell == MISSING))
                               if on)
            attribute = f' class="{classes}"' if classes else ""
            out.append(f"<td{attribute}>{html.escape(cell)}</td>")
        out.append("</tr>\n")
    if not rows:
        out.append(f'<tr><td colspan="{max(1, len(header))}">(no rows)</td></tr>\n')
    out.append("</tbody></table></div>\n")
    out.append(f'<p class="caption"><strong>Table {number}.</strong> '
               f"{html.escape(table.caption)}</p>\n")
    return "".join(out)


def image_data_uri(path: str | os.PathLike[str]) -> str:
    """The file as a ``data:`` URI, its MIME type from the extension.

    A missing file raises FileNotFoundError: a report that silently lacks a figure
    looks complete and misleads.
    """
    file = Path(path)
    mime = IMAGE_TYPES.get(file.suffix.lower())
    if mime is None:
        raise ValueError(f"cannot embed {str(file)!r}: expected one of "
                         f"{', '.join(sorted(IMAGE_TYPES))}")
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, "report figure not found", str(file))
    return f"data:{mime};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}"


def _figure_html(figure: Figure, number: int) -> str:
    source = image_data_uri(figure.path)
    caption = html.escape(figure.caption)
    return (f'<figure><img src="{source}" alt="{html.escape(figure.caption, quote=True)}">'
            f"<figcaption><strong>Figure {number}.</strong> {caption}</figcaption></figure>\n")


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


def _section_html(section: Section, depth: int, counters: _Counters,
                  toc: list[str]) -> str:
    """The section's HTML; its table-of-contents entry (nested list) goes onto ``toc``."""
    anchor = counters.anchor(section.title)
    title = html.escape(section.title)
    level = min(depth + 2, 6)
    body = [f'<section id="{anchor}">\n<h{level}>{title}</h{level}>\n',
            _paragraphs(section.text), _tables_html(section.tables, counters)]
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
    sections = "".join(_section_html(section, 0, counters, toc)
                       for section in report.sections)
    title = html.escape(report.title)
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        _POLICY_META, "\n",
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f'<header id="top"><h1>{title}</h1></header>\n',
        f'<div class="summary" id="summary">\n{summary}</div>\n',
    ]
    if toc:
        parts.append(f'<nav class="toc" id="contents"><strong>Contents</strong>\n'
                     f'<ul>\n{"".join(toc)}</ul></nav>\n')
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


# -- checking in a browser -----------------------------------------------------------

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_NONCE = "mschange-image-check"
_CHECK_SCRIPT = f"""<script nonce="{_NONCE}">
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images-loaded", loaded.length + "/" + images.length);
}});
</script>
"""
_RESULT = re.compile(r'data-images-loaded="(\d+)/(\d+)"')


def find_chromium() -> str | None:
    """A Chromium-like browser on PATH (or Debian's /usr/bin/chromium), else None."""
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def chromium_command(chromium: str, profile: str | os.PathLike[str]) -> list[str]:
    """Headless Chromium that neither reaches the network nor keeps state between runs."""
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]


def check_images_in_browser(html_path: str | os.PathLike[str], chromium: str | None = None,
                            *, timeout: float = 60.0) -> tuple[int, int]:
    """(loaded, total): how many ``<img>`` of the page a headless Chromium decoded.

    Catches what string checks cannot: a corrupt image, a wrong MIME type, or an image
    blocked by the page's own security policy. A copy of the page with a small script
    (allowed by nonce) is written beside the original, so relative references resolve
    as they would for the original; the copy is removed afterwards.
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError(errno.ENOENT, "no Chromium browser found", "chromium")
    page = Path(html_path).resolve()
    document = page.read_text(encoding="utf-8")
    document = document.replace(_POLICY, _POLICY.replace(
        "default-src 'none';", f"default-src 'none'; script-src 'nonce-{_NONCE}';"))
    closing = document.lower().rfind("</body>")
    document = (document[:closing] + _CHECK_SCRIPT + document[closing:] if closing >= 0
                else document + _CHECK_SCRIPT)
    copy = page.with_name(f".{page.stem}.imagecheck{os.getpid()}.html")
    try:
        copy.write_text(document, encoding="utf-8")
        with tempfile.TemporaryDirectory(prefix="mschange-chromium-") as profile:
            command = [*chromium_command(browser, profile), "--virtual-time-budget=5000",
                       "--dump-dom", copy.as_uri()]
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                    check=False)
    finally:
        copy.unlink(missing_ok=True)
    match = _RESULT.search(result.stdout)
    if match is None:
        raise RuntimeError(f"Chromium did not report the images of {page} (exit code "
                           f"{result.returncode}): {result.stderr[-2000:]}")
    return int(match.group(1)), int(match.group(2))
