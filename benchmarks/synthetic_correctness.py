"""Are the kept synthetic pairs right? A read sample of synthesize's kept pairs, Self-Instruct on and off.

The synthesize stage (``stages.curate.synthesize.run``) with the demo's params and its real generator
(``models/generator``: SmolLM2-135M-Instruct, ``dvc repro generator``), on a small part of the demo's input so it
runs in minutes on 2 shared cores: the first ``--prompts`` Self-Instruct prompts of the demo's 16 and the chunks of
the first ``--documents`` document records of ``--curated`` (by id). Completions are cached in
``--cache``, so the second configuration makes no model call:

- ``before``: the params as they were (``synthesize.self_instruct.enable: true``);
- ``after``: ``synthesize.self_instruct.enable: false``, the default now.

Each kept pair was read and judged by hand: ``correct`` (the answer is right for the instruction: a fact true, a
computation right, a text task done as asked; for a document pair, true of its chunk) or ``incorrect``. Verdicts are
in ``benchmarks/labels/synthetic_correctness.csv`` by pair id with a note in our own words; ``--review FILE``
writes the kept pairs without a verdict, to read. The correct share has a 95% Wilson interval.

Run (from the project root; 51 calls, ~1 min a call on 2 busy shared cores with an empty cache)::

    nice -n 5 .venv/bin/python benchmarks/synthetic_correctness.py --documents 4 --prompts 8 [--review FILE]

Writes ``benchmarks/results/synthetic_correctness.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from static_calibration import wilson  # noqa: E402

from stages.core import params as _params  # noqa: E402
from stages.core import records as _records  # noqa: E402
from stages.curate import synthesize  # noqa: E402

LABELS = ROOT / "benchmarks/labels/synthetic_correctness.csv"
RESULT = ROOT / "benchmarks/results/synthetic_correctness.json"


def kept_pairs(
    curated: Path, documents: int, prompts: int, enable_self_instruct: bool, cache: Path, work: Path
) -> list[dict]:
    """Run the stage on the first `documents` documents (by id) and `prompts` Self-Instruct prompts; its kept pairs."""
    records = _records.read_records(curated)
    docs = sorted((r for r in records if r["kind"] == "document"), key=lambda r: r["id"])[:documents]
    subset = work / "curated.parquet"
    _records.write_records(subset, [r for r in records if r["kind"] != "document"] + docs)
    params = _params.load(
        ROOT / "params.yaml",
        synthesize.PARAMS,
        # prompt i does not depend on num_prompts: the first `prompts` of the demo's
        overrides={
            "synthesize.self_instruct.enable": enable_self_instruct,
            "synthesize.self_instruct.num_prompts": prompts,
        },
    )
    metrics = synthesize.run(
        params,
        inputs={
            "in": subset,
            "model": ROOT / "models/generator",
            "seed_tasks": ROOT / params.synthesize.self_instruct.seed_tasks,
        },
        outputs={"out": work / "synthetic.parquet", "rejects": work / "rejected.parquet"},
        cache=cache,
    )
    print(json.dumps(metrics, sort_keys=True))
    return _records.read_records(work / "synthetic.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curated", type=Path, default=ROOT / "data/curated.parquet")
    parser.add_argument("--documents", type=int, default=4, help="document records whose chunks are generated from")
    parser.add_argument("--prompts", type=int, default=8, help="Self-Instruct prompts (the demo has 16)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".steep_cache/synthesize")
    parser.add_argument("--review", type=Path, help="write the kept pairs without a verdict here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    verdicts = {}
    if LABELS.exists():
        with LABELS.open() as f:
            verdicts = {row["id"]: row["verdict"] for row in csv.DictReader(f)}
    result: dict[str, Any] = {"documents": args.documents, "self_instruct_prompts": args.prompts, "configs": {}}
    unread = []
    for name, enable in (("before", True), ("after", False)):
        with tempfile.TemporaryDirectory() as tmp:
            kept = kept_pairs(args.curated, args.documents, args.prompts, enable, args.cache, Path(tmp))
        rows: dict[str, dict[str, int]] = {}
        for rec in kept:
            gen = rec["meta"]["synthesize"]["generator"]
            verdict = verdicts.get(rec["id"])
            if verdict is None:
                unread.append(rec)
                continue
            counts = rows.setdefault(gen, {"read": 0, "correct": 0})
            counts["read"] += 1
            counts["correct"] += verdict == "correct"
        read = sum(c["read"] for c in rows.values())
        correct = sum(c["correct"] for c in rows.values())
        result["configs"][name] = {
            "enable_self_instruct": enable,
            "kept": len(kept),
            "read": read,
            "correct": correct,
            "share_correct": round(correct / read, 3) if read else None,
            "wilson_95": wilson(correct, read),
            "by_generator": rows,
        }
    if args.review:
        seen: set[str] = set()
        with args.review.open("w") as f:
            for rec in unread:
                if rec["id"] not in seen:
                    seen.add(rec["id"])
                    gen = rec["meta"]["synthesize"]["generator"]
                    f.write(f"{rec['id']} [{gen}]\nI: {rec['instruction']}\nIN: {rec['input']}\nO: {rec['output']}\n\n")
    RESULT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print("| config | kept | read | correct | share | 95% interval |\n|---|---|---|---|---|---|")
    for name, c in result["configs"].items():
        print(f"| {name} | {c['kept']} | {c['read']} | {c['correct']} | {c['share_correct']} | {c['wilson_95']} |")
    if unread:
        print(f"{len({r['id'] for r in unread})} kept pairs have no verdict in {LABELS}")


if __name__ == "__main__":
    main()
