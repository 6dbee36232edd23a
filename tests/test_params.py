"""params.yaml validation, and each stage's `params:` in dvc.yaml held to what its code reads."""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

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
    assert "allowed here: ['max_probability', 'min_words', 'task_patterns']" in msg
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
