"""A cache of JSON values on disk, one file per key: synthesize's completions, the probe engine's per-task rows.

What a key covers is its user's business (each builds it from everything its entries depend on, the code that
computes them included: :func:`stages.core.code.code_hash`); this module only stores and finds the values.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stages.core import io as _io

log = logging.getLogger("steep")


class JsonCache:
    """JSON values under ``<root>/<key[:2]>/<key>.json`` (the two-character folders keep each folder small).

    An entry is written to a temporary file and renamed, so a reader (or a killed run) never sees half of one; an
    entry that cannot be read is a miss, and the next put overwrites it.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The file of `key`'s entry."""
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        """The value stored under `key`, or None (no entry, or an unreadable one)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
            log.warning("%s: unreadable cache entry (%s), computing it again", path, e)
            return None

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON-serializable) under `key`, replacing any entry there."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _io.atomic_outputs(path) as (tmp,):
            tmp.write_text(json.dumps(value, sort_keys=True, ensure_ascii=False), encoding="utf-8")
