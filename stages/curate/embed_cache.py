"""The embedding cache: one SQLite file of vectors (``<cache>/embeddings.sqlite``), each checked before it is served.

A row holds a vector's key, its dimension and dtype, a sha256 of (key, dtype, dimension, bytes) and the id of its
origin (the code and library versions that computed it, :func:`stages.core.cache.origin`, stored once in the
``origins`` table). :meth:`EmbeddingCache.get` serves a vector only when its bytes have the recorded length, dtype
and dimension (the one the caller expects, where it knows it) and its checksum matches: a vector copied from
another key, cut short or overwritten is logged and computed again. A file SQLite cannot read (garbage, cut
short) is moved aside as ``embeddings.sqlite.corrupt-<n>`` (:func:`stages.core.cache.move_aside`) and a new one is
started. Rows of the table of an older steep (``emb``, no checksums) are never read; ``steep cache prune`` drops
them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import cache as _cache

log = logging.getLogger("steep.embed")

FILE = "embeddings.sqlite"
DTYPE = "float32"
COLUMNS = "key, origin, dim, dtype, sha256, vec"
# Files whose integrity this process has checked (PRAGMA quick_check reads every page: once per process).
_CHECKED: set[Path] = set()
# Damaged vectors named one by one in the log before the rest are only counted.
NAMED = 5


def checksum(key: str, dim: int, blob: bytes) -> str:
    """sha256 of a row: its key, dtype and dimension with its bytes (a vector under another key does not match)."""
    return hashlib.sha256(f"{key}\0{DTYPE}\0{dim}\0".encode() + blob).hexdigest()


class EmbeddingCache:
    """SQLite map from a vector's key to a checked float32 vector, for entries of one `origin`."""

    def __init__(self, cache_dir: str | Path, origin: _cache.Origin | None = None):
        self.path = Path(cache_dir) / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.origin = origin
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            return self._replace(f"SQLite cannot read it: {e}")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path)
        try:
            if self.path.resolve() not in _CHECKED:
                found = [r[0] for r in db.execute("PRAGMA quick_check")]
                if found != ["ok"]:
                    raise sqlite3.DatabaseError("; ".join(map(str, found[:3])))
                _CHECKED.add(self.path.resolve())
            db.execute("CREATE TABLE IF NOT EXISTS origins (id INTEGER PRIMARY KEY, origin TEXT UNIQUE)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors "
                "(key TEXT PRIMARY KEY, origin INTEGER, dim INTEGER, dtype TEXT, sha256 TEXT, vec BLOB)"
            )
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _replace(self, why: str) -> sqlite3.Connection:
        """Move the damaged file (and its journal) aside and start an empty one."""
        db = getattr(self, "db", None)
        if db is not None:
            db.close()
        aside = _cache.move_aside(self.path, why)
        for suffix in ("-journal", "-wal", "-shm"):  # a journal of the old file must not be replayed into the new
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(aside.with_name(aside.name + suffix))
        _CHECKED.discard(self.path.resolve())
        return self._connect()

    def _origin_id(self) -> int:
        text = json.dumps(self.origin, sort_keys=True)
        self.db.execute("INSERT OR IGNORE INTO origins (origin) VALUES (?)", (text,))
        self.db.commit()  # no write lock held past this call (another process may be reading)
        return self.db.execute("SELECT id FROM origins WHERE origin = ?", (text,)).fetchone()[0]

    def get(self, keys: list[str], dim: int | None = None) -> dict[str, np.ndarray]:
        """The vectors of `keys` that are there and check out (of this cache's origin, with `dim` components when
        given); damaged ones are logged and left out (the caller computes them again)."""
        try:
            origin_id = self._origin_id()
            rows = []
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT {COLUMNS} FROM vectors WHERE key IN ({','.join('?' * len(chunk))})"
                rows += self.db.execute(q, chunk).fetchall()
        except sqlite3.DatabaseError as e:
            self.db = self._replace(f"SQLite failed reading it: {e}")
            return {}
        if dim is None and rows:  # the dimension most rows agree on (they share a model: one dimension)
            dim = Counter(r[2] for r in rows).most_common(1)[0][0]
        found: dict[str, np.ndarray] = {}
        damaged: list[tuple[str, str]] = []
        for key, origin, d, dtype, sha, blob in rows:
            problem = row_problem(key, d, dtype, sha, blob, dim)
            if problem is None and origin != origin_id:
                problem = "computed by other code or libraries"
            if problem is None:
                found[key] = np.frombuffer(blob, dtype=np.float32)
            else:
                damaged.append((key, problem))
        for key, problem in damaged[:NAMED]:
            log.warning("%s: vector %s is damaged (%s); computing it again", self.path, key, problem)
        if len(damaged) > NAMED:
            log.warning("%s: %d more damaged vectors; computing them again", self.path, len(damaged) - NAMED)
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        """Store the vectors `items` (key -> (D,) array, stored as float32) with their checksums."""
        rows = []
        for k, v in items.items():
            blob = np.asarray(v, dtype=np.float32).tobytes()
            rows.append((k, v.shape[0], DTYPE, checksum(k, v.shape[0], blob), blob))
        try:
            self._put(rows)
        except sqlite3.DatabaseError as e:
            self.db = self._replace(f"SQLite failed writing it: {e}")
            self._put(rows)

    def _put(self, rows: list[tuple[Any, ...]]) -> None:
        origin_id = self._origin_id()
        self.db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?, ?)", [(r[0], origin_id, *r[1:]) for r in rows]
        )
        self.db.commit()

    # --- steep cache verify / prune ---------------------------------------------------------------------------

    def scan(self) -> dict[str, list[str]]:
        """Every row's verdict: ``{"ok": keys, "damaged": keys, "stale": keys}`` (stale: its origin is not the
        installed code and libraries, or it is a row of the older table without checksums)."""
        origins = {i: json.loads(o) for i, o in self.db.execute("SELECT id, origin FROM origins")}
        current = {i: not _cache.changes(o) for i, o in origins.items()}
        out: dict[str, list[str]] = {"ok": [], "damaged": [], "stale": []}
        for key, origin, d, dtype, sha, blob in self.db.execute(
            "SELECT key, origin, dim, dtype, sha256, vec FROM vectors"
        ):
            if origin not in origins or row_problem(key, d, dtype, sha, blob, None) is not None:
                out["damaged"].append(key)
            else:
                out["ok" if current[origin] else "stale"].append(key)
        if self.db.execute("SELECT name FROM sqlite_master WHERE name = 'emb'").fetchone():
            out["stale"] += [f"emb:{k}" for (k,) in self.db.execute("SELECT key FROM emb")]
        return out

    def drop(self, keys: list[str]) -> None:
        """Delete the rows `keys` (``emb:<key>`` names the older table's rows: the whole table goes), then compact."""
        mine = [k for k in keys if not k.startswith("emb:")]
        for i in range(0, len(mine), 500):
            chunk = mine[i : i + 500]
            self.db.execute(f"DELETE FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        if len(mine) < len(keys):
            self.db.execute("DROP TABLE IF EXISTS emb")
        self.db.execute("DELETE FROM origins WHERE id NOT IN (SELECT DISTINCT origin FROM vectors)")
        self.db.commit()
        self.db.execute("VACUUM")

    def close(self) -> None:
        self.db.close()


def row_problem(key: str, dim: int, dtype: str, sha: str, blob: bytes, want_dim: int | None) -> str | None:
    """What is wrong with a stored vector (None: nothing)."""
    if dtype != DTYPE:
        return f"dtype {dtype!r}, expected {DTYPE}"
    if not isinstance(blob, bytes) or len(blob) != 4 * dim:
        return f"{len(blob) if isinstance(blob, bytes) else 'no'} bytes for {dim} float32 components"
    if want_dim is not None and dim != want_dim:
        return f"{dim} components, expected {want_dim}"
    if sha != checksum(key, dim, blob):
        return "its sha256 does not match its bytes"
    return None
