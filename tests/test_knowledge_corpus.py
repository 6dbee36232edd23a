"""The demo's knowledge corpus (``data/sources/docs/``, frozen: it trains and is asked about) answers its probes.

Every reference answer of ``steep_knowledge`` and every right choice of ``knowledge_mc`` and ``knowledge_mc_seen``
is stated in the document the item names, so a probe never asks about what the corpus does not say. The user guide
readers keep current lives apart, in ``docs/guide/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.core import facts as _facts

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "sources" / "docs"
HELDOUT = ROOT / "data" / "sources" / "heldout"


def items(name: str) -> list[dict]:
    return [json.loads(line) for line in (HELDOUT / name).read_text(encoding="utf-8").splitlines() if line]


def stated(answer: str, document: str) -> bool:
    return _facts.occurrences(answer, [(CORPUS / document).read_text(encoding="utf-8")]) >= 1


def test_every_steep_knowledge_reference_is_in_its_document() -> None:
    questions = items("steep_knowledge.jsonl")
    assert len(questions) == 30
    missing = [(q["doc"], q["answer"]) for q in questions if not stated(q["answer"], q["doc"])]
    assert not missing, f"answers not stated in their document: {missing}"


@pytest.mark.parametrize("name", ["knowledge_mc.jsonl", "knowledge_mc_seen.jsonl"])
def test_every_knowledge_mc_answer_is_in_its_document(name: str) -> None:
    questions = items(name)
    assert questions
    missing = [
        (q["id"], q["choices"][q["answer"]]) for q in questions if not stated(q["choices"][q["answer"]], q["document"])
    ]
    assert not missing, f"{name}: right choices not stated in their document: {missing}"


def test_a_changed_answer_is_caught() -> None:
    assert stated("params.yaml", "01-overview.md")
    assert not stated("settings.toml", "01-overview.md")
