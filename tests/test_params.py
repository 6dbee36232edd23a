"""params.yaml validation, and each stage's `params:` in dvc.yaml held to what its code reads."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.all import validate

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _stage_modules() -> list[tuple[str, str, list[str]]]:
    """(dvc stage name, python module, params list) for every stage in dvc.yaml."""
    out = []
    for name, stage in DVC["stages"].items():
        cmd = stage["cmd"] if isinstance(stage.get("cmd"), str) else stage["do"]["cmd"]
        module = cmd.split("python -m ", 1)[1].split()[0]
        params = stage.get("params") or stage.get("do", {}).get("params", [])
        out.append((name, module, params))
    return out


def test_demo_params_are_valid() -> None:
    validate(RAW)


@pytest.mark.parametrize(("name", "module", "declared"), _stage_modules())
def test_dvc_params_match_stage_params(name: str, module: str, declared: list[str]) -> None:
    """dvc.yaml lists exactly the keys the module declares in PARAMS (and every one exists, for every variant)."""
    mod = importlib.import_module(module)
    assert sorted(declared) == sorted(mod.PARAMS), f"dvc.yaml stage {name!r} vs {module}.PARAMS"
    foreach = DVC["stages"][name].get("foreach")
    variants = list(RAW["variants"]) if foreach == "${variants}" else [None]
    for variant in variants:
        keys = mod.STAGE.keys(variant) if variant else mod.PARAMS
        assert all("${" not in k for k in keys)
        _params.scope(validate(RAW), keys)


def test_scoped_view_refuses_undeclared_keys() -> None:
    p = _params.scope(validate(RAW), ["moderate", "common.seed"])
    assert p.common.seed == RAW["common"]["seed"]
    assert p.moderate.pii.action == RAW["moderate"]["pii"]["action"]
    assert p.read == {"common.seed", "moderate"}
    with pytest.raises(_params.UndeclaredParam, match="'dedup'"):
        _ = p.dedup
    with pytest.raises(_params.UndeclaredParam, match=r"'common\.embedding'"):
        _ = p.common.embedding


def test_unknown_and_misspelled_keys_are_listed_with_allowed_names() -> None:
    raw = copy.deepcopy(RAW)
    raw["moderate"]["toxicity"]["max_probabilty"] = raw["moderate"]["toxicity"].pop("max_probability")
    raw["dedup"]["minhash"]["shingles"] = 5
    raw["trian"] = {}
    with pytest.raises(StageError) as err:
        validate(raw)
    msg = str(err.value)
    # one error lists every problem
    assert "moderate.toxicity.max_probabilty: unknown key" in msg
    assert "allowed here: ['max_probability', 'min_words', 'task_patterns'" in msg
    assert "moderate.toxicity.max_probability: required key is missing" in msg
    assert "dedup.minhash.shingles: unknown key" in msg
    assert "trian: unknown key" in msg
    assert "'common', 'pull'" in msg


def test_bad_values_name_key_value_and_allowed() -> None:
    raw = copy.deepcopy(RAW)
    raw["pull"]["sources"][0]["format"] = "alpacca"
    raw["moderate"]["pii"]["action"] = "mask"
    raw["moderate"]["canned_patterns"] = ["(unclosed"]
    with pytest.raises(StageError) as err:
        validate(raw)
    msg = str(err.value)
    assert "pull.sources.0.format" in msg and "'alpacca'" in msg and "'sharegpt'" in msg
    assert "moderate.pii.action" in msg and "'redact'" in msg and "'mask'" in msg
    assert "not a valid regular expression" in msg


def test_hf_source_needs_pinned_revision() -> None:
    raw = copy.deepcopy(RAW)
    raw["pull"]["sources"] = [{"name": "alpaca", "format": "alpaca", "location": "hf://tatsu-lab/alpaca"}]
    with pytest.raises(StageError, match="pinned `revision`"):
        validate(raw)


def test_load_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="params file not found"):
        _params.load(tmp_path / "params.yaml", ["pull"])


def test_each_stage_reads_exactly_its_declared_params(tmp_path: Path) -> None:
    """Run pull → moderate → dedup in process on a tiny source: each reads every key it declares, no other."""
    from stages.curate import dedup, moderate, pull

    src = tmp_path / "tiny.jsonl"
    src.write_text(
        '{"instruction": "Name the largest planet in the solar system.", "output": "Jupiter is the largest."}\n'
        '{"instruction": "Name the largest planet in the solar system.", "output": "Jupiter is the largest."}\n'
        '{"instruction": "Give one word that rhymes with cat.", "output": "Hat rhymes with cat."}\n'
    )
    overrides = {
        "pull.sources": [{"name": "tiny", "format": "alpaca", "location": str(src)}],
        "dedup.references": [],
    }
    cache = tmp_path / "cache"
    steps = [
        (pull, {}, {"out": tmp_path / "pulled"}, {}),
        (
            moderate,
            {"in": tmp_path / "pulled"},
            {"out": tmp_path / "mod.parquet", "rejects": tmp_path / "r1.parquet"},
            {"cache": cache},
        ),
        (
            dedup,
            {"in": tmp_path / "mod.parquet"},
            {"out": tmp_path / "cur.parquet", "rejects": tmp_path / "r2.parquet"},
            {"cache": cache},
        ),
    ]
    for module, inputs, outputs, extra in steps:
        p = _params.load(ROOT / "params.yaml", module.PARAMS, overrides=overrides)
        module.run(p, inputs=inputs, outputs=outputs, **extra)
        assert p.read == set(module.PARAMS), module.__name__


# --- the whole file, early ------------------------------------------------------------------------------------------


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_every_stage_validates_the_whole_file_before_any_work(tmp_path: Path) -> None:
    """A typo in `report` stops pull (which reads only `pull`) before it writes anything; so does a new section."""
    from stages.curate import pull

    raw = copy.deepcopy(RAW)
    raw["report"]["max_examples_per_reasn"] = raw["report"].pop("max_examples_per_reason")
    raw["reprot"] = {}
    path = _write(tmp_path, raw)
    out, metrics = tmp_path / "pulled", tmp_path / "pull.json"
    with pytest.raises(StageError) as err:
        pull.main(["--params", str(path), "--out", str(out), "--metrics", str(metrics)])
    msg = str(err.value)
    assert "report.max_examples_per_reasn: unknown key" in msg and "report.max_examples_per_reason: required" in msg
    assert "reprot: unknown key" in msg and "allowed here: ['common', 'pull'" in msg
    assert not out.exists() and not metrics.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    # the stage still reads (and declares to DVC) only its own keys
    p = _params.load(ROOT / "params.yaml", pull.PARAMS)
    with pytest.raises(_params.UndeclaredParam):
        _ = p.report


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.chat.learning_rate", float("inf"), "train.chat.learning_rate: expected a finite number"),
        ("probe.confidence", float("nan"), "probe.confidence: expected a finite number"),
        ("synthesize.generation.top_p", "-inf", "synthesize.generation.top_p: expected a finite number"),
        ("common.seed", True, "common.seed: expected a number, got a boolean (true)"),
        ("train.base.max_steps", False, "train.base.max_steps: expected a number, got a boolean (false)"),
        ("tokenize.chat.mixture.kinds", {"document": True}, "tokenize.chat.mixture.kinds.document: expected a number"),
        ("probe.tasks.0.limit", True, "probe.tasks.0.limit: expected a number, got a boolean (true)"),
    ],
)
def test_non_finite_floats_and_booleans_for_numbers_are_refused(key: str, value: object, expected: str) -> None:
    raw = copy.deepcopy(RAW)
    *parents, last = key.split(".")
    cur: Any = raw
    for part in parents:
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    cur[last] = value
    with pytest.raises(StageError) as err:
        validate(raw)
    assert expected in str(err.value)
    assert "1 problem(s)" in str(err.value)


def _min_max_pairs(node: Any, at: str = "") -> list[tuple[str, str, str]]:
    """(section path, min key, max key) of every min_<x> / max_<x> pair that params.yaml sets side by side."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.startswith("min_") and f"max_{key[4:]}" in node:
                found.append((at, key, f"max_{key[4:]}"))
            found += _min_max_pairs(value, f"{at}.{key}" if at else str(key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += _min_max_pairs(value, f"{at}.{n}")
    return found


def test_every_min_max_pair_is_checked_against_each_other() -> None:
    """Each pair of params.yaml set the wrong way round: one error names every pair with both values."""
    pairs = _min_max_pairs(RAW)
    assert {(at, low) for at, low, _ in pairs} >= {
        ("moderate", "min_document_chars"),
        ("synthesize.documents", "min_chunk_chars"),
        ("synthesize.filters", "min_instruction_words"),
    }
    raw = copy.deepcopy(RAW)
    for at, low, high in pairs:
        section: Any = raw
        for part in at.split("."):
            section = section[int(part)] if isinstance(section, list) else section[part]
        section[low] = section[high] + 1
    with pytest.raises(StageError) as err:
        validate(raw)
    msg = str(err.value)
    for at, low, high in pairs:
        section = raw
        for part in at.split("."):
            section = section[int(part)] if isinstance(section, list) else section[part]
        assert f"  - {at}: {low} ({section[low]}) is above {high} ({section[high]})" in msg
    assert f"{len(pairs)} problem(s)" in msg
    # equal is allowed
    for at, low, high in pairs:
        section = raw
        for part in at.split("."):
            section = section[int(part)] if isinstance(section, list) else section[part]
        section[low] = section[high]
    validate(raw)


def test_harness_include_needs_the_trust_switch() -> None:
    """A harness_include folder runs Python (`!function`): refused, naming the task and the switch, unless trusted."""
    raw = copy.deepcopy(RAW)
    assert raw["probe"]["trust_harness_code"] is False  # off in the demo
    raw["probe"]["tasks"].append(
        {"name": "own", "type": "multiple_choice", "harness_task": "own_mc", "harness_include": "data/h"}
    )
    with pytest.raises(StageError) as err:
        validate(raw)
    msg = str(err.value)
    assert "probe.tasks 'own' (data/h): harness_include is code, not data" in msg
    assert "set probe.trust_harness_code: true to run it" in msg
    raw["probe"]["trust_harness_code"] = True
    validate(raw)
