"""``steep review``: read a sample of what curation did, mark it, and measure each rule's precision from the marks.

``steep review sample [--run .] [--per-reason 25] [--seed S] --out sheet.csv|sheet.html`` draws, per reason, a
seeded sample of what moderate and dedup did to the run's records (:mod:`stages.core.catches`: drops from
``data/rejected/``, flags and rewrites from the kept records' ``meta``; the paths are those of the stages' ``cmd`` in
the run's ``dvc.yaml``), leaving out the (id, reason) pairs already judged in ``reviews/``, and writes a sheet to
mark: CSV, or an HTML page with a radio button per verdict (:mod:`stages.commands._sheet`). The seed defaults to
``common.seed``; the same data, seed and reviews give the same sample.

``steep review score sheet.csv [--name NAME]`` reads the marked sheet (``right``, ``wrong``, ``skip``), merges the
verdicts by (record id, reason) into ``reviews/<NAME>.csv`` (ids, reasons, verdicts and notes: no record text), and
prints, per reason over every verdict in ``reviews/`` on a record the run still catches: the records caught, the
verdicts, precision, its Wilson 95% interval, the bar (``report.min_<action>_precision``), the one-sided p-value of
"at least the bar" after Holm's correction, and for a rule below its bar the params line that makes it act less.
The report stage shows the same table (``reviews/`` is one of its dependencies), and writes it to
``metrics/review.json`` for ``dvc metrics diff``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stages.commands import _sheet
from stages.core import params as _params
from stages.core.catches import DROP, REWRITE, Catch, action_of, catches, switch
from stages.core.io import StageError
from stages.core.records import REJECT_SCHEMA, Record, iter_records, read_records, record_files
from stages.core.verdicts import (
    Key,
    Precision,
    assess,
    judged,
    merge_verdicts,
    read_verdict_dir,
    read_verdicts,
    sample_ids,
)

MODULES = {"moderate": "stages.curate.moderate", "dedup": "stages.curate.dedup"}
_DUPLICATE_OF = re.compile(r"(?:duplicate of|near) ([0-9a-f]{16})")  # dedup's and cleanlab's details
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``steep review sample|score``."""
    p = subparsers.add_parser(
        "review",
        help="sample what curation did, mark it, score each rule's precision",
        description="Read a sample of what moderate and dedup did, mark it, and measure each rule's precision: "
        "`steep review sample --out sheet.html`, mark it in a browser, `steep review score sheet-marked.csv`.",
    )
    sub = p.add_subparsers(dest="review", required=True, metavar="sample|score")
    s = sub.add_parser(
        "sample",
        help="write a seeded, stratified sheet of drops, flags and rewrites to mark",
        description="Draw per reason a seeded sample of the run's drops (data/rejected/), flags and rewrites (the kept "
        "records' meta), leaving out what reviews/ already judged, and write a sheet to mark (CSV or HTML).",
    )
    s.add_argument("--run", type=Path, default=Path("."), help="the project root of the run (default: .)")
    s.add_argument("--per-reason", type=int, default=25, help="records drawn per reason (default: 25)")
    s.add_argument("--seed", type=int, help="the sample's seed (default: common.seed of the run's params.yaml)")
    s.add_argument("--reason", action="append", help="only this reason (repeatable), as the metrics name it")
    s.add_argument("--reviews", type=Path, help="verdicts already given, not drawn again (default: RUN/reviews)")
    s.add_argument("--out", type=Path, required=True, help="the sheet: .csv, or .html to mark in a browser")
    c = sub.add_parser(
        "score",
        help="merge a marked sheet into reviews/NAME.csv and print each rule's precision",
        description="Merge the verdicts of a marked sheet (right, wrong, skip) into reviews/NAME.csv by record id and "
        "reason, and print per reason: records caught, verdicts, precision, Wilson 95% interval, the bar "
        "(report.min_<action>_precision), Holm-corrected p of 'at least the bar', and the params line for a rule "
        "below it.",
    )
    c.add_argument("sheet", type=Path, help="a marked sheet (CSV with id, reason, verdict and optionally note)")
    c.add_argument("--name", help="the verdict file reviews/NAME.csv (default: the sheet's name)")
    c.add_argument("--run", type=Path, default=Path("."), help="the project root of the run (default: .)")
    c.add_argument("--reviews", type=Path, help="the verdicts folder (default: RUN/reviews)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``sample`` or ``score``; 0 on success."""
    return sample(args) if args.review == "sample" else score(args)


# --- the run's data ---------------------------------------------------------------------------------------------


def stage_flags(root: Path) -> dict[str, dict[str, Path]]:
    """{stage: {flag: path}} of moderate's and dedup's ``cmd`` in the run's dvc.yaml (``--in``, ``--out``,
    ``--rejects``), relative to `root`."""
    data = _params.read_yaml(root / "dvc.yaml") or {}
    out: dict[str, dict[str, Path]] = {}
    for name, module in MODULES.items():
        for stage in (data.get("stages") or {}).values():
            words = str(stage.get("cmd", "")).split()
            if f"python -m {module} " in " ".join([*words, ""]):
                out[name] = {w: root / words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
        if name not in out:
            raise StageError(f"{root / 'dvc.yaml'}: no stage runs `python -m {module}`; give --run a steep project")
    return out


@dataclass
class RunData:
    """What moderate and dedup did in one run, and the records to show for it."""

    catches: list[Catch]
    rejected: dict[tuple[str, str], Record]  # (stage, id) -> the record as dropped
    kept: dict[str, Record]  # id -> the record as moderate kept it (dedup's flags: as dedup kept it)
    pulled: Path | None  # moderate's input folder, for the text before a rewrite
    read: list[str] = field(default_factory=list)


def load_run(root: Path) -> RunData:
    """Read moderate's and dedup's outputs of the run at `root` (those there; at least one).

    Raises:
        StageError: no dvc.yaml naming the stages, or none of their outputs there.
    """
    flags = stage_flags(root)
    rejects: list[Record] = []
    read = []
    for stage in MODULES:
        path = flags[stage].get("--rejects")
        if path is not None and path.is_file():
            rejects += read_records(path, REJECT_SCHEMA)
            read.append(str(path))
    kept_files = [flags["moderate"].get("--out"), flags["dedup"].get("--out")]
    moderated, curated = ([] if p is None or not p.is_file() else read_records(p) for p in kept_files)
    read += [str(p) for p in kept_files if p is not None and p.is_file()]
    if not read:
        raise StageError(
            f"{root}: none of moderate's and dedup's outputs are there ({', '.join(str(p) for p in kept_files)}, "
            "data/rejected/); run `dvc repro dedup` (or `dvc pull`) first"
        )
    pulled = flags["moderate"].get("--in")
    return RunData(
        catches=catches(rejects, moderated, curated),
        rejected={(r["stage"], r["id"]): r for r in rejects},
        kept={r["id"]: r for r in [*curated, *moderated]},  # moderate's version wins: its flags are on it
        pulled=pulled if pulled is not None and pulled.is_dir() else None,
        read=read,
    )


def _pulled(folder: Path | None, ids: set[str]) -> dict[str, Record]:
    """The records of `ids` as pulled (moderate's input), read batch by batch."""
    out: dict[str, Record] = {}
    if folder is None or not ids:
        return out
    for path in record_files(folder):
        for batch in iter_records(path):
            out.update({r["id"]: r for r in batch if r["id"] in ids})
    return out


# --- sample -----------------------------------------------------------------------------------------------------


def draw(found: list[Catch], per_reason: int, seed: int, reviewed: frozenset[Key] = frozenset()) -> list[Catch]:
    """Per reason (a stratum each), a seeded sample of `per_reason` catches not in `reviewed`, sorted by reason
    then id: the same catches, seed and reviews give the same sample."""
    by_reason: dict[str, dict[str, Catch]] = {}
    for c in found:
        if c.key not in reviewed:
            by_reason.setdefault(c.reason, {}).setdefault(c.id, c)
    return [
        by_reason[reason][rid]
        for reason in sorted(by_reason)
        for rid in sample_ids(by_reason[reason], per_reason, seed, reason)
    ]


def sheet_rows(data: RunData, picked: list[Catch]) -> list[_sheet.Row]:
    """The sheet's rows: each catch with its record's text, and the text to compare it with."""
    before = _pulled(data.pulled, {c.id for c in picked if c.action == REWRITE})
    rows = []
    for c in picked:
        record = data.rejected.get((c.stage, c.id)) if c.action == DROP else data.kept.get(c.id)
        compare = ""
        if c.action == REWRITE:
            was = before.get(c.id)
            compare = f"{_sheet.changes(was, record)}\n\nBEFORE (as pulled):\n\n{_sheet.readable(was)}"
        elif (m := _DUPLICATE_OF.search(c.detail)) is not None:
            compare = f"KEPT IN ITS PLACE ({m[1]}):\n\n" if "duplicate of" in c.detail else f"ITS NEAREST ({m[1]}):\n\n"
            compare += _sheet.readable(data.kept.get(m[1]))
        rows.append(_sheet.Row(c, _sheet.readable(record), compare))
    return rows


def sample(args: argparse.Namespace) -> int:
    """``steep review sample``: write the sheet; print what it holds per reason."""
    if args.per_reason < 1:
        raise StageError(f"--per-reason {args.per_reason}: draw at least 1 record per reason")
    if args.out.suffix not in (".csv", ".html"):
        raise StageError(f"--out {args.out}: name a .csv or an .html sheet")
    root = args.run
    seed = args.seed if args.seed is not None else _params.load(root / "params.yaml", ["common.seed"]).common.seed
    data = load_run(root)
    found = [c for c in data.catches if not args.reason or c.reason in args.reason]
    if args.reason and not found:
        known = sorted({c.reason for c in data.catches})
        raise StageError(f"--reason {args.reason}: the run caught nothing for it; its reasons: {known}")
    reviewed = frozenset(read_verdict_dir(args.reviews or root / "reviews"))
    picked = draw(found, args.per_reason, seed, reviewed)
    rows = sheet_rows(data, picked)
    if args.out.suffix == ".html":
        _sheet.write_html(args.out, rows, f"steep review: {args.out.stem}")
    else:
        _sheet.write_csv(args.out, rows)
    caught = Counter(c.reason for c in found)
    drawn = Counter(c.reason for c in picked)
    judged_before = Counter(reason for (_, reason) in reviewed)
    print(f"read {', '.join(data.read)}; seed {seed}, {args.per_reason} per reason")
    print(f"{'reason':<36} {'action':<8} {'caught':>7} {'reviewed':>8} {'drawn':>6}")
    for reason in sorted(caught):
        print(f"{reason:<36} {action_of(reason):<8} {caught[reason]:>7} {judged_before[reason]:>8} {drawn[reason]:>6}")
    print(f"wrote {args.out}: {len(rows)} records to mark (verdict: right, wrong or skip)")
    marked = args.out if args.out.suffix == ".csv" else args.out.with_name(f"{args.out.stem}-marked.csv")
    print(f"then: steep review score {marked}" + ("" if args.out.suffix == ".csv" else " (the page's download)"))
    return 0


# --- score ------------------------------------------------------------------------------------------------------


def precision_rows(
    marks: dict[Key, dict[str, str]], found: list[Catch] | None, bars: dict[str, float]
) -> tuple[dict[str, Precision], Counter]:
    """Each reason's precision from `marks` (only on catches of `found` when given), against the bar of its action;
    and the catches per reason."""
    caught = Counter(c.reason for c in found or [])
    verdicts = judged(marks, None if found is None else {c.key for c in found})
    return assess(verdicts, {r: bars[action_of(r)] for r in verdicts}), caught


def table(scores: dict[str, Precision], caught: Counter, stage_of: dict[str, str]) -> list[str]:
    """The precision table as text lines: one per reason, with the params line under a reason below its bar."""
    lines = [
        f"{'reason':<36} {'action':<8} {'caught':>7} {'n':>4} {'right':>5} {'prec.':>6} {'95% CI':>11} {'bar':>4} "
        f"{'p(Holm)':>8}"
    ]
    for reason, s in scores.items():
        lo, hi = s.interval
        prec = "—" if s.precision is None else f"{s.precision:.2f}"
        lines.append(
            f"{reason:<36} {action_of(reason):<8} {caught.get(reason, '—')!s:>7} {s.n:>4} {s.right:>5} {prec:>6} "
            f"{f'{lo:.2f}–{hi:.2f}':>11} {s.bar:>4.2f} {s.p:>8.3g}" + ("  BELOW BAR" if s.below else "")
        )
        if s.below:
            lines.append(f"    -> params.yaml: {switch(stage_of.get(reason, ''), reason, action_of(reason))}")
    return lines


def score(args: argparse.Namespace) -> int:
    """``steep review score``: merge the marks into reviews/NAME.csv and print the precision table."""
    root = args.run
    marked = read_verdicts(args.sheet)
    if not marked:
        raise StageError(f"{args.sheet}: no row is marked; write right, wrong or skip in its verdict column")
    name = args.name or args.sheet.stem.removesuffix("-marked")
    if not _NAME.fullmatch(name):
        raise StageError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names reviews/{name}.csv)")
    folder = args.reviews or root / "reviews"
    added, changed = merge_verdicts(folder / f"{name}.csv", marked)
    print(f"{args.sheet}: {len(marked)} marked; {folder / f'{name}.csv'}: {added} added, {changed} changed")
    bars = _params.load(root / "params.yaml", ["report"]).report.bars()
    try:
        data: RunData | None = load_run(root)
    except StageError as e:
        print(f"every verdict counts (the run's data cannot be read: {e})")
        data = None
    marks = read_verdict_dir(folder)
    scores, caught = precision_rows(marks, None if data is None else data.catches, bars)
    if data is not None:
        current = {c.key for c in data.catches}
        stale = sum(1 for k in marks if k not in current)
        print(f"verdicts in {folder}: {len(marks)}; on records the run no longer catches (left out): {stale}")
    stage_of = {c.reason: c.stage for c in data.catches} if data is not None else {}
    print("\n".join(table(scores, caught, stage_of)))
    return 0
