"""The record schema every stage reads and writes.

A record is one training example or document, like datatrove's ``Document``::

    id           16 hex chars: sha256 of the normalized content (kind + content fields)
    source       the source name from params.yaml (pull.sources[].name)
    kind         instruction | conversation | qa | document | restatement (a short text stating one fact of a
                 document, trained as plain text) | doc_qa (a question about a document and its answer)
    instruction  instruction / question text ("" for conversations and documents)
    input        Alpaca's optional input ("" when none)
    output       the response / answer ("" for conversations and documents)
    messages     conversation turns, [{role: system|user|assistant, content}], [] otherwise
    text         document or restatement text ("" otherwise)
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
import heapq
import json
import shutil
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.io import ROW_GROUP_ROWS, StageError, parquet_writer, read_parquet, temp_dir, write_table

KINDS = ("instruction", "conversation", "qa", "document", "restatement", "doc_qa")
# the kinds whose content is `text` (the others: instruction/input/output or messages)
TEXT_KINDS = ("document", "restatement")
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
    if record["kind"] in TEXT_KINDS:
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


def _sort_key(record: Record) -> tuple[str, int, str, int, str]:
    """A record file's row order: id, then position in the declared input."""
    return (record["id"], *order_key(record))


def write_records(path: Path, records: list[Record], schema: pa.Schema = SCHEMA) -> None:
    """Write records sorted by id (then source position), deterministic bytes."""
    rows = [_to_row(r, schema) for r in sorted(records, key=_sort_key)]
    write_table(path, pa.Table.from_pylist(rows, schema=schema))


# Rows a RecordWriter holds before it writes a sorted run to disk.
SPILL_ROWS = 1 << 15
# Rows the merge of the runs holds ahead, over all runs (each run reads its share a batch at a time).
MERGE_ROWS = 1 << 15
# Columns of a run file beside the schema's: the sort key's parts that live inside meta.
_RUN_KEYS = pa.schema([("_source_index", pa.int64()), ("_source_file", pa.string()), ("_row", pa.int64())])


class RecordWriter:
    """Write records given in any order, in batches, to the file :func:`write_records` would write.

    The bytes are those of ``write_records(path, all_records, schema)``: rows sorted by id, then position in
    the declared input, in row groups of :data:`stages.core.io.ROW_GROUP_ROWS`. Memory holds at most
    `spill_rows` records (default :data:`SPILL_ROWS`): beyond that, each sorted run goes to a temporary
    Parquet file beside `path` and :meth:`close` merges the runs (an external merge sort), so a stage's
    output may be larger than memory.

    Use as a context manager, or call :meth:`close`; :meth:`abort` removes what was spilled.
    """

    def __init__(self, path: str | Path, schema: pa.Schema = SCHEMA, spill_rows: int | None = None) -> None:
        self.path, self.schema = Path(path), schema
        self.spill_rows = spill_rows or SPILL_ROWS
        self.buffer: list[Record] = []
        self.runs: list[Path] = []
        self.rows = 0
        self._tmp: Path | None = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, records: Iterable[Record]) -> None:
        """Add records (any order); a full buffer is sorted and spilled as a run."""
        for r in records:
            self.buffer.append(r)
            self.rows += 1
            if len(self.buffer) >= self.spill_rows:
                self._spill()

    def _spill(self) -> None:
        if self._tmp is None:
            self._tmp = temp_dir(self.path.parent, f"{self.path.name}.runs")
        self.buffer.sort(key=_sort_key)
        rows = []
        for r in self.buffer:
            row = _to_row(r, self.schema)
            meta = r["meta"]
            row.update(_source_index=meta["source_index"], _source_file=meta["source_file"], _row=meta["row"])
            rows.append(row)
        run = self._tmp / f"run{len(self.runs):05d}.parquet"
        schema = pa.schema(list(self.schema) + list(_RUN_KEYS))
        # small row groups: the merge reads a run a row group at a time, so this bounds what it holds per run
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), run, compression="lz4", row_group_size=1024)
        self.runs.append(run)
        self.buffer = []

    def close(self) -> int:
        """Write the file (atomically is the caller's business: see io.atomic_outputs); the row count."""
        if not self.runs:
            write_records(self.path, self.buffer, self.schema)
            self.buffer = []
            return self.rows
        if self.buffer:
            self._spill()
        with parquet_writer(self.path, self.schema) as out:
            group: list[dict[str, Any]] = []
            rows = max(64, MERGE_ROWS // len(self.runs))  # read ahead per run: MERGE_ROWS in all, whatever the runs
            for row in heapq.merge(*(_run_rows(run, n, rows) for n, run in enumerate(self.runs))):
                group.append(row[-1])
                if len(group) == ROW_GROUP_ROWS:
                    out.write_table(pa.Table.from_pylist(group, schema=self.schema))
                    group = []
            if group:
                out.write_table(pa.Table.from_pylist(group, schema=self.schema))
        self.abort()
        return self.rows

    def abort(self) -> None:
        """Remove the spilled runs (the output file, if any, is the caller's)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.runs, self.buffer = [], []


def _run_rows(run: Path, number: int, batch_rows: int) -> Iterator[tuple[Any, ...]]:
    """The rows of a sorted run as (sort key..., run number, seq, row) tuples, read `batch_rows` at a time."""
    seq = 0
    for batch in pq.ParquetFile(run).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            key = (row["id"], row.pop("_source_index"), row.pop("_source_file"), row.pop("_row"), row["id"])
            yield (*key, number, seq, row)
            seq += 1


class RecordSpool:
    """Records appended in batches to a temporary Parquet file and read back in the same order (a stage's
    intermediate that does not fit in memory). Removed by :meth:`close`."""

    def __init__(self, directory: str | Path, name: str = "spool") -> None:
        self.path = temp_dir(directory, name) / "records.parquet"
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, SCHEMA, compression="lz4")
        self.rows = 0

    def write(self, records: list[Record]) -> None:
        if records and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist([_to_row(r, SCHEMA) for r in records], schema=SCHEMA))
            self.rows += len(records)

    def __iter__(self) -> Iterator[Record]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for batch in iter_records(self.path):
            yield from batch

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        shutil.rmtree(self.path.parent, ignore_errors=True)


def iter_records(path: str | Path, schema: pa.Schema = SCHEMA, batch_rows: int = 4096) -> Iterator[list[Record]]:
    """The records of a file written by :func:`write_records`, in file order, `batch_rows` at a time."""
    path = Path(path)
    fix = "rerun the stage that writes it"
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise StageError(f"{path}: cannot read records ({e}); {fix}") from None
    missing = [c for c in schema.names if c not in pf.schema_arrow.names]
    if missing:
        raise StageError(f"{path}: not a steep record file, missing columns {missing}; expected {schema.names}; {fix}")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=schema.names):
        records = batch.to_pylist()
        for r in records:
            r["meta"] = json.loads(r["meta"])
        yield records


T = TypeVar("T")


def rebatched(batches: Iterable[list[T]], size: int) -> Iterator[list[T]]:
    """The items of `batches` again, in lists of `size` (the last may be shorter): batches that do not depend on
    how the input was cut (a file's row groups, a reader's batch size)."""
    batch: list[T] = []
    for chunk in batches:
        batch.extend(chunk)
        full = len(batch) - len(batch) % size
        for lo in range(0, full, size):
            yield batch[lo : lo + size]
        batch = batch[full:]
    if batch:
        yield batch


def record_count(path: str | Path) -> int:
    """Rows of a record file, from its footer."""
    return pq.ParquetFile(path).metadata.num_rows


def record_files(path: str | Path) -> list[Path]:
    """The record files of a directory (one per source), in file-name order."""
    files = sorted(Path(path).glob("*.parquet"))
    if not files:
        raise StageError(f"{path}: no .parquet record files; run `dvc repro pull` first")
    return files


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
    return [r for f in record_files(path) for r in read_records(f)]


def write_rejects(path: Path, rejects: list[tuple[Record, str, str, str]]) -> None:
    """Write rejected records as (record, stage, reason, detail), sorted by id."""
    rows = []
    for record, stage, reason, detail in rejects:
        rows.append({**record, "stage": stage, "reason": reason, "detail": detail})
    write_records(path, rows, REJECT_SCHEMA)
