"""Hand-written facts about documents: the rows of a facts file, their four-way questions, how familiar each option is.

A facts file (``data/sources/knowledge/facts.jsonl``, pulled with ``format: fact``) holds one fact a line::

    id          a stable name of the fact (``overview-params-file``)
    document    the file name of the document that states it (``01-overview.md``)
    fact        the fact as one sentence
    question    a question that names the fact and its document's subject
    answer      the short answer, stated verbatim in the document
    type        its fine type (number, params_key, command, stage_name, reason_code, ...)
    wrong       three wrong options: other facts' answers of the same type, so that every option is seen in training
                as often as the right one (see :func:`occurrences`)
    statements  k short restatements of the fact in other words (each holds the answer)
    split       qa_seen (its question/answer pair may be trained on) | document_only (it reaches training only as
                document text and restatements: the facts whose questions measure knowledge gain)

Why wrong options come from other facts' answers: a model trained on restatements has seen every right answer; a
wrong option it never saw is easy to rule out by familiarity alone, which would read as knowledge.

This module imports only the standard library and ``stages.core.io``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stages.core.io import StageError, read_jsonl

SPLITS = ("qa_seen", "document_only")
FIELDS = (
    "id",
    "document",
    "fact",
    "question",
    "answer",
    "type",
    "wrong",
    "statements",
    "split",
)
N_WRONG = 3
EXAMPLE = (
    '{"id": "overview-params-file", "document": "01-overview.md", "fact": "Every setting of steep is in params.yaml.", '
    '"question": "Which file holds every setting of steep?", "answer": "params.yaml", "type": "file_name", '
    '"wrong": ["dvc.yaml", "pyproject.toml", "answer_key.json"], "statements": ["steep reads its settings from '
    'params.yaml.", "The configuration file of steep is params.yaml."], "split": "document_only"}'
)

Fact = dict[str, Any]


def check_fact(obj: Any) -> list[str]:
    """What is wrong with one parsed line of a facts file (empty: nothing), each problem a phrase."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = [f"missing field {k!r}" for k in FIELDS if k not in obj]
    problems += [f"unknown field {k!r}" for k in obj if k not in FIELDS]
    for k in ("id", "document", "fact", "question", "answer", "type"):
        if k in obj and not (isinstance(obj[k], str) and obj[k].strip()):
            problems.append(f"{k!r} must be a non-empty string")
    if "split" in obj and obj["split"] not in SPLITS:
        problems.append(f"'split' must be one of {list(SPLITS)}, got {obj['split']!r}")
    wrong = obj.get("wrong")
    if "wrong" in obj and not (isinstance(wrong, list) and len(wrong) == N_WRONG and all(_text(w) for w in wrong)):
        problems.append(f"'wrong' must be a list of {N_WRONG} non-empty strings")
    elif "wrong" in obj and (obj.get("answer") in wrong or len(set(wrong)) < len(wrong)):
        problems.append("'wrong' must hold distinct options, none of them the answer")
    statements = obj.get("statements")
    if "statements" in obj and not (isinstance(statements, list) and statements and all(map(_text, statements))):
        problems.append("'statements' must be a non-empty list of non-empty strings")
    return problems


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def read_facts(path: str | Path, data: bytes | None = None) -> Iterator[tuple[int, Fact]]:
    """``(line, fact)`` for every fact of a facts file; a bad line stops with the file, line, problems and form.

    Raises:
        StageError: the file is missing or not JSONL, a line is not a valid fact, or an id repeats.
    """
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path, f"one fact a line, like {EXAMPLE}", label="facts file", data=data):
        problems = check_fact(obj)
        if not problems and obj["id"] in seen:
            problems = [f"id {obj['id']!r} repeats line {seen[obj['id']]}"]
        if problems:
            raise StageError(f"{path}, line {line}: not a valid fact: {'; '.join(problems)}. Expected: {EXAMPLE}")
        seen[obj["id"]] = line
        yield line, obj


def choices(fact: Fact) -> tuple[list[str], int]:
    """The four options of a fact's question and the index of the right one, in an order fixed by its id.

    The order is a sha256 of the id and each option, so it is the same on every machine and independent of the
    other facts.
    """
    options = [fact["answer"], *fact["wrong"]]
    ordered = sorted(options, key=lambda o: hashlib.sha256(f"{fact['id']}\0{o}".encode()).hexdigest())
    return ordered, ordered.index(fact["answer"])


def item_order(fact: Fact) -> str:
    """The order of the probe files: a sha256 of the id, so that their first N items are a sample of the facts."""
    return hashlib.sha256(f"item\0{fact['id']}".encode()).hexdigest()


def probe_item(fact: Fact) -> dict[str, Any]:
    """The fact as a multiple-choice probe item: question, choices, answer (index), and its id and document."""
    options, answer = choices(fact)
    return {"id": fact["id"], "document": fact["document"], "question": fact["question"], "choices": options,
            "answer": answer}  # fmt: skip


# --- familiarity ------------------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, NFKC, Markdown backticks removed, whitespace collapsed: the form answers are searched in."""
    return " ".join(unicodedata.normalize("NFKC", text).replace("`", "").lower().split())


def _pattern(phrase: str) -> re.Pattern[str]:
    # Not inside a longer token: no word character, hyphen or < before it, nor a number's dot or comma; no word
    # character or > after it, nor a dot, comma or slash that continues a token ("0.7" is not in "0.75", "20" not
    # in "20,000", "5" not in "0.5"). A path or key around it counts ("max_bytes" in "pull.web.max_bytes").
    return re.compile(r"(?<![\w\-<])(?<!\d[.,])" + re.escape(normalize(phrase)) + r"(?![\w>]|[.,/]\w)")


def occurrences(phrase: str, texts: Iterable[str]) -> int:
    """How often `phrase` occurs as a whole token run in `texts` (both normalized)."""
    pattern = _pattern(phrase)
    return sum(len(pattern.findall(normalize(t))) for t in texts)


def training_texts(facts: list[Fact], documents: Iterable[str]) -> list[str]:
    """What a model trained on the facts data sees: the documents, every restatement, the qa_seen pairs."""
    texts = list(documents)
    for f in facts:
        texts += f["statements"]
        if f["split"] == "qa_seen":
            texts.append(f"{f['question']}\n{f['answer']}")
    return texts


def familiarity(facts: list[Fact], documents: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per fact, the training occurrences of each of its options (answer first)."""
    texts = training_texts(facts, documents)
    counts: dict[str, int] = {}
    out = {}
    for f in facts:
        for option in (f["answer"], *f["wrong"]):
            if option not in counts:
                counts[option] = occurrences(option, texts)
        out[f["id"]] = {o: counts[o] for o in (f["answer"], *f["wrong"])}
    return out


def familiar_ratio(counts: dict[str, int]) -> float:
    """The largest ratio between the training counts of an option and the right answer (answer first in `counts`).

    inf when an option never occurs while the answer does (or the reverse): the trap this check exists for.
    """
    answer, *wrong = counts.values()
    ratio = 1.0
    for w in wrong:
        if min(answer, w) == 0:
            ratio = max(ratio, 1.0 if answer == w else float("inf"))
        else:
            ratio = max(ratio, answer / w, w / answer)
    return ratio
