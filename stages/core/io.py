"""Shared plumbing of the stages: errors, atomic outputs, stable files, fingerprints, metrics.

Every output of a stage is first written beside its final path and renamed
only once the whole stage succeeded (:func:`atomic_outputs`), so an
interrupted or failing stage leaves no half-written output behind. Temporary
files and folders are named ``.<name>.tmp-<pid>[.<more>]``: what a killed stage
left is removed by the next stage that starts beside it (:func:`clean_stale`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("steep")


class StageError(Exception):
    """A bad config or an unreadable input: the message names the file, the line or key, and the fix."""


# --- outputs ------------------------------------------------------------------


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# a temporary name of this module's shape: `.pulled.tmp-812`, `..moderated.parquet.tmp-812.runs.k2j`, `.ab12.tmp-9.x`
_TEMP = re.compile(r"^\..*\.tmp-(\d{1,7})(?:\..*)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (alive), or no pid at all (keep it)
        return True
    return True


def clean_stale(folder: str | Path, *, own: bool = False) -> list[Path]:
    """Remove the temporary files and folders that killed runs left in `folder`; the paths removed.

    A temporary name (``.<name>.tmp-<pid>[.<more>]``) is stale when its process is gone; with `own`, this process's
    are too (a stage's start, before it made any: a killed run in another container may have had this pid). A live
    process's are kept. Each removal is logged.
    """
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:  # no such folder (yet), or not one: nothing left there
        return []
    removed = []
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if (pid == os.getpid() and not own) or (pid != os.getpid() and _alive(pid)):
            continue
        try:
            _remove(entry)
        except OSError as e:
            log.warning("%s: left by a killed run (process %d), and could not be removed (%s)", entry, pid, e)
            continue
        log.warning("%s: removed, left by a killed run (process %d)", entry, pid)
        removed.append(entry)
    return removed


def temp_dir(parent: str | Path, name: str) -> Path:
    """A new, empty folder ``<parent>/.<name>.tmp-<pid>.<random>`` (mode 0o755), once the stale temporaries of
    `parent` are removed: such a folder never outlives the next run that makes one beside it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-{os.getpid()}."))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would keep a shared cache from other users
    return tmp


@contextlib.contextmanager
def atomic_outputs(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths for `paths`; rename them into place only if the block succeeds.

    A path may be a file or a directory (the block creates what it needs at the
    temporary path). On any exception every temporary path is removed and the
    final paths are left untouched; what killed runs left beside them is removed
    first (:func:`clean_stale`).
    """
    finals = [Path(p) for p in paths]
    tmps = [_tmp_for(p) for p in finals]
    for final, tmp in zip(finals, tmps, strict=True):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final.parent)
        _remove(tmp)
    try:
        yield tmps
    except BaseException:
        for tmp in tmps:
            _remove(tmp)
        raise
    for final, tmp in zip(finals, tmps, strict=True):
        if not tmp.exists():
            raise StageError(f"internal error: the stage did not write its output {final}")
        _remove(final)
        os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# Rows per Parquet row group of every file a stage writes.
ROW_GROUP_ROWS = 1 << 16


def write_table(path: Path, table: pa.Table) -> None:
    """Write Parquet the same way every time: same rows, same bytes."""
    pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=False)


def parquet_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A writer of the file :func:`write_table` writes, fed a table of at most ROW_GROUP_ROWS rows at a time."""
    return pq.ParquetWriter(path, schema, compression="zstd", write_statistics=False)


def feed(h: Any, path: Path) -> None:
    """Update hash `h` with the bytes of the file at `path`, read in 1 MiB blocks."""
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    feed(h, path)
    return h.hexdigest()


def read_parquet(path: Path, columns: Sequence[str], label: str, fix: str, not_a: str = "") -> pa.Table:
    """The `columns` of a Parquet file; a StageError naming the file, what it should be and the fix otherwise.

    Args:
        path: the file.
        columns: the columns it must have (the table returned holds these, in this order).
        label: what the file holds, for "cannot read <label>".
        fix: what to do about it (e.g. "rerun `dvc repro template`").
        not_a: what the file is not when columns are missing (e.g. "not a templated file"), or "".
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise StageError(f"{path}: cannot read {label} ({e}); {fix}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        lead = f"{not_a}, missing" if not_a else "missing"
        raise StageError(f"{path}: {lead} columns {missing}; expected {list(columns)}; {fix}")
    return table.select(list(columns))


def snippet(value: Any, limit: int = 80) -> str:
    """`value` (its repr, unless a string) cut to `limit` characters, quoted, for error messages."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def decode_utf8(data: bytes, display: str | Path) -> str:
    """Strict UTF-8 (a leading byte-order mark is dropped); a bad byte names the line and the byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise StageError(
            f"{display}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"of the file, byte {col} of the line); the file must be UTF-8. Fix: re-encode it, e.g. "
            f"`iconv -f latin1 -t utf-8 {display} > {display}.utf8` (put the file's real encoding in place of "
            "latin1), and point the params at the result"
        ) from None
    return text.removeprefix("\ufeff")


def read_jsonl(
    path: str | Path, expected: str, *, label: str = "file", fix: str = "", data: bytes | None = None
) -> Iterator[tuple[int, Any]]:
    """Every non-blank line of a JSONL file, parsed: ``(line number from 1, value)``.

    Lines are split on ``"\\n"`` only (``str.splitlines`` also splits inside a string holding U+2028 and shifts
    the line numbers), so a line number is the one an editor shows.

    Args:
        path: the file, named in every error (read here unless `data` is given).
        expected: the form of one line, shown next to what a bad line holds (``one JSON object a line like ...``).
        label: what the file is, for "<path>: <label> not found" (``seed task file``).
        fix: what to do when the file is not there (``set synthesize.self_instruct.seed_tasks``).
        data: the file's bytes, when the caller has them already; else the file is read a line at a time.

    Raises:
        StageError: the file is missing, is not UTF-8, or a line is not valid JSON: the message names the file, the
            line (and column), what the line holds, the form expected and the fix.
    """
    if data is not None:
        yield from _jsonl_lines(iter(data.split(b"\n")), path, expected)
        return
    try:
        fh = Path(path).open("rb")  # noqa: SIM115 (closed by the `with` below: the errors differ from a read's)
    except (FileNotFoundError, IsADirectoryError):
        raise StageError(f"{path}: {label} not found; {fix}" if fix else f"{path}: {label} not found") from None
    except OSError as e:
        raise StageError(
            f"{path}: cannot read the {label} ({e.strerror}); check the path and its permissions"
        ) from None
    with fh:  # a line at a time (binary lines end at b"\n" only): memory holds one line, not the file
        yield from _jsonl_lines(iter(fh), path, expected)


def _jsonl_lines(lines: Iterator[bytes], path: str | Path, expected: str) -> Iterator[tuple[int, Any]]:
    """Parse JSONL lines (bytes, split on b"\n"): ``(line number, value)`` for each non-blank one."""
    offset = 0
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StageError(
                f"{path}, line {n}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} "
                f"of the file, byte {e.start + 1} of the line); the file must be UTF-8. Fix: re-encode it, e.g. "
                f"`iconv -f latin1 -t utf-8 {path} > {path}.utf8` (put the file's real encoding in place of "
                "latin1), and point the params at the result"
            ) from None
        offset += len(raw) + (0 if raw.endswith(b"\n") else 1)
        if n == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            line = line.rstrip("\n")
            raise StageError(
                f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); got {snippet(line)}; expected "
                f"{expected}. Fix: repair or delete line {n}"
            ) from None
        yield n, value


def fingerprint(*dirs: Path | None) -> str:
    """sha256 over every file (relative name and bytes) of each directory given (None: skipped).

    The identity of a model (and adapter) directory in cache keys: any changed byte gives another key.
    """
    h = hashlib.sha256()
    for n, root in enumerate(dirs):
        if root is None:
            continue
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        if not files:
            raise StageError(
                f"{root}: model directory not found or empty; run the stage that makes it first (dvc repro)"
            )
        h.update(f"dir{n}\0".encode())
        for f in files:
            h.update(f"{f.relative_to(root).as_posix()}\0".encode())
            feed(h, f)
    return h.hexdigest()


# Keys transformers writes into tokenizer_config.json that describe how it was loaded (offline mode, a local
# path), not the tokenizer: left in, the same model would give other bytes with HF_HUB_OFFLINE set or not.
LOAD_STATE_KEYS = ("is_local", "local_files_only", "name_or_path", "_commit_hash")


def scrub_load_state(out_dir: Path, source_dir: Path | None = None) -> None:
    """Drop load-time state and absolute source paths from the JSON files `out_dir` holds.

    tokenizer_config.json loses :data:`LOAD_STATE_KEYS`; any file loses ``_name_or_path`` when it names `source_dir`
    (outputs name no absolute paths).
    """
    for path in sorted(out_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            continue
        drop = [k for k in LOAD_STATE_KEYS if k in data and path.name == "tokenizer_config.json"]
        if source_dir is not None and data.get("_name_or_path") in (str(source_dir), str(source_dir.resolve())):
            drop.append("_name_or_path")
        if drop:
            for key in drop:
                del data[key]
            path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Stable JSON: sorted keys, two-space indent, trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def drop_metrics(total: int, kept: int, dropped: Mapping[str, int], **extra: Any) -> dict[str, Any]:
    """Metrics of a data stage; raises if `total == kept + sum(dropped_*)` does not hold."""
    if total != kept + sum(dropped.values()):
        raise RuntimeError(f"broken invariant: total {total} != kept {kept} + dropped {dict(dropped)}")
    out: dict[str, Any] = {"total": total, "kept": kept}
    out.update({f"dropped_{reason}": n for reason, n in sorted(dropped.items())})
    out.update(extra)
    return out


def is_unreachable(exc: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) says the network is off or unreachable.

    Used to turn a Hub library's offline failure into a StageError that says so.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if isinstance(exc, ConnectionError | TimeoutError) or any(
            k in name for k in ("Connect", "Timeout", "Offline", "LocalEntryNotFound")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
