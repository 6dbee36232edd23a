"""The per-task result cache of the baseline and probe stages: its keys, what computes its entries, and the check
of an entry against the task that asks for it.

An entry is one JSON list of per-item rows (a :class:`stages.core.cache.JsonCache`) under the sha256 of a JSON
payload of everything the rows depend on (the engine builds it: ``stages/probe/engine.py``), in a cache whose
origin is the engine's code (its import closure) and the versions of the libraries that compute the numbers
(:data:`LIBRARIES`, and each task type's own). Before a hit is served it must check out (checksum, a non-empty list
of rows with the keys the engine reads: :data:`ROWS`) and hold exactly the task's items (:func:`hit`); a damaged
entry is logged and evaluated again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from stages.core import cache as _cache
from stages.probe.types import TYPES

# The libraries that compute every task's rows (model loading, quantization, adapters, the harness); each type adds
# its own (``TaskType.libraries``: scorers).
LIBRARIES = ("accelerate", "bitsandbytes", "lm_eval", "peft", "tokenizers", "torch", "transformers")
# What the engine reads of a cached entry: a non-empty list of per-item rows.
ROWS = {
    "items": {"fields": {"item": "int", "prompt": "str", "reference": "str", "prediction": "str", "scores": "dict"}},
    "min_items": 1,
}


def key(payload: dict[str, Any]) -> str:
    """The cache key of a payload: sha256 of its JSON with sorted keys."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def results_cache(root: Path, engine_module: str) -> _cache.JsonCache:
    """The cache under `root` of rows computed by `engine_module` (its closure) and :data:`LIBRARIES`."""
    libraries = {lib for t in TYPES.values() for lib in t.libraries} | set(LIBRARIES)
    return _cache.JsonCache(root, _cache.origin((engine_module,), libraries), ROWS)


def hit(cache: _cache.JsonCache, name: str, task_key: str, items: list[int]) -> list[dict[str, Any]] | None:
    """The cached rows of task `name` under `task_key` if they are there and are one row per item of `items` (the
    task's item indices); a mismatch is logged and the entry deleted (None: evaluate again)."""
    rows = cache.get(task_key)
    if rows is None:
        return None
    got = sorted(r["item"] for r in rows)
    if got != sorted(items):
        cache.discard(task_key, f"{name}: rows for items {got[:5]}... ({len(got)}), the task has {len(items)} items")
        return None
    return rows
