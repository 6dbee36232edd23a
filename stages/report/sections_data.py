"""The report's sections on the data: the funnel (kept and dropped per stage, drops per reason, other counts),
rejected examples, decontamination against the held-out references, and the synthetic pairs.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

from stages.report.document import Code, Doc
from stages.report.inputs import DATA_STAGES, REJECT_STAGES, VARIANT_STAGES, Run, drops_of, not_found
from stages.report.plots import plot_drops, plot_funnel
from stages.report.precision import Review, precision_cell
from stages.report.text import CLIP_LONG, CLIP_PROMPT, CLIP_SHORT, clip, fmt_count, fmt_pct

_OVERLAP = re.compile(r"overlaps (?P<file>.+?):(?P<line>\d+) \((?P<method>[a-z_]+)")


def funnel_rows(run: Run) -> list[tuple[str, int, int]]:
    """(stage, kept, dropped) for every data stage that ran, in pipeline order."""
    rows = []
    names = [*DATA_STAGES, *(f"{s}@{v}" for s in VARIANT_STAGES for v in run.variants)]
    for name in names:
        m = run.stages.get(name)
        if m is not None:
            rows.append((name, int(m.get("kept", 0)), sum(drops_of(m).values())))
    return rows


def _stage_note(name: str, m: dict[str, Any]) -> str:
    """What a reader wants next to a stage's counts."""
    if name == "pull":
        sources = {k.removeprefix("records_"): v for k, v in m.items() if k.startswith("records_")}
        return "; ".join(f"{s}: {n:,}" for s, n in sorted(sources.items()))
    if name == "moderate":
        sums = {
            what: sum(v for k, v in m.items() if k.startswith(prefix) and isinstance(v, int))
            for prefix, what in (("normalized_", "normalized"), ("redacted_", "PII redacted"), ("flagged_", "flagged"))
        }
        return "; ".join(f"{what}: {n:,}" for what, n in sums.items() if n)
    if name == "dedup" and isinstance(m.get("reference_texts"), int):
        return f"checked against {m['reference_texts']:,} held-out reference texts"
    if name == "synthesize":
        bits = [f"{m[k]:,} {what}" for k, what in (("prompts", "prompts"), ("pairs_parsed", "pairs parsed")) if k in m]
        if "acceptance_rate" in m:
            bits.append(f"acceptance {fmt_count(m['acceptance_rate'])}")
        return "; ".join(bits)
    if name.startswith("template@"):
        kinds = {k.removeprefix("kept_"): v for k, v in m.items() if k.startswith("kept_") and v}
        return "; ".join(f"{k}: {n:,}" for k, n in sorted(kinds.items()))
    if name.startswith("tokenize@") and "train_examples" in m:
        return f"{m['train_examples']:,} train / {m.get('validation_examples', 0):,} validation examples"
    return ""


def _noted(name: str, key: str) -> bool:
    """Whether `key` of stage `name` is already in the funnel's notes (left out of the other counts)."""
    stage = name.split("@")[0]
    return (
        (stage == "pull" and key.startswith("records_"))
        or (stage == "template" and key.startswith("kept_"))
        or (stage == "tokenize" and key in ("train_examples", "validation_examples"))
        or (stage == "dedup" and key == "reference_texts")
    )


def drop_rows(run: Run) -> list[tuple[str, str, int, int]]:
    """(stage, reason, records dropped, stage input) of every data stage that ran, most first within a stage."""
    drops = []
    for name, _, _ in funnel_rows(run):
        m = run.stages[name] or {}
        total = int(m.get("total", 0))
        for reason, n in sorted(drops_of(m).items(), key=lambda kv: (-kv[1], kv[0])):
            drops.append((name, reason, int(n), total))
    return drops


def section_funnel(doc: Doc, run: Run, review: Review | None = None) -> None:
    """Add the data funnel: counts per stage with notes, drops per reason (with each rule's measured precision when
    `review` is given), the other counts; two plots."""
    doc.h(2, "Data funnel")
    rows = funnel_rows(run)
    if not rows:
        doc.p("No data stage has run: none of its metrics files were found.")
        return
    doc.p(
        "Records into each stage, kept and dropped (`total == kept + dropped` holds for every stage). "
        "The per-variant stages start from the curated records (plus the synthetic pairs)."
    )
    table = []
    for name, kept, dropped in rows:
        m = run.stages[name] or {}
        total = int(m.get("total", kept + dropped))
        table.append([name, f"{total:,}", f"{kept:,}", f"{dropped:,}", fmt_pct(kept, total), _stage_note(name, m)])
    doc.table(["stage", "in", "kept", "dropped", "kept %", "notes"], table)
    missing = [s for s in DATA_STAGES if run.stages[s] is None]
    if missing:
        doc.p("Not run: " + ", ".join(f"{s} ({not_found(run, s)})" for s in missing) + ".")
    doc.plot(plot_funnel(rows), "Records kept and dropped per stage.")

    doc.h(3, "Drops per reason")
    drops = drop_rows(run)
    if drops:
        if review is not None:
            doc.p("Precision: measured on the records reviewed (`steep review`; see the rule precision section).")
        doc.table(
            ["stage", "reason", "records", "share of stage input", *(["precision"] if review is not None else [])],
            [
                [s, Code(r), f"{n:,}", fmt_pct(n, t), *([precision_cell(review, r, s)] if review is not None else [])]
                for s, r, n, t in drops
            ],
        )
        doc.plot(plot_drops([(s, r, n) for s, r, n, _ in drops]), "Records dropped per stage and reason code.")
    else:
        doc.p("No record was dropped.")

    doc.h(3, "Other counts")
    other = []
    for name, _, _ in rows:
        m = run.stages[name] or {}
        counts = [
            f"{key}: {fmt_count(value)}"
            for key, value in sorted(m.items())
            if key not in ("total", "kept")
            and not key.startswith("dropped_")
            and not isinstance(value, dict | list)
            and not _noted(name, key)
        ]
        if counts:
            other.append([name, "; ".join(counts)])
    if other:
        doc.p("Everything else each stage counts: normalizations, redactions and flags on kept records, and sizes.")
        doc.table(["stage", "counts"], other)


def _where(record: dict[str, Any]) -> str:
    meta = record.get("meta") or {}
    if "source_file" in meta and "row" in meta:
        return f"{meta['source_file']}:{meta['row']}"
    synth = meta.get("synthesize")
    if isinstance(synth, dict) and "generator" in synth:
        return f"{record.get('source', '')} ({synth['generator']})"
    return str(record.get("source", ""))


def _prompt_response(record: dict[str, Any]) -> tuple[str, str]:
    """A record's prompt and response text, whatever its kind."""
    kind = record.get("kind")
    if kind == "conversation":
        msgs = record.get("messages") or []
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        bot = next((m["content"] for m in msgs if m["role"] == "assistant"), "")
        return user or "", bot or ""
    if kind in ("document", "restatement"):
        return f"({kind})", record.get("text") or ""
    prompt = record.get("instruction") or ""
    if record.get("input"):
        prompt += "\n" + record["input"]
    return prompt, record.get("output") or ""


def section_rejects(doc: Doc, run: Run, per_reason: int) -> None:
    """Add up to `per_reason` rejected records per stage and reason (in id order), clipped."""
    doc.h(2, "Rejected examples")
    if per_reason == 0:
        doc.p("None shown (`report.max_examples_per_reason` is 0).")
        return
    doc.p(
        f"Up to {per_reason} rejected record{'s' if per_reason != 1 else ''} per reason (in id order, a "
        "stable sample), clipped; `↵` marks a line break. Every rejected record is in the stage's rejects file."
    )
    for stage in REJECT_STAGES:
        rows = run.rejects[stage]
        doc.h(3, stage)
        if rows is None:
            doc.p(f"No rejects file ({not_found(run, f'rejects@{stage}')}).")
            continue
        if not rows:
            doc.p("No record was rejected.")
            continue
        by_reason: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_reason[row["reason"]].append(row)
        table = []
        for reason, group in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            for row in sorted(group, key=lambda r: r["id"])[:per_reason]:
                prompt, response = _prompt_response(row)
                table.append(
                    [
                        Code(reason),
                        Code(_where(row)),
                        clip(prompt, CLIP_PROMPT),
                        clip(response, CLIP_SHORT),
                        clip(row["detail"] or "", CLIP_SHORT),
                    ]
                )
        doc.table(["reason", "record", "prompt", "response", "detail"], table)


def section_flags(doc: Doc, run: Run, per_reason: int, review: Review | None = None) -> None:
    """Add the flags on kept records: count per flag (moderate's and dedup's, with its measured precision when
    `review` is given), and up to `per_reason` records of each of moderate's flags."""
    doc.h(2, "Flagged, kept records")
    counts = {}
    for stage in ("moderate", "dedup"):
        metrics = run.stages.get(stage) or {}
        counts.update(
            {k.removeprefix("flagged_"): v for k, v in sorted(metrics.items()) if k.startswith("flagged_") and v}
        )
    if run.flagged is None:
        doc.p(f"No moderated records file ({not_found(run, 'moderated')}).")
        return
    if not counts and not run.flagged:
        doc.p("No kept record carries a flag.")
        return
    doc.p(
        "A rule whose measured precision on real data is below 0.9 flags instead of dropping (`moderate.actions`, "
        "`dedup.<method>.action`): the record stays in the training data with the reason in `meta.moderate.flags` "
        "or `meta.dedup.flags`. Set the action to `drop` to drop them. Up to "
        f"{per_reason} record{'s' if per_reason != 1 else ''} per moderate flag, in id order."
    )
    extra = ["precision"] if review is not None else []
    doc.table(
        ["flag", "kept records", *extra],
        [[Code(k), fmt_count(v), *[precision_cell(review, f"flagged_{k}") for _ in extra]] for k, v in counts.items()],
    )
    by_flag: dict[str, list[dict]] = defaultdict(list)
    for row in run.flagged:
        for flag in row["meta"]["moderate"]["flags"]:
            by_flag[flag].append(row)
    table = []
    for flag, group in sorted(by_flag.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        for row in sorted(group, key=lambda r: r["id"])[:per_reason]:
            prompt, response = _prompt_response(row)
            detail = row["meta"]["moderate"]["flags"][flag]
            table.append(
                [
                    Code(flag),
                    Code(_where(row)),
                    clip(prompt, CLIP_PROMPT),
                    clip(response, CLIP_SHORT),
                    clip(detail, CLIP_SHORT),
                ]
            )
    if per_reason and table:
        doc.table(["flag", "record", "prompt", "response", "detail"], table)


def section_decontamination(doc: Doc, run: Run) -> None:
    """Add what dedup dropped for overlapping the held-out references, per reference file and method."""
    doc.h(2, "Decontamination")
    ded = run.stages["dedup"]
    if ded is None:
        doc.p(f"dedup has not run ({not_found(run, 'dedup')}): no overlap check to report.")
        return
    n = int(ded.get("dropped_reference_overlap", 0))
    texts = ded.get("reference_texts")
    checked = f"{texts:,} held-out reference texts" if isinstance(texts, int) else "the held-out reference files"
    doc.p(
        f"dedup compared every record with {checked} (`dedup.references`, the probe tasks by default) by exact, "
        f"MinHash and semantic match, and dropped **{n:,}** overlapping training record{'s' if n != 1 else ''}, "
        "so the probe does not score answers the model was trained on."
        if n
        else f"dedup compared every record with {checked} (`dedup.references`) and found **no overlap**."
    )
    per_ref = {k: v for k, v in sorted(ded.items()) if k.startswith("reference_") and k != "reference_texts"}
    if per_ref:
        doc.table(["count", "value"], [[Code(k), fmt_count(v)] for k, v in per_ref.items()])
    rows = [r for r in run.rejects["dedup"] or [] if r["reason"] == "reference_overlap"]
    found = Counter()
    for r in rows:
        m = _OVERLAP.search(r["detail"] or "")
        found[(m["file"], m["method"]) if m else ("(unparsed detail)", "")] += 1
    if found:
        doc.table(
            ["reference file", "method", "records dropped"],
            [[Code(f), m, f"{c:,}"] for (f, m), c in sorted(found.items())],
        )


def section_synthetic(doc: Doc, run: Run, per_generator: int) -> None:
    """Add the kept synthetic pairs per generator, and up to `per_generator` of each with their provenance."""
    doc.h(2, "Synthetic pairs")
    pairs = run.synthetic
    if pairs is None:
        doc.p(f"synthesize has not run ({not_found(run, 'synthetic')}).")
        return
    if not pairs:
        doc.p("synthesize kept no pair.")
        return
    by_gen: dict[str, list[dict]] = defaultdict(list)
    for rec in pairs:
        synth = (rec.get("meta") or {}).get("synthesize")
        by_gen[str(synth.get("generator", "unknown")) if isinstance(synth, dict) else "unknown"].append(rec)
    doc.p(
        f"{len(pairs):,} kept pairs. Up to {per_generator} per generator are shown (in id order, a stable sample), "
        "with their provenance (`meta.synthesize`)."
    )
    doc.table(["generator", "kept pairs"], [[Code(g), f"{len(r):,}"] for g, r in sorted(by_gen.items())])
    if per_generator == 0:
        return
    table = []
    for gen, recs in sorted(by_gen.items()):
        for rec in sorted(recs, key=lambda r: r["id"])[:per_generator]:
            prompt, response = _prompt_response(rec)
            synth = (rec.get("meta") or {}).get("synthesize")
            prov = (
                "; ".join(
                    f"{k}: {clip(json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v, 60)}"
                    for k, v in sorted(synth.items())
                    if k != "generator"
                )
                if isinstance(synth, dict)
                else ""
            )
            table.append([Code(gen), clip(prompt, CLIP_LONG, False), clip(response, CLIP_LONG, False), prov])
    doc.table(["generator", "instruction", "output", "provenance"], table)
