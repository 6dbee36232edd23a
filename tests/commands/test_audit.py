"""steep audit's comparisons and the environment record, on small inputs; the real rerun is in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from stages.commands import _compare as C
from stages.commands._records_diff import parquet_diff
from stages.core import environment


def _env(packages: dict[str, str], **fields: str) -> dict:
    key = environment.packages_key(packages)
    base = {"python": "3.11.7", "platform": "Linux-x86_64", "cpu_capability": "AVX2", "device": "cpu"}
    return {"stages": {"probe_chat": {**base, **fields, "packages": key}}, "packages": {key: packages}}


def test_another_library_version_is_an_environment_difference() -> None:
    old = _env({"pyarrow": "26.0.1", "torch": "2.13.0"})
    rows = C.environment_rows(old, _env({"pyarrow": "25.0.0", "torch": "2.13.0"}), ["probe_chat"])
    assert [(r.verdict, r.detail) for r in rows] == [("environment differs", "pyarrow 26.0.1 -> 25.0.0")]
    assert not rows[0].holds
    # other CPU kernels are expected on another machine: noted, not failed
    rows = C.environment_rows(
        old, _env({"pyarrow": "26.0.1", "torch": "2.13.0"}, cpu_capability="DEFAULT"), ["probe_chat"]
    )
    assert [(r.verdict, r.detail) for r in rows] == [("noted", "cpu_capability AVX2 -> DEFAULT")]
    assert rows[0].holds
    assert C.environment_rows(old, old, ["probe_chat"]) == []


def _probe(acc: float, gain: int) -> dict:
    return {"general_mc": {"acc": {"base": 0.7, "adapted": acc, "delta": acc - 0.7}, "forgetting": 0, "gain": gain}}


def test_probe_scores_within_tolerance_hold_and_a_verdict_flip_does_not() -> None:
    md5s = {"data/probe/chat.parquet": ("a", "b")}
    ok = C.scored_rows("probe@chat", _probe(0.75, 0), _probe(0.76, 0), md5s, tol=0.02)
    assert [r.verdict for r in ok] == ["within tolerance"]
    far = C.scored_rows("probe@chat", _probe(0.75, 0), _probe(0.80, 0), md5s, tol=0.02)
    assert far[0].verdict == "different" and "general_mc.acc.adapted: 0.75 -> 0.8" in far[0].detail
    flip = C.scored_rows("probe@chat", _probe(0.75, 0), _probe(0.755, 1), md5s, tol=0.02)
    assert flip[0].verdict == "different" and "general_mc.gain: 0 -> 1" in flip[0].detail


def test_train_losses_within_one_percent() -> None:
    old = {"train_loss": 2.0, "eval_loss": 1.5, "first_eval_loss": 1.6, "best_step": 10, "steps": 10}
    md5s = {"models/chat/adapter": ("x.dir", "y.dir")}
    assert C.train_rows("train@chat", old, {**old, "eval_loss": 1.5149}, md5s, 0.01)[0].verdict == "within tolerance"
    assert C.train_rows("train@chat", old, {**old, "eval_loss": 1.52}, md5s, 0.01)[0].verdict == "different"
    assert C.train_rows("train@chat", old, {**old, "best_step": 8}, md5s, 0.01)[0].verdict == "different"
    assert C.train_rows("train@chat", old, old, {"m": ("x", "x")}, 0.01)[0].verdict == "identical"


def test_a_changed_record_is_named_by_id_origin_and_field(tmp_path: Path) -> None:
    def table(rows: list[dict]) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    meta = json.dumps({"file": "s.jsonl", "row": 3})
    a = [
        {"id": "aa", "source": "s", "output": "four", "meta": meta},
        {"id": "bb", "source": "s", "output": "x", "meta": "{}"},
    ]
    b = [{"id": "cc", "source": "s", "output": "five", "meta": meta}, a[1]]
    detail = parquet_diff(table(a), table(b))
    assert "record aa (now cc; s row 3): output 'four' -> 'five'" in detail
    assert "only in" not in detail
    assert parquet_diff(table(a), table(a)).startswith("same records (2)")
    # an exact duplicate edited: its old id stays (the other copy), the new one is matched by origin
    row4 = json.dumps({"file": "s.jsonl", "row": 4})
    dup = [a[0], {**a[0], "meta": row4}]
    edited = [a[0], {"id": "dd", "source": "s", "output": "four!", "meta": row4}]
    assert "record aa (now dd; s row 4): output 'four' -> 'four!'" in parquet_diff(table(dup), table(edited))


def test_environment_record_merges_stages_and_names_off_lock_packages(tmp_path: Path) -> None:
    (tmp_path / environment.LOCK_FILE).write_text("pyyaml==0.0.1 \\\n    --hash=sha256:00\nnot-installed-pkg==1.0\n")
    out = tmp_path / "environment.json"
    environment.write(out, "pull", root=tmp_path)
    environment.write(out, "dedup", root=tmp_path)
    data = json.loads(out.read_text())
    assert sorted(data["stages"]) == ["dedup", "pull"]
    assert len(data["packages"]) == 1  # one package set, named by both
    off = data["stages"]["pull"]["off_lock"]
    assert off["pyyaml"].endswith("locked 0.0.1") and off["not-installed-pkg"] == "installed none, locked 1.0"
    assert environment.stage_packages(data, "pull")["pyyaml"] != "0.0.1"
