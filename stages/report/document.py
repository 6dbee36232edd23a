"""The report as a document: blocks (headings, paragraphs, lists, tables, plots) rendered to Markdown and to HTML.

Sections add blocks to a :class:`Doc` in reading order; :func:`to_markdown` and :func:`to_html` render the same blocks
(Markdown leaves the plots out). Both renderings are pure functions of the blocks: same blocks, same bytes.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field


class Code(str):
    """A table cell shown as code (an id, a path)."""


@dataclass
class Block:
    """One piece of the report.

    Attributes:
        kind: ``h`` (heading), ``p`` (paragraph), ``ul`` (bullet list), ``table`` or ``plot``.
        text: the heading or paragraph text (``p``, ``ul`` items: Markdown with only `code` and **bold**).
        level: the heading level.
        items: the bullet items.
        header: the table's column names.
        rows: the table's cells (plain text, or :class:`Code`); newlines are kept as line breaks.
        svg: the plot (an ``<svg>`` element); Markdown leaves plots out.
    """

    kind: str
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    svg: str = ""


class Doc:
    """The report as a list of blocks, added in reading order."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def h(self, level: int, text: str) -> None:
        """Add a heading of `level` (1 the page title, 2 a section, 3 a subsection); its slug is its HTML id."""
        self.blocks.append(Block("h", text=text, level=level))

    def p(self, text: str) -> None:
        """Add a paragraph (Markdown with only `code`, **bold** and [links](#anchor))."""
        self.blocks.append(Block("p", text=text))

    def ul(self, items: list[str]) -> None:
        """Add a bullet list; an empty list adds nothing."""
        if items:
            self.blocks.append(Block("ul", items=list(items)))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        """Add a table; a column whose every non-empty cell is a number is right-aligned."""
        self.blocks.append(Block("table", header=list(header), rows=[list(r) for r in rows]))

    def plot(self, svg: str, caption: str) -> None:
        """Add a plot (an ``<svg>`` element) with its caption; only the HTML page shows it."""
        self.blocks.append(Block("plot", text=caption, svg=svg))


_NUMERIC = re.compile(r"^(?:<?[+-]?[\d,]*\.?\d+(?:e[+-]?\d+)?%?|—|nan|\[.*\])$")


def _right_aligned(rows: list[list[str]], col: int) -> bool:
    cells = [r[col] for r in rows if r[col] != ""]
    return bool(cells) and all(not isinstance(c, Code) and _NUMERIC.match(c) for c in cells)


# Markdown a record's text could open: code spans, emphasis, strikethrough, table cells, math, and links and images
# (the `](` of `[text](url)`: a reference link needs a definition, which no table cell can hold); each is
# backslash-escaped so that it shows as written. An underscore inside a word opens nothing and is left as it is
# (`demo_alpaca`), and so is a bracket elsewhere (an interval `[0.1, 0.2]`). `<` (raw HTML, autolinks) and the `&`
# of an entity become entities. A dot before a letter and the colon of `://` are escaped too: that breaks the
# autolinks GFM and linkify find without markup (http://…, www.…, e-mail addresses, bare domains), since an escaped
# character is no longer part of the text they scan.
_MD_INLINE = re.compile(r"(?P<word>(?<=[^\W_])_+(?=[^\W_]))|[\\`*_~|$]|\](?=\()|<|&(?=#?\w+;)|\.(?=[^\W\d_])|:(?=//)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _md_escape(m: re.Match[str]) -> str:
    c = m.group()
    if m.group("word"):
        return c
    return {"<": "&lt;", "&": "&amp;"}.get(c, "\\" + c)


def md_text(text: str) -> str:
    """`text` as inert Markdown inside a table cell: it shows as written, and no code span, emphasis, link, image,
    autolink or HTML tag comes out of it, whatever it holds; line breaks become ``<br>``."""
    return _LINE_BREAK.sub("<br>", _MD_INLINE.sub(_md_escape, text))


def md_code(text: str) -> str:
    """`text` as one Markdown code span inside a table cell, whatever backticks, pipes or line breaks it holds.

    The fence is one backtick longer than the longest run inside; a space pads a text that starts or ends with a
    backtick or a space (CommonMark strips one on each side); a pipe is escaped (GFM unescapes it inside code).
    """
    if not text:
        return ""
    text = _LINE_BREAK.sub(" ", text).replace("|", "\\|")
    fence = "`" * (max(map(len, re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(cell: str) -> str:
    return md_code(str(cell)) if isinstance(cell, Code) else md_text(str(cell))


def to_markdown(doc: Doc) -> str:
    """Render the blocks as GitHub-flavoured Markdown (plots are left out: they are in the HTML page)."""
    parts: list[str] = []
    for b in doc.blocks:
        if b.kind == "h":
            parts.append("#" * b.level + " " + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "ul":
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |"]
            align = ["---:" if _right_aligned(b.rows, i) else "---" for i in range(len(b.header))]
            lines.append("| " + " | ".join(align) + " |")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """The Markdown subset of paragraphs (`code`, **bold**) as HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\[([^\]]+)\]\((#[a-z0-9-]+)\)", r'<a href="\2">\1</a>', out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
  padding: 0 1rem; color: #222; line-height: 1.45; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .88rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; font-size: .85em; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #555; }
""".strip()


def to_html(doc: Doc, title: str) -> str:
    """Render the blocks as one self-contained HTML page (inline CSS and SVG, nothing fetched)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_CSS}\n</style></head>",
        "<body>",
    ]
    for b in doc.blocks:
        if b.kind == "h":
            parts.append(f'<h{b.level} id="{_slug(b.text)}">{_inline_html(b.text)}</h{b.level}>')
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            nums = [_right_aligned(b.rows, i) for i in range(len(b.header))]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = []
            for row in b.rows:
                cells = []
                for cell, num in zip(row, nums, strict=True):
                    text = html.escape(str(cell)).replace("\n", "<br>")
                    text = f"<code>{text}</code>" if isinstance(cell, Code) and text else text
                    cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>")
        elif b.kind == "plot":
            parts.append(f"<figure>\n{b.svg.strip()}\n<figcaption>{_inline_html(b.text)}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
