"""The per-item tables of the baseline and probe stages: their schemas, writing and reading back.

One row per (task, item), sorted by task then item; ``scores`` (and the probe's ``base_scores``) as JSON text with
sorted keys. Floats derived from model outputs are rounded to :data:`DIGITS` decimals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.core.io import read_parquet

DIGITS = 6

SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("type", pa.string()),
        ("item", pa.int64()),
        ("prompt", pa.string()),
        ("reference", pa.string()),
        ("prediction", pa.string()),
        ("scores", pa.string()),
    ]
)
PROBE_SCHEMA = pa.schema([*SCHEMA, ("base_prediction", pa.string()), ("base_scores", pa.string())])

Row = dict[str, Any]


def round_score(x: float) -> float:
    """`x` rounded to :data:`DIGITS` decimals (a precision another CPU's kernels reproduce)."""
    return round(float(x), DIGITS)


def to_table(rows: list[Row], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Rows (scores as dicts) as a table of `schema`, scores as JSON text with sorted keys."""

    def enc(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)

    out = []
    for r in rows:
        row = {k: r[k] for k in schema.names}
        row["scores"] = enc(r["scores"])
        if "base_scores" in row:
            row["base_scores"] = enc(r["base_scores"])
        out.append(row)
    return pa.Table.from_pylist(out, schema=schema)


def read_rows(path: Path, schema: pa.Schema = SCHEMA) -> list[Row]:
    """Per-item rows written by the baseline (or probe) stage, scores parsed."""
    table = read_parquet(path, schema.names, "per-item probe results", "rerun `dvc repro baseline`")
    rows = table.cast(schema).to_pylist()
    for r in rows:
        r["scores"] = json.loads(r["scores"])
    return rows
