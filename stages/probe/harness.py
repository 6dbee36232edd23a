"""lm-evaluation-harness tasks by name (``probe.tasks[].harness_task``), read into probe items.

A multiple-choice task of the harness's registry (``arc_easy``, ``hellaswag``, ``piqa``, ``mmlu_anatomy``, ...) or
of a folder of harness task YAMLs (``harness_include``, the harness's ``--include_path``) is loaded with the harness's
``TaskManager``, which reads its dataset with ``datasets`` (from the Hugging Face Hub, or from the local datasets
cache where it was read before). Each evaluation document becomes one probe item, rendered by the harness itself:

    question  the task's context for the document (``fewshot_context``: description, few-shot examples (the task's
              configured number, or ``num_fewshot``) drawn with the harness's default seed, ``doc_to_text``), scored
              with the prompt "{question}"
    choices   ``doc_to_choice``
    answer    ``doc_to_target`` (an index, or a choice text turned into its index)

and the task's ``target_delimiter`` goes before each choice. The probe then scores the items like any
multiple-choice task (a generated task YAML through ``simple_evaluate``), so the per-item acc / acc_norm are the
harness's on the same contexts and continuations (tests/stages/test_harness_tasks.py holds them to a direct
``simple_evaluate`` of the named task). The items' sha256 stands in for a task file's in the probe cache key.

A ``harness_include`` folder is code: the harness imports and runs the Python its YAMLs name (``process_docs: !function
utils.process_docs``). The params refuse such a task unless ``probe.trust_harness_code`` is true
(:class:`stages.core.params.probe.Probe`), and :func:`load` logs the folder whose code runs.

This module imports no other probe module (``stages/probe/tasks.py`` turns what :func:`read` returns into a task).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from stages.core.io import StageError
from stages.core.params.probe import ProbeTask

log = logging.getLogger("steep")

# simple_evaluate's default fewshot_random_seed (lm_eval.defaults.DEFAULT_OTHER_SEED)
FEWSHOT_SEED = 1234


class HarnessItems(NamedTuple):
    """A harness task's items, read: what a task file gives, plus the harness's prompt and delimiter.

    Attributes:
        items: (document index, {question, choices, answer}), in the harness's document order.
        sha256: the sha256 of the items and delimiter (in place of a task file's).
        prompt: the prompt the items are scored with: ``"{question}"`` (the question is the whole context).
        delimiter: the task's ``target_delimiter``, what goes before each choice.
    """

    items: tuple[tuple[int, dict[str, Any]], ...]
    sha256: str
    prompt: str
    delimiter: str


@contextlib.contextmanager
def quiet_harness() -> Iterator[None]:
    """lm-eval and datasets log every step at INFO; keep warnings only while they run."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@lru_cache(maxsize=4)
def task_manager(include: str | None) -> Any:
    """The harness's task index (its registry, plus the YAMLs under `include`); about 10 s to build, once."""
    from lm_eval.tasks import TaskManager

    with quiet_harness():
        return TaskManager(include_path=include) if include else TaskManager()


def _where(task: ProbeTask) -> str:
    return f"probe task {task.name!r} (harness_task {task.harness_task!r})"


def load(task: ProbeTask) -> Any:
    """The harness's task object for `task` (its dataset loaded); a clear StageError for every way this fails."""
    where = _where(task)
    include = task.harness_include
    if include is not None and not Path(include).is_dir():
        raise StageError(f"{include}: harness_include of {where} is not a folder; fix the path (relative to the "
                         "project root) or remove it")  # fmt: skip
    if include is not None:  # the params allowed it (probe.trust_harness_code); say what runs
        log.warning("%s: runs the task YAMLs of %s and any Python they name (probe.trust_harness_code)", where, include)
    manager = task_manager(str(include) if include is not None else None)
    name = task.harness_task
    if name in manager.all_groups or name in manager.all_tags:
        kind = "group" if name in manager.all_groups else "tag"
        members = sorted(t for t in manager.all_subtasks if t.startswith(f"{name}_"))
        hint = f" (e.g. {', '.join(map(str, members[:3]))})" if members else ""
        raise StageError(f"{where}: {name!r} is a harness {kind} of several tasks; name one task per probe task"
                         f"{hint}")  # fmt: skip
    if name not in manager.all_tasks:
        close = difflib.get_close_matches(name, manager.all_tasks, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise StageError(f"{where}: lm-evaluation-harness has no task {name!r}{hint} (`lm-eval list subtasks` "
                         "lists them; a task of your own goes in a YAML under harness_include)")  # fmt: skip
    try:
        with quiet_harness():
            loaded = manager.load(name)
    except Exception as e:  # datasets raises many kinds (ConnectionError, FileNotFoundError, DatasetNotFoundError)
        raise StageError(
            f"{where}: cannot read its dataset ({type(e).__name__}: {e}). A harness task reads its data from the "
            "Hugging Face Hub, or from the local datasets cache where it was read before: run once where the Hub "
            "is reachable, or write the items to a JSONL and declare the task with path and fields"
        ) from None
    obj = loaded["tasks"].get(name)
    if obj is None or len(loaded["tasks"]) != 1:
        raise StageError(f"{where}: the harness loaded {sorted(loaded['tasks'])}, not one task {name!r}; "
                         "name one task per probe task")  # fmt: skip
    return obj


def _answer(obj: Any, doc: Any, choices: list[str], where: str) -> int:
    target = obj.doc_to_target(doc)
    # as the harness scores it: a text is the choice it names (the harness already turns a rendered number into an
    # int); anything else would score 0 for every model
    if isinstance(target, str) and target in choices:
        return choices.index(target)
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
        return target
    raise StageError(f"{where}: doc_to_target gives {target!r}, neither a choice nor an index into its "
                     f"{len(choices)} choices; steep scores one right choice per item")  # fmt: skip


def read(task: ProbeTask) -> HarnessItems:
    """The items of a harness task, in the harness's document order (first ``limit`` only).

    Returns:
        The task's items (document index, {question, choices, answer}) with the prompt "{question}", the task's
        target delimiter, and the sha256 of the items and delimiter in place of a file's.
    """
    obj = load(task)
    where = _where(task)
    output_type = getattr(obj, "OUTPUT_TYPE", None)
    if output_type != "multiple_choice":
        raise StageError(f"{where}: its output_type is {output_type!r}; steep runs harness tasks of output_type "
                         "multiple_choice (export other tasks' items to a JSONL of the matching probe "
                         "type)")  # fmt: skip
    if getattr(obj, "multiple_input", 0):
        raise StageError(f"{where}: it scores one continuation after several contexts (like winogrande); steep "
                         "scores several choices after one context: export the items to a JSONL")  # fmt: skip
    # as simple_evaluate(num_fewshot=...): the entry's number, else the task's configured one, else 0
    configured = obj.get_config("num_fewshot")
    if task.num_fewshot is not None and task.num_fewshot > 0 and configured == 0:
        raise StageError(f"{where}: the task pins num_fewshot 0 in its config (the harness ignores an override); "
                         "remove num_fewshot from the entry")  # fmt: skip
    num_fewshot = task.num_fewshot if task.num_fewshot is not None else configured or 0
    obj.set_fewshot_seed(seed=FEWSHOT_SEED)
    delimiter = obj.get_config("target_delimiter")
    delimiter = " " if delimiter is None else str(delimiter)
    items = []
    for index, doc in enumerate(obj.eval_docs):
        if task.limit is not None and index >= task.limit:
            break
        at = f"{where}, document {index}"
        context = obj.fewshot_context(doc, num_fewshot)
        choices = obj.doc_to_choice(doc)
        if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2:
            raise StageError(f"{at}: expected a text context and at least 2 choices, got {type(context).__name__} "
                             f"and {choices!r}")  # fmt: skip
        choices = [str(c) for c in choices]
        items.append((index, {"question": context, "choices": choices, "answer": _answer(obj, doc, choices, at)}))
    if not items:
        raise StageError(f"{where}: the task has no evaluation documents")
    payload = json.dumps({"items": items, "delimiter": delimiter}, sort_keys=True, ensure_ascii=False)
    sha = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    return HarnessItems(tuple(items), sha, "{question}", delimiter)
