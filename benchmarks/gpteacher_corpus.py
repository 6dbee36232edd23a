"""The second real corpus of the moderation precision benchmark: GPTeacher's code, roleplay and tool-use sets.

GPTeacher (github.com/teknium1/GPTeacher, MIT, commit 481075123c29854bddb82655badeef6a438f2436) is a public
instruction set that nobody here wrote: 14,131 records in three plain JSON files, each a list of
``{instruction, input, response}``. Its general-instruct files are over 4 MiB and were not to be had offline;
these three are, and they hold what T0 lacks: unfenced code, SQL, tool calls and role-play dialogue.

This script writes them as one JSONL file of ``{instruction, input, output, part}`` records, in file order,
for ``moderation_precision.py --corpus``. The text itself is never committed; the labels name record ids.

Run (from the project root, with a checkout of GPTeacher at that commit)::

    .venv/bin/python benchmarks/gpteacher_corpus.py PATH/TO/GPTeacher /tmp/gpteacher.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FILES = (
    "Codegen/codegen-instruct.json",  # 4,535 records
    "Roleplay/roleplay-simple-deduped-roleplay-instruct.json",  # 1,923
    "Toolformer/toolformer-dedupe-only-dataset.json",  # 7,673
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkout", type=Path, help="a checkout of teknium1/GPTeacher")
    ap.add_argument("out", type=Path, help="the JSONL file to write")
    args = ap.parse_args(argv)
    n = 0
    with args.out.open("w", encoding="utf-8") as out:
        for name in FILES:
            path = args.checkout / name
            if not path.exists():
                raise SystemExit(f"{path}: not found; check out teknium1/GPTeacher (the commit in this docstring)")
            for r in json.loads(path.read_text(encoding="utf-8")):
                record = {
                    "instruction": r.get("instruction", ""),
                    "input": r.get("input", ""),
                    "output": r.get("response", ""),
                    "part": name.split("/")[0].lower(),
                }
                out.write(json.dumps(record) + "\n")
                n += 1
    print(f"wrote {n} records to {args.out}")


if __name__ == "__main__":
    main()
