"""Moderation precision on real data, and precision/recall on the demo set, from labels a person wrote.

For each reason moderate can give (a drop, a flag, a PII redaction), the records it catches on a corpus are
counted, a seeded sample of them is drawn, and the sample is scored against labels a person wrote by reading
those records: ``right`` (the record really has the defect; the redacted span really is a person's data) or
``wrong``. Precision = right / labeled, with a Wilson 95% interval and its sample size.

- **Real corpus** (``--corpus``, default ``../shared/data/t0_train_50k.jsonl``: 55,185 prompt/completion
  records of the public T0 training mixture, which nobody here wrote). It is pulled the way a user would,
  through a ``pull.sources`` entry (``format: alpaca``, ``fields: {instruction: prompt, output: completion}``,
  ``label_field: template``, ``strip_suffixes: [<|endoftext|>]``), then every record goes through moderate's
  rules (:func:`stages.curate.rules.check_record`) with the ``moderate`` params of ``params.yaml``. Rules that
  flag by default are evaluated as if they dropped, so each reason is measured on everything it catches.
- **Demo set** (``data/sources/*_demo*``): the records this project planted, scored against
  ``data/sources/answer_key.json``: recall (planted records caught with their reason, by a drop or a flag)
  and precision (caught records that the key plants with that reason).

Labels live in ``benchmarks/labels/*.csv`` (``id,reason,verdict,note``: record ids and a short note in the
labeler's words, never the third-party text). ``--review sheet.csv`` (or ``.html``) writes the sampled records
that have no label yet, as ``steep review sample`` writes its sheet, for a person to mark in the ``verdict``
column; ``--marks sheet.csv`` merges a marked sheet into ``benchmarks/labels/<corpus>_moderation.csv``. The
sample, the verdict files, the Wilson interval and the reading of a run's catches are ``steep review``'s own
(:mod:`stages.core.verdicts`, :mod:`stages.core.catches`): one engine. ``--run .`` scores your own last
``dvc repro moderate`` (its rejects, flags and rewrites, named as its metrics name them: ``flagged_toxic``,
``redacted_pii_email``); for a team reviewing its own data, ``steep review`` is the command.

Run (from the project root)::

    .venv/bin/python benchmarks/moderation_precision.py [--corpus PATH] [--sample 40] [--workers 2]

Writes ``benchmarks/results/moderation_precision.json`` and prints the tables (Markdown).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _t0  # noqa: E402
import yaml  # noqa: E402

from stages.commands import _sheet  # noqa: E402
from stages.core.catches import Catch, catches  # noqa: E402
from stages.core.params.moderate import RULE_NAMES, Moderate  # noqa: E402
from stages.core.params.pull import Source, Web  # noqa: E402
from stages.core.verdicts import merge_verdicts, read_verdicts, wilson  # noqa: E402
from stages.core.verdicts import sample_ids as sample  # noqa: E402
from stages.curate import rules  # noqa: E402
from stages.curate.pull import pull_source  # noqa: E402

DEFAULT_CORPUS = _t0.DEFAULT_CORPUS
LABELS = ROOT / "benchmarks" / "labels"
RESULTS = ROOT / "benchmarks" / "results" / "moderation_precision.json"


# --- running the rules --------------------------------------------------------------------------------------------


def _config(params: dict[str, Any]) -> tuple[Moderate, dict[str, str]]:
    """The moderate params with every non-off rule dropping (to see all it catches), and the real actions."""
    cfg = Moderate.model_validate(params["moderate"])
    actions = dict(cfg.actions)
    strict = {k: ("drop" if v != "off" else "off") for k, v in actions.items()}
    return cfg.model_copy(update={"actions": strict}), actions


def _judge(args: tuple[list[dict[str, Any]], dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(id, reason, detail) for each catch in `records`: every rule on its own, then PII redaction.

    Each rule sees every record it applies to (not only the survivors of the rules before it), so a reason
    is measured on everything it catches, whatever its place in the order and its action.
    """
    records, params = args
    cfg, _ = _config(params)
    out = []
    for r in records:
        rec = {**r, "messages": [dict(m) for m in r["messages"]], "meta": {}}
        if rules.normalize_encoding(rec, cfg):
            out.append((r["id"], "normalized_encoding", "mojibake repaired by ftfy"))
        if rec["kind"] in rules.INSTRUCTION_KINDS:
            rules.normalize_noinput(rec, cfg)
        for name, kinds, rule in rules.RULES:
            if rec["kind"] in kinds and cfg.actions[name] != "off":
                keep, reason, detail = rule(rec, cfg)
                if not keep:
                    out.append((r["id"], reason, detail))
        _, redacted, flags = rules.pii_verdict(rec, cfg)
        out += [(r["id"], f"redact_{e}", f"{n} span(s)") for e, n in redacted.items()]
        out += [(r["id"], flag, why) for flag, why in flags.items()]
    return out


def rule_catches(records: list[dict[str, Any]], params: dict[str, Any], workers: int) -> list[tuple[str, str, str]]:
    """Every (id, reason, detail) moderate gives `records`, in record order, over `workers` processes."""
    chunks = [records[i : i + 2000] for i in range(0, len(records), 2000)]
    if workers <= 1:
        parts = [_judge((c, params)) for c in chunks]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = []
            for i, part in enumerate(pool.imap(_judge, [(c, params) for c in chunks])):
                parts.append(part)
                print(f"  rules: {min((i + 1) * 2000, len(records))}/{len(records)} records", flush=True)
    return [c for part in parts for c in part]


def catches_of_run(root: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The records and catches of a pipeline run: moderate's rejects, and its kept records' flags and rewrites, read
    and named as ``steep review`` does (:mod:`stages.core.catches`: ``flagged_<code>``, ``redacted_pii_<entity>``)."""
    from stages.core.records import REJECT_SCHEMA, read_records

    rejects = read_records(root / "data/rejected/moderate.parquet", REJECT_SCHEMA)
    kept = read_records(root / "data/moderated.parquet")
    return [*rejects, *kept], [(c.id, c.reason, c.detail) for c in catches(rejects, kept)]


# A broad net for the objectively checkable classes, wider than the rules: any bracketed tag alone or leading
# the output, "no output"-style words, an output that is only a URL, a link, an image or an image file name.
_PLACEHOLDERISH = re.compile(
    r"(?i)^\W*(?:<[^<>\n]{1,30}>\W*$|<[^<>\n]*\b(?:no|none|empty|null|output|input|blank)\b[^<>\n]*>|"
    r"(?:no\s*(?:output|input|answer|response)|n/?a|null|nan|none)\W*$)"
)
_LINKISH = re.compile(
    r"(?i)^\s*(?:!?\[[^\]]*\]\([^)]*\)|<img\b[^>]*>|(?:https?://|www\.)\S+|\S+\.(?:png|jpe?g|gif|svg|webp|bmp))\s*$"
)


def objective_recall(records: list[dict[str, Any]], found: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The objectively checkable classes on the corpus: how many the broad net finds, how many a rule catches.

    Returns per class: found by the net, caught by moderate (any drop or flag), and the ids that slip through
    (for a person to read: a right answer "None." to a question is no placeholder).
    """
    caught = {rid for rid, reason, _ in found if reason in ("empty_output", "unseen_reference")}
    out: dict[str, Any] = {}
    for name, net in (("placeholder_output", _PLACEHOLDERISH), ("link_only_output", _LINKISH)):
        hits = sorted(r["id"] for r in records if r["output"] and net.match(r["output"]))
        slipped = [i for i in hits if i not in caught]
        out[name] = {
            "net": len(hits),
            "caught": len(hits) - len(slipped),
            "slipped": len(slipped),
            "slipped_ids": slipped[:50],
        }
    return out


# --- labels -------------------------------------------------------------------------------------------------------


def read_labels(folder: Path) -> dict[tuple[str, str], dict[str, str]]:
    """{(id, reason): {verdict, note}} from every moderation CSV in `folder` (``id,reason,verdict,note``; the
    other label files there have other columns), read by the engine of ``steep review``."""
    labels: dict[tuple[str, str], dict[str, str]] = {}
    for path in sorted(folder.glob("*.csv")):
        if path.read_text(encoding="utf-8").startswith("id,reason,verdict"):
            labels.update(read_verdicts(path))
    return labels


def score(
    found: list[tuple[str, str, str]], labels: dict, n: int, seed: int, actions: dict[str, str], total: int
) -> list[dict[str, Any]]:
    """Per reason: records caught, the default action, the sample, labeled, right, precision and interval."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for rid, reason, _ in found:
        by_reason[reason].append(rid)
    rows = []
    for reason in sorted(by_reason, key=lambda r: (-len(set(by_reason[r])), r)):
        picked = sample(by_reason[reason], n, seed, reason)
        marks = [labels[(i, reason)]["verdict"] for i in picked if (i, reason) in labels]
        marks = [m for m in marks if m != "skip"]
        right = marks.count("right")
        lo, hi = wilson(right, len(marks))
        rows.append(
            {
                "reason": reason,
                "action": actions.get(
                    reason,
                    "redact"
                    if reason.startswith("redact_")
                    else "repair"
                    if reason.startswith("normalized_")
                    else "flag",
                ),
                "caught": len(set(by_reason[reason])),
                "share": round(len(set(by_reason[reason])) / total, 5),
                "sample": len(picked),
                "labeled": len(marks),
                "right": right,
                "precision": round(right / len(marks), 3) if marks else None,
                "ci95": [round(lo, 3), round(hi, 3)] if marks else None,
            }
        )
    return rows


# --- the review sheet ---------------------------------------------------------------------------------------------


def write_review(path: Path, found, records_by_id, labels, n: int, seed: int) -> int:
    """The sampled records without a label, as the sheet of ``steep review sample`` (CSV, or HTML to mark in a
    browser), for a person to mark; returns its row count."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    detail = {}
    for rid, reason, why in found:
        by_reason[reason].append(rid)
        detail[(rid, reason)] = why
    rows = [
        _sheet.Row(Catch(reason, rid, "moderate", "rule", detail[(rid, reason)]), _sheet.readable(records_by_id[rid]))
        for reason in sorted(by_reason)
        for rid in sample(by_reason[reason], n, seed, reason)
        if (rid, reason) not in labels
    ]
    if path.suffix == ".html":
        _sheet.write_html(path, rows, f"moderation precision: {path.stem}")
    else:
        _sheet.write_csv(path, rows)
    return len(rows)


def read_marks(sheet: Path, out: Path) -> int:
    """Merge the marked rows of a review sheet (id, reason, verdict, note) into the labels file `out`."""
    marked = read_verdicts(sheet)
    merge_verdicts(out, marked)
    return len(marked)


# --- the demo set -------------------------------------------------------------------------------------------------


def demo(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Per moderate reason of the answer key: planted, caught (drop or flag), recall, precision."""
    key = json.loads((ROOT / "data/sources/answer_key.json").read_text(encoding="utf-8"))
    cfg, _ = _config(params)
    web = Web.model_validate(params["pull"]["web"])
    want: dict[str, set[str]] = defaultdict(set)
    got: dict[str, set[str]] = defaultdict(set)
    for index, raw in enumerate(params["pull"]["sources"]):
        source = Source.model_validate(raw)
        if not (ROOT / source.location).exists():
            continue
        source = source.model_copy(update={"location": str(ROOT / source.location)})
        planted = key.get(source.name, {})
        for r in pull_source(source, index, web):
            row = str(r["meta"]["row"])
            if row in planted:
                want[planted[row].removeprefix("redacted_pii_").replace("normalized_noinput", "noinput")].add(r["id"])
            for rid, reason, _ in _judge(([r], params)):
                got[reason.removeprefix("redact_")].add(rid)
            if rules.check_record(r, cfg)[0]["meta"].get("moderate", {}).get("normalized"):
                got["noinput"].add(r["id"])
    reasons = [*RULE_NAMES, *[e for e in cfg.pii.entities], "noinput"]
    rows = []
    for reason in reasons:
        if not want[reason] and not got[reason]:
            continue
        hit = want[reason] & got[reason]
        name = reason if reason in RULE_NAMES else ("normalized_noinput" if reason == "noinput" else f"redact_{reason}")
        rows.append(
            {
                "reason": name,
                "planted": len(want[reason]),
                "caught": len(got[reason]),
                "recall": round(len(hit) / len(want[reason]), 3) if want[reason] else None,
                "precision": round(len(hit) / len(got[reason]), 3) if got[reason] else None,
                "missed": len(want[reason] - got[reason]),
                "false": len(got[reason] - want[reason]),
            }
        )
    return rows


# --- main ---------------------------------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, list):
            return f"{v[0]:.2f}–{v[1]:.2f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="prompt/completion JSONL (default: T0)")
    ap.add_argument(
        "--run",
        type=Path,
        help="a project root: score the catches of its last `dvc repro moderate` (data/rejected/moderate.parquet "
        "and the flags and redactions in data/moderated.parquet) instead of running the rules on --corpus",
    )
    ap.add_argument("--fields", default="instruction=prompt,output=completion", help="canonical=column, ...")
    ap.add_argument("--label-field", default="template", help="the label column (meta.label), or ''")
    ap.add_argument("--strip-suffix", default="<|endoftext|>", help="marker removed from the end of texts")
    ap.add_argument("--sample", type=int, default=40, help="records drawn per reason")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--review", type=Path, help="write the unlabeled sampled records to this CSV")
    ap.add_argument("--marks", type=Path, help="read a marked review sheet into the labels")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    name = args.corpus.stem
    if args.marks:
        n = read_marks(args.marks, args.labels / f"{name}_moderation.csv")
        print(f"{n} marked rows from {args.marks} merged into {args.labels / f'{name}_moderation.csv'}")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    _, actions = _config(params)
    result: dict[str, Any] = {"params": "params.yaml", "sample": args.sample, "seed": args.seed}
    if args.run:
        name = args.run.resolve().name
    if not args.run and not args.corpus.exists():
        print(f"corpus not found: {args.corpus} (the T0 file is ../shared/data/t0_train_50k.jsonl); demo set only")
    else:
        fields = dict(kv.split("=", 1) for kv in args.fields.split(",") if kv)
        source = Source(
            name=name,
            format="alpaca",
            location=str(args.corpus),
            fields=fields,
            label_field=args.label_field or None,
            strip_suffixes=[args.strip_suffix] if args.strip_suffix else [],
        )
        start = time.perf_counter()
        if args.run:
            records, found = catches_of_run(args.run)
            print(f"{args.run}: {len(records)} records moderated, {len(found)} catches")
        else:
            records = list(pull_source(source, 0, Web.model_validate(params["pull"]["web"])))
            print(f"{args.corpus}: {len(records)} records pulled in {time.perf_counter() - start:.1f} s")
            start = time.perf_counter()
            found = rule_catches(records, params, args.workers)
        seconds = time.perf_counter() - start
        labels = read_labels(args.labels)
        rows = score(found, labels, args.sample, args.seed, actions, len(records))
        dropped = {rid for rid, reason, _ in found if actions.get(reason) == "drop"}
        kinds = defaultdict(set)
        for rid, reason, _ in found:
            if rid not in dropped:
                kind = (
                    "redacted"
                    if reason.startswith("redact_")
                    else "repaired"
                    if reason.startswith("normalized_")
                    else "flagged"
                )
                kinds[kind].add(rid)
        # each kept record counted once, in this order: flagged, redacted, repaired, untouched
        flagged = kinds["flagged"]
        redacted = kinds["redacted"] - flagged
        repaired = kinds["repaired"] - flagged - redacted
        totals = {
            "records": len(records),
            "dropped": len(dropped),
            "kept_flagged": len(flagged),
            "kept_redacted": len(redacted),
            "kept_repaired": len(repaired),
            "kept_untouched": len(records) - len(dropped) - len(flagged) - len(redacted) - len(repaired),
            "rules_seconds": round(seconds, 1),
        }
        totals["adds_up"] = totals["records"] == sum(v for k, v in totals.items() if k.startswith(("dropped", "kept_")))
        by_id = {r["id"]: r for r in records}
        examples = {}
        for row in rows:
            picked = sample([rid for rid, reason, _ in found if reason == row["reason"]], 3, args.seed, row["reason"])
            examples[row["reason"]] = [
                {
                    "id": rid,
                    **({"note": labels[(rid, row["reason"])]["note"]} if (rid, row["reason"]) in labels else {}),
                }
                for rid in picked
            ]
        recall = objective_recall(records, found)
        result["corpus"] = {
            "path": str(args.run or args.corpus),
            "totals": totals,
            "reasons": rows,
            "examples": examples,
            "objective_recall": recall,
        }
        print(f"\n## {name}: {len(records)} records; rules in {seconds:.0f} s\n")
        print(json.dumps(totals))
        cols = ["reason", "action", "caught", "share", "sample", "labeled", "right", "precision", "ci95"]
        print(_table(rows, cols))
        print("\nExamples (clipped; the labels' notes where read):")
        for row in rows:
            for ex in examples[row["reason"]][:2]:
                r = by_id[ex["id"]]
                text = " ".join((r["instruction"][-80:] + " => " + r["output"][:80]).split())
                print(f"- {row['reason']} {ex['id']}: {text!r}" + (f" [{ex['note']}]" if "note" in ex else ""))
        print("\nObjectively checkable classes (a broad net over the outputs; what no rule catches slips):")
        for cls, v in recall.items():
            print(f"- {cls}: {v['net']} found by the net, {v['caught']} caught, {v['slipped']} slip through")
        if args.review:
            n = write_review(args.review, found, by_id, labels, args.sample, args.seed)
            print(f"\nreview sheet: {args.review} ({n} unlabeled sampled records; mark `verdict` right/wrong)")
    result["demo"] = demo(params)
    print("\n## demo set (answer key)\n")
    print(_table(result["demo"], ["reason", "planted", "caught", "recall", "precision", "missed", "false"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
