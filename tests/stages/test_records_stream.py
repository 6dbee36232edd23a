"""Record files written and read a batch at a time: the bytes of the in-memory writer for any spill size,
runs cleaned up, and the curation stages' outputs unchanged when their writers spill."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stages.core import records
from stages.core.records import (
    REJECT_SCHEMA,
    RecordSpool,
    RecordWriter,
    iter_records,
    make_record,
    read_records,
    write_records,
)


def sample(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = [
        make_record(
            source=f"s{i % 3}",
            kind="instruction",
            instruction=f"question {rng.random()}",
            output="answer " * rng.randrange(1, 20),
            meta={"source_index": i % 3, "source_file": f"f{i % 2}.jsonl", "row": i + 1},
        )
        for i in range(n)
    ]
    # the same content twice (same id) at another position: the order key breaks the tie
    out += [{**r, "meta": {**r["meta"], "row": 10_000 + k}} for k, r in enumerate(out[:5])]
    return out


@pytest.mark.parametrize("spill_rows", [1, 7, 100, 10_000])
def test_writer_bytes_equal_write_records_for_any_spill(tmp_path: Path, spill_rows: int) -> None:
    recs = sample(300)
    write_records(tmp_path / "memory.parquet", recs)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    with RecordWriter(tmp_path / "stream.parquet", spill_rows=spill_rows) as w:
        for lo in range(0, len(shuffled), 33):
            w.write(shuffled[lo : lo + 33])
    assert (tmp_path / "stream.parquet").read_bytes() == (tmp_path / "memory.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.parquet", "stream.parquet"]  # runs removed


def test_writer_rejects_and_empty_files(tmp_path: Path) -> None:
    rejects = [{**r, "stage": "dedup", "reason": "exact_duplicate", "detail": "x"} for r in sample(40)]
    write_records(tmp_path / "a.parquet", rejects, REJECT_SCHEMA)
    with RecordWriter(tmp_path / "b.parquet", REJECT_SCHEMA, spill_rows=3) as w:
        w.write(reversed(rejects))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    write_records(tmp_path / "empty_a.parquet", [])
    RecordWriter(tmp_path / "empty_b.parquet", spill_rows=2).close()
    assert (tmp_path / "empty_a.parquet").read_bytes() == (tmp_path / "empty_b.parquet").read_bytes()


def test_writer_error_leaves_no_runs(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "out.parquet", spill_rows=2) as w:
        w.write(sample(10))
        raise RuntimeError("stage failed")
    assert list(tmp_path.iterdir()) == []


def test_iter_records_and_spool_keep_the_order(tmp_path: Path) -> None:
    recs = sample(50)
    write_records(tmp_path / "r.parquet", recs)
    batches = list(iter_records(tmp_path / "r.parquet", batch_rows=8))
    assert [len(b) for b in batches] == [8] * 6 + [7]
    assert [r for b in batches for r in b] == read_records(tmp_path / "r.parquet")
    spool = RecordSpool(tmp_path, "test")
    spool.write(recs[:20])
    spool.write(recs[20:])
    assert [r["id"] for r in spool] == [r["id"] for r in recs]
    spool.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet"]


def test_stages_write_the_same_bytes_when_their_writers_spill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """moderate and dedup through RecordWriter with runs of 3 records: the bytes of the unspilled run."""
    from stages.curate import dedup
    from tests.stages.test_dedup import load_params
    from tests.stages.test_moderate import run_stage, stage_records

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    write_records(pulled / "demo.parquet", stage_records())
    cache = tmp_path / "cache"
    metrics = []
    for name in ("a", "b"):
        if name == "b":
            monkeypatch.setattr(records, "SPILL_ROWS", 3)
        out = tmp_path / name
        m = run_stage(out, pulled, cache)
        outputs = {"out": out / "curated.parquet", "rejects": out / "rejected" / "dedup.parquet"}
        params = load_params({"dedup.references": []})
        metrics.append((m, dedup.run(params, inputs={"in": out / "moderated.parquet"}, outputs=outputs, cache=cache)))
    assert metrics[0] == metrics[1]
    names = ("moderated.parquet", "rejected/moderate.parquet", "curated.parquet", "rejected/dedup.parquet")
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_rebatched_cuts_the_same_batches_however_the_input_was_cut() -> None:
    """rebatched gives lists of `size` items (the last shorter), the same for any input chunking."""
    from stages.core.records import rebatched

    items = list(range(23))
    for cuts in ([23], [1] * 23, [5, 0, 7, 11], [2, 21]):
        chunks, lo = [], 0
        for c in cuts:
            chunks.append(items[lo : lo + c])
            lo += c
        assert list(rebatched(iter(chunks), 5)) == [items[i : i + 5] for i in range(0, 23, 5)]
    assert list(rebatched(iter([]), 5)) == []
