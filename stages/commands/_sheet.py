"""The review sheet of ``steep review sample``: CSV for a spreadsheet, or one HTML page to mark in a browser.

Both hold, per sampled catch, the record id, reason, stage, action, the rule's detail, the record's text (as curation
left it) and, where a reader needs it, a second text: the text as pulled for a rewrite, the record kept in its
place for a duplicate. The ``verdict`` column is empty for the reviewer: ``right``, ``wrong`` or ``skip``
(:mod:`stages.core.verdicts`). The HTML page has a radio button per verdict, a note field, and a button that
downloads the marks as a CSV that ``steep review score`` reads (marks are also kept in the browser's local storage,
so a reload loses nothing).
"""

from __future__ import annotations

import csv
import difflib
import html
import re
from dataclasses import dataclass
from pathlib import Path

from stages.core.catches import Catch
from stages.core.io import atomic_outputs
from stages.core.records import TEXT_KINDS, Record

_WORDS = re.compile(r"\w+|\s+|[^\w\s]")
COLUMNS = ("id", "reason", "stage", "action", "verdict", "note", "detail", "text", "compare")
MAX_CHARS = 4000  # of each text in a sheet: enough to judge a record, short enough to read


@dataclass(frozen=True)
class Row:
    """One sampled catch with the texts a reviewer reads."""

    catch: Catch
    text: str
    compare: str = ""  # "" when there is nothing to compare with


def readable(record: Record | None) -> str:
    """The record's content as a reviewer reads it: labelled parts, the middle left out past :data:`MAX_CHARS`."""
    if record is None:
        return "(record not found in the run's data)"
    if record["kind"] == "conversation":
        parts = [(m["role"].upper(), m["content"]) for m in record["messages"]]
    elif record["kind"] in TEXT_KINDS:  # a document or a restatement
        parts = [("TEXT", record["text"])]
    else:
        parts = [("INSTRUCTION", record["instruction"]), ("INPUT", record["input"]), ("OUTPUT", record["output"])]
    text = "\n\n".join(f"{label}:\n{body}" for label, body in parts if body or label == "OUTPUT")
    if len(text) <= MAX_CHARS:
        return text
    # the head and the tail: a long record's question and its answer are at the end
    head, tail = MAX_CHARS // 4, MAX_CHARS - MAX_CHARS // 4
    return f"{text[:head]} […{len(text) - MAX_CHARS:,} characters left out…] {text[-tail:]}"


def changes(before: Record | None, after: Record | None, limit: int = 5) -> str:
    """What a rewrite changed, span by span with some context (``…was at [ann@x.org -> <EMAIL>] or…``): the
    texts can be long, the changes short."""
    if before is None or after is None:
        return ""
    # word by word: a character diff splits `sk-4fT9…` -> `<API_KEY>` into shared letters
    a, b = _WORDS.findall(readable_full(before)), _WORDS.findall(readable_full(after))
    spans = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            left, right = "".join(a[max(0, i1 - 12) : i1]), "".join(a[i2 : i2 + 12])
            spans.append(f"…{left}[{''.join(a[i1:i2])} -> {''.join(b[j1:j2])}]{right}…")
    more = f"\n(and {len(spans) - limit} more)" if len(spans) > limit else ""
    return "CHANGED:\n" + "\n".join(spans[:limit]) + more


def readable_full(record: Record) -> str:
    """The record's content fields joined, unclipped (for :func:`changes`)."""
    parts = [record["instruction"], record["input"], record["output"], record["text"]]
    return "\n\n".join([*parts, *(m["content"] for m in record["messages"])])


def write_csv(path: Path, rows: list[Row]) -> None:
    """The sheet as CSV (:data:`COLUMNS`), the verdict and note empty; written atomically."""
    with atomic_outputs(path) as (tmp,), tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            c = r.catch
            w.writerow([c.id, c.reason, c.stage, c.action, "", "", c.detail, r.text, r.compare])


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em}
.row{border:1px solid #ccc;border-radius:6px;margin:.8em 0;padding:.6em .8em}
.row.marked{border-color:#6a6;background:#f6fff6}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;margin:.4em 0;max-height:24em;
overflow:auto}
.meta{color:#555;font-size:12px}.detail{font-family:monospace}
.bar{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd;z-index:1}
label{margin-right:1em}input[type=text]{width:40em}
"""

_SCRIPT = """
const KEY = "steep-review:" + document.title;
const saved = JSON.parse(localStorage.getItem(KEY) || "{}");
function rows() { return Array.from(document.querySelectorAll(".row")); }
function mark(row) {
  const v = row.querySelector("input[type=radio]:checked");
  row.classList.toggle("marked", !!v);
  return {id: row.dataset.id, reason: row.dataset.reason, verdict: v ? v.value : "",
          note: row.querySelector("input[type=text]").value};
}
function count() {
  const marks = rows().map(mark);
  document.getElementById("count").textContent = marks.filter(m => m.verdict).length + " of " + marks.length;
  const keep = {}; marks.forEach(m => { keep[m.id + " " + m.reason] = m; });
  localStorage.setItem(KEY, JSON.stringify(keep));
}
rows().forEach(row => {
  const m = saved[row.dataset.id + " " + row.dataset.reason];
  if (m) {
    const r = row.querySelector("input[value='" + m.verdict + "']"); if (r) r.checked = true;
    row.querySelector("input[type=text]").value = m.note || "";
  }
  row.addEventListener("change", count); row.addEventListener("input", count);
});
count();
function cell(s) { return /[",\\n\\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
document.getElementById("download").onclick = () => {
  const lines = ["id,reason,verdict,note"].concat(
    rows().map(mark).map(m => [m.id, m.reason, m.verdict, m.note].map(cell).join(",")));
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {type: "text/csv"}));
  a.download = document.body.dataset.csv; a.click();
};
"""


def write_html(path: Path, rows: list[Row], title: str) -> None:
    """The sheet as one self-contained HTML page (no network), grouped by reason; written atomically."""
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style></head>",
        f'<body data-csv="{e(path.stem)}-marked.csv">',
        f"<h1>{e(title)}</h1>",
        "<p>Mark each record: <b>right</b> (it has the defect the reason names; the rewrite was due), <b>wrong</b> "
        "or <b>skip</b>. Notes in your own words. Then download the marks and run "
        f"<code>steep review score {e(path.stem)}-marked.csv</code>.</p>",
        '<div class="bar"><button id="download">Download marked CSV</button> marked: <span id="count"></span></div>',
    ]
    reason = None
    for n, r in enumerate(rows):
        c = r.catch
        if c.reason != reason:
            reason = c.reason
            k = sum(1 for x in rows if x.catch.reason == reason)
            out.append(f"<h2>{e(reason)} <small>({c.action}, {c.stage}; {k} sampled)</small></h2>")
        radios = "".join(
            f'<label><input type="radio" name="v{n}" value="{v}"> {v}</label>' for v in ("right", "wrong", "skip")
        )
        compare = f"<pre>{e(r.compare)}</pre>" if r.compare else ""
        out.append(
            f'<div class="row" data-id="{e(c.id)}" data-reason="{e(c.reason)}">'
            f'<div class="meta">{e(c.id)} · {e(c.stage)} · {e(c.action)}</div>'
            f'<div class="detail">{e(c.detail)}</div><pre>{e(r.text)}</pre>{compare}'
            f'<div>{radios}<input type="text" placeholder="note (your words, not the record\'s)"></div></div>'
        )
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    with atomic_outputs(path) as (tmp,):
        tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
