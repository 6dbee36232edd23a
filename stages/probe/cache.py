"""The per-task result cache of the baseline and probe stages: one JSON file of per-item rows per key.

A key is the sha256 of a JSON payload of everything the rows depend on (the engine builds it:
``stages/probe/engine.py``); a hit evaluates nothing. Entries are written atomically, and an unreadable entry is
evaluated again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from stages.core import io as _io
from stages.probe.tables import Row

log = logging.getLogger("steep.probe")


def version(package: str) -> str:
    """The installed version of `package` ("none" when it is not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def key(payload: dict[str, Any]) -> str:
    """The cache key of a payload: sha256 of its JSON with sorted keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class TaskCache:
    """One JSON file of per-item rows per cache key, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def get(self, key: str) -> list[Row] | None:
        """The rows stored under `key`, or None (no entry, or an unreadable one)."""
        path = self.root / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["rows"]
        except (json.JSONDecodeError, KeyError, OSError):
            log.warning("%s: unreadable cache entry, evaluating again", path)
            return None

    def put(self, key: str, rows: list[Row]) -> None:
        """Store `rows` under `key` (temporary file, then rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _io.atomic_outputs(self.root / f"{key}.json") as (tmp,):
            tmp.write_text(json.dumps({"rows": rows}, sort_keys=True, ensure_ascii=False), encoding="utf-8")
