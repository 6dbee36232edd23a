"""The keys of the per-task result cache of the baseline and probe stages (its entries: one JSON list of per-item
rows per key, in a :class:`stages.core.cache.JsonCache`).

A key is the sha256 of a JSON payload of everything the rows depend on (the engine builds it:
``stages/probe/engine.py``); a hit evaluates nothing. Entries are written atomically, and an unreadable entry is
evaluated again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from typing import Any


def version(package: str) -> str:
    """The installed version of `package` ("none" when it is not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def key(payload: dict[str, Any]) -> str:
    """The cache key of a payload: sha256 of its JSON with sorted keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
