"""The project source a module runs: its import closure, and a hash of it for cache keys.

Two uses: ``dvc.yaml``'s code ``deps:`` of each stage are exactly the closure of its module
(``python -m stages.core.code --check`` compares them; ``tests/test_layout.py`` holds them together), and a
cache keyed on :func:`code_hash` of the module that computes its entries serves nothing an edit of that code
could change, with no version constant to bump by hand.

The closure is read statically from the source (``ast``): every ``import stages...`` and ``from stages...
import ...`` at any depth of a module (lazy imports inside functions included), followed through the
project's own modules only; third-party packages are pinned by ``pyproject.toml``, not here.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project root: stages/core/code.py -> .
PACKAGE = "stages"


def module_path(name: str) -> Path | None:
    """The source file of project module `name` (``stages.curate.dedup``), or None if it is not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Project modules that the source of module `name` (at `path`) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{alias.name}" for alias in node.names)  # `from pkg import module`
    out: set[str] = set()
    for mod in found:
        if mod.split(".")[0] != PACKAGE:
            continue
        # importing a.b.c runs a/__init__.py and a/b/__init__.py too
        parts = mod.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if module_path(m) is not None}


@cache
def closure(name: str) -> tuple[Path, ...]:
    """Every project source file that importing module `name` runs (itself included), sorted, relative to ROOT."""
    if module_path(name) is None:
        raise ValueError(f"{name}: not a module of the project")
    seen: set[str] = set()
    todo = [name]
    parts = name.split(".")
    todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__.py
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_path(mod)
        if path is not None:
            todo.extend(_imports(path, mod) - seen)
    return tuple(sorted(module_path(m).relative_to(ROOT) for m in seen))  # type: ignore[union-attr]


def code_hash(name: str) -> str:
    """sha256 over the relative path and bytes of every file in the import closure of module `name`."""
    h = hashlib.sha256()
    for rel in closure(name):
        h.update(f"{rel.as_posix()}\0".encode())
        h.update((ROOT / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def stage_deps(module: str, params_keys: list[str] | tuple[str, ...]) -> tuple[Path, ...]:
    """The code a DVC stage runs: the closure of its module, plus that of the params schema of each section
    its declared keys fall in (:func:`stages.core.params.base.load` imports exactly those), sorted."""
    sections = {key.split(".", 1)[0] for key in params_keys}
    files = set(closure(module))
    for section in sections:
        files.update(closure(f"{PACKAGE}.core.params.{section}"))
    return tuple(sorted(files))


def dvc_stages(dvc_yaml: dict) -> dict[str, tuple[str, list[str], list[str]]]:
    """Per stage of a parsed ``dvc.yaml``: its module (from ``python -m <module>`` in its cmd), its ``params:``
    and its code ``deps:`` (the entries under ``stages/``)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        module = body["cmd"].split("python -m ", 1)[1].split()[0]
        deps = [d for d in body.get("deps", []) if isinstance(d, str) and d.startswith(f"{PACKAGE}/")]
        out[name] = (module, list(body.get("params", [])), deps)
    return out


def write_dvc_deps(path: Path) -> list[str]:
    """Rewrite the code ``deps:`` of every stage in the dvc.yaml at `path` to :func:`stage_deps`, in place
    (comments and everything else kept); return the names of the stages whose list changed."""
    import yaml

    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    changed = []
    for name, (module, params, deps) in dvc_stages(yaml.safe_load(text)).items():
        want = [p.as_posix() for p in stage_deps(module, params)]
        if deps == want:
            continue
        start = lines.index(f"  {name}:")
        first = next(i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith(f"- {PACKAGE}/"))
        last = first
        while last + 1 < len(lines) and lines[last + 1].lstrip().startswith(f"- {PACKAGE}/"):
            last += 1
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        lines[first : last + 1] = [f"{indent}- {dep}" for dep in want]
        changed.append(name)
    path.write_text("\n".join(lines), encoding="utf-8")
    return changed


def main() -> None:
    """``python -m stages.core.code [dvc.yaml]``: rewrite each stage's code ``deps:`` to what its module runs.

    ``python -m stages.core.code MODULE [KEY ...]`` prints the code deps of one stage module reading params
    KEYs (its ``PARAMS``), one path a line.
    """
    args = sys.argv[1:] or ["dvc.yaml"]
    if args[0].endswith((".yaml", ".yml")):
        changed = write_dvc_deps(Path(args[0]))
        print(f"{args[0]}: code deps rewritten for {', '.join(changed)}" if changed else f"{args[0]}: up to date")
        return
    for rel in stage_deps(args[0], args[1:]):
        print(rel.as_posix())


if __name__ == "__main__":
    main()
