"""Pull: read every source declared in ``params.yaml`` into the record schema, one Parquet file per source.

Inputs: the sources of ``pull.sources`` (paths relative to the project root, the directory ``dvc`` runs in):
    local files (``.jsonl`` ``.json`` ``.csv`` ``.parquet``, and ``.md``/``.txt`` documents) and folders of them,
    ``hf://<dataset>`` with a pinned ``revision`` and ``split`` (where the Hub is reachable), and ``http(s)://``
    web pages (``format: text``; main text extracted with trafilatura).
Outputs: ``data/pulled/<source name>.parquet`` (records, see ``stages/core/records.py``) and ``metrics/pull.json``
    (``total``, ``kept`` (== total) and ``records_<source>``).
Run: ``dvc repro pull``
    (= ``python -m stages.curate.pull --params params.yaml --out data/pulled --metrics metrics/pull.json``).

Formats and the record kind they become (``fields:`` maps these canonical names to your column names):

    alpaca    instruction, input (optional), output                  -> instruction
    qa        question -> instruction, answer -> output              -> qa
    sharegpt  conversations: [{from, value}], from human|gpt|system  -> conversation (role user|assistant|system)
    messages  messages: [{role, content}], role system|user|assistant -> conversation
    text      a folder of .md/.txt files (one document each), one such file, a web page, or a ``text`` column
              of a data file                                         -> document
    fact      a JSONL facts file (``stages/core/facts.py``: id, document, fact, question, answer, type, wrong,
              statements, split; no renames)                         -> restatement (one per statement, as text)
                                                                        and doc_qa (question -> instruction,
                                                                        answer -> output; qa_seen facts only)

The readers of each location kind live in :mod:`stages.curate.sources`; this module maps their rows to records.

Pull drops nothing: a row it cannot read (corrupt JSON, a missing or non-string field, bytes that are not
UTF-8, a lone surrogate (a JSON ``\\ud800`` escape without its partner: no text, no UTF-8 form), an unknown
role) stops the stage with the file, the line or row, and the fix, and nothing is written (the whole output
directory is written to a temporary path and renamed at the end). Bad *content* (an empty output, a toxic text,
an oversized field) is moderate's business, not pull's.

Symbolic links: a location inside the project is read only where it stays inside: a link on its path, or one met
while walking a folder, whose target lies outside the project stops the stage, naming the link and its target
(what it points at would be named neither in params.yaml nor in dvc.yaml). A location that params name outside
the project (``/data/corpus``, ``../shared/x.jsonl``) is the user's explicit choice and is read, links inside it
included as long as they stay inside it or the project; like every local location it must be a dependency of
pull in dvc.yaml.

Provenance in ``meta``: ``source_file`` (the location as given, the data file inside a folder, ``hf://name`` or
the URL), ``row`` (1-based: JSONL line number, JSON array index + 1, CSV/Parquet/Hub data row + 1, position
in the sorted file list for folder documents), ``source_index`` (position in ``pull.sources``),
``file_sha256`` (of the file's bytes; of the document file for folders; of the page for URLs), ``revision``
(hf only), ``label`` (the ``label_field`` value, when declared) and ``path`` (folder documents: the file); records
of a facts file also ``fact`` (its id), ``document``, ``split`` and, for a restatement, ``statement`` (1-based).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.facts import EXAMPLE as FACT_EXAMPLE
from stages.core.facts import check_fact
from stages.core.io import StageError, snippet
from stages.core.params.pull import Source, Web
from stages.core.records import ROLES, Record, RecordWriter, make_record
from stages.curate.sources import Row, source_rows


def _local_paths(params: _params.Scoped, variant: str | None, inputs: Mapping[str, Path]) -> list[tuple[str, str]]:
    """The local files and folders the sources name (each must be a dependency of the stage in dvc.yaml)."""
    return [
        (s.location, f"pull.sources {s.name!r}")
        for s in params.pull.sources
        if not s.location.startswith(("hf://", "http://", "https://"))
    ]


STAGE = cli.Stage(
    params=("pull",),
    inputs={},
    outputs={"out": "output directory, one .parquet per source"},
    local_paths=_local_paths,
)
PARAMS = list(STAGE.params)

log = logging.getLogger("steep.pull")

KIND = {"alpaca": "instruction", "qa": "qa", "sharegpt": "conversation", "messages": "conversation", "text": "document"}
# ShareGPT speakers -> record roles. `user`/`assistant` appear in many ShareGPT exports too.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# A progress line per this many records read from a source.
PROGRESS_RECORDS = 100_000
# Canonical fields a row may lack (read as "").
OPTIONAL_FIELDS = {("alpaca", "input")}
# A UTF-16 surrogate code point: in a Python str only when a JSON \u escape gave half of a pair.
_SURROGATE = re.compile("[\ud800-\udfff]")


# --- rows to records --------------------------------------------------------------


def _columns(obj: Any) -> str:
    keys = sorted(map(str, obj))
    return str(keys[:20])[:-1] + (", …]" if len(keys) > 20 else "]")


def _value(source: Source, obj: Any, canonical: str, where: str, *, what: str = "the row") -> Any:
    """The value of canonical field `canonical` (through `fields:`), or an error naming the fix."""
    column = source.fields.get(canonical, canonical)
    if column not in obj:
        optional = (source.format, canonical) in OPTIONAL_FIELDS
        if optional:
            return ""
        mapped = f" (mapped from {canonical!r} by `fields:`)" if column != canonical else ""
        raise StageError(
            f"{where}: missing field {column!r}{mapped}, which format {source.format!r} needs; {what} has "
            f"{_columns(obj)}. Fix: if it is under another name, map it in params.yaml for source "
            f"{source.name!r}: `fields: {{{canonical}: <your column>}}`; otherwise repair or remove the row"
        )
    value = obj[column]
    if value is None and (source.format, canonical) in OPTIONAL_FIELDS:
        return ""
    return value


def _string(source: Source, obj: Any, canonical: str, where: str, *, what: str = "the row") -> str:
    value = _value(source, obj, canonical, where, what=what)
    column = source.fields.get(canonical, canonical)
    if not isinstance(value, str):
        raise StageError(
            f"{where}: field {column!r} is {'null' if value is None else type(value).__name__} "
            f"({snippet(value)}), expected a string. Fix: repair the row, or map `{canonical}` to the right "
            f"column with `fields:` for source {source.name!r}"
        )
    return _strip(source, _text(value, where, column))


def _text(value: str, where: str, column: str) -> str:
    """`value`, unless it holds a lone surrogate: JSON can write one (``"\\ud800"``, half of a UTF-16 pair), but it
    is no character, and no UTF-8 file (the record id's hash, Parquet) can hold it."""
    if not value.isascii():  # (a flag of the str object: no scan)
        bad = _SURROGATE.search(value)
        if bad:
            raise _surrogate(f"{where}: field {column!r}", bad.group(), bad.start())
    return value


def _surrogate(what: str, char: str, at: int | None = None) -> StageError:
    where = "" if at is None else f" at char {at}"
    return StageError(
        f"{what} holds a lone surrogate U+{ord(char):04X}{where}: half of a UTF-16 pair (a JSON \\u escape without "
        "its partner), which is not text and has no UTF-8 form. Fix: repair the escape in the file (a whole pair "
        "like \\ud83d\\ude00 is fine), or remove the row"
    )


def _strip(source: Source, text: str) -> str:
    """`text` without the source's ``strip_suffixes`` at its end."""
    for suffix in source.strip_suffixes:
        if suffix and text.endswith(suffix):
            text = text[: -len(suffix)]
    return text


def _turns(source: Source, obj: dict[str, Any], where: str) -> list[dict[str, str]]:
    sharegpt = source.format == "sharegpt"
    list_key, role_key, content_key = (
        ("conversations", "from", "value") if sharegpt else ("messages", "role", "content")
    )
    column = source.fields.get(list_key, list_key)
    turns = _value(source, obj, list_key, where)
    if not isinstance(turns, list):
        raise StageError(
            f"{where}: field {column!r} is {type(turns).__name__} ({snippet(turns)}), expected a list of turns "
            f"[{{{role_key!r}: ..., {content_key!r}: ...}}] (CSV cannot hold one: use JSONL, JSON or Parquet)"
        )
    if not turns:
        raise StageError(f"{where}: field {column!r} is an empty list: a conversation needs turns. Fix: remove the row")
    allowed = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
    out = []
    for i, turn in enumerate(turns):
        at = f"{where}, {column}[{i}]"
        if not isinstance(turn, dict):
            raise StageError(
                f"{at}: expected an object {{{role_key!r}: ..., {content_key!r}: ...}}, got {snippet(turn)}"
            )
        role = _string(source, turn, role_key, at, what="the turn")
        if role not in allowed:
            raise StageError(
                f"{at}: unknown {source.fields.get(role_key, role_key)!r} value {role!r}; format {source.format!r} "
                f"allows {sorted(allowed)}. Fix: rename the role in the data (or use the other conversation format)"
            )
        out.append({"role": allowed[role], "content": _string(source, turn, content_key, at, what="the turn")})
    return out


def _to_record(source: Source, index: int, row: Row) -> Record:
    meta = {**row.meta, "source_index": index}
    fmt, where, obj = source.format, row.where, row.data
    if row.document is not None:
        if source.label_field:
            raise StageError(
                f"source {source.name!r}: label_field applies to rows of a data file, and {where} is a "
                "whole document. Fix: remove `label_field` from the source"
            )
        return make_record(source=source.name, kind="document", meta=meta, text=_strip(source, row.document))
    if not isinstance(obj, dict):
        raise StageError(
            f"{where}: expected an object with the fields of format {fmt!r}, got {snippet(obj)}. "
            "Fix: repair or remove the row"
        )
    if source.label_field:
        label = obj.get(source.label_field)
        if isinstance(label, bool) or not isinstance(label, str | int):
            got = "missing" if source.label_field not in obj else f"{snippet(label)}"
            raise StageError(
                f"{where}: the label column {source.label_field!r} (label_field) is {got}; the row has "
                f"{_columns(obj)}. Fix: give every row a string label, or remove `label_field` from the source"
            )
        meta["label"] = _text(str(label), where, source.label_field)
    base = {"source": source.name, "kind": KIND[fmt], "meta": meta}
    if fmt == "alpaca":
        return make_record(
            **base,
            instruction=_string(source, obj, "instruction", where),
            input=_string(source, obj, "input", where),
            output=_string(source, obj, "output", where),
        )
    if fmt == "qa":
        question = _string(source, obj, "question", where)
        return make_record(**base, instruction=question, output=_string(source, obj, "answer", where))
    if fmt in ("sharegpt", "messages"):
        return make_record(**base, messages=_turns(source, obj, where))
    return make_record(**base, text=_string(source, obj, "text", where))


def _fact_records(source: Source, index: int, row: Row) -> list[Record]:
    """The records of one line of a facts file: a restatement per statement, a doc_qa pair for a qa_seen fact.

    A document_only fact gives no question/answer record: its question is a held-out probe item
    (``knowledge_mc``), so its facts reach training only as document text and restatements.
    """
    problems = ["a whole document is not a fact"] if row.document is not None else check_fact(row.data)
    if problems:
        raise StageError(
            f"{row.where}: not a valid fact of source {source.name!r}: {'; '.join(problems)}. Expected one JSON object "
            f"a line, like {FACT_EXAMPLE}. Fix: repair the line"
        )
    fact = row.data
    meta = {**row.meta, "source_index": index, "fact": fact["id"], "document": fact["document"], "split": fact["split"]}
    out = [
        make_record(source=source.name, kind="restatement", meta={**meta, "statement": i}, text=text)
        for i, text in enumerate(fact["statements"], start=1)
    ]
    if fact["split"] == "qa_seen":
        qa = {"instruction": fact["question"], "output": fact["answer"]}
        out.append(make_record(source=source.name, kind="doc_qa", meta=meta, **qa))
    return out


def pull_source(source: Source, index: int, web: Web) -> Iterator[Record]:
    """The records of one source, in source order, one at a time (a source larger than memory streams through).

    Args:
        source: the source as declared in ``pull.sources``.
        index: its position in ``pull.sources`` (``meta.source_index``, the order dedup keeps first).
        web: fetch limits for http(s) locations.

    Yields:
        One record per row (or document); a facts file's row gives several (:func:`_fact_records`).

    Raises:
        StageError: the source is missing or unreadable, or a row lacks a field; the message names the
            file, the line or row, and the fix. (An empty source is :func:`run`'s error.)
    """
    for row in source_rows(source, web):
        try:
            if source.format == "fact":
                yield from _fact_records(source, index, row)
            else:
                yield _to_record(source, index, row)
        except UnicodeEncodeError as e:  # a field no check above reads (a facts file's), hashed for the id
            raise _surrogate(f"{row.where}: a text", e.object[e.start]) from None


def run(params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Pull every source into ``outputs["out"]/<source name>.parquet``.

    Records stream from the source file to a :class:`stages.core.records.RecordWriter`, so memory holds a
    bounded number of them whatever the size of a JSONL or Parquet source (a ``.json`` array or a CSV file
    is parsed whole).

    Args:
        params: scoped params; reads ``pull``.
        inputs: unused (sources are named by ``pull.sources``, relative to the current directory).
        outputs: ``out``: the directory of per-source record files, replaced as a whole.

    Returns:
        Metrics: ``total``, ``kept`` (the same: pull drops nothing) and ``records_<source>``.
    """
    del inputs
    pull = params.pull
    counts: dict[str, int] = {}
    with _io.atomic_outputs(outputs["out"]) as (out,):
        out.mkdir(parents=True)
        for index, source in enumerate(pull.sources):
            start = time.perf_counter()
            with RecordWriter(out / f"{source.name}.parquet") as writer:
                for n, record in enumerate(pull_source(source, index, pull.web), start=1):
                    writer.write([record])
                    if n % PROGRESS_RECORDS == 0:
                        log.info("%s: %d records read", source.name, n)
                if writer.rows == 0:
                    raise StageError(
                        f"source {source.name!r}: {source.location} holds no records; an empty source is an error. "
                        "Fix: point `location` at data, or remove the source from pull.sources"
                    )
            counts[source.name] = writer.rows
            took = time.perf_counter() - start
            log.info(
                "%s: %d records from %s in %.2f s (%.0f records/s)",
                source.name,
                writer.rows,
                source.location,
                took,
                writer.rows / max(took, 1e-9),
            )
    total = sum(counts.values())
    return _io.drop_metrics(total, total, {}, **{f"records_{name}": n for name, n in counts.items()})


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the pull stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
