"""The house rules of stages/: exact code deps in dvc.yaml, layers without cycles, small modules.

CONVENTIONS.md: a stage module never imports another stage module; no import cycles; a module stays under
about 400 lines; each stage's code ``deps:`` in dvc.yaml are exactly the project files its module runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.core import code

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = code.dvc_stages(DVC)
# stage modules: every module a dvc.yaml stage runs, and export (run by hand, after train)
STAGE_MODULES = {module for module, _, _ in STAGES.values()} | {"stages.variant.export"}
MAX_LINES = 400


def _modules() -> list[str]:
    files = sorted((ROOT / "stages").rglob("*.py"))
    return [".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for f in files]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_what_the_stage_runs(stage: str) -> None:
    """dvc.yaml's code deps == the import closure of the stage module and of the params schema it loads."""
    module, params, deps = STAGES[stage]
    want = [p.as_posix() for p in code.stage_deps(module, params)]
    assert deps == want, (
        f"dvc.yaml stage {stage!r}: code deps differ from what {module} imports "
        f"(missing {sorted(set(want) - set(deps))}, extra {sorted(set(deps) - set(want))}); "
        "run `python -m stages.core.code dvc.yaml` to rewrite them"
    )


def test_no_stage_module_imports_another() -> None:
    offenders = {
        stage: sorted(other for other in STAGE_MODULES - {stage} if code.module_path(other) and _in(other, stage))
        for stage in sorted(STAGE_MODULES)
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def _in(module: str, stage: str) -> bool:
    path = code.module_path(module)
    return path is not None and path.relative_to(ROOT) in code.closure(stage)


def test_no_import_cycles() -> None:
    graph = {m: code._imports(code.module_path(m), m) - {m} for m in _modules()}  # type: ignore[arg-type]
    # a package's __init__ is imported on the way to its modules: that is no cycle
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_modules_stay_small() -> None:
    sizes = {m: len(code.module_path(m).read_text().splitlines()) for m in _modules()}  # type: ignore[union-attr]
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_imports_inside_functions_count(tmp_path: Path) -> None:
    """A lazy import (inside a function) is part of what a module runs: editing its target must rerun the stage."""
    source = tmp_path / "mod.py"
    source.write_text(
        "import json\n\ndef f():\n    from stages.core import io\n    from stages.curate.embed import embed\n"
    )
    assert code._imports(source, "stages.curate.mod") == {
        "stages",
        "stages.core",
        "stages.core.io",
        "stages.curate",
        "stages.curate.embed",
    }
