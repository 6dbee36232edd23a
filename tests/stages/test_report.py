"""report: funnel, drop reasons, rejects, synthetic pairs, forgetting verdicts, knowledge gain, side by side,
deterministic bytes, missing optional inputs said in the report, malformed inputs named.

Every input is a small fixture written here in the real schemas: the data stages' metrics (as in metrics/ of the demo
run), rejects and synthetic pairs in the record schema, dvclive loss TSVs, and the probe's metrics and per-item table
(the contract of the probe stage).
"""

from __future__ import annotations

import html as _html
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.records import make_record, write_records, write_rejects
from stages.probe.tables import PROBE_SCHEMA
from stages.report import report
from stages.report.document import Code, Doc, to_html, to_markdown
from stages.report.text import clip, question_of
from tests.stages._tiny import write_params

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ["base", "chat"]  # the variants of the repo's params.yaml, in file order
# each probe task's type, as the probe and baseline stages write it beside the task's metrics
TYPES = {
    "general_mc": "multiple_choice",
    "general_text": "perplexity",
    "general_qa": "generation",
    "steep_knowledge": "knowledge",
}
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{q}\n\n### Response:\n"
)
CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
)
# the per-item table of the probe stage, as written by it
PROBE_SCHEMA = PROBE_SCHEMA
INPUT_FLAGS = {
    "metrics_dir": "metrics",
    "rejects_dir": "data/rejected",
    "moderated": "data/moderated.parquet",
    "curated": "data/curated.parquet",
    "reviews": "reviews",
    "synthetic": "data/synthetic.parquet",
    "live_dir": "dvclive",
    "probe_dir": "data/probe",
}
# the rules' precision bars (report.min_*_precision), as params.yaml sets them
BARS = {"min_drop_precision": 0.9, "min_flag_precision": 0.5, "min_rewrite_precision": 0.9}
OUTPUTS = {
    "md": Path("metrics/report.md"),
    "html": Path("metrics/report.html"),
    "headline": Path("metrics/headline.json"),
    "review": Path("metrics/review.json"),
    "funnel": Path("metrics/funnel.csv"),
    "drops": Path("metrics/drops.csv"),
}


def _json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.write_json(path, data)


def _meta(row: int, **extra: Any) -> dict[str, Any]:
    return {"source_file": "data/sources/alpaca_demo.jsonl", "row": row, "source_index": 0, **extra}


def _rec(instruction: str, output: str, row: int, **meta: Any) -> dict[str, Any]:
    return make_record(
        source="demo_alpaca", kind="instruction", meta=_meta(row, **meta), instruction=instruction, output=output
    )


def _metric(base: float, adapted: float, lo: float, hi: float) -> dict[str, float]:
    return {"base": base, "adapted": adapted, "delta": round(adapted - base, 6), "ci_low": lo, "ci_high": hi}


def _probe_rows(template: str, gained_first: bool) -> list[dict[str, Any]]:
    """Per-item rows of one variant: 2 multiple-choice, 2 generation, 3 knowledge, 2 showcase."""
    rows = []

    def add(task: str, type_: str, item: int, q: str, ref: str, pred: str, sc: dict, base: str, bsc: dict) -> None:
        rows.append(
            {
                "task": task,
                "type": type_,
                "item": item,
                "prompt": template.format(q=q),
                "reference": ref,
                "prediction": pred,
                "scores": json.dumps(sc, sort_keys=True),
                "base_prediction": base,
                "base_scores": json.dumps(bsc, sort_keys=True),
            }
        )

    add(
        "general_mc",
        "multiple_choice",
        0,
        "Question: 2+2?\nAnswer:",
        "4",
        "4",
        {"acc": 1.0, "acc_norm": 1.0},
        "4",
        {"acc": 1.0, "acc_norm": 1.0},
    )
    add(
        "general_mc",
        "multiple_choice",
        1,
        "Question: sky?\nAnswer:",
        "blue",
        "red",
        {"acc": 0.0, "acc_norm": 0.0},
        "blue",
        {"acc": 1.0, "acc_norm": 1.0},
    )
    for item, (q, ref) in enumerate([("Name a primary color.", "Red."), ("What is ice?", "Frozen water.")]):
        add(
            "general_qa",
            "generation",
            item,
            q,
            ref,
            f"adapted says {ref}",
            {"rougeL": 0.8, "bleu": 30.0, "bertscore_f1": 0.9},
            f"base says {ref}",
            {"rougeL": 0.6, "bleu": 20.0, "bertscore_f1": 0.85},
        )
    know = [
        # (question, answer, base prediction, base right, adapted prediction, adapted right)
        ("Which tool runs steep's stages?", "DVC", "Make runs them.", 0.0, "DVC runs the stages.", 1.0),
        ("What does dedup drop?", "duplicates", "It drops duplicates.", 1.0, "It drops duplicates.", 1.0),
        ("Where are rejects written?", "data/rejected", "To the bin.", 0.0, "Nowhere.", 0.0),
    ]
    for item, (q, ans, base, b_ok, pred, a_ok) in enumerate(know if gained_first else know[::-1]):
        add(
            "steep_knowledge",
            "knowledge",
            item,
            q,
            ans,
            pred,
            {"contains": a_ok, "exact": 0.0, "rougeL": 0.5},
            base,
            {"contains": b_ok, "exact": 0.0, "rougeL": 0.3},
        )
    add(
        "showcase",
        "showcase",
        0,
        "What does steep do?",
        "",
        "steep curates data and fine-tunes models.",
        {},
        "I do not know what steep is.",
        {},
    )
    add(
        "showcase",
        "showcase",
        1,
        "Give three tips for staying healthy.",
        "",
        "Sleep.\nEat well.\nMove.",
        {},
        "Drink water.",
        {},
    )
    return rows


def build_fixture(root: Path, *, synthesize: bool = True, probe_variants: tuple[str, ...] = ("base", "chat")) -> None:
    """Write every report input under `root`, shaped like the demo run's files (and the probe's contract)."""
    m = root / "metrics"
    _json(
        m / "pull.json",
        {"kept": 390, "records_demo_alpaca": 342, "records_demo_sharegpt": 40, "records_steep_docs": 8, "total": 390},
    )
    _json(
        m / "moderate.json",
        {
            "dropped_canned_response": 6,
            "dropped_control_characters": 3,
            "dropped_toxic": 4,
            "flagged_cleanlab_label_issue": 29,
            "flagged_toxic": 1,
            "kept": 377,
            "normalized_noinput": 4,
            "redacted_pii_email": 3,
            "total": 390,
        },
    )
    _json(
        m / "dedup.json",
        {
            "dropped_exact_duplicate": 5,
            "dropped_reference_overlap": 2,
            "kept": 370,
            "reference_texts": 30,
            "total": 377,
        },
    )
    if synthesize:
        _json(
            m / "synthesize.json",
            {
                "acceptance_rate": 0.625,
                "cache_hits": 0,
                "dropped_blacklisted": 2,
                "dropped_rouge_similar": 1,
                "kept": 5,
                "model_calls": 6,
                "pairs_parsed": 8,
                "prompts": 6,
                "tokens_per_s": 41.5,
                "total": 8,
            },
        )
    for v in VARIANTS:
        _json(m / f"template_{v}.json", {"kept": 375, "kept_instruction": 375, "total": 375})
        _json(
            m / f"tokenize_{v}.json",
            {"kept": 375, "total": 375, "train_examples": 356, "validation_examples": 19, "train_tokens": 48057},
        )
        _json(
            m / f"train_{v}.json",
            {
                "best_step": 10,
                "eval_loss": 2.5,
                "first_eval_loss": 2.7,
                "peak_memory_mb": 3394.9,
                "steps": 10,
                "stopped_early": False,
                "tokens_per_s": 72.0,
                "train_loss": 2.37,
            },
        )
        live = root / "dvclive" / f"train_{v}" / "plots" / "metrics"
        (live / "train").mkdir(parents=True)
        (live / "eval").mkdir(parents=True)
        (live / "train" / "loss.tsv").write_text("step\tloss\n1\t2.9\n2\t2.6\n3\t2.4\n", encoding="utf-8")
        (live / "eval" / "loss.tsv").write_text("step\tloss\n2\t2.7\n3\t2.5\n", encoding="utf-8")
        _json(
            m / f"baseline_{v}.json",
            {
                "general_mc": {"acc": 0.5, "acc_norm": 0.5, "n": 2, "type": TYPES["general_mc"]},
                "steep_knowledge": {
                    "contains": 0.333333,
                    "exact": 0.0,
                    "n": 3,
                    "rougeL": 0.3,
                    "type": TYPES["steep_knowledge"],
                },
                "tasks_cached": 0,
                "tasks_evaluated": 2,
            },
        )
    for v in probe_variants:
        _json(
            m / f"probe_{v}.json",
            {
                "general_mc": {
                    "acc": _metric(0.5, 0.4, -0.2, -0.03),
                    "acc_norm": _metric(0.5, 0.45, -0.1, 0.0),
                    "forgetting": 1,
                    "gain": 0,
                    "test": "mcnemar",
                    "n": 80,
                    "changed": 5,
                    "p": 0.03125,
                    "p_adjusted": 0.03125,
                    "mde": 0.1,
                    "type": TYPES["general_mc"],
                },
                "general_text": {
                    "bits_per_byte": _metric(1.2, 1.25, 0.01, 0.09),
                    "token_perplexity": _metric(20.0, 22.0, 1.0, 3.0),
                    "forgetting": 1,
                    "gain": 0,
                    "type": TYPES["general_text"],
                },
                "general_qa": {
                    "rougeL": _metric(0.6, 0.8, 0.1, 0.3),
                    "bleu": _metric(20.0, 30.0, 5.0, 15.0),
                    "forgetting": 0,
                    "gain": 1,
                    "type": TYPES["general_qa"],
                },
                "steep_knowledge": {
                    "contains": _metric(0.333333, 0.666667, 0.0, 0.666667),
                    "test": "sign_flip",
                    "p": 0.5,
                    "p_adjusted": 1.0,
                    "mde": 0.4,
                    "forgetting": 0,
                    "gain": 0,
                    "type": TYPES["steep_knowledge"],
                },
                "tasks_cached": 0,
                "tasks_evaluated": 4,
                "tasks_forgetting": 2,
                "tasks_gaining": 1,
            },
        )
        rows = _probe_rows(ALPACA if v == "base" else CHATML, gained_first=v == "base")
        path = root / "data" / "probe" / f"{v}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        _io.write_table(path, pa.Table.from_pylist(rows, schema=PROBE_SCHEMA))
    flagged = _rec("Summarize the dialogue.", "Noah quit because his boss was a jerk.", 77)
    flagged["meta"]["moderate"] = {"flags": {"toxic": "output: probability 0.912 (max 0.8)"}}
    clean = _rec("Why is the sky blue?", "Rayleigh scattering.", 78)
    clean["meta"]["moderate"] = {"flags": {}}
    write_records(root / "data" / "moderated.parquet", [flagged, clean])
    rej = root / "data" / "rejected"
    rej.mkdir(parents=True)
    write_rejects(
        rej / "moderate.parquet",
        [
            (
                _rec("Why do cats purr?", "Cats purr when content.\x07", 162),
                "moderate",
                "control_characters",
                "output: U+0007 at char 24",
            ),
            (
                _rec("Price of Bitcoin?", "I cannot browse the internet.", 327),
                "moderate",
                "canned_response",
                "output: pattern 3 matched 'I cannot browse'",
            ),
            (
                _rec("Tell me a joke.", "As an AI language model, I cannot.", 12),
                "moderate",
                "canned_response",
                "output: pattern 0 matched 'As an AI language model'",
            ),
            (
                _rec("Say hi | twice.", "As an AI language model, no.", 13),
                "moderate",
                "canned_response",
                "output: pattern 0 matched 'As an AI language model'",
            ),
            (_rec("Explain recursion.", "Shut up, idiot.", 20), "moderate", "toxic", "output: probability 1.000"),
        ],
    )
    write_rejects(
        rej / "dedup.parquet",
        [
            (
                _rec("Which animal is the largest mammal?", "The blue whale.", 335),
                "dedup",
                "reference_overlap",
                "overlaps data/sources/heldout/general_qa.jsonl:27 (exact)",
            ),
            (
                _rec("What is the capital of Kenya?", "Nairobi.", 166),
                "dedup",
                "reference_overlap",
                "overlaps data/sources/heldout/steep_knowledge.jsonl:3 (minhash, jaccard 0.812)",
            ),
            (
                _rec("What is a noun?", "A naming word.", 129),
                "dedup",
                "exact_duplicate",
                "duplicate of 282a7348f4c7a172",
            ),
        ],
    )
    if synthesize:
        gen = {"generator": "documents", "chunk": "docs/usage.md#2", "call": "a1b2"}
        write_rejects(
            rej / "synthesize.parquet",
            [
                (
                    _rec("Draw a graph of the stages.", "Here it is.", 1, synthesize=gen),
                    "synthesize",
                    "blacklisted",
                    "instruction: 'graph'",
                )
            ],
        )
        pairs = [
            _rec("How do I rerun one stage?", "Run `dvc repro <stage>`.", 1, synthesize=gen),
            _rec("What does moderate do?", "It drops unsafe records.", 2, synthesize=gen),
            _rec(
                "Write a haiku about rain.",
                "Soft rain on the roof.",
                3,
                synthesize={"generator": "self_instruct", "seeds": [3, 7, 9]},
            ),
        ]
        write_records(root / "data" / "synthetic.parquet", pairs)


@pytest.fixture
def fixture_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root with every input, made the working directory (as under DVC, paths are relative)."""
    build_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def params(**overrides: Any) -> _params.Scoped:
    return _params.load(ROOT / "params.yaml", report.PARAMS, overrides={f"report.{k}": v for k, v in overrides.items()})


def run_report(scoped: _params.Scoped | None = None, **overrides: Any) -> tuple[str, str]:
    """Run the stage on the fixture (the repo's params, or `scoped`); return the Markdown and the HTML."""
    inputs = {k: Path(v) for k, v in INPUT_FLAGS.items()}
    report.run(scoped or params(**overrides), inputs=inputs, outputs=OUTPUTS)
    return OUTPUTS["md"].read_text(encoding="utf-8"), OUTPUTS["html"].read_text(encoding="utf-8")


def test_flagged_records_are_shown_per_flag(fixture_dir: Path) -> None:
    md, _ = run_report(max_examples_per_reason=2)
    section = md.split("## Flagged, kept records")[1].split("\n## ")[0]
    assert "| `toxic` | 1 |" in section
    assert "Noah quit because his boss was a jerk." in section
    assert "probability 0.912" in section
    assert "Rayleigh" not in section  # a record without a flag is not listed


def test_funnel_lists_every_stage_and_drop_reason(fixture_dir: Path) -> None:
    md, _ = run_report(max_examples_per_reason=2)
    for row in (
        "| pull | 390 | 390 | 0 | 100.0% | demo_alpaca: 342; demo_sharegpt: 40; steep_docs: 8 |",
        "| moderate | 390 | 377 | 13 | 96.7% | normalized: 4; PII redacted: 3; flagged: 30 |",
        "| dedup | 377 | 370 | 7 | 98.1% | checked against 30 held-out reference texts |",
        "| synthesize | 8 | 5 | 3 | 62.5% | 6 prompts; 8 pairs parsed; acceptance 0.625 |",
        "| template@base | 375 | 375 | 0 | 100.0% | instruction: 375 |",
        "| tokenize@chat | 375 | 375 | 0 | 100.0% | 356 train / 19 validation examples |",
    ):
        assert row in md
    for stage, reason, n in (
        ("moderate", "canned_response", 6),
        ("moderate", "toxic", 4),
        ("moderate", "control_characters", 3),
        ("dedup", "exact_duplicate", 5),
        ("dedup", "reference_overlap", 2),
        ("synthesize", "blacklisted", 2),
        ("synthesize", "rouge_similar", 1),
    ):
        assert f"| {stage} | `{reason}` | {n} |" in md
    # extras not shown in the notes go to "Other counts"
    assert "cache_hits: 0; model_calls: 6" in md
    assert "| training | 2.900 (step 1) → 2.400 (step 3); min 2.400 (step 3) |" in md


def test_rejected_examples_per_reason_clipped_and_visible(fixture_dir: Path) -> None:
    md, _ = run_report(max_examples_per_reason=2)
    section = md.split("## Rejected examples")[1].split("## Flagged, kept records")[0]
    # 3 canned responses in the rejects, 2 shown (in id order); the pipe in a prompt does not break the table
    assert section.count("| `canned_response` |") == 2
    assert "\\x07" in section  # the control character is written out
    assert "`data/sources/alpaca_demo.jsonl:162`" in section
    assert "| Say hi \\| twice. |" in section  # (the two canned responses of the lowest ids)
    for line in section.splitlines():
        if line.startswith("| "):
            assert len(re.split(r"(?<!\\)\|", line)) == 7, line  # 5 cells: no pipe in a text broke its row
    assert "| `blacklisted` |" in section  # synthesize's rejects
    md1, _ = run_report(max_examples_per_reason=1)
    assert md1.split("## Rejected examples")[1].split("## Flagged")[0].count("| `canned_response` |") == 1


def test_decontamination_states_the_overlap(fixture_dir: Path) -> None:
    md, _ = run_report()
    section = md.split("## Decontamination")[1].split("## Synthetic pairs")[0]
    assert "30 held-out reference texts" in section
    assert "dropped **2** overlapping training records" in section
    assert "| `data/sources/heldout/general_qa.jsonl` | exact | 1 |" in section
    assert "| `data/sources/heldout/steep_knowledge.jsonl` | minhash | 1 |" in section


def test_synthetic_pairs_with_provenance(fixture_dir: Path) -> None:
    md, _ = run_report(max_examples_per_task=1)
    section = md.split("## Synthetic pairs")[1].split("## Training")[0]
    assert "| `documents` | 2 |" in section and "| `self_instruct` | 1 |" in section
    assert "Write a haiku about rain." in section and "seeds: [3, 7, 9]" in section
    assert "chunk: docs/usage\\.md#2" in section  # the dot before a letter escaped: no autolink
    assert section.count("| `documents` |") == 2  # one count row, one example (max_examples_per_task: 1)


def test_forgetting_table_rows_with_values(fixture_dir: Path) -> None:
    md, _ = run_report()
    section = md.split("## Probe: forgetting and knowledge gain")[1]
    for v in VARIANTS:
        assert (
            f"| `{v}` | `general_mc` | multiple_choice | acc ↑ | 0.500 | 0.400 | -0.100 | [-0.200, -0.030] | mcnemar "
            "| 0.031 | 0.031 | forgetting |"
        ) in section
        assert (
            f"| `{v}` | `general_text` | perplexity | bits_per_byte ↓ | 1.200 | 1.250 | +0.050 | "
            "[+0.010, +0.090] | — | — | — | forgetting |"
        ) in section
        assert (
            f"| `{v}` | `general_qa` | generation | rougeL ↑ | 0.600 | 0.800 | +0.200 | [+0.100, +0.300] | — | — | — "
            "| gain |" in section
        )
        assert (
            f"| `{v}` | `steep_knowledge` | knowledge | contains ↑ | 0.333 | 0.667 | +0.333 | [+0.000, +0.667] | "
            "sign_flip | 0.500 | 1.000 | no clear change; cannot detect changes below 0.400 |"
        ) in section
        assert (
            f"| `{v}` | `general_text` | token_perplexity ↓ | 20.000 | 22.000 | +2.000 | [+1.000, +3.000] |" in section
        )
    # task order: by type (multiple choice, perplexity, generation, knowledge)
    table = section.split("### Every probe metric")[0]
    assert table.index("`general_mc`") < table.index("`general_text`") < table.index("`general_qa`")
    assert "**Probe `chat`:** forgetting on 2 of 4 tasks (`general_mc`, `general_text`), gain on 1 (`general_qa`)" in md


def test_knowledge_gain_examples_come_first(fixture_dir: Path) -> None:
    md, _ = run_report(max_examples_per_task=2)
    section = md.split("### Knowledge gain examples")[1].split("### Side by side")[0]
    assert "`steep_knowledge` on `chat`: 3 questions; base right on 1, adapted right on 2; **1 gained**, 0 lost." in (
        section
    )
    for v in VARIANTS:
        part = section.split(f"`steep_knowledge` on `{v}`")[1].split("`steep_knowledge` on")[0]
        lines = [line for line in part.splitlines() if line.startswith("| ") and "---" not in line][1:]
        # 2 examples: the gained question first (whatever its item index), then the one both got right
        assert len(lines) == 2
        assert "Which tool runs steep's stages?" in lines[0] and lines[0].endswith("| gained |")
        assert (
            "DVC runs the stages.<br>(contains 1.000)" in lines[0] and "Make runs them.<br>(contains 0.000)" in lines[0]
        )
        assert lines[1].endswith("| both right |")
        # the question is shown without the template around it
        assert "### Instruction" not in part and "im_start" not in part


def test_showcase_and_generation_side_by_side(fixture_dir: Path) -> None:
    md, html = run_report()
    section = md.split("### Side by side: showcase prompts")[1]
    assert (
        "| What does steep do? | I do not know what steep is. | steep curates data and fine-tunes models. |" in section
    )
    assert "| Give three tips for staying healthy. | Drink water. | Sleep.<br>Eat well.<br>Move. |" in section
    assert (
        "| 0 | Name a primary color. | Red. | base says Red.<br>(rougeL 0.600) | adapted says Red.<br>(rougeL 0.800) |"
        in (section)
    )
    assert "<td>Sleep.<br>Eat well.<br>Move.</td>" in html


def test_output_is_deterministic_and_self_contained(fixture_dir: Path) -> None:
    md1, html1 = run_report()
    md2, html2 = run_report()
    assert md1 == md2 and html1 == html2
    assert html1.count("<svg") == 4  # funnel, drops, losses, deltas
    assert 'href="http' not in html1 and "<script" not in html1 and "<link" not in html1
    for text in (md1, html1):
        assert str(fixture_dir) not in text and "/tmp" not in text
    assert "dc:date" not in html1
    ids = re.findall(r'\bid="([^"]+)"', html1)
    assert len(ids) == len(set(ids))  # the plots' ids are prefixed, unique on the page
    assert 'id="funnel-figure_1"' in html1 and 'id="losses-figure_1"' in html1
    for ref in re.findall(r"url\(#([^)]+)\)", html1):
        assert ref in ids
    # every section a reader looks for
    for heading in (
        "## Summary",
        "## Data funnel",
        "## Rejected examples",
        "## Decontamination",
        "## Synthetic pairs",
        "## Training",
        "## Probe: forgetting and knowledge gain",
        "## Inputs",
    ):
        assert heading in md1


def test_missing_optional_inputs_are_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_fixture(tmp_path, synthesize=False, probe_variants=("base",))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics" / "baseline_chat.json").unlink()
    (tmp_path / "dvclive" / "train_chat" / "plots" / "metrics" / "eval" / "loss.tsv").unlink()
    md, html = run_report()
    assert "**Synthetic:** synthesize has not run (`metrics/synthesize.json` not found)" in md
    assert "synthesize has not run (`data/synthetic.parquet` not found)." in md
    assert "No rejects file (`data/rejected/synthesize.parquet` not found)." in md
    assert "**Probe `chat`:** not probed (`metrics/probe_chat.json` not found)" in md
    assert "`chat`: no per-item results (`data/probe/chat.parquet` not found)." in md
    assert "| `metrics/probe_chat.json` | probe@chat metrics | not found |" in md
    assert "| `base` | `general_mc` | multiple_choice |" in md  # the probed variant is still there
    assert "<svg" in html

    # a variant whose baseline ran but not its probe: the base scores are shown
    (tmp_path / "metrics" / "probe_base.json").unlink()
    (tmp_path / "data" / "probe" / "base.parquet").unlink()
    md, _ = run_report()
    assert "`base`: the adapted model has not been probed (`metrics/probe_base.json` not found)" in md
    assert "| `general_mc` | multiple_choice | `acc` | 0.500 |" in md
    assert "No per-item probe results (`data/probe/base.parquet`, `data/probe/chat.parquet` not found)" in md


def test_nothing_found_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match="none of the report's inputs were found"):
        run_report()
    assert not OUTPUTS["md"].exists() and not OUTPUTS["html"].exists()


def _corrupt_json(root: Path) -> str:
    (root / "metrics" / "dedup.json").write_text('{"total": 3,', encoding="utf-8")
    return r"metrics/dedup\.json: not valid JSON"


def _json_not_object(root: Path) -> str:
    (root / "metrics" / "train_chat.json").write_text("[1, 2]", encoding="utf-8")
    return r"metrics/train_chat\.json: expected a JSON object of metrics, got list"


def _bad_tsv(root: Path) -> str:
    (root / "dvclive" / "train_base" / "plots" / "metrics" / "eval" / "loss.tsv").write_text(
        "step\tloss\n2\tabc\n", encoding="utf-8"
    )
    return r"eval/loss\.tsv:2: expected an integer step and a number loss, got '2', 'abc'"


def _bad_probe_metric(root: Path) -> str:
    path = root / "metrics" / "probe_chat.json"
    data = json.loads(path.read_text())
    del data["general_qa"]["rougeL"]["adapted"]
    path.write_text(json.dumps(data))
    return r"metrics/probe_chat\.json: general_qa\.rougeL lacks numbers for \['adapted'\]"


def _probe_without_type(root: Path) -> str:
    path = root / "metrics" / "probe_chat.json"
    data = json.loads(path.read_text())
    del data["general_qa"]["type"]
    path.write_text(json.dumps(data))
    return r"metrics/probe_chat\.json: task 'general_qa' has no \"type\".*rerun `dvc repro probe`"


def _baseline_without_type(root: Path) -> str:
    path = root / "metrics" / "baseline_base.json"
    data = json.loads(path.read_text())
    del data["steep_knowledge"]["type"]
    path.write_text(json.dumps(data))
    return r"metrics/baseline_base\.json: task 'steep_knowledge' has no \"type\".*rerun `dvc repro probe`"


def _unknown_type(root: Path) -> str:
    path = root / "metrics" / "probe_base.json"
    data = json.loads(path.read_text())
    data["general_mc"]["type"] = "mc"
    path.write_text(json.dumps(data))
    return r"metrics/probe_base\.json: task 'general_mc' has type 'mc'; expected one of \['multiple_choice'"


def _bad_scores(root: Path) -> str:
    path = root / "data" / "probe" / "chat.parquet"
    rows = _probe_rows(CHATML, gained_first=False)
    rows[3]["scores"] = "{rougeL: 0.8"
    _io.write_table(path, pa.Table.from_pylist(rows, schema=PROBE_SCHEMA))
    return r"data/probe/chat\.parquet: row 3 \(task 'general_qa' item 1\): column 'scores' is not a JSON object"


def _rejects_wrong_schema(root: Path) -> str:
    _io.write_table(root / "data" / "rejected" / "dedup.parquet", pa.table({"id": ["x"], "reason": ["r"]}))
    return r"data/rejected/dedup\.parquet: missing columns \['source'"


def _not_parquet(root: Path) -> str:
    (root / "data" / "synthetic.parquet").write_bytes(b"not parquet at all")
    return r"data/synthetic\.parquet: cannot read Parquet"


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_json,
        _json_not_object,
        _bad_tsv,
        _bad_probe_metric,
        _probe_without_type,
        _baseline_without_type,
        _unknown_type,
        _bad_scores,
        _rejects_wrong_schema,
        _not_parquet,
    ],
)
def test_malformed_input_names_the_file(fixture_dir: Path, corrupt: Any) -> None:
    pattern = corrupt(fixture_dir)
    with pytest.raises(StageError, match=pattern):
        run_report()
    assert not OUTPUTS["md"].exists()  # nothing half-written


def test_variants_come_from_params_in_file_order(fixture_dir: Path) -> None:
    raw = _params.read_yaml(ROOT / "params.yaml")["variants"]
    swapped = write_params(fixture_dir / "params.yaml", variants={"chat": raw["chat"], "base": raw["base"]})
    scoped = _params.load(swapped, report.PARAMS)
    md, _ = run_report(scoped)
    assert scoped.read == set(report.PARAMS)  # reads every key it declares (dvc.yaml's params:), no other
    assert "Variants: `chat`, `base`." in md
    assert md.index("**Training `chat`:**") < md.index("**Training `base`:**")
    only_chat = write_params(fixture_dir / "params.yaml", variants={"chat": raw["chat"]})
    md, _ = run_report(_params.load(only_chat, report.PARAMS))
    assert "Variants: `chat`." in md
    assert "| `chat` | `general_mc` | multiple_choice |" in md
    assert "`base`" not in md and "template@base" not in md and "probe_base.json" not in md  # base is not read


def test_markdown_cells_keep_tables_and_placeholders() -> None:
    doc = Doc()
    doc.table(["a", "b"], [["x | y\nz", "mail <EMAIL> or `<stage>`"], [Code("id_1"), "0.5"], [Code("a`b|c"), "[0, 1]"]])
    md = to_markdown(doc)
    assert "| x \\| y<br>z | mail &lt;EMAIL> or \\`&lt;stage>\\` |" in md
    assert "| `id_1` | 0.5 |" in md
    assert "| ``a`b\\|c`` | [0, 1] |" in md  # a code cell's fence outgrows its backticks; an interval stays as written
    html = to_html(doc, "t")
    assert "<td>x | y<br>z</td><td>mail &lt;EMAIL&gt; or `&lt;stage&gt;`</td>" in html


# What a record can hold to attack a reader of the report: raw HTML (a backslash-backtick that once ended up as a code
# span delimiter), an image that is a tracking pixel, links and autolinks of every kind, a code span, an entity.
HOSTILE = [
    "\\`<img src=x onerror=alert(document.domain)>`",
    "![p](http://attacker.example/p.png)",
    "[click](https://attacker.example/x) <https://attacker.example/a> www.attacker.example",
    "mail me@attacker.example or visit http://attacker.example/b today",
    "<script>alert(1)</script> &lt;b&gt; `code` **bold** ~~gone~~ $x$",
]


def _markdown_renderers() -> list[Any]:
    from markdown_it import MarkdownIt

    # CommonMark with GFM tables; and GFM-like with linkify (bare URLs, www., e-mail and bare domains become links)
    return [MarkdownIt("commonmark").enable("table"), MarkdownIt("gfm-like")]


def _live(tokens: list[Any]) -> list[str]:
    """What a rendering would make live: images, raw HTML (but the report's own ``<br>``), links not to an anchor."""
    found = []
    for t in tokens:
        found += _live(t.children or [])
        if t.type == "image":
            found.append(f"image {t.attrGet('src')}")
        elif t.type in ("html_inline", "html_block") and t.content.strip().lower() not in ("<br>", "<br/>", "<br />"):
            found.append(f"html {t.content!r}")
        elif t.type == "link_open" and not str(t.attrGet("href")).startswith("#"):
            found.append(f"link {t.attrGet('href')}")
    return found


def test_hostile_record_text_is_inert_in_both_reports(fixture_dir: Path) -> None:
    rejects = [(_rec(text, text, 900 + i), "moderate", "canned_response", text) for i, text in enumerate(HOSTILE)]
    path_with_ticks = _rec("x", "y", 7)
    path_with_ticks["meta"]["source_file"] = "data/`<img src=x onerror=alert(2)>`|![q](http://attacker.example/q).jsonl"
    rejects.append((path_with_ticks, "moderate", "canned_response", "a file name is hostile too"))
    write_rejects(fixture_dir / "data" / "rejected" / "moderate.parquet", rejects)
    md, html = run_report(max_examples_per_reason=10)
    assert md.count("attacker") >= 2 * len(HOSTILE)  # the records are in the report
    for renderer in _markdown_renderers():
        assert _live(renderer.parse(md)) == []
        rendered = renderer.render(md)
        assert "<img" not in rendered and "<script" not in rendered and 'href="http' not in rendered
        # shown as written: the escapes are for the renderer, not for the reader
        for text in ("![p](http://attacker.example/p.png)", "<script>alert(1)</script>", "**bold**", "me@attacker"):
            assert _html.escape(text, quote=False) in rendered, text
    assert "<img" not in html and "<script" not in html and "attacker" in html
    assert "&lt;img src=x onerror=alert(document.domain)&gt;" in html


def test_markdown_escaper_keeps_every_text_inert() -> None:
    """Random mixes of Markdown's active characters: no tag or link comes out, and the text shows as written."""
    rng = random.Random(0)
    atoms = ["`", "\\", "<", ">", "img src=x onerror=1", "![p](", "http://a.example/p.png", ")", "[", "]", "*",
             "_", "~~", "|", "&", "&lt;", "&#60;", "www.e.com", "a@b.com", "://", ".", "$", "<http://x.y>", "a_b",
             "[r]: http://e.com", "[^1]", " ", "\n", "\r", "x", "пример.рф"]  # fmt: skip
    renderers = _markdown_renderers()
    for _ in range(1000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 12)))
        doc = Doc()
        doc.table(["h"], [[text], [Code(text)]])
        for renderer in renderers:
            assert _live(renderer.parse(to_markdown(doc))) == [], text
            cells = re.findall(r"<td[^>]*>(.*?)</td>", renderer.render(to_markdown(doc)), re.S)
            shown = _html.unescape(cells[0].replace("<br>", "\n").replace("<br />", "\n"))
            assert shown.strip() == re.sub(r"\r\n?", "\n", text).strip(), text


def test_question_of_strips_the_templates() -> None:
    assert question_of(ALPACA.format(q="What is DVC?")) == "What is DVC?"
    assert question_of(CHATML.format(q="Line one\nline two")) == "Line one\nline two"
    gemma = "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    assert question_of(gemma) == "Hi there"
    assert question_of("Question: 2+2?\nAnswer:") == "Question: 2+2?\nAnswer:"
    assert clip("a\nb  c", 20) == "a ↵ b c"
    assert clip("x" * 30, 10) == "x" * 9 + "…"


def test_command_line(fixture_dir: Path) -> None:
    params_file = write_params(
        fixture_dir / "params.yaml",
        report={"max_examples_per_reason": 1, "max_examples_per_task": 2, **BARS},
    )
    cmd = [sys.executable, "-m", "stages.report.report", "--params", "params.yaml"]
    cmd += ["--metrics-dir", "metrics", "--rejects-dir", "data/rejected", "--moderated", "data/moderated.parquet"]
    cmd += ["--synthetic", "data/synthetic.parquet"]
    cmd += ["--live-dir", "dvclive", "--probe-dir", "data/probe", "--md", "out/report.md", "--html", "out/report.html"]
    cmd += ["--headline", "out/headline.json", "--curated", "data/curated.parquet", "--reviews", "reviews"]
    cmd += ["--review", "out/review.json", "--funnel", "out/funnel.csv", "--drops", "out/drops.csv"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=fixture_dir, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert params_file.exists() and (fixture_dir / "out" / "report.html").exists()
    assert "| `canned_response` |" in (fixture_dir / "out" / "report.md").read_text(encoding="utf-8")
    first = [(fixture_dir / "out" / f"report.{ext}").read_bytes() for ext in ("md", "html")]
    again = subprocess.run(cmd, cwd=fixture_dir, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert [(fixture_dir / "out" / f"report.{ext}").read_bytes() for ext in ("md", "html")] == first  # a new process
    (fixture_dir / "metrics" / "pull.json").write_text("nope", encoding="utf-8")
    bad = subprocess.run(cmd, cwd=fixture_dir, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert "error: metrics/pull.json: not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
