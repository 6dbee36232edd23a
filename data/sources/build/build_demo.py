"""Assemble steep's embedded Alpaca demo set and the answer key of its planted defects.

Inputs (next to this script, all hand-written):
    clean_a.jsonl, clean_b.jsonl  clean Alpaca records {instruction, input, output, category};
                                  a missing file counts as empty, so a partial build still runs.
    planted.jsonl                 records with planted defects, the same fields plus "expect": the
                                  outcome the pipeline must reach (a moderate/dedup reason code,
                                  "normalized_noinput", "redacted_pii_<entity>", "flag_cleanlab_label_issue",
                                  or "clean" for the originals that later duplicates copy).
    ../sharegpt_demo.json         the ShareGPT demo conversations; their planted defects are declared
                                  in SHAREGPT_PLANTS below, by conversation id.

Outputs (in data/sources/):
    alpaca_demo.jsonl   one {instruction, input, output, category} object per line (keys in that order,
                        UTF-8, no "expect").
    answer_key.json     {"demo_alpaca": {"<1-based line>": outcome}, "demo_sharegpt": {"<1-based index>":
                        outcome}}; rows not listed are clean and must be kept by moderate and dedup.

Layout: the clean records are interleaved (a1, b1, a2, b2, ...; the longer file's tail follows) and the P
planted records, in file order, are placed at evenly spaced indexes of the final list of N records: planted
record i (0-based) lands at index round((i + 1) * N / (P + 1)). Planted order is kept, so each duplicate's
original (earlier in planted.jsonl) stays before its copy. The build is deterministic: same inputs, same bytes.

Run from the repository root (stdlib only):
    python data/sources/build/build_demo.py
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

BUILD = Path(__file__).resolve().parent
SOURCES = BUILD.parent
FIELDS = ("instruction", "input", "output", "category")

# Planted defects of sharegpt_demo.json, by conversation id (the key uses the 1-based array index).
SHAREGPT_PLANTS = {
    "conv-006": "canned_response",  # a gpt turn "As an AI language model, ..."
    "conv-012": "empty_output",  # the last gpt turn is ""
    "conv-017": "redacted_pii_email",  # a gpt turn gives an email address
    "conv-023": "wrong_language",  # the whole conversation is in Spanish
    "conv-029": "toxic",  # a profane, insulting gpt turn
    "conv-035": "exact_duplicate",  # a copy of conv-004
}

PII_ENTITIES = ("email", "phone", "credit_card", "ip_address", "api_key")
OUTCOMES = {
    "clean",
    # moderate drops, in rule order
    "control_characters",
    "empty_output",
    "too_short",
    "too_long",
    "unseen_reference",
    "merged_instructions",
    "canned_response",
    "truncated_output",
    "repetitive",
    "wrong_language",
    "toxic",
    # moderate normalizations and flags (record kept)
    "normalized_noinput",
    *(f"redacted_pii_{e}" for e in PII_ENTITIES),
    "flag_cleanlab_label_issue",
    # dedup drops, in pass order
    "exact_duplicate",
    "minhash_duplicate",
    "semantic_duplicate",
    "reference_overlap",
}


def read_jsonl(path: Path, *, planted: bool = False) -> list[dict]:
    """Records of one JSONL file ([] when it does not exist yet), checked for the Alpaca fields."""
    if not path.exists():
        print(f"note: {path.name} not found, building without it", file=sys.stderr)
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{lineno}: not valid JSON ({e})")
            missing = [k for k in FIELDS if not isinstance(rec.get(k), str)]
            if missing:
                sys.exit(f"{path}:{lineno}: missing or non-string fields {missing}; expected {list(FIELDS)}")
            if planted and rec.get("expect") not in OUTCOMES:
                sys.exit(f"{path}:{lineno}: expect={rec.get('expect')!r} is not one of {sorted(OUTCOMES)}")
            records.append(rec)
    return records


def interleave(a: list[dict], b: list[dict]) -> list[dict]:
    """a1, b1, a2, b2, ...; the rest of the longer list at the end."""
    out: list[dict] = []
    for i in range(max(len(a), len(b))):
        out.extend(x[i] for x in (a, b) if i < len(x))
    return out


def place(clean: list[dict], planted: list[dict]) -> list[tuple[dict, str]]:
    """Final list of (record, outcome): planted record i at index round((i + 1) * N / (P + 1))."""
    n, p = len(clean) + len(planted), len(planted)
    slots: list[tuple[dict, str] | None] = [None] * n
    prev = -1
    for i, rec in enumerate(planted):
        # Clamp so indexes stay strictly increasing and leave room for the planted records still to come
        # (only bites when there are almost no clean records).
        idx = min(max(round((i + 1) * n / (p + 1)), prev + 1), n - (p - i))
        slots[idx] = (rec, rec["expect"])
        prev = idx
    rest = iter(clean)
    return [s if s is not None else (next(rest), "clean") for s in slots]


def sharegpt_key(path: Path) -> dict[str, str]:
    """1-based array index -> outcome for the SHAREGPT_PLANTS, checked against the file."""
    convs = json.loads(path.read_text(encoding="utf-8"))
    index = {c["id"]: i for i, c in enumerate(convs, 1)}
    unknown = sorted(set(SHAREGPT_PLANTS) - set(index))
    if unknown:
        sys.exit(f"{path}: SHAREGPT_PLANTS names ids not in the file: {unknown}")
    bad = {k: v for k, v in SHAREGPT_PLANTS.items() if v not in OUTCOMES or v == "clean"}
    if bad:
        sys.exit(f"SHAREGPT_PLANTS: unknown outcomes {bad}")
    return {str(index[cid]): outcome for cid, outcome in SHAREGPT_PLANTS.items()}


def main() -> None:
    """Read the parts, write alpaca_demo.jsonl and answer_key.json, print counts."""
    clean = interleave(read_jsonl(BUILD / "clean_a.jsonl"), read_jsonl(BUILD / "clean_b.jsonl"))
    planted = read_jsonl(BUILD / "planted.jsonl", planted=True)
    rows = place(clean, planted)

    alpaca_key: dict[str, str] = {}
    with (SOURCES / "alpaca_demo.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for line, (rec, outcome) in enumerate(rows, 1):
            f.write(json.dumps({k: rec[k] for k in FIELDS}, ensure_ascii=False) + "\n")
            if outcome != "clean":
                alpaca_key[str(line)] = outcome

    key = {"demo_alpaca": alpaca_key, "demo_sharegpt": sharegpt_key(SOURCES / "sharegpt_demo.json")}
    (SOURCES / "answer_key.json").write_text(
        json.dumps(key, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8", newline="\n"
    )

    counts = Counter(alpaca_key.values())
    print(f"alpaca_demo.jsonl: {len(rows)} lines ({len(clean)} clean + {len(planted)} planted)")
    for outcome, count in sorted(counts.items()):
        print(f"  {outcome}: {count}")
    print(f"answer_key.json: {len(alpaca_key)} alpaca rows, {len(key['demo_sharegpt'])} sharegpt rows")


if __name__ == "__main__":
    main()
