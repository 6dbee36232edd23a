"""Naming the first differing records of two versions of a data output (a Parquet file, or a folder of them).

The commit's version comes from the project's DVC cache (``.dvc/cache/files/md5/<ab>/<cdef...>``: where ``dvc
repro`` left it); without it the audit can only say that the bytes differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def cache_file(cache: Path, md5: str) -> Path:
    """The file of an md5 in a DVC 3 cache (``.dir`` manifests included)."""
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _origin(record: dict[str, Any]) -> tuple[Any, ...] | None:
    """Where a record came from (source, file, row in it), from its ``meta``; None when it does not say."""
    try:
        meta = json.loads(record["meta"]) if isinstance(record.get("meta"), str) else record.get("meta")
    except ValueError:
        return None
    if not isinstance(meta, dict) or "row" not in meta:
        return None
    return (record.get("source"), meta.get("file"), meta.get("row"))


def parquet_diff(old: Path, new: Path, limit: int = 3) -> str:
    """The first `limit` records that differ, field by field: matched by ``id``, and a record whose content (so its
    id) changed matched to its new version by its origin (source, file, row)."""
    import pyarrow.parquet as pq

    a, b = pq.read_table(old).to_pylist(), pq.read_table(new).to_pylist()
    if not (a and "id" in a[0]):  # no ids: row by row
        width = max(len(a), len(b))
        rows = [(i, a[i] if i < len(a) else None, b[i] if i < len(b) else None) for i in range(width)]
        pairs = [(i, ra, rb) for i, ra, rb in rows if ra != rb]
    else:
        ka, kb = {r["id"]: r for r in a}, {r["id"]: r for r in b}
        pairs = [(k, ka[k], kb[k]) for k in sorted(set(ka) & set(kb)) if ka[k] != kb[k]]
        only_new = {_origin(kb[k]): kb[k] for k in sorted(set(kb) - set(ka))}
        for k in sorted(set(ka) - set(kb)):
            rb = only_new.pop(_origin(ka[k]), None) if _origin(ka[k]) is not None else None
            label = k if rb is None else f"{k} (now {rb['id']}; {rb.get('source')} row {_origin(rb)[2]})"
            pairs.append((label, ka[k], rb))
        pairs += [(r["id"], None, r) for r in only_new.values()]
    notes = []
    for key, ra, rb in pairs[:limit]:
        if ra is None or rb is None:
            notes.append(f"record {key}: only in the {'rerun' if ra is None else 'commit'}")
        else:
            fields = [f for f in sorted(set(ra) | set(rb)) if f != "id" and ra.get(f) != rb.get(f)]
            notes.append(
                f"record {key}: " + ", ".join(f"{f} {_short(ra.get(f))} -> {_short(rb.get(f))}" for f in fields[:2])
            )
    if not notes:
        return f"same records ({len(a)}), different bytes (row order or file metadata)"
    return f"{len(a)} -> {len(b)} records; " + "; ".join(notes)


def explain(cache: Path, rerun_root: Path, path: str, old_md5: str) -> str:
    """Why `path` (relative to the rerun's root) differs from the commit's `old_md5`: the first differing records."""
    new = rerun_root / path
    old = cache_file(cache, old_md5)
    if not old.is_file():
        return f"md5 {old_md5} -> differs; the commit's version is not in {cache} to name the records (run dvc pull)"
    if old_md5.endswith(".dir"):
        manifest = {e["relpath"]: e["md5"] for e in json.loads(old.read_text())}
        files = {p.relative_to(new).as_posix(): p for p in sorted(new.rglob("*")) if p.is_file()}
        for rel in sorted(set(manifest) | set(files)):
            if rel not in files or rel not in manifest:
                return f"{rel}: only in the {'commit' if rel not in files else 'rerun'}"
            if manifest[rel] != _md5(files[rel]):
                inner = f"{path}/{rel}"
                return (
                    f"{rel}: " + explain(cache, rerun_root, inner, manifest[rel]) if rel.endswith(".parquet") else rel
                )
        return "same files, different manifest"
    if path.endswith(".parquet"):
        return parquet_diff(old, new)
    if path.endswith(".json"):
        from stages.commands._compare import json_diff

        return json_diff(json.loads(old.read_text()), json.loads(new.read_text()))
    return f"md5 {old_md5} -> {_md5(new)}"
