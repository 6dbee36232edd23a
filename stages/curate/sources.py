"""Where pull's rows come from: local files and folders, the Hugging Face Hub, web pages.

A shared module, not a stage: the pull stage turns the :class:`Row` objects yielded here into records.
Each reader checks what it reads (UTF-8, JSON, CSV quoting, Parquet, HTTP status, size and time limits)
and stops with a :class:`StageError` naming the file, the line or row, and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core import io as _io
from stages.core.io import StageError, decode_utf8, read_jsonl, sha256_file
from stages.core.params.pull import Source, Web

DATA_EXTS = (".jsonl", ".json", ".csv", ".parquet")
DOC_EXTS = (".md", ".txt")
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path, display: str) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise StageError(
            f"{display}: cannot read the file ({e.strerror}); check the path and its permissions"
        ) from None


def _jsonl_rows(path: Path, display: str) -> Iterator[Row]:
    """The lines of a JSONL file, read one at a time (a file larger than memory streams through)."""
    sha = _file_sha256(path, display)
    for n, obj in read_jsonl(path, "one JSON object a line"):
        yield Row(obj, f"{display}, line {n}", {"source_file": display, "row": n, "file_sha256": sha})


def _json_rows(data: bytes, display: str) -> Iterator[Row]:
    text = decode_utf8(data, display)
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
    text = decode_utf8(data, display)
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


def _parquet_rows(path: Path, display: str) -> Iterator[Row]:
    """The rows of a Parquet file, a batch at a time."""
    sha = _file_sha256(path, display)
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for item in batch.to_pylist():
                n += 1
                yield Row(item, f"{display}, row {n}", {"source_file": display, "row": n, "file_sha256": sha})
    except (OSError, pa.ArrowException) as e:
        raise StageError(f"{display}: not a readable Parquet file ({e}). Fix: rewrite or re-export the file") from None


# Readers of whole files (bytes) and of files read a part at a time (path).
READERS = {".json": _json_rows, ".csv": _csv_rows}
STREAM_READERS = {".jsonl": _jsonl_rows, ".parquet": _parquet_rows}


def _file_rows(path: Path, display: str, fmt: str) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix in STREAM_READERS:
        yield from STREAM_READERS[suffix](path, display)
    elif suffix in READERS:
        yield from READERS[suffix](_read_bytes(path, display), display)
    elif suffix in DOC_EXTS and fmt == "text":
        data = _read_bytes(path, display)
        yield Row(
            None, display, {"source_file": display, "row": 1, "file_sha256": _sha256(data)}, decode_utf8(data, display)
        )
    else:
        allowed = " ".join(DATA_EXTS + (DOC_EXTS if fmt == "text" else ()))
        raise StageError(
            f"{display}: cannot read {suffix or 'extension-less'!r} files as format {fmt!r}; supported: {allowed}"
            + ("" if fmt == "text" else " (.md/.txt documents need `format: text`)")
            + ". Fix: convert the file, or point `location` at a supported one"
        )


def _listing(
    folder: Path, exts: tuple[str, ...], display: str, roots: tuple[Path, ...]
) -> tuple[list[Path], list[str]]:
    """Files under `folder` with one of `exts` (sorted by relative path), and every other file name seen.

    A symbolic link among them that leaves `roots` (the project, and a location named outside it) is an error;
    a linked folder is not walked into (as before), and one that leaves `roots` is an error too.
    """
    picked, others = [], []
    for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_symlink():
            _check_link(p, str(PurePosixPath(display) / rel.as_posix()), roots)
        if not p.is_file():
            continue
        (picked if p.suffix.lower() in exts else others).append(p)
    return picked, [p.relative_to(folder).as_posix() for p in others]


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _check_link(link: Path, display: str, roots: tuple[Path, ...]) -> None:
    """Refuse the symbolic link `link` when its target lies outside `roots` (the project root first)."""
    target = link.resolve()
    if not _inside(target, roots):
        raise StageError(
            f"{display}: a symbolic link to {target}, outside the project ({roots[0]}). pull does not follow links "
            "out of the project: what they point at is named neither in params.yaml nor as a dependency in "
            "dvc.yaml, so a change there would go unseen. Fix: copy the data into the project, or point the "
            f"source's `location` at {target} itself (a location outside the project is read as named; list it "
            "in pull's `deps:` in dvc.yaml)"
        )


def _roots(location: str) -> tuple[Path, ...]:
    """Where a source's files may lie: the project (the current directory), and the location itself when params
    name it outside the project (``/data/corpus``, ``../shared``). A location inside the project that reaches out
    through a symbolic link is refused, naming the link."""
    root = Path.cwd().resolve()
    named = Path(os.path.normpath(Path.cwd() / location))
    if not (named.is_relative_to(Path.cwd()) or named.is_relative_to(root)):
        return root, Path(location).resolve()  # named outside the project: the user's explicit choice
    path = Path(location)
    for link in [*reversed(path.parents[:-1]), path]:  # the first link on the way that leaves the project
        if link.is_symlink() and not _inside(link.resolve(), (root,)):
            _check_link(link, link.as_posix(), (root,))
    return (root,)


def _local_rows(source: Source) -> Iterator[Row]:
    location = source.location
    path = Path(location)
    if not path.exists():
        raise StageError(
            f"source {source.name!r}: {location} not found (paths are relative to the project root; the "
            f"current directory is {Path.cwd()}). Fix: correct `location`, or add the file"
        )
    roots = _roots(location)
    if path.is_file():
        yield from _file_rows(path, location, source.format)
        return
    exts = DOC_EXTS if source.format == "text" else DATA_EXTS
    files, others = _listing(path, exts, location, roots)
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
            yield Row(None, display, meta, decode_utf8(data, display))
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


def source_rows(source: Source, web: Web) -> Iterator[Row]:
    """The rows of one source, in source order: from the Hub (``hf://``), the web (``http(s)://``) or local files."""
    if source.location.startswith("hf://"):
        return _hf_rows(source)
    if source.location.startswith(("http://", "https://")):
        return _web_rows(source, web)
    return _local_rows(source)
