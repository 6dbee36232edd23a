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
        # a new id whose origin's old record kept its id elsewhere (an exact duplicate, say): compare by origin
        old_at = {_origin(r): r for r in a if _origin(r) is not None}
        for origin, rb in only_new.items():
            ra = old_at.get(origin) if origin is not None else None
            label = rb["id"] if ra is None else f"{ra['id']} (now {rb['id']}; {rb.get('source')} row {origin[2]})"
            pairs.append((label, ra, rb))
    # records whose content changed first (a new id, or a field besides meta), then those whose meta alone did
    content = [p for p in pairs if _content_changed(p[1], p[2])]
    meta_only = [p for p in pairs if p not in content]
    notes = [_note(key, ra, rb) for key, ra, rb in content[:limit]]
    if meta_only:
        notes.append(f"{len(meta_only)} more differ in meta alone (first: {_note(*meta_only[0])})")
    if not notes:
        return f"same records ({len(a)}), different bytes (row order or file metadata)"
    return f"{len(a)} -> {len(b)} records; " + "; ".join(notes)


def _content_changed(ra: dict[str, Any] | None, rb: dict[str, Any] | None) -> bool:
    """Whether a record is new, gone, or differs in a field besides its meta (its id included)."""
    return ra is None or rb is None or any(f != "meta" and ra.get(f) != rb.get(f) for f in set(ra) | set(rb))


def _fields(ra: dict[str, Any], rb: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old, new) of the fields that differ; a JSON object field (meta) by its keys (meta.file_sha256)."""
    out = []
    for f in sorted(set(ra) | set(rb)):
        x, y = ra.get(f), rb.get(f)
        if f == "id" or x == y:
            continue
        try:
            dx, dy = json.loads(x), json.loads(y)
        except (TypeError, ValueError):
            dx = dy = None
        if isinstance(dx, dict) and isinstance(dy, dict):
            out += [(f"{f}.{k}", dx.get(k), dy.get(k)) for k in sorted(set(dx) | set(dy)) if dx.get(k) != dy.get(k)]
        else:
            out.append((f, x, y))
    return out


def _note(key: Any, ra: dict[str, Any] | None, rb: dict[str, Any] | None) -> str:
    if ra is None or rb is None:
        return f"record {key}: only in the {'rerun' if ra is None else 'commit'}"
    fields = sorted(_fields(ra, rb), key=lambda t: t[0].startswith("meta"))  # content before provenance
    return f"record {key}: " + ", ".join(f"{f} {_pair(x, y)}" for f, x, y in fields[:2])


def _pair(x: Any, y: Any) -> str:
    """Two values side by side; two long texts from a little before where they first differ."""
    if isinstance(x, str) and isinstance(y, str) and max(len(x), len(y)) > 60:
        i = next((n for n, (cx, cy) in enumerate(zip(x, y, strict=False)) if cx != cy), min(len(x), len(y)))
        start = max(0, i - 20)
        x, y = ("..." if start else "") + x[start:], ("..." if start else "") + y[start:]
    return f"{_short(x)} -> {_short(y)}"


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
