"""The T0 corpus as the benchmarks read it: its lines, and a line as the record pull would make of it.

``../shared/data/t0_train_50k.jsonl``: 55,185 prompt/completion records of the public T0 training mixture
(fields ``template``, ``prompt``, ``completion``; completions end with ``<|endoftext|>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.core.records import Record, make_record

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "t0_train_50k.jsonl"
SUFFIX = "<|endoftext|>"


def require(corpus: Path) -> None:
    """Stop with what to pass when the corpus file is not there."""
    if not corpus.exists():
        raise SystemExit(
            f"corpus {corpus} is absent (default: ../shared/data/t0_train_50k.jsonl from the project root): "
            "pass --corpus PATH to the T0 JSONL (fields template, prompt, completion; one record per line)"
        )


def lines(corpus: Path) -> list[str]:
    """The corpus's non-empty lines, split on "\\n" only: prompts hold U+2028 and friends, which
    str.splitlines() would split on."""
    return [line for line in corpus.read_text(encoding="utf-8").split("\n") if line.strip()]


def record(line: str, meta: dict[str, Any] | None = None) -> Record:
    """One line as an instruction record: prompt -> instruction, completion without its suffix -> output."""
    row = json.loads(line)
    return make_record(
        source="t0",
        kind="instruction",
        meta=meta if meta is not None else {},
        instruction=row["prompt"],
        output=row["completion"].removesuffix(SUFFIX),
    )
