"""The executor: fixed batches, results in input order for any worker count, progress in the log, and the
curation stages on a real two-node Ray cluster writing the bytes of a local run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from stages.core import params as _params
from stages.core.executor import batches, imap_batches, map_batches, resolve_workers
from stages.core.io import StageError
from stages.core.params.common import Executor
from stages.core.records import REJECT_SCHEMA, read_records, write_records
from stages.curate import dedup, moderate
from tests.stages import _ray
from tests.stages.test_dedup import BREAD, BREAD_REORDERED, FRANCE, SKY, SKY_EDITED, UNRELATED
from tests.stages.test_dedup import rec as dedup_rec
from tests.stages.test_moderate import stage_records

ROOT = Path(__file__).resolve().parents[2]
LOCAL = Executor(kind="local", address=None)
log = logging.getLogger("steep.test")


def square_with_pid(batch: Sequence[int]) -> list[tuple[int, int]]:
    """Each item squared, with the id of the process that did it."""
    return [(x * x, os.getpid()) for x in batch]


def one_result_short(batch: Sequence[int]) -> list[int]:
    return list(batch[1:])


def test_batches_are_fixed_slices() -> None:
    assert [list(b) for b in batches(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches([], 3) == []
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        batches([1], 0)


def test_workers_zero_means_every_core() -> None:
    assert resolve_workers(0) == os.cpu_count()
    assert resolve_workers(3) == 3


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_in_input_order_for_any_worker_count(workers: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="steep.test")
    items = list(range(101))
    out = map_batches(square_with_pid, items, executor=LOCAL, workers=workers, batch_size=10, label="squares", log=log)
    assert [v for v, _ in out] == [x * x for x in items]
    pids = {pid for _, pid in out}
    assert (pids == {os.getpid()}) == (workers == 1)  # one worker: in the stage's process, no pool
    lines = [r.getMessage() for r in caplog.records]
    where = "the stage's process" if workers == 1 else f"{workers} local processes"
    assert lines[0] == f"squares: 101 records in 11 batches on {where}"
    assert lines[-1].startswith("squares: 101 records in ") and lines[-1].endswith(" records/s)")


@pytest.mark.parametrize("workers", [1, 2])
def test_imap_takes_its_batches_lazily(workers: int) -> None:
    """A stage streaming its input holds a few batches per worker, not the whole input, before results come."""
    taken = []

    def parts():
        for lo in range(0, 100, 5):
            taken.append(lo)
            yield list(range(lo, lo + 5))

    results = imap_batches(square_with_pid, parts(), total=100, executor=LOCAL, workers=workers, label="sq", log=log)
    first = next(results)
    assert [v for v, _ in first] == [x * x for x in range(5)]
    assert len(taken) <= (1 if workers == 1 else 2 * workers)
    rest = [v for batch in results for v, _ in batch]
    assert rest == [x * x for x in range(5, 100)] and len(taken) == 20


def test_a_batch_must_give_one_result_per_item() -> None:
    with pytest.raises(ValueError, match="squares: a batch of 10 items gave 9 results"):
        map_batches(
            one_result_short, list(range(20)), executor=LOCAL, workers=1, batch_size=10, label="squares", log=log
        )


@pytest.mark.parametrize(
    ("executor", "match"),
    [
        ({"kind": "ray", "address": None}, r"common\.executor.*kind ray needs the address of a running cluster"),
        ({"kind": "local", "address": "127.0.0.1:6379"}, r"kind local takes no address .*got '127\.0\.0\.1:6379'"),
        ({"kind": "spark", "address": None}, r"common\.executor\.kind.*'spark'"),
    ],
)
def test_executor_params_are_checked(executor: dict, match: str) -> None:
    with pytest.raises(StageError, match=match):
        _params.load(ROOT / "params.yaml", ["common.executor"], overrides={"common.executor": executor})


def test_workers_must_not_be_negative() -> None:
    with pytest.raises(StageError, match=r"common\.workers.*-1"):
        _params.load(ROOT / "params.yaml", ["common.workers"], overrides={"common.workers": -1})


# --- a real Ray cluster ---------------------------------------------------------------------------------------------


def _inputs(workdir: Path) -> None:
    """Pulled records (moderate's inline records, and dedup's duplicates) and the params of the Ray run."""
    pulled = workdir / "pulled"
    pulled.mkdir()
    records = stage_records()
    write_records(pulled / "demo.parquet", [r for r in records if r["source"] == "demo"])
    write_records(pulled / "docs.parquet", [r for r in records if r["source"] == "docs"])
    pairs = [SKY, SKY_EDITED, BREAD, BREAD_REORDERED, FRANCE, UNRELATED]
    write_records(pulled / "dups.parquet", [dedup_rec(p, row=i + 1, source_index=2) for i, p in enumerate(pairs)])
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["common"]["executor"] = {"kind": "ray", "address": "{address}"}
    raw["moderate"]["cleanlab"]["enable"] = False  # the model and Datalab run in the driver: not what is tested
    raw["dedup"]["semantic"]["enable"] = False
    raw["dedup"]["references"] = []
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def _local_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moderate, "RULES_BATCH_RECORDS", _ray.BATCH)
    monkeypatch.setattr(dedup, "SIGNATURE_BATCH_RECORDS", _ray.BATCH)
    overrides = {"common.executor": {"kind": "local", "address": None}, "common.workers": 2}
    d, cache = workdir / "local", workdir / "cache"
    for stage, inp, name in ((moderate, workdir / "pulled", "moderate"), (dedup, d / "moderated.parquet", "dedup")):
        p = _params.load(workdir / "params.yaml", stage.PARAMS, overrides=overrides)
        out = d / ("moderated.parquet" if name == "moderate" else "curated.parquet")
        stage.run(p, inputs={"in": inp}, outputs={"out": out, "rejects": d / f"rejected_{name}.parquet"}, cache=cache)


@pytest.mark.ray
def test_stages_on_a_two_node_ray_cluster_write_the_bytes_of_a_local_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inputs(tmp_path)
    prefix = _ray.sandbox_prefix()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "tests.stages._ray", str(tmp_path)],
        cwd=tmp_path,  # no dvc.yaml here: the stage was run by hand, as far as it can tell
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    where = "the Ray cluster at 127.0.0.1:" if prefix else "the Ray cluster at "
    for label in ("moderate rules", "dedup keys and minhash signatures"):
        assert f"{label}: " in proc.stderr and where in proc.stderr, proc.stderr[-4000:]
    assert "(2 CPUs)" in proc.stderr  # both nodes joined
    _local_run(tmp_path, monkeypatch)
    names = ["moderated.parquet", "rejected_moderate.parquet", "curated.parquet", "rejected_dedup.parquet"]
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    rejected = read_records(tmp_path / "ray" / "rejected_dedup.parquet", REJECT_SCHEMA)
    assert {r["reason"] for r in rejected} == {"exact_duplicate", "minhash_duplicate"}
