"""Probe tasks read and checked: a task file's items, or an lm-evaluation-harness task's.

Task files (``probe.tasks``): JSONL, one item per non-blank line; an item's index is its 0-based line number in the
file (``limit``: the first that many items only). Every file is read and checked before any model is loaded; a bad
file stops the stage naming the file, the line and the fix. ``fields`` maps each type's canonical names (the
registry, ``stages/probe/types.py``) to the file's; a chat_behaviour task's ``documents`` are read here too. A
multiple-choice task may instead name an lm-evaluation-harness task (``harness_task``, e.g. ``arc_easy``): its items
are the harness's own rendering of its documents (``stages/probe/harness.py``), read before any model is loaded too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core import io as _io
from stages.core.io import StageError
from stages.core.params.probe import ProbeTask
from stages.probe import harness as _harness
from stages.probe import types as _types

# The document files a chat_behaviour task reads from a folder: text, as the pull stage reads documents.
DOCUMENT_SUFFIXES = (".md", ".txt")


@dataclass(frozen=True)
class TaskData:
    """A task entry with its items, read and checked.

    Attributes:
        task: the ``probe.tasks`` entry.
        items: (0-based line index, the item's fields under their canonical names), in file order (a harness task:
            (document index, question / choices / answer), see ``stages/probe/harness.py``).
        sha256: the task file's sha256 (a harness task: its items' and delimiter's).
        prompt: multiple_choice: the prompt, ``{question}`` filled in (None: ``probe.multiple_choice_prompt``; a
            harness task's question is its whole rendered context: ``"{question}"``).
        delimiter: multiple_choice: what goes before each choice.
        documents: chat_behaviour: (path, text) of each document its answers must not recite.
    """

    task: ProbeTask
    items: tuple[tuple[int, dict[str, Any]], ...]
    sha256: str
    prompt: str | None = None
    delimiter: str = " "
    documents: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def type(self) -> str:
        return self.task.type

    @property
    def spec(self) -> _types.TaskType:
        """The registry entry of the task's type."""
        return _types.get(self.task.type)


def _example(task: ProbeTask) -> str:
    t = _types.get(task.type)
    return json.dumps({task.fields[k]: t.example[k] for k in t.fields})


def _check_item(task: ProbeTask, obj: Any, where: str) -> dict[str, Any]:
    """The item's fields under canonical names; raise StageError saying what is wrong and what is expected."""
    expected = f"expected a JSON object like {_example(task)}"
    if not isinstance(obj, dict):
        raise StageError(f"{where}: got a JSON {type(obj).__name__}; {expected}")
    spec = _types.get(task.type)
    out: dict[str, Any] = {}
    for canon in spec.fields:
        name = task.fields[canon]
        if name not in obj:
            raise StageError(
                f"{where}: no field {name!r} (the task's fields map {canon} -> {name!r}); found {sorted(obj)}. "
                f"Fix the line or probe.tasks[{task.name}].fields; {expected}"
            )
        value = obj[name]
        if canon == "choices":
            if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c for c in value):
                raise StageError(
                    f"{where}: field {name!r} must be a list of at least 2 non-empty texts, got {value!r}; {expected}"
                )
        elif canon == "answer" and spec.evaluator == "choices":
            choices = obj.get(task.fields["choices"])
            if isinstance(value, bool) or not isinstance(value, int):
                raise StageError(f"{where}: field {name!r} must be the 0-based index of the right choice (an integer), "
                                 f"got {value!r}; {expected}")  # fmt: skip
            if not 0 <= value < len(choices):
                raise StageError(
                    f"{where}: answer index {value} is out of range for {len(choices)} choices "
                    f"(valid: 0..{len(choices) - 1}; the index is 0-based)"
                )
        elif not isinstance(value, str) or not value.strip():
            raise StageError(f"{where}: field {name!r} must be a non-empty text, got {value!r}; {expected}")
        out[canon] = value
    return out


def read_documents(paths: Iterable[str], where: str) -> list[tuple[str, str]]:
    """(path, text) of every document file: the files named, and the .md / .txt files under the folders named."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in DOCUMENT_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            raise StageError(f"{p}: document path of {where} not found; give files or folders of .md / .txt "
                             "documents (relative to the project root)")  # fmt: skip
        for f in files:
            try:
                out.append((f.as_posix(), f.read_text(encoding="utf-8")))
            except UnicodeDecodeError as e:
                raise StageError(f"{f}: document of {where} is not UTF-8 text ({e})") from None
    return out


def read_task(task: ProbeTask) -> TaskData:
    """Read and check a task file (path relative to the working directory, the project root) or a harness task."""
    if task.harness_task is not None:
        h = _harness.read(task)
        return TaskData(task, h.items, h.sha256, prompt=h.prompt, delimiter=h.delimiter)
    if task.path is None or task.fields is None:
        raise RuntimeError(f"broken invariant: task {task.name!r} has neither harness_task nor path and fields")
    path = Path(task.path)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise StageError(
            f"{path}: task file of probe task {task.name!r} not found; write it (JSONL, one item a line) "
            "or fix probe.tasks[].path (relative to the project root)"
        ) from None
    items = []
    expected = f"a JSON object like {_example(task)}, one a line"
    for n, obj in _io.read_jsonl(path, expected, data=raw):
        items.append((n - 1, _check_item(task, obj, f"{path}, line {n}")))  # the item: its 0-based line index
        if task.limit is not None and len(items) == task.limit:
            break
    if not items:
        raise StageError(f"{path}: task {task.name!r} has no items; add at least one JSON line")
    documents = ()
    if _types.get(task.type).documents:
        documents = tuple(read_documents(task.documents or [], f"probe task {task.name!r}"))
    return TaskData(task, tuple(items), hashlib.sha256(raw).hexdigest(), prompt=task.prompt, documents=documents)


def check_tasks(tasks: tuple[ProbeTask, ...] | list[ProbeTask]) -> None:
    """Check every entry against its type in the registry; one StageError lists every problem."""
    problems = [p for t in tasks for p in _types.check_task(t)]
    if any(t.name == _types.SHOWCASE for t in tasks):
        problems.append(
            f"probe.tasks: the name {_types.SHOWCASE!r} is taken by the showcase generations; rename the task"
        )
    if problems:
        raise StageError("\n".join(problems))


def read_tasks(tasks: tuple[ProbeTask, ...] | list[ProbeTask]) -> list[TaskData]:
    """Check every entry, then read and check every task file (before any model is loaded)."""
    check_tasks(tasks)
    return [read_task(t) for t in tasks]
