"""Caches that check what they serve: what computed an entry (its origin), checksums, and a JSON value cache.

Every cache of the project (embeddings, the static table, synthesize's completions, the probe's per-task rows,
model conversions) keys its entries on everything they depend on, the computing code and library versions
included, and stores beside each entry what is needed to check it before it is served:

- **Origin**: ``{"code": {<module>: <hash>}, "versions": {<package>: <version>}}`` (:func:`origin`), the code
  that computes the entries and the installed versions of the libraries that do. It is part of each key, and
  stored in each entry so that ``steep cache prune`` can tell an entry no current code can ask for
  (:func:`changes`). A module named ``ast:<module>`` is hashed on its own syntax tree (docstrings and comments
  left out: :func:`ast_hash`); any other on the bytes of its import closure (:func:`stages.core.code.code_hash`).
- **Checksum**: a sha256 of the entry's key, origin, schema and value (:func:`digest`), so that a damaged or
  altered entry, or one copied under another key, is told from a good one.
- **Schema**: what the reader needs of the value (a small declarative form, :func:`schema_problems`): a
  completion's fields, a non-empty list of rows with the keys the probe reads.

An entry that fails its check is logged with its path and computed again; a damaged cache *file* (an SQLite
database, a table folder) is moved aside as ``<name>.corrupt-<n>`` (:func:`move_aside`) with a warning, and
rebuilt. ``steep cache verify`` / ``prune`` (``stages/commands/cache.py``) check and clean every cache.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from stages.core import code as _code
from stages.core import io as _io

log = logging.getLogger("steep")

# The layout of a JsonCache entry file (a field of it); entries of another layout are stale.
FORMAT = 2
OLD_FORMAT = f"JSON, but not an entry of format {FORMAT} (written by an older steep, or damaged)"
Origin = dict[str, dict[str, str]]


# --- origins: the code and the libraries that compute entries -----------------------------------------------------


def version(package: str) -> str:
    """The installed version of `package` ("none" when it is not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def library_versions(*names: str) -> dict[str, str]:
    """``{name: installed version}`` of the packages `names`, sorted: the part of a cache key for libraries."""
    return {n: version(n) for n in sorted(set(names))}


def ast_hash(path: str | Path) -> str:
    """sha256 (16 hex) of a module's code without its docstrings and comments (its AST), for cache keys whose
    entries are slow to compute again: an edit of a docstring does not change them."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


@cache
def code_hash(spec: str) -> str:
    """The hash of the code `spec` names: ``ast:<module>`` its own AST, ``<module>`` its import closure's bytes;
    "gone" when the module no longer exists."""
    name = spec.removeprefix("ast:")
    path = _code.module_path(name)
    if path is None:
        return "gone"
    return ast_hash(path) if spec.startswith("ast:") else _code.code_hash(name)


def origin(code: Iterable[str] = (), libraries: Iterable[str] = ()) -> Origin:
    """What computes a cache's entries now: ``{"code": {spec: hash}, "versions": {package: version}}``."""
    return {"code": {c: code_hash(c) for c in sorted(set(code))}, "versions": library_versions(*libraries)}


def changes(recorded: Any) -> list[str]:
    """How the `recorded` origin of an entry differs from the code and libraries installed now (empty: none, the
    entry can still be asked for); an origin that is not one is a change too."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("code"), dict):
        return ["no origin recorded (written by an older steep)"]
    out = [f"{spec}: code changed" for spec, h in sorted(recorded["code"].items()) if code_hash(spec) != h]
    versions = recorded.get("versions")
    if not isinstance(versions, dict):
        return [*out, "no library versions recorded"]
    out += [f"{p} {v} -> {version(p)}" for p, v in sorted(versions.items()) if version(p) != v]
    return out


def digest(value: Any) -> str:
    """sha256 of `value`'s canonical JSON (sorted keys): checksums and key parts."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def move_aside(path: Path, why: str) -> Path:
    """Rename the damaged cache file or folder `path` to ``<name>.corrupt-<n>`` (the first free n), with a warning
    that names both; the caller builds a new one. ``steep cache prune`` deletes what was moved aside."""
    n = 1
    while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    path.rename(aside)
    log.warning("%s is damaged (%s): moved aside to %s and built again; delete it when done looking", path, why, aside)
    return aside


# --- schemas of JSON values ---------------------------------------------------------------------------------------

_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "number": (int, float),
    "dict": dict,
    "list": list,
    "any": object,
}


def schema_problems(value: Any, schema: Any, where: str = "value") -> list[str]:
    """What in `value` does not match `schema` (empty: it matches); the first problem only.

    A schema is a type name (``str``, ``int``, ``bool``, ``number``, ``dict``, ``list``, ``any``), or
    ``{"fields": {name: schema}}`` (a dict with at least those keys), or ``{"items": schema, "min_items": n}`` (a
    list of at least n such values).
    """
    if isinstance(schema, str):
        bad_bool = isinstance(value, bool) and schema in ("int", "number")
        if isinstance(value, _TYPES[schema]) and not bad_bool:
            return []
        return [f"{where}: expected {schema}, got {type(value).__name__}"]
    if "items" in schema:
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        if len(value) < schema["min_items"]:
            return [f"{where}: {len(value)} items, expected at least {schema['min_items']}"]
        for i, item in enumerate(value):
            if found := schema_problems(item, schema["items"], f"{where}[{i}]"):
                return found
        return []
    if not isinstance(value, dict):
        return [f"{where}: expected an object, got {type(value).__name__}"]
    missing = sorted(set(schema["fields"]) - set(value))
    if missing:
        return [f"{where}: missing {', '.join(missing)} (has {', '.join(sorted(value)) or 'nothing'})"]
    for name, sub in schema["fields"].items():
        if found := schema_problems(value[name], sub, f"{where}.{name}"):
            return found
    return []


# --- the JSON value cache -----------------------------------------------------------------------------------------


class JsonCache:
    """JSON values under ``<root>/<name[:2]>/<name>.json``, where name is the sha256 of the caller's key and the
    cache's origin (an entry of other code or libraries is another file).

    An entry file holds ``{"format", "key", "origin", "schema", "value", "sha256"}``; :meth:`get` serves its value
    only when all of it checks out (:func:`entry_problem`), and otherwise logs the path and the problem, deletes
    the file and returns None: the caller computes the value again and puts it. Entries are written to a temporary
    file and renamed, so a reader (or a killed run) never sees half of one.
    """

    def __init__(self, root: str | Path, origin: Origin, schema: Any):
        self.root = Path(root)
        self.origin = origin
        self.schema = schema

    def path(self, key: str) -> Path:
        """The file of `key`'s entry."""
        name = hashlib.sha256(f"{key}\0{digest(self.origin)}".encode()).hexdigest()
        return self.root / name[:2] / f"{name}.json"

    def get(self, key: str) -> Any | None:
        """The value stored under `key`, or None (no entry, or a damaged one, which is logged and deleted)."""
        path = self.path(key)
        if not path.is_file():
            return None
        entry, problem = read_entry(path)
        if problem is None and (entry["key"], entry["origin"], entry["schema"]) != (key, self.origin, self.schema):
            problem = "its key, origin or schema is not the one asked for"
        if problem is not None:
            self.discard(key, problem)
            return None
        return entry["value"]

    def discard(self, key: str, why: str) -> None:
        """Delete `key`'s entry, logging `why` (a reader's own check failed): the caller computes it again."""
        path = self.path(key)
        log.warning("cache entry %s is damaged (%s): computing it again", path, why)
        path.unlink(missing_ok=True)

    def put(self, key: str, value: Any) -> None:
        """Store `value` (JSON-serializable, matching the schema) under `key`, replacing any entry there."""
        if found := schema_problems(value, self.schema):
            raise RuntimeError(
                f"broken invariant: a value computed for the cache {self.root} fails its schema: {found}"
            )
        body = {"key": key, "origin": self.origin, "schema": self.schema, "value": value}
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _io.atomic_outputs(path) as (tmp,):
            text = json.dumps({"format": FORMAT, **body, "sha256": digest(body)}, sort_keys=True, ensure_ascii=False)
            tmp.write_text(text, encoding="utf-8")


def read_entry(path: Path) -> tuple[dict[str, Any], str | None]:
    """A JsonCache entry file and its first problem (None: it checks out against its own checksum and schema, and
    its file name is the one its key and origin give)."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        return {}, f"unreadable: {e}"
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return {}, OLD_FORMAT
    body = {k: entry.get(k) for k in ("key", "origin", "schema", "value")}
    if entry.get("sha256") != digest(body):
        return entry, "its sha256 does not match its content"
    if path.stem != hashlib.sha256(f"{entry['key']}\0{digest(entry['origin'])}".encode()).hexdigest():
        return entry, "it lies under another key's name"
    if found := schema_problems(entry["value"], entry["schema"]):
        return entry, f"its value does not have what its reader needs: {found[0]}"
    return entry, None


def entry_files(root: Path) -> Iterator[Path]:
    """Every JsonCache entry file under `root` (``<2 hex>/<name>.json``), sorted."""
    yield from sorted(p for p in root.glob("??/*.json") if p.is_file())
