"""Fill the wrong options of the hand-written facts and write the knowledge_mc probe files from them.

Inputs: ``data/sources/knowledge/facts.jsonl`` (hand-written: one fact a line, ``stages/core/facts.py`` says what
each field holds) and the documents it is about, ``data/sources/docs/*.md``.

Outputs:
    facts.jsonl                          rewritten in place with every empty ``wrong`` filled (options already
                                         there, hand-picked or from an earlier run, are kept).
    ../heldout/knowledge_mc.jsonl        the document_only facts as four-way questions (the knowledge_mc task)
    ../heldout/knowledge_mc_seen.jsonl   the qa_seen facts, the same way (knowledge_mc_seen, reported apart)
    each line {id, document, question, choices, answer (the index of the right choice)}, ordered by a sha256 of
    the id: the first N items (a task's ``limit``) are a seeded sample across the documents.

Wrong options: the three answers of other facts of the same ``type`` whose occurrence count in the training data
(documents, restatements, qa_seen pairs: ``stages.core.facts.training_texts``) is closest to the right answer's
(by ratio; ties by a sha256 of the fact id and the option). So each option is about as familiar after training as
the right one, and only knowing the fact tells them apart (tests/stages/test_knowledge_mc.py checks it).

Run from the repository root: ``.venv/bin/python data/sources/build/build_knowledge.py``. Deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from stages.core import facts as _facts  # noqa: E402

SOURCES = ROOT / "data" / "sources"
FACTS = SOURCES / "knowledge" / "facts.jsonl"
DOCS = SOURCES / "docs"
HELDOUT = {"document_only": SOURCES / "heldout" / "knowledge_mc.jsonl",
           "qa_seen": SOURCES / "heldout" / "knowledge_mc_seen.jsonl"}  # fmt: skip


def documents() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))]


def fill_wrong(facts: list[dict], docs: list[str]) -> int:
    """Fill every empty ``wrong`` in place; returns how many facts got options."""
    texts = _facts.training_texts(facts, docs)
    count = {f["answer"]: _facts.occurrences(f["answer"], texts) for f in facts}
    filled = 0
    for f in facts:
        if f["wrong"]:
            continue
        pool = sorted({g["answer"] for g in facts if g["type"] == f["type"] and g["answer"] != f["answer"]})
        if len(pool) < _facts.N_WRONG:
            raise SystemExit(f"{f['id']}: type {f['type']!r} has {len(pool)} other answers, needs {_facts.N_WRONG}")

        def distance(option: str, fact: dict = f) -> tuple[float, str]:
            ratio = abs(math.log((count[option] + 1) / (count[fact["answer"]] + 1)))
            return ratio, hashlib.sha256(f"{fact['id']}\0{option}".encode()).hexdigest()

        f["wrong"] = sorted(pool, key=distance)[: _facts.N_WRONG]
        filled += 1
    return filled


def main() -> None:
    facts = [json.loads(line) for line in FACTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    filled = fill_wrong(facts, documents())
    FACTS.write_text(
        "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in facts),
        encoding="utf-8",
    )
    facts = [f for _, f in _facts.read_facts(FACTS)]  # every line valid now
    for split, path in HELDOUT.items():
        items = [_facts.probe_item(f) for f in sorted(facts, key=_facts.item_order) if f["split"] == split]
        path.write_text(
            "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items),
            encoding="utf-8",
        )
        print(f"{path.relative_to(ROOT)}: {len(items)} items")
    print(f"{FACTS.relative_to(ROOT)}: {len(facts)} facts, {filled} given wrong options")


if __name__ == "__main__":
    main()
