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

Pull drops nothing: a row it cannot read (corrupt JSON, a missing or non-string field, bytes that are not
UTF-8, an unknown role) stops the stage with the file, the line or row, and the fix, and nothing is written
(the whole output directory is written to a temporary path and renamed at the end). Bad *content* (an empty
output, a toxic text) is moderate's business, not pull's.

Provenance in ``meta``: ``source_file`` (the location as given, the data file inside a folder, ``hf://name`` or
the URL), ``row`` (1-based: JSONL line number, JSON array index + 1, CSV/Parquet/Hub data row + 1, position
in the sorted file list for folder documents), ``source_index`` (position in ``pull.sources``),
``file_sha256`` (of the file's bytes; of the document file for folders; of the page for URLs), ``revision``
(hf only), ``label`` (the ``label_field`` value, when declared) and ``path`` (folder documents: the file).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.pull import Source, Web
from stages.core.records import ROLES, Record, make_record, write_records

PARAMS = ["pull"]

log = logging.getLogger("steep.pull")

DATA_EXTS = (".jsonl", ".json", ".csv", ".parquet")
DOC_EXTS = (".md", ".txt")
KIND = {"alpaca": "instruction", "qa": "qa", "sharegpt": "conversation", "messages": "conversation", "text": "document"}
# ShareGPT speakers -> record roles. `user`/`assistant` appear in many ShareGPT exports too.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# Canonical fields a row may lack (read as "").
OPTIONAL_FIELDS = {("alpaca", "input")}
# Python's csv refuses fields over 128 KiB by default; documents can be longer.
csv.field_size_limit(2**31 - 1)


@dataclass
class Row:
    """One row of a source before it becomes a record.

    Attributes:
        data: the parsed row (a mapping of column -> value), or None for a document file or web page.
        where: where the row is, for error messages ("data/x.jsonl, line 3").
        meta: provenance for the record's ``meta`` (source_file, row, file_sha256, ...).
        document: the text of a document file or web page (format text), else None.
    """

    data: Any
    where: str
    meta: dict[str, Any] = field(default_factory=dict)
    document: str | None = None


# --- reading local files -------------------------------------------------------


def _read_bytes(path: Path, display: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise StageError(
            f"{display}: cannot read the file ({e.strerror}); check the path and its permissions"
        ) from None


def _decode(data: bytes, display: str) -> str:
    """Strict UTF-8 (a leading byte-order mark is dropped); a bad byte names the line and the byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise StageError(
            f"{display}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"of the file, byte {col} of the line); sources must be UTF-8. Fix: re-encode the file, e.g. "
            f"`iconv -f latin1 -t utf-8 {display} > {display}.utf8` (put the file's real encoding in place of "
            "latin1), and point `location` at the result"
        ) from None
    return text.removeprefix("\ufeff")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _snippet(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def _jsonl_rows(data: bytes, display: str) -> Iterator[Row]:
    text = _decode(data, display)
    sha = _sha256(data)
    # split on "\n" only: str.splitlines() also splits on U+2028 & co and would shift line numbers
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise StageError(
                f"{display}, line {n}: not valid JSON ({e.msg} at column {e.colno}); got {_snippet(line)}. "
                f"Each line of a .jsonl file must be one JSON object. Fix: repair or delete line {n}"
            ) from None
        yield Row(obj, f"{display}, line {n}", {"source_file": display, "row": n, "file_sha256": sha})


def _json_rows(data: bytes, display: str) -> Iterator[Row]:
    text = _decode(data, display)
    sha = _sha256(data)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise StageError(
            f"{display}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}). "
            "Fix: repair the file (a .json source is one JSON array of objects), or write it as .jsonl"
        ) from None
    if not isinstance(obj, list):
        raise StageError(
            f"{display}: expected a JSON array of objects ([{{...}}, {{...}}]), got a {type(obj).__name__}. "
            "Fix: write the rows as a top-level array, or one object per line in a .jsonl file"
        )
    for i, item in enumerate(obj):
        yield Row(item, f"{display}, row {i + 1}", {"source_file": display, "row": i + 1, "file_sha256": sha})


def _csv_rows(data: bytes, display: str) -> Iterator[Row]:
    text = _decode(data, display)
    sha = _sha256(data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise StageError(f"{display}, line 1: the header repeats columns {dupes}. Fix: give each column a name")
        n = 0
        for values in reader:
            if not values:  # a blank line
                continue
            n += 1
            where = f"{display}, row {n} (line {reader.line_num})"
            if len(values) != len(header):
                raise StageError(
                    f"{where}: {len(values)} fields, but the header has {len(header)} ({header}). "
                    "Fix: quote fields that contain commas or newlines, or repair the row"
                )
            # every value stays a string, empty cells included ("" is a valid empty input)
            yield Row(
                dict(zip(header, values, strict=True)), where, {"source_file": display, "row": n, "file_sha256": sha}
            )
    except csv.Error as e:
        raise StageError(f"{display}, line {reader.line_num}: not valid CSV ({e}). Fix: repair the quoting") from None


def _parquet_rows(data: bytes, display: str) -> Iterator[Row]:
    sha = _sha256(data)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as e:
        raise StageError(f"{display}: not a readable Parquet file ({e}). Fix: rewrite or re-export the file") from None
    for i, item in enumerate(table.to_pylist()):
        yield Row(item, f"{display}, row {i + 1}", {"source_file": display, "row": i + 1, "file_sha256": sha})


READERS = {".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}


def _file_rows(path: Path, display: str, fmt: str) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix in READERS:
        yield from READERS[suffix](_read_bytes(path, display), display)
    elif suffix in DOC_EXTS and fmt == "text":
        data = _read_bytes(path, display)
        yield Row(
            None, display, {"source_file": display, "row": 1, "file_sha256": _sha256(data)}, _decode(data, display)
        )
    else:
        allowed = " ".join(DATA_EXTS + (DOC_EXTS if fmt == "text" else ()))
        raise StageError(
            f"{display}: cannot read {suffix or 'extension-less'!r} files as format {fmt!r}; supported: {allowed}"
            + ("" if fmt == "text" else " (.md/.txt documents need `format: text`)")
            + ". Fix: convert the file, or point `location` at a supported one"
        )


def _listing(folder: Path, exts: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """Files under `folder` with one of `exts` (sorted by relative path), and every other file name seen."""
    picked, others = [], []
    for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        (picked if p.suffix.lower() in exts else others).append(p)
    return picked, [p.relative_to(folder).as_posix() for p in others]


def _local_rows(source: Source) -> Iterator[Row]:
    location = source.location
    path = Path(location)
    if not path.exists():
        raise StageError(
            f"source {source.name!r}: {location} not found (paths are relative to the project root; the "
            f"current directory is {Path.cwd()}). Fix: correct `location`, or add the file"
        )
    if path.is_file():
        yield from _file_rows(path, location, source.format)
        return
    exts = DOC_EXTS if source.format == "text" else DATA_EXTS
    files, others = _listing(path, exts)
    if not files:
        raise StageError(
            f"source {source.name!r}: the folder {location} holds no {'/'.join(exts)} files "
            f"(found {others[:10] or 'nothing'}); an empty source is an error. Fix: add files, point `location` "
            f"at the right folder, or remove the source from pull.sources"
        )
    for i, file in enumerate(files):
        display = str(PurePosixPath(location) / file.relative_to(path).as_posix())
        if source.format == "text":
            data = _read_bytes(file, display)
            meta = {"source_file": location, "row": i + 1, "file_sha256": _sha256(data), "path": display}
            yield Row(None, display, meta, _decode(data, display))
        else:
            yield from _file_rows(file, display, source.format)


# --- the Hub and the web --------------------------------------------------------


def _hf_rows(source: Source) -> Iterator[Row]:
    name = source.location.removeprefix("hf://")
    what = f"hf://{name} (revision {source.revision}, split {source.split})"
    import datasets  # heavy: only for sources on the Hub

    try:
        ds = datasets.load_dataset(name, revision=source.revision, split=source.split)
    except Exception as e:
        if _io.is_unreachable(e):
            from huggingface_hub import constants

            why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else f"{type(e).__name__}: {e}"
            raise StageError(
                f"source {source.name!r}: cannot reach the Hugging Face Hub for {what}: {why}. Fix: run the pull "
                "where the Hub is reachable (the dataset is then cached), or export the split to a local file "
                "(e.g. `datasets.load_dataset(...).to_json('data/sources/<name>.jsonl')`) and point `location` at it"
            ) from None
        raise StageError(
            f"source {source.name!r}: cannot load {what}: {type(e).__name__}: {e}. "
            "Fix: check the dataset name, the revision (a commit sha or tag) and the split on the Hub"
        ) from None
    for i, item in enumerate(ds):
        meta = {"source_file": source.location, "row": i + 1, "revision": source.revision}
        yield Row(item, f"{what}, row {i + 1}", meta)


def _fetch(url: str, web: Web) -> bytes:
    """GET `url` within `web.timeout_s` (connect, each read, and the whole body) and `web.max_bytes`."""
    import requests

    too_big = (
        f"{url}: the page is larger than pull.web.max_bytes = {web.max_bytes} bytes. Fix: raise "
        "pull.web.max_bytes, or save the page's text to a .md/.txt file and point `location` at it"
    )
    timed_out = (
        f"{url}: no complete answer within pull.web.timeout_s = {web.timeout_s} s. Fix: retry, raise "
        "pull.web.timeout_s, or save the page's text to a .md/.txt file and point `location` at it"
    )
    deadline = time.monotonic() + web.timeout_s
    try:
        with requests.get(url, headers={"User-Agent": web.user_agent}, timeout=web.timeout_s, stream=True) as resp:
            if not 200 <= resp.status_code < 300:
                raise StageError(
                    f"{url}: HTTP {resp.status_code} {resp.reason}. Fix: check the URL in `location` "
                    "(and that the page is public)"
                )
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > web.max_bytes:
                raise StageError(too_big)
            chunks, size = [], 0
            for chunk in resp.iter_content(chunk_size=1 << 16):
                size += len(chunk)
                if size > web.max_bytes:
                    raise StageError(too_big)
                if time.monotonic() > deadline:
                    raise StageError(timed_out)
                chunks.append(chunk)
    except requests.Timeout:
        raise StageError(timed_out) from None
    except requests.RequestException as e:
        if "timed out" in str(e).lower():  # a read timeout while streaming the body surfaces as ConnectionError
            raise StageError(timed_out) from None
        raise StageError(f"{url}: cannot fetch the page ({type(e).__name__}: {e}). Fix: check the URL") from None
    return b"".join(chunks)


def _web_rows(source: Source, web: Web) -> Iterator[Row]:
    import trafilatura  # extraction only: given the page bytes and no URL, it fetches nothing

    url = source.location
    data = _fetch(url, web)
    text = trafilatura.extract(
        data, include_comments=False, include_tables=True, output_format="txt", with_metadata=False
    )
    if not text or not text.strip():
        raise StageError(
            f"{url}: no main text found in the page ({len(data)} bytes). Fix: check that the URL serves an HTML "
            "article, or save its text to a .md/.txt file and point `location` at it"
        )
    yield Row(None, url, {"source_file": url, "row": 1, "file_sha256": _sha256(data)}, text)


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
    if not isinstance(value, str):
        column = source.fields.get(canonical, canonical)
        raise StageError(
            f"{where}: field {column!r} is {'null' if value is None else type(value).__name__} "
            f"({_snippet(value)}), expected a string. Fix: repair the row, or map `{canonical}` to the right "
            f"column with `fields:` for source {source.name!r}"
        )
    return value


def _turns(source: Source, obj: dict[str, Any], where: str) -> list[dict[str, str]]:
    sharegpt = source.format == "sharegpt"
    list_key, role_key, content_key = (
        ("conversations", "from", "value") if sharegpt else ("messages", "role", "content")
    )
    column = source.fields.get(list_key, list_key)
    turns = _value(source, obj, list_key, where)
    if not isinstance(turns, list):
        raise StageError(
            f"{where}: field {column!r} is {type(turns).__name__} ({_snippet(turns)}), expected a list of turns "
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
                f"{at}: expected an object {{{role_key!r}: ..., {content_key!r}: ...}}, got {_snippet(turn)}"
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
        return make_record(source=source.name, kind="document", meta=meta, text=row.document)
    if not isinstance(obj, dict):
        raise StageError(
            f"{where}: expected an object with the fields of format {fmt!r}, got {_snippet(obj)}. "
            "Fix: repair or remove the row"
        )
    if source.label_field:
        label = obj.get(source.label_field)
        if isinstance(label, bool) or not isinstance(label, str | int):
            got = "missing" if source.label_field not in obj else f"{_snippet(label)}"
            raise StageError(
                f"{where}: the label column {source.label_field!r} (label_field) is {got}; the row has "
                f"{_columns(obj)}. Fix: give every row a string label, or remove `label_field` from the source"
            )
        meta["label"] = str(label)
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


def pull_source(source: Source, index: int, web: Web) -> list[Record]:
    """All records of one source, in source order.

    Args:
        source: the source as declared in ``pull.sources``.
        index: its position in ``pull.sources`` (``meta.source_index``, the order dedup keeps first).
        web: fetch limits for http(s) locations.

    Returns:
        One record per row (or document); never empty.

    Raises:
        StageError: the source is missing, empty or unreadable, or a row lacks a field; the message names the
            file, the line or row, and the fix.
    """
    if source.location.startswith("hf://"):
        rows = _hf_rows(source)
    elif source.location.startswith(("http://", "https://")):
        rows = _web_rows(source, web)
    else:
        rows = _local_rows(source)
    records = [_to_record(source, index, row) for row in rows]
    if not records:
        raise StageError(
            f"source {source.name!r}: {source.location} holds no records; an empty source is an error. "
            "Fix: point `location` at data, or remove the source from pull.sources"
        )
    return records


def run(params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Pull every source into ``outputs["out"]/<source name>.parquet``.

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
            records = pull_source(source, index, pull.web)
            write_records(out / f"{source.name}.parquet", records)
            counts[source.name] = len(records)
            log.info("%s: %d records from %s", source.name, len(records), source.location)
    total = sum(counts.values())
    return _io.drop_metrics(total, total, {}, **{f"records_{name}": n for name, n in counts.items()})


def main(argv: list[str] | None = None) -> None:
    """Command line of the stage (see dvc.yaml)."""
    parser = argparse.ArgumentParser(prog="python -m stages.curate.pull", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, required=True, help="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="output directory, one .parquet per source")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON")
    args = parser.parse_args(argv)
    params = _params.load(args.params, PARAMS)
    cli.log_params("pull", params.pull)
    metrics = run(params, inputs={}, outputs={"out": args.out})
    with _io.atomic_outputs(args.metrics) as (tmp,):
        _io.write_json(tmp, metrics)
    log.info("pulled %d records from %d sources into %s", metrics["total"], len(params.pull.sources), args.out)


if __name__ == "__main__":
    cli.run_main(lambda: main(sys.argv[1:]))
