"""Running a snippet against a copy of the project's ``stages`` package, before and after edits of its source.

For the tests of caches keyed on code (:func:`stages.core.code.code_hash`): a key must change with an edit of the
code that computes the entries, and only with that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def printed_after_edits(tmp: Path, snippet: str, edits: list[str]) -> list[str]:
    """What `snippet` prints (stripped) in a copy of ``stages/`` under `tmp`: first unedited, then once more after
    each file of `edits` (a path relative to the project root) gets a comment appended, edits accumulating."""
    copy = tmp / "project"
    shutil.copytree(ROOT / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    env = os.environ | {"PYTHONPATH": str(copy)}  # the copy's stages package, not this checkout's

    def run() -> str:
        done = subprocess.run(
            [sys.executable, "-c", snippet], cwd=copy, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    printed = [run()]
    for rel in edits:
        with (copy / rel).open("a", encoding="utf-8") as f:
            f.write("# an edit\n")
        printed.append(run())
    return printed
