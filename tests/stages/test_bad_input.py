"""The bad-input catalogue: every kind of broken or hostile input a user can hand steep, and what comes of it.

One table of cases, each written into a scratch project root and run through the real stages (pull, then moderate,
then the report where the case is about what a reader sees). A case ends one of two ways, and the test asserts
which: pull (or the params check) stops with an error that names the file, line or key and the fix, and writes
nothing; or the input is read and each defect is counted under its reason or normalization, with
``total == kept + sum(dropped_*)`` for every stage that ran.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stages.core import params as _params
from stages.core.facts import EXAMPLE as FACT_EXAMPLE
from stages.core.io import StageError
from stages.core.records import make_record, read_records
from stages.curate import moderate, pull, rules
from stages.report import report

ROOT = Path(__file__).resolve().parents[2]
OK_ROW = {"instruction": "Name a primary colour of light.", "input": "", "output": "Red is a primary colour of light."}
MB20 = 20_000_000
HOSTILE_HTML = "\\`<img src=x onerror=alert(document.domain)>`"
HOSTILE_IMAGE = "![p](http://attacker.example/p.png)"


def _jsonl(path: str, rows: list[Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _src(name: str, fmt: str, location: str) -> dict[str, str]:
    return {"name": name, "format": fmt, "location": location}


# --- the inputs: each writes its files and returns pull.sources -------------------------------------------------


def corrupt_jsonl() -> list[dict[str, str]]:
    Path("a.jsonl").write_text(json.dumps(OK_ROW) + '\n{"instruction": "x", "output": \n', encoding="utf-8")
    return [_src("a", "alpaca", "a.jsonl")]


def byte_order_mark() -> list[dict[str, str]]:
    Path("a.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(OK_ROW) + "\n").encode())
    return [_src("a", "alpaca", "a.jsonl")]


def not_utf8() -> list[dict[str, str]]:
    Path("a.jsonl").write_bytes(b'{"instruction": "Caf\xe9 au lait, please.", "output": "Here."}\n')
    return [_src("a", "alpaca", "a.jsonl")]


def empty_source() -> list[dict[str, str]]:
    Path("a.jsonl").write_text("\n\n", encoding="utf-8")
    return [_src("a", "alpaca", "a.jsonl")]


def wrong_type() -> list[dict[str, str]]:
    _jsonl("q.jsonl", [{"question": "What is 2 + 2?", "answer": 4}])
    return [_src("q", "qa", "q.jsonl")]


def duplicate_names() -> list[dict[str, str]]:
    _jsonl("a.jsonl", [OK_ROW])
    return [_src("a", "alpaca", "a.jsonl"), _src("a", "alpaca", "a.jsonl")]


def names_differ_in_case() -> list[dict[str, str]]:
    _jsonl("a.jsonl", [OK_ROW])
    return [_src("Src", "alpaca", "a.jsonl"), _src("src", "alpaca", "a.jsonl")]


def lone_surrogate() -> list[dict[str, str]]:
    # valid JSON: the escape of half a UTF-16 pair (json.dumps writes a str holding one just so)
    Path("a.jsonl").write_text(json.dumps(OK_ROW) + '\n{"instruction": "Hi", "output": "x\\ud800y"}\n', "utf-8")
    return [_src("a", "alpaca", "a.jsonl")]


def lone_surrogate_in_facts() -> list[dict[str, str]]:
    fact = json.loads(FACT_EXAMPLE)
    fact["statements"][1] = "The configuration file \ud800 of steep is params.yaml."
    _jsonl("facts.jsonl", [fact])
    return [_src("f", "fact", "facts.jsonl")]


def _outside(project: Path) -> Path:
    """A folder beside the project root, holding a valid data file."""
    out = project.parent / f"{project.name}-outside"
    out.mkdir()
    _jsonl(str(out / "secret.jsonl"), [OK_ROW])
    return out


def symlink_out_in_folder() -> list[dict[str, str]]:
    _jsonl("data/sources/mine/a.jsonl", [OK_ROW])
    os.symlink(_outside(Path.cwd()) / "secret.jsonl", "data/sources/mine/b.jsonl")
    return [_src("mine", "alpaca", "data/sources/mine")]


def symlink_out_as_location() -> list[dict[str, str]]:
    Path("data/sources").mkdir(parents=True)
    os.symlink(_outside(Path.cwd()), "data/sources/ext")
    return [_src("ext", "alpaca", "data/sources/ext/secret.jsonl")]


def named_outside() -> list[dict[str, str]]:
    """Not a defect: a location params name outside the project is the user's choice, read as named."""
    return [_src("ext", "alpaca", str(_outside(Path.cwd()) / "secret.jsonl"))]


def huge_fields() -> list[dict[str, str]]:
    big = "lorem ipsum dolor sit amet " * (MB20 // 27)
    _jsonl("a.jsonl", [OK_ROW, {"instruction": "Summarize the following text.", "input": big, "output": "Lorem."}])
    _jsonl(
        "c.jsonl", [{"messages": [{"role": "user", "content": "Repeat it."}, {"role": "assistant", "content": big}]}]
    )
    return [_src("a", "alpaca", "a.jsonl"), _src("c", "messages", "c.jsonl")]


def crlf_in_csv() -> list[dict[str, str]]:
    Path("a.csv").write_bytes(
        b'instruction,input,output\r\n"List two primary colours of light.",,"Red\r\nGreen"\r\n'
        b'"Name a primary colour of light.",,"Red is a primary colour of light."\r\n'
    )
    return [_src("a", "alpaca", "a.csv")]


def hostile_markdown() -> list[dict[str, str]]:
    # empty outputs: both are rejected, and the report shows rejected prompts
    _jsonl(
        "a.jsonl",
        [OK_ROW, *({"instruction": f"Render this: {t}", "output": "N/A"} for t in (HOSTILE_HTML, HOSTILE_IMAGE))],
    )
    return [_src("a", "alpaca", "a.jsonl")]


# --- the catalogue ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input and its outcome: `error` (a regex on pull's error), or the counts each stage must report."""

    write: Callable[[], list[dict[str, str]]]
    error: str = ""
    pull: dict[str, int] = field(default_factory=dict)
    moderate: dict[str, int] = field(default_factory=dict)
    check: Callable[[Path], None] | None = None


def _bom_gone(_: Path) -> None:
    assert read_records(Path("pulled/a.parquet"))[0]["instruction"] == OK_ROW["instruction"]  # no U+FEFF


def _crlf_gone(_: Path) -> None:
    kept = read_records(Path("moderated.parquet"))
    assert "Red\nGreen" in [r["output"] for r in kept]
    assert not any("\r" in r["output"] or "\r" in r["instruction"] for r in kept)


def _report_inert(_: Path) -> None:
    from markdown_it import MarkdownIt

    Path("metrics").mkdir(exist_ok=True)
    for stage in ("pull", "moderate"):
        Path(f"metrics/{stage}.json").write_text(json.dumps(CASE_METRICS[stage]), encoding="utf-8")
    # every input the report reads: what moderate wrote, the rest absent (stages that did not run)
    inputs = {name: Path(f"absent/{name}") for name in report.STAGE.inputs}
    inputs.update(metrics_dir=Path("metrics"), rejects_dir=Path("rejected"), moderated=Path("moderated.parquet"))
    outputs = {name: Path(f"out/{name}") for name in report.STAGE.outputs}
    outputs.update(md=Path("out/report.md"), html=Path("out/report.html"))
    scoped = _params.load(ROOT / "params.yaml", report.PARAMS, overrides={"report.max_examples_per_reason": 5})
    report.run(scoped, inputs=inputs, outputs=outputs)
    md, page = outputs["md"].read_text(encoding="utf-8"), outputs["html"].read_text(encoding="utf-8")
    rendered = MarkdownIt("gfm-like").render(md)  # GFM tables, and linkify: bare URLs become links
    assert "attacker.example" in rendered and "onerror" in rendered  # the records are shown...
    assert "<img" not in rendered and 'href="http' not in rendered and 'src="http' not in rendered  # ...inert
    assert html.escape(HOSTILE_IMAGE, quote=False) in rendered  # as written
    assert "<img" not in page and html.escape("<img src=x onerror=alert(document.domain)>") in page


CASES: dict[str, Case] = {
    "corrupt_jsonl": Case(corrupt_jsonl, error=r"a\.jsonl, line 2: not valid JSON"),
    "byte_order_mark": Case(byte_order_mark, pull={"total": 1, "kept": 1}, moderate={"kept": 1}, check=_bom_gone),
    "not_utf8": Case(not_utf8, error=r"a\.jsonl, line 1: not valid UTF-8 \(byte 0xe9.*iconv -f latin1"),
    "empty_source": Case(empty_source, error=r"source 'a': a\.jsonl holds no records.*Fix: point `location` at data"),
    "wrong_type": Case(wrong_type, error=r"q\.jsonl, line 1: field 'answer' is int \('4'\), expected a string"),
    "duplicate_names": Case(duplicate_names, error=r"pull\.sources: source names must be unique; repeated: \['a'\]"),
    "names_differ_in_case": Case(
        names_differ_in_case, error=r"differ in more than letter case.*\[\['Src', 'src'\]\]\. Fix: rename"
    ),
    "lone_surrogate": Case(lone_surrogate, error=r"a\.jsonl, line 2: field 'output' holds a lone surrogate U\+D800"),
    "lone_surrogate_in_facts": Case(
        lone_surrogate_in_facts, error=r"facts\.jsonl, line 1: a text holds a lone surrogate"
    ),
    "symlink_out_in_folder": Case(
        symlink_out_in_folder,
        error=r"data/sources/mine/b\.jsonl: a symbolic link to .*-outside/secret\.jsonl, outside the project .*"
        r"Fix: copy the data into the project, or point the source's `location` at",
    ),
    "symlink_out_as_location": Case(
        symlink_out_as_location, error=r"data/sources/ext: a symbolic link to .*-outside, outside the project"
    ),
    "named_outside": Case(named_outside, pull={"total": 1, "kept": 1}, moderate={"kept": 1}),
    "huge_fields": Case(huge_fields, pull={"total": 3, "kept": 3}, moderate={"kept": 1, "dropped_too_long": 2}),
    "crlf_in_csv": Case(
        crlf_in_csv, pull={"total": 2}, moderate={"kept": 2, "normalized_line_endings": 1}, check=_crlf_gone
    ),
    "hostile_markdown": Case(
        hostile_markdown, pull={"total": 3}, moderate={"kept": 1, "dropped_empty_output": 2}, check=_report_inert
    ),
}
CASE_METRICS: dict[str, dict[str, Any]] = {}


def _dropped(metrics: dict[str, Any]) -> int:
    return sum(v for k, v in metrics.items() if k.startswith("dropped_"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_catalogue(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    sources = case.write()
    if case.error:
        with pytest.raises(StageError, match=case.error):
            scoped = _params.load(ROOT / "params.yaml", pull.PARAMS, overrides={"pull.sources": sources})
            pull.run(scoped, inputs={}, outputs={"out": Path("pulled")})
        assert not [p.name for p in project.iterdir() if "pulled" in p.name]  # nothing written, not even a temp
        return
    scoped = _params.load(ROOT / "params.yaml", pull.PARAMS, overrides={"pull.sources": sources})
    pulled = pull.run(scoped, inputs={}, outputs={"out": Path("pulled")})
    scoped = _params.load(
        ROOT / "params.yaml",
        moderate.PARAMS,
        overrides={"moderate.cleanlab.enable": False, "common.workers": 1},  # no embeddings: the rules are the case
    )
    outputs = {"out": Path("moderated.parquet"), "rejects": Path("rejected/moderate.parquet")}
    moderated = moderate.run(scoped, inputs={"in": Path("pulled")}, outputs=outputs, cache=tmp_path / "cache")
    CASE_METRICS.update(pull=pulled, moderate=moderated)
    for stage, metrics, want in (("pull", pulled, case.pull), ("moderate", moderated, case.moderate)):
        assert metrics["total"] == metrics["kept"] + _dropped(metrics), stage
        assert {k: metrics[k] for k in want} == want, stage
    assert moderated["total"] == pulled["kept"]
    if case.check:
        case.check(project)


def test_an_oversized_field_is_dropped_before_anything_reads_it() -> None:
    """A 20 MB input (or turn) costs a length check: no normalization, regular expression or model reads it."""
    cfg = _params.load(ROOT / "params.yaml", moderate.PARAMS).moderate
    big = ("lorem ipsum dolor sit amet é " * (MB20 // 29)).strip()  # é: the encoding repair would read it all
    meta = {"source_file": "inline", "row": 1, "source_index": 0}
    turns = [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": big}]
    records = [
        make_record(source="s", kind="instruction", meta=meta, instruction="Summarize it.", input=big, output="x"),
        make_record(source="s", kind="conversation", meta=meta, messages=turns),
    ]
    start = time.perf_counter()
    results = rules.check_records(records, cfg)
    assert time.perf_counter() - start < 2  # (minutes before the bound was checked first)
    assert [(reason, detail) for _, reason, detail in results] == [
        ("too_long", f"input has {len(big)} chars (max_field_chars {cfg.max_field_chars})"),
        ("too_long", f"messages[1] has {len(big)} chars (max_field_chars {cfg.max_field_chars})"),
    ]
    flag = cfg.model_copy(update={"actions": {**cfg.actions, "too_long": "flag"}})
    small = records[0] | {"input": "x" * (cfg.max_field_chars + 1)}
    kept, reason, _ = rules.check_record(small, flag)
    assert reason is None and kept["meta"]["moderate"]["flags"]["too_long"].startswith("input has 100001 chars")
