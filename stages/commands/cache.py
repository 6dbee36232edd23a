"""``steep cache verify`` and ``steep cache prune``: check every entry of every cache, and drop what no run can use.

The caches (under ``--cache-dir``, ``.steep_cache`` by default, and the user's static tables,
``$STEEP_CACHE_HOME/static`` else ``~/.cache/steep/static``):

- ``embeddings/embeddings.sqlite`` (and any other ``embeddings.sqlite`` there): each vector's checksum, dtype and
  dimension (:mod:`stages.curate.embed_cache`); the file itself must be one SQLite reads whole;
- ``embeddings/static/<key>/`` and the user's tables: every file's sha256 against ``model.json``;
- ``synthesize/``, ``probe/`` (any folder of ``<2 hex>/<name>.json`` entries): each entry's checksum, name and schema
  (:func:`stages.core.cache.read_entry`);
- ``models/<sha256>-<dtype>-<code>/``: each converted file's sha256 against its ``steep_source.json``.

Each entry is ``ok``, ``damaged`` (fails its check: a stage would compute it again) or ``stale`` (made by other code
or library versions than the installed ones, recorded in its origin, or by an older steep without checksums: no
run of this code can ask for it). ``verify`` prints the counts per cache and exits 1 when anything is damaged; it
changes nothing unless ``--fix``, which deletes damaged entries and moves damaged files aside (``<name>.corrupt-<n>``,
as a stage does) and then exits 0. ``prune`` deletes the damaged and stale entries, what was moved aside and
leftover temporary folders (``--dry-run``: only count them); run it when no stage is running.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core import cache as _cache
from stages.curate import embed_cache, static_embed
from stages.variant import checkpoints
from stages.variant.sources import sha256_file


@dataclass
class Found:
    """The verdicts of one cache: what is ok, damaged or stale, and how to remove it."""

    path: Path
    ok: int = 0
    damaged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    aside: list[Path] = field(default_factory=list)  # moved aside before, or a leftover temporary folder
    fix: list[Callable[[], Any]] = field(default_factory=list)  # verify --fix: damaged entries out of the way
    drop: list[Callable[[], Any]] = field(default_factory=list)  # prune: damaged and stale entries deleted

    def bad(self, kind: str, what: str, path: Path, why: str) -> None:
        """Count the file or folder `path` as `kind` (damaged, stale), with its removal."""
        getattr(self, kind).append(f"{what} ({why})")
        self.drop.append(_remove(path))
        if kind == "damaged":
            self.fix.append(_remove(path) if path.suffix == ".json" else lambda: _cache.move_aside(path, why))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``cache`` subcommand's flags."""
    p = sub.add_parser(
        "cache", help="verify or prune the caches", description=(__doc__ or "").split("\n\n")[0].strip("`")
    )
    p.add_argument("action", choices=("verify", "prune"), help="verify: check every entry; prune: drop the unusable")
    p.add_argument("--cache-dir", type=Path, default=Path(".steep_cache"), help="default .steep_cache")
    p.add_argument("--fix", action="store_true", help="verify: delete damaged entries, move damaged files aside")
    p.add_argument("--dry-run", action="store_true", help="prune: count what would go, delete nothing")
    return p


def _remove(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _leftovers(folder: Path) -> list[Path]:
    """What a stage moved aside in `folder`, and temporary folders a killed run left (names starting with a dot)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if ".corrupt-" in p.name or p.name.startswith("."))


def scan_json(folder: Path) -> Found:
    """A folder of JsonCache entries."""
    out = Found(folder, aside=[p for d in sorted(folder.iterdir()) if d.is_dir() for p in _leftovers(d)])
    for path in _cache.entry_files(folder):
        entry, problem = _cache.read_entry(path)
        if problem == _cache.OLD_FORMAT:
            out.bad("stale", str(path), path, problem)
        elif problem is not None:
            out.bad("damaged", str(path), path, problem)
        elif changed := _cache.changes(entry["origin"]):
            out.bad("stale", str(path), path, "; ".join(changed))
        else:
            out.ok += 1
    out.drop.append(lambda: [d.rmdir() for d in folder.glob("??") if d.is_dir() and not any(d.iterdir())])
    return out


def scan_sqlite(path: Path) -> Found:
    """An embeddings.sqlite file: the file whole, then each vector."""
    out = Found(path, aside=_leftovers(path.parent))
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        found = [r[0] for r in db.execute("PRAGMA integrity_check")]
        db.close()
        problem = None if found == ["ok"] else "; ".join(map(str, found[:3]))
    except sqlite3.DatabaseError as e:
        problem = str(e)
    if problem is not None:
        out.bad("damaged", str(path), path, f"SQLite cannot read it: {problem}")
        return out
    cache = embed_cache.EmbeddingCache(path.parent)
    verdicts = cache.scan()
    out.ok = len(verdicts["ok"])
    out.damaged = [f"{path}: vector {k}" for k in verdicts["damaged"]]
    out.stale = [f"{path}: vector {k}" for k in verdicts["stale"]]
    if out.damaged:
        out.fix.append(lambda: cache.drop(verdicts["damaged"]))
    if out.damaged or out.stale:
        out.drop.append(lambda: cache.drop(verdicts["damaged"] + verdicts["stale"]))
    return out


def scan_tables(folder: Path) -> Found:
    """A folder of distilled static tables (``<key>/``)."""
    out = Found(folder, aside=_leftovers(folder))
    for table in sorted(p for p in folder.iterdir() if p.is_dir() and p not in out.aside):
        try:
            origin = json.loads((table / "model.json").read_text(encoding="utf-8")).get("origin")
        except (OSError, ValueError, AttributeError):
            origin = None
        problem = static_embed.table_problem(table)
        if problem is not None:
            # a table of an older steep records no origin (nor checksums): no run asks for its key any more
            out.bad("stale" if origin is None else "damaged", str(table), table, problem)
        elif changed := _cache.changes(origin):
            out.bad("stale", str(table), table, "; ".join(changed))
        else:
            out.ok += 1
    return out


def scan_conversions(folder: Path) -> Found:
    """A folder of model conversions (``<sha256>-<dtype>-<code>/``, each with its steep_source.json)."""
    out = Found(folder, aside=_leftovers(folder))
    code = checkpoints.conversion_code()
    for entry in sorted(p for p in folder.iterdir() if (p / checkpoints.RECORD).is_file()):
        try:
            files = json.loads((entry / checkpoints.RECORD).read_text(encoding="utf-8"))["files"]
            bad = [n for n, i in files.items() if not (entry / n).is_file() or sha256_file(entry / n) != i["sha256"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            bad = [f"{checkpoints.RECORD} unreadable: {e}"]
        if bad:
            out.bad("damaged", str(entry), entry, f"{', '.join(bad)}: not the recorded sha256")
        elif entry.name.rsplit("-", 1)[-1] != code:
            out.bad("stale", str(entry), entry, "converted by other code or libraries")
        else:
            out.ok += 1
    return out


def scan(cache_dir: Path) -> list[Found]:
    """Every cache under `cache_dir`, then the user's static tables."""
    found: list[Found] = []
    if cache_dir.is_dir():
        for sub in sorted(p for p in cache_dir.iterdir() if p.is_dir() and p.name != "checkpoints"):
            if sub.name == "models":
                found.append(scan_conversions(sub))
            elif any(sub.glob("??/*.json")):
                found.append(scan_json(sub))
            for db in sorted(sub.rglob(embed_cache.FILE)):
                found.append(scan_sqlite(db))
                if (db.parent / "static").is_dir():
                    found.append(scan_tables(db.parent / "static"))
    if static_embed.user_tables_dir().is_dir():
        found.append(scan_tables(static_embed.user_tables_dir()))
    return found


def run(args: argparse.Namespace) -> int:
    """Verify or prune; print one line per cache; the exit code (verify: 1 when damage is left)."""
    found = scan(args.cache_dir)
    print(f"{'cache':<64} {'ok':>7} {'damaged':>7} {'stale':>7} {'aside':>5}")
    for f in found:
        print(f"{f.path!s:<64} {f.ok:>7} {len(f.damaged):>7} {len(f.stale):>7} {len(f.aside):>5}")
        for what in f.damaged[:10]:
            print(f"  damaged: {what}")
    damaged = sum(len(f.damaged) for f in found)
    if args.action == "verify":
        if damaged and args.fix:
            for action in [a for f in found for a in f.fix]:
                action()
            print(f"fixed: {damaged} damaged entries deleted or moved aside; the stages compute them again")
            return 0
        if damaged:
            print(f"{damaged} damaged entries: `steep cache verify --fix` (or `steep cache prune`) removes them")
        return 1 if damaged else 0
    gone = sum(len(f.damaged) + len(f.stale) for f in found)
    aside = [p for f in found for p in f.aside]
    if args.dry_run:
        print(f"would drop {gone} damaged or stale entries and {len(aside)} moved-aside or temporary files")
        return 0
    for action in [a for f in found for a in f.drop]:
        action()
    for p in aside:
        _remove(p)()
    print(f"dropped {gone} damaged or stale entries and {len(aside)} moved-aside or temporary files")
    return 0
