"""The knowledge-gain experiment of docs/knowledge.md: its `dvc exp run -S ...` line sets the benchmark's params."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from stages.core import params as _params

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import knowledge_gain  # noqa: E402


def readme_command() -> str:
    """The `dvc exp run` line of docs/knowledge.md's knowledge-gain subsection (one line, in a bash block)."""
    text = (ROOT / "docs" / "knowledge.md").read_text()
    section = text[text.index("### Knowledge gain: the experiment") :]
    return re.search(r"^dvc exp run .*$", section, re.M).group(0)


def test_readme_line_is_the_benchmark_run_and_dvc_applies_it(tmp_path: Path) -> None:
    """The docs' line is the one the measured run printed, and DVC's own -S parser (Hydra overrides) turns the
    project's params.yaml into exactly the params the benchmark wrote; the result passes the stages' validation."""
    from dvc.utils.hydra import apply_overrides

    result = json.loads((ROOT / "benchmarks" / "results" / "knowledge_gain.json").read_text())
    line = readme_command()
    assert line == result["command"]

    args = shlex.split(line)[3:]
    sets = [a for a in args if a != "-S"]
    assert len(sets) == args.count("-S")
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_overrides(str(params), sets)

    overrides = {}
    for s in sets:
        key, value = s.lstrip("+").split("=", 1)
        overrides[key] = yaml.safe_load(value)
    expected = tmp_path / "expected.yaml"
    knowledge_gain.write_params(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides, expected)
    assert yaml.safe_load(params.read_text()) == yaml.safe_load(expected.read_text())

    scoped = _params.load(params, ["template.chat", "tokenize.chat", "train.chat"])
    assert _params.get(scoped, "template.chat").documents_as == "text"
    assert _params.get(scoped, "tokenize.chat").mixture.kinds["document"] == result["passes"]
    assert _params.get(scoped, "train.chat").quantization == "none"
