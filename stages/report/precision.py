"""The report's reading of the reviews: each rule's measured precision beside its counts, and the curation plots' data.

Verdicts come from ``--reviews`` (``reviews/*.csv``, written by ``steep review score``; :mod:`stages.core.verdicts`).
A verdict counts for a reason only while the run still catches that record for it (:mod:`stages.core.catches`: the
drops in the rejects, the flags and rewrites in ``meta`` of moderate's and dedup's kept records), so a rule made more
precise leaves its old wrong verdicts behind. Each reason's precision is held to ``report.min_<action>_precision``;
the p-values of "at least the bar" are Holm-corrected over the reasons reviewed.

Also here: ``metrics/review.json`` (per reason: n, right, precision, interval, p, below the bar; for
``dvc metrics diff``), and the rows of ``metrics/funnel.csv`` and ``metrics/drops.csv`` (DVC plots).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core.catches import action_of, catches, switch
from stages.core.io import read_parquet
from stages.core.params.report import Report
from stages.core.verdicts import ALPHA, Precision, assess, judged, read_verdicts
from stages.report.document import Code, Doc
from stages.report.inputs import Inputs, Run, shown_path
from stages.report.text import fmt_count

DIGITS = 4
REVIEWED_STAGES = ("moderate", "dedup")


@dataclass
class Review:
    """The verdicts read and what they measure (``folder`` None: no reviews folder)."""

    folder: str | None = None
    verdicts: int = 0
    left_out: int = 0  # verdicts on records the run no longer catches for that reason
    caught: Counter = field(default_factory=Counter)  # reason -> records caught
    stage_of: dict[str, str] = field(default_factory=dict)
    scores: dict[str, Precision] = field(default_factory=dict)


def _kept(path: Path, reader: Inputs, what: str | None) -> list[dict[str, Any]]:
    """(id, meta) rows of a kept-records file; listed among the inputs when `what` is given."""
    found = path.is_file()
    if what is not None:
        reader.seen.append((shown_path(path), what, found))
    if not found:
        return []
    rows = read_parquet(path, ("id", "meta"), "Parquet", "rerun the stage that writes it").to_pylist()
    return [{"id": r["id"], "meta": json.loads(r["meta"] or "{}")} for r in rows]


def read_review(run: Run, inputs: dict[str, Path], reader: Inputs, cfg: Report) -> Review:
    """The run's catches (moderate's and dedup's) and the verdicts of ``inputs["reviews"]`` on them, scored.

    Raises:
        StageError: a verdict file that is malformed (named with its line).
    """
    rejects = [r for s in REVIEWED_STAGES for r in run.rejects.get(s) or []]
    found = catches(rejects, _kept(inputs["moderated"], reader, None), _kept(inputs["curated"], reader, "dedup kept"))
    folder = Path(inputs["reviews"])
    review = Review(caught=Counter(c.reason for c in found), stage_of={c.reason: c.stage for c in found})
    files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    reader.seen += [(shown_path(p), "review verdicts", True) for p in files] or [
        (shown_path(folder), "review verdicts (CSV files)", folder.is_dir())
    ]
    if not folder.is_dir():
        return review
    marks: dict[tuple[str, str], dict[str, str]] = {}
    for path in files:
        marks.update(read_verdicts(path))
    current = {c.key for c in found}
    review.folder, review.verdicts = shown_path(folder), len(marks)
    review.left_out = sum(1 for k in marks if k not in current)
    verdicts = judged(marks, current)
    review.scores = assess(verdicts, {r: cfg.bars()[action_of(r)] for r in verdicts})
    return review


def precision_cell(review: Review | None, reason: str, stage: str | None = None) -> str:
    """A reason's measured precision as a table cell: ``0.93 (n 40)``, ``0.67 (n 3), below 0.90`` under its bar,
    "—" when not reviewed (or, given `stage`, when the verdicts are on another stage's reason of that name)."""
    s = None if review is None else review.scores.get(reason)
    if s is None or not s.n or (stage is not None and review.stage_of.get(reason) != stage):
        return "—"
    cell = f"{s.precision:.2f} (n {s.n})"
    return f"{cell}, below {s.bar:.2f}" if s.below else cell


def section_precision(doc: Doc, review: Review) -> None:
    """Add each reviewed rule's precision with its test, and under a rule below its bar the params line to change."""
    doc.h(2, "Rule precision, from the reviews")
    if review.folder is None or not review.scores:
        where = "no verdict" if review.folder else "no reviews folder"
        doc.p(
            f"Not measured ({where}). Draw a sample of what curation did with `steep review sample --out "
            "sheet.html`, mark it in a browser, then `steep review score sheet-marked.csv --name <round>`: the "
            "verdicts go to `reviews/<round>.csv`, and this section shows each rule's precision."
        )
        return
    doc.p(
        f"{review.verdicts:,} verdicts in `{review.folder}` (skips not counted; {review.left_out:,} on records the run "
        "no longer catches for that reason, left out). Precision = right / judged, with its Wilson 95% interval; "
        'p = one-sided exact binomial test of "precision at least the bar", Holm-corrected over the '
        f"{sum(1 for s in review.scores.values() if s.n)} reasons reviewed (significant below {ALPHA}); "
        "*detects ≤* = the highest precision that many verdicts can tell from the bar. The bar is "
        "`report.min_drop_precision`, `min_flag_precision` or `min_rewrite_precision` by what the rule does."
    )
    rows, changes = [], []
    for reason, s in review.scores.items():
        lo, hi = s.interval
        det = s.detectable
        stage = review.stage_of.get(reason, "")
        mark = (f"below (p < {ALPHA})" if s.p < ALPHA else "below") if s.below else "ok"
        rows.append(
            [
                stage,
                Code(reason),
                action_of(reason),
                fmt_count(review.caught.get(reason, 0)),
                f"{s.right} / {s.n}",
                f"{s.precision:.2f}",
                f"{lo:.2f}–{hi:.2f}",
                f"{s.bar:.2f}",
                f"{s.p:.3g}",
                "—" if det is None else f"{det:.2f}",
                mark,
            ]
        )
        if s.below:
            line = switch(stage, reason, action_of(reason))
            changes.append(f"`{reason}` ({s.precision:.2f} < {s.bar:.2f}): `{line}`")
    doc.table(
        ["stage", "reason", "action", "records", "right", "precision", "95% interval", "bar", "p", "detects ≤", ""],
        rows,
    )
    if changes:
        doc.p("Below the bar; the params line that makes each rule act less (a drop flags, a flag stops):")
        doc.ul(changes)


def review_metrics(review: Review) -> dict[str, Any]:
    """``metrics/review.json``: per reviewed reason its numbers (nested: ``dvc metrics diff`` shows
    ``<reason>.precision``), and the verdict counts."""
    out: dict[str, Any] = {"verdicts": review.verdicts, "verdicts_left_out": review.left_out}
    for reason, s in review.scores.items():
        lo, hi = s.interval
        out[reason] = {
            "n": s.n,
            "right": s.right,
            "precision": round(s.precision, DIGITS),
            "ci_low": round(lo, DIGITS),
            "ci_high": round(hi, DIGITS),
            "p_holm": round(s.p, DIGITS),
            "below_bar": int(s.below),
        }
    return out


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """Rows as CSV text (``\\n`` line ends): a DVC plot's data file."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
