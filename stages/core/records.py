"""The record schema every stage reads and writes.

A record is one training example or document, like datatrove's ``Document``::

    id           16 hex chars: sha256 of the normalized content (kind + content fields)
    source       the source name from params.yaml (pull.sources[].name)
    kind         instruction | conversation | qa | document
    instruction  instruction / question text ("" for conversations and documents)
    input        Alpaca's optional input ("" when none)
    output       the response / answer ("" for conversations and documents)
    messages     conversation turns, [{role: system|user|assistant, content}], [] otherwise
    text         document text ("" otherwise)
    meta         JSON object: provenance (source_file, row, file_sha256, revision,
                 source_index) and the record's history as it moves on
                 (moderate: rules passed, normalizations, redactions, cleanlab
                 scores; dedup: cluster ids)

The id is computed once, from the content as pulled, and names the record for
the rest of its life, even when moderation later blanks a placeholder input or
redacts PII (the change is written into ``meta``).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.core.io import StageError, read_parquet, write_table

KINDS = ("instruction", "conversation", "qa", "document")
ROLES = ("system", "user", "assistant")
CONTENT_FIELDS = ("instruction", "input", "output", "messages", "text")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("text", pa.string()),
        ("meta", pa.string()),
    ]
)
# Rejected records: the record plus the stage that dropped it, the reason code
# and a short human-readable detail (the matched pattern, the duplicate's id…).
REJECT_SCHEMA = (
    SCHEMA.append(pa.field("stage", pa.string()))
    .append(pa.field("reason", pa.string()))
    .append(pa.field("detail", pa.string()))
)

Record = dict[str, Any]


def clean_text(value: str) -> str:
    """NFC-normalize and strip; the form every content field is stored in."""
    return unicodedata.normalize("NFC", value).strip()


def content_id(record: Record) -> str:
    """sha256 over the kind and content fields, canonical JSON, first 16 hex chars."""
    payload = {k: record[k] for k in ("kind", *CONTENT_FIELDS)}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def make_record(
    *,
    source: str,
    kind: str,
    meta: dict[str, Any],
    instruction: str = "",
    input: str = "",
    output: str = "",
    messages: list[dict[str, str]] | None = None,
    text: str = "",
) -> Record:
    """Build a record with normalized content and its content id."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rec: Record = {
        "source": source,
        "kind": kind,
        "instruction": clean_text(instruction),
        "input": clean_text(input),
        "output": clean_text(output),
        "messages": [{"role": m["role"], "content": clean_text(m["content"])} for m in (messages or [])],
        "text": clean_text(text),
        "meta": dict(meta),
    }
    rec["id"] = content_id(rec)
    return rec


def as_messages(record: Record) -> list[dict[str, str]]:
    """The record as chat turns: instruction (+ input) as the user turn, output as the assistant's."""
    if record["kind"] == "conversation":
        return list(record["messages"])
    if record["kind"] == "document":
        return []
    user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def record_text(record: Record, fields: list[str] | tuple[str, ...] = CONTENT_FIELDS) -> str:
    """The record's text over `fields`, non-empty parts joined by blank lines."""
    parts: list[str] = []
    for field in fields:
        if field == "messages":
            parts.extend(m["content"] for m in record["messages"] if m["content"])
        elif record[field]:
            parts.append(record[field])
    return "\n\n".join(parts)


def order_key(record: Record) -> tuple[int, str, int, str]:
    """Position of the record in the declared input: source order in params, then file, then row."""
    meta = record["meta"]
    return (meta["source_index"], meta["source_file"], meta["row"], record["id"])


def _to_row(record: Record, schema: pa.Schema) -> dict[str, Any]:
    row = {name: record[name] for name in schema.names if name != "meta"}
    row["meta"] = json.dumps(record["meta"], sort_keys=True, ensure_ascii=False)
    return row


def write_records(path: Path, records: list[Record], schema: pa.Schema = SCHEMA) -> None:
    """Write records sorted by id (then source position), deterministic bytes."""
    rows = [_to_row(r, schema) for r in sorted(records, key=lambda r: (r["id"], *order_key(r)))]
    write_table(path, pa.Table.from_pylist(rows, schema=schema))


def read_records(path: str | Path, schema: pa.Schema = SCHEMA) -> list[Record]:
    """Read a record file written by :func:`write_records`, meta parsed back to a dict."""
    path = Path(path)
    table = read_parquet(path, schema.names, "records", "rerun the stage that writes it", "not a steep record file")
    records = table.to_pylist()
    for r in records:
        r["meta"] = json.loads(r["meta"])
    return records


def read_record_dir(path: str | Path) -> list[Record]:
    """All record files of a directory (one per source), in file-name order."""
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        raise StageError(f"{path}: no .parquet record files; run `dvc repro pull` first")
    return [r for f in files for r in read_records(f)]


def write_rejects(path: Path, rejects: list[tuple[Record, str, str, str]]) -> None:
    """Write rejected records as (record, stage, reason, detail), sorted by id."""
    rows = []
    for record, stage, reason, detail in rejects:
        rows.append({**record, "stage": stage, "reason": reason, "detail": detail})
    write_records(path, rows, REJECT_SCHEMA)
