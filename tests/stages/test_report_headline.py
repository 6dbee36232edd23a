"""report's headline numbers: metrics/headline.json from the stages' metrics (the fixture of test_report), what a
missing input leaves out, and the ten-second summary ``make demo`` ends with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core.io import StageError
from stages.report.headline import summary
from tests.stages.test_report import OUTPUTS, ROOT, build_fixture, fixture_dir, run_report  # noqa: F401

# what the fixture's metrics give: moderate drops 6 + 3 + 4, dedup 5 + 2, synthesize 2 + 1; both variants probed
# alike (general_mc and general_text forgetting, general_qa gaining, steep_knowledge's interval touching zero).
EXPECTED = {
    "base.eval_loss": 2.5,
    "base.general_mc.acc_delta": -0.1,
    "base.general_mc.verdict": "forgetting",
    "base.general_qa.rougeL_delta": 0.2,
    "base.general_qa.verdict": "gain",
    "base.general_text.bits_per_byte_delta": 0.05,
    "base.general_text.verdict": "forgetting",
    "base.steep_knowledge.contains_delta": 0.3333,
    "base.steep_knowledge.verdict": "no clear change",
    "base.tasks_forgetting": 2,
    "chat.eval_loss": 2.5,
    "chat.general_mc.acc_delta": -0.1,
    "chat.general_mc.verdict": "forgetting",
    "chat.general_qa.rougeL_delta": 0.2,
    "chat.general_qa.verdict": "gain",
    "chat.general_text.bits_per_byte_delta": 0.05,
    "chat.general_text.verdict": "forgetting",
    "chat.steep_knowledge.contains_delta": 0.3333,
    "chat.steep_knowledge.verdict": "no clear change",
    "chat.tasks_forgetting": 2,
    "dropped.dedup": 7,
    "dropped.moderate": 13,
    "dropped.pull": 0,
    "dropped.synthesize": 3,
    "records.curated": 370,
    "records.pulled": 390,
    "records.synthetic": 5,
}


def _headline() -> dict:
    return json.loads(OUTPUTS["headline"].read_text(encoding="utf-8"))


def test_headline_holds_the_runs_numbers_flat(fixture_dir: Path) -> None:  # noqa: F811
    run_report()
    data = _headline()
    assert data == EXPECTED
    assert all(isinstance(v, int | float | str) for v in data.values())  # flat: one column a key in `dvc exp show`
    first = OUTPUTS["headline"].read_bytes()
    run_report()
    assert OUTPUTS["headline"].read_bytes() == first


def test_missing_inputs_leave_their_keys_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_fixture(tmp_path, synthesize=False, probe_variants=("base",))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics" / "train_base.json").unlink()
    run_report()
    data = _headline()
    assert "records.synthetic" not in data and "dropped.synthesize" not in data
    assert "base.eval_loss" not in data and data["chat.eval_loss"] == 2.5
    assert not [k for k in data if k.startswith("chat.") and k != "chat.eval_loss"]  # chat not probed
    assert data["base.general_qa.verdict"] == "gain" and data["base.tasks_forgetting"] == 2
    text = summary(data)
    assert "+ ? synthetic pairs" in text and "synthesize ?" in text
    assert "  base: best validation loss not trained, tasks forgetting 2" in text
    assert text.endswith("\n  chat: best validation loss 2.5000")  # no tasks, no forgetting count: not probed


def test_a_name_with_the_key_separator_is_refused(fixture_dir: Path) -> None:  # noqa: F811
    path = fixture_dir / "metrics" / "probe_chat.json"
    probe = json.loads(path.read_text(encoding="utf-8"))
    probe["general.mc"] = probe.pop("general_mc")
    path.write_text(json.dumps(probe), encoding="utf-8")
    with pytest.raises(StageError, match=r"'general\.mc': a variant or task name in metrics/headline\.json"):
        run_report()


def test_summary_printer_reads_in_ten_seconds(fixture_dir: Path) -> None:  # noqa: F811
    run_report()
    cmd = [sys.executable, "-m", "stages.report.headline", str(OUTPUTS["headline"]), "--report", "metrics/report.html"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=fixture_dir, env=env, capture_output=True, text=True, check=True)
    variant = [
        "    general_mc       acc            -0.100  forgetting",
        "    general_qa       rougeL         +0.200  gain",
        "    general_text     bits_per_byte  +0.050  forgetting",
        "    steep_knowledge  contains       +0.333  no clear change",
    ]
    assert done.stdout.splitlines() == [
        "steep: 390 records pulled -> 370 curated + 5 synthetic pairs",
        "  dropped: pull 0, moderate 13, dedup 7, synthesize 3",
        "  base: best validation loss 2.5000, tasks forgetting 2",
        *variant,
        "  chat: best validation loss 2.5000, tasks forgetting 2",
        *variant,
        "report: metrics/report.html",
    ]
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    missing = subprocess.run([*cmd[:3], "nope.json"], cwd=fixture_dir, env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "nope.json" in missing.stderr and "dvc repro report" in missing.stderr
