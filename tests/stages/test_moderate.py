"""Moderate: one inline record per rule and its reason code, normalizations, PII, cleanlab, determinism."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.moderate import Moderate
from stages.core.records import REJECT_SCHEMA, Record, make_record, read_records, write_records
from stages.curate import moderate as mod
from stages.curate import pii, rules

ROOT = Path(__file__).resolve().parents[2]

QUESTION = "Explain why the sky looks blue on a clear day."
ANSWER = (
    "Sunlight is scattered by the molecules of the air, and blue light is scattered the most, so the sky looks blue."
)


def load_params(**overrides: Any) -> _params.Scoped:
    return _params.load(ROOT / "params.yaml", mod.PARAMS, overrides=overrides)


@pytest.fixture(scope="module")
def cfg() -> Moderate:
    return load_params().moderate


@pytest.fixture(scope="module")
def strict() -> Moderate:
    """Every rule set to drop (the defaults flag the rules whose precision on real data is below 0.9)."""
    cfg = load_params().moderate
    return cfg.model_copy(update={"actions": dict.fromkeys(cfg.actions, "drop")})


def rec(
    kind: str = "instruction", *, source: str = "demo", row: int = 1, label: str | None = None, **content
) -> Record:
    meta: dict[str, Any] = {"source_file": "inline", "row": row, "source_index": 0, "file_sha256": "0" * 64}
    if label is not None:
        meta["label"] = label
    if kind in ("instruction", "qa"):
        content.setdefault("instruction", QUESTION)
        content.setdefault("output", ANSWER)
    return make_record(source=source, kind=kind, meta=meta, **content)


def conv(*turns: str) -> Record:
    roles = ["user", "assistant"]
    return rec("conversation", messages=[{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)])


DOC = (
    "Steep is a pipeline that turns raw instruction data into a curated training set. Each stage reads the "
    "records of the stage before it, applies its rules, and writes what it kept and what it rejected, with a "
    "reason for every rejected record. The parameters of every stage live in one file."
)

# --- one record per rule --------------------------------------------------------------------------

CASES = {
    "control_characters": rec(output="Sunlight is scattered\x07 by the air."),
    "empty_output": rec(output="N/A"),
    "too_short": rec(instruction="Explain"),
    "too_long": rec(output="The sky is blue. " * 400),
    "unseen_reference": rec(instruction="Summarize the article at https://example.com/news/today."),
    "merged_instructions": rec(output="Joyful.\n\n### Instruction:\nGive an antonym for happy."),
    "canned_response": rec(output="As an AI language model, I do not have personal opinions about the sky."),
    "truncated_output": rec(
        output="Sunlight is scattered by the molecules of the air, and blue light is scattered the most because the"
    ),
    "repetitive": rec(output="\n".join(["The sky is blue and the sea is wide and deep."] * 8)),
    "wrong_language": rec(
        instruction="Expliquez pourquoi le ciel est bleu par une journée claire.",
        output="La lumière du soleil est diffusée par les molécules de l'air, et la lumière bleue l'est le plus.",
    ),
    "toxic": rec(output="Shut up, you stupid fucking idiot, nobody cares about the sky."),
}


@pytest.mark.parametrize("reason", list(CASES))
def test_each_rule_drops_with_its_reason_code(strict, reason):
    record = CASES[reason]
    _, got, detail = rules.check_record(record, strict)
    assert got == reason, detail
    assert detail


@pytest.mark.parametrize("reason", list(CASES))
def test_each_rule_acts_as_params_say(cfg, reason):
    """A flagging rule keeps the record with its reason and detail in meta; a dropping one drops it."""
    out, got, _ = rules.check_record(CASES[reason], cfg)
    if cfg.actions[reason] == "drop":
        assert got == reason
    else:
        assert got is None
        assert reason in out["meta"]["moderate"]["flags"]
        assert reason not in out["meta"]["moderate"]["passed"]
    off = cfg.model_copy(update={"actions": {**cfg.actions, reason: "off"}})
    out, got, _ = rules.check_record(CASES[reason], off)
    assert got is None and reason not in out["meta"]["moderate"]["flags"]


def test_clean_record_passes_every_rule_and_is_not_modified(cfg):
    record = rec()
    before = json.dumps(record, sort_keys=True)
    out, reason, _ = rules.check_record(record, cfg)
    assert reason is None
    assert json.dumps(record, sort_keys=True) == before  # the input record is never modified
    assert out["meta"]["moderate"] == {
        "passed": [name for name, _, _ in rules.RULES] + ["pii"],
        "flags": {},
        "normalized": [],
        "redacted": {},
        "cleanlab": {},
    }


def test_first_failing_rule_wins(cfg):
    record = rec(output="As an AI language model\x00 I cannot answer.")  # canned and a control character
    assert rules.check_record(record, cfg)[1] == "control_characters"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (conv("Why is the sky blue?", "As an AI language model, I cannot see the sky."), "canned_response"),
        (conv("Why is the sky blue?", "  "), "empty_output"),
        (conv("Why is the sky blue?"), "empty_output"),  # no assistant turn
        (
            conv(
                "Why is the sky blue?",
                ANSWER,
                "And at sunset?",
                ANSWER + " At sunset the light travels through more of the",
            ),
            "truncated_output",
        ),
        (
            conv(
                "Hola, ¿qué tal? ¿Puedes explicarme por qué el cielo es azul?",
                "Claro, la luz del sol se dispersa en el aire.",
            ),
            "wrong_language",
        ),
        (rec("document", text="Too short to be a document."), "too_short"),
        (rec("document", text="\n".join([DOC] * 4)), "repetitive"),
        (rec("qa", instruction="Describe the attached image.", output="It shows a cat."), "unseen_reference"),
    ],
    ids=[
        "conv-canned",
        "conv-empty-turn",
        "conv-no-assistant",
        "conv-truncated",
        "conv-language",
        "doc-short",
        "doc-repetitive",
        "qa-unseen",
    ],
)
def test_rules_per_kind(strict, record, reason):
    assert rules.check_record(record, strict)[1] == reason


def test_conversations_and_documents_skip_rules_that_do_not_apply(cfg):
    # a conversation's user turn may be short and point at a URL; a document has no output
    out, reason, _ = rules.check_record(conv("Hi", "Hello! How can I help you today?"), cfg)
    assert reason is None
    assert "too_short" not in out["meta"]["moderate"]["passed"]
    out, reason, _ = rules.check_record(rec("document", text=DOC + " See https://example.com for more."), cfg)
    assert reason is None
    assert out["meta"]["moderate"]["passed"] == [
        "control_characters",
        "too_short",
        "too_long",
        "repetitive",
        "wrong_language",
        "toxic",
        "pii",
    ]


@pytest.mark.parametrize(
    "output",
    [
        "Here are three tips for better sleep that most people can follow:\n"
        "- Go to bed at the same time\n- Avoid screens late\n- Keep the room cool",
        "Roses bloom in the morning light\nand the river sings of the sea\n"
        "while the long day fades into night\nand the stars keep company with me",
        "Here is a function that reverses a string in Python using slicing:\n"
        "```python\ndef reverse(s):\n    return s[::-1]\n```",
        "The total distance that the train covers over the whole three hour journey is exactly 240",
    ],
    ids=["list", "verse", "closed-code-fence", "number"],
)
def test_finished_outputs_without_a_period_are_not_truncated(cfg, output):
    assert rules.check_record(rec(output=output), cfg)[1] is None


@pytest.mark.parametrize(
    "output",
    [
        "Here is a function that reverses a string in Python using slicing:\n```python\ndef reverse(s):\n    return",
        "To make the sauce you will need the following ingredients, all of which are easy to find:",
        "Dear Hiring Manager, I am excited to apply for the position, and with three years of experience in the",
    ],
    ids=["open-code-fence", "colon", "mid-sentence"],
)
def test_cut_off_outputs_are_truncated(strict, output):
    assert rules.check_record(rec(output=output), strict)[1] == "truncated_output"


def test_translation_task_is_not_wrong_language(cfg):
    record = rec(
        instruction="Translate the following sentence into French.",
        input="The weather is nice today and we are going to the beach.",
        output="Il fait beau aujourd'hui et nous allons à la plage.",
    )
    assert rules.check_record(record, cfg)[1] is None


# --- normalizations -------------------------------------------------------------------------------


@pytest.mark.parametrize("placeholder", ["<noinput>", "<No Input>", "N/A", "none."])
def test_noinput_placeholder_is_blanked_not_dropped(cfg, placeholder):
    record = rec(input=placeholder)
    out, reason, _ = rules.check_record(record, cfg)
    assert reason is None
    assert out["input"] == ""
    assert out["id"] == record["id"]  # the id names the record as pulled
    assert out["meta"]["moderate"]["normalized"] == ["noinput"]


PII = {
    "email": ("Reach me at maria.gonzalez1987@gmail.com for details.", "Reach me at <EMAIL> for details."),
    "phone": ("Call me at +1 (415) 872-3391 today.", "Call me at <PHONE> today."),
    "credit_card": ("The card 4532 0151 1283 0366 was charged.", "The card <CREDIT_CARD> was charged."),
    "ip_address": ("The server at 81.2.69.160 is down.", "The server at <IP_ADDRESS> is down."),
    "api_key": ("Set OPENAI_API_KEY=sk-proj-a1B2c3D4e5F6g7H8i9J0k1L2 first.", "Set OPENAI_API_KEY=<API_KEY> first."),
}


@pytest.mark.parametrize("entity", list(PII))
def test_pii_is_redacted(cfg, entity):
    text, redacted = PII[entity]
    out, reason, _ = rules.check_record(rec(output=text), cfg)
    assert reason is None
    assert out["output"] == redacted
    assert out["meta"]["moderate"]["redacted"] == {entity: 1}


@pytest.mark.parametrize("entity", list(PII))
def test_pii_drop_action_drops_with_entity_reason(entity):
    cfg = load_params(**{"moderate.pii.action": "drop"}).moderate
    _, reason, detail = rules.check_record(conv("Hello there, how are you?", PII[entity][0]), cfg)
    assert reason == f"pii_{entity}"
    assert detail == f"messages[1]: 1 {entity} span(s)"  # where, not what: the PII stays out of the detail
    assert f"pii_{entity}" in mod.reason_codes(cfg)


@pytest.mark.parametrize(
    "text",
    [
        "Start the server and open http://127.0.0.1:8000 in your browser.",
        "Bind to 0.0.0.0 to listen on every interface.",
        'Replace YOUR_API_KEY_HERE with your key, e.g. api_key = "YOUR_API_KEY_HERE".',
        "The file's sha256 is listed in meta.file_sha256 of each record.",
    ],
    ids=["loopback", "unspecified", "placeholder-key", "no-secret"],
)
def test_not_pii(cfg, text):
    out, reason, _ = rules.check_record(rec(output=text), cfg)
    assert reason is None
    assert out["meta"]["moderate"]["redacted"] == {}


def test_pii_entities_follow_params(cfg):
    cfg = load_params(**{"moderate.pii.entities": ["email"]}).moderate
    out, _, _ = rules.check_record(rec(output=PII["email"][0] + " " + PII["phone"][0]), cfg)
    assert out["output"] == PII["email"][1] + " " + PII["phone"][0]


# --- no network -----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every way out (connect, DNS) raises and is recorded.

    tldextract's default extractor (what presidio's stock email recognizer calls) keeps the public-suffix
    list it fetched, or its fallback, in ~/.cache; it is swapped for a cold one here, so that code reaching
    for it is caught on every machine, not only on one that never ran it.
    """
    import tldextract

    attempts: list[str] = []
    monkeypatch.setattr(tldextract.tldextract, "TLD_EXTRACTOR", tldextract.TLDExtract(cache_dir=str(tmp_path)))

    def blocked(name):
        def fail(*args, **kwargs):
            attempts.append(f"{name}{args[1:2] if name == 'connect' else args[:1]}")
            raise OSError(f"network blocked in tests ({name})")

        return fail

    monkeypatch.setattr(socket.socket, "connect", blocked("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", blocked("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", blocked("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", blocked("create_connection"))
    return attempts


def test_pii_language_and_toxicity_never_reach_for_the_network(cfg, no_network, caplog):
    # load the detectors under the block: presidio's stock email recognizer would fetch the public-suffix list
    pii._recognizers.cache_clear()
    rules.signals._language_identifier.cache_clear()
    caplog.set_level(logging.WARNING)
    record = rec(
        input="Contact maria.gonzalez1987@gmail.com or d.okafor@posteo.de, phone +44 20 7183 8750.",
        output=PII["ip_address"][0] + " " + PII["api_key"][0] + " " + PII["credit_card"][0],
    )
    out, reason, _ = rules.check_record(record, cfg)
    assert reason is None
    assert out["meta"]["moderate"]["redacted"] == {
        "api_key": 1,
        "credit_card": 1,
        "email": 2,
        "ip_address": 1,
        "phone": 1,
    }
    out, _, _ = rules.check_record(CASES["wrong_language"], cfg)
    assert "wrong_language" in out["meta"]["moderate"]["flags"]
    assert no_network == []
    assert [r.getMessage() for r in caplog.records] == []


# --- the stage ------------------------------------------------------------------------------------

MATH = [
    (f"What is {a} times {b}?", f"{a} times {b} equals {a * b}.")
    for a, b in zip(range(3, 17), range(7, 21), strict=True)
]
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Ghana", "Accra"),
    ("Cuba", "Havana"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
]
GEO = [(f"What is the capital city of {c}?", f"The capital city of {c} is {k}.") for c, k in CAPITALS]


def stage_records() -> list[Record]:
    """29 labeled records (14 math, 14 geography, 1 geography question labeled math) + 6 defective ones."""
    records = [rec(instruction=q, output=a, label="math", row=i + 1) for i, (q, a) in enumerate(MATH)]
    records += [rec(instruction=q, output=a, label="geography", row=20 + i) for i, (q, a) in enumerate(GEO)]
    records.append(
        rec(instruction="What is the capital city of Brazil?", output="It is Brasilia.", label="math", row=40)
    )
    records += [
        rec(output="N/A", label="math", row=41),
        rec(output="As an AI language model, I cannot see the sky.", label="math", row=42),
        rec(input="<noinput>", output=ANSWER + " Ask me at maria.gonzalez1987@gmail.com.", label="geography", row=43),
        rec("document", source="docs", text=DOC, row=1),
        rec("document", source="docs", text="Tiny.", row=2),
        conv("Hi", "Hello! How can I help you today?"),
    ]
    return records


def run_stage(tmp: Path, pulled: Path, cache: Path, **overrides: Any) -> dict[str, Any]:
    # a small corpus: k-NN checks over 10 neighbours (params.yaml's label_k 20 needs min_records > 20)
    params = load_params(**{"moderate.cleanlab.min_records": 11, "moderate.cleanlab.label_k": 10, **overrides})
    outputs = {"out": tmp / "moderated.parquet", "rejects": tmp / "rejected" / "moderate.parquet"}
    return mod.run(params, inputs={"in": pulled}, outputs=outputs, cache=cache)


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> dict[str, Any]:
    """The stage run twice on the same input (the second time from a warm embedding cache)."""
    tmp = tmp_path_factory.mktemp("moderate")
    pulled = tmp / "pulled"
    pulled.mkdir()
    records = stage_records()
    write_records(pulled / "demo.parquet", [r for r in records if r["source"] == "demo"])
    write_records(pulled / "docs.parquet", [r for r in records if r["source"] == "docs"])
    runs = []
    for i in (1, 2):
        out = tmp / f"run{i}"
        metrics = run_stage(out, pulled, tmp / "cache")
        runs.append({"dir": out, "metrics": metrics})
    return {"runs": runs, "records": records}


def test_stage_metrics_invariant_and_counts(stage):
    m = stage["runs"][0]["metrics"]
    dropped = {k: v for k, v in m.items() if k.startswith("dropped_")}
    assert m["total"] == len(stage["records"]) == m["kept"] + sum(dropped.values())
    assert dropped == {f"dropped_{c}": 0 for c in mod.reason_codes(load_params().moderate)} | {
        "dropped_empty_output": 1,
        "dropped_canned_response": 1,
        "dropped_too_short": 1,
    }
    assert m["normalized_noinput"] == 1
    assert m["redacted_pii_email"] == 1


def test_stage_outputs(stage):
    out_dir = stage["runs"][0]["dir"]
    kept = read_records(out_dir / "moderated.parquet")
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)
    rejects = read_records(out_dir / "rejected" / "moderate.parquet", REJECT_SCHEMA)
    assert sorted((r["stage"], r["reason"]) for r in rejects) == [
        ("moderate", "canned_response"),
        ("moderate", "empty_output"),
        ("moderate", "too_short"),
    ]
    noinput = next(r for r in kept if r["meta"]["row"] == 43)
    assert noinput["input"] == ""
    assert "<EMAIL>" in noinput["output"]


def test_stage_cleanlab_scores_in_meta(stage):
    kept = read_records(stage["runs"][0]["dir"] / "moderated.parquet")
    demo = [r["meta"]["moderate"]["cleanlab"] for r in kept if r["source"] == "demo" and r["kind"] == "instruction"]
    assert len(demo) == 30
    keys = {"outlier_score", "is_outlier", "near_duplicate_score", "is_near_duplicate"}
    keys |= {"label_score", "is_label_issue", "predicted_label"}
    for scores in demo:
        assert set(scores) == keys | ({"near_duplicate_of"} if scores["is_near_duplicate"] else set())
        for key in ("outlier_score", "near_duplicate_score", "label_score"):
            assert scores[key] == round(scores[key], 6)
    mislabeled = next(r for r in kept if r["meta"]["row"] == 40)["meta"]["moderate"]["cleanlab"]
    assert mislabeled["is_label_issue"] and mislabeled["predicted_label"] == "geography"
    docs = [r["meta"]["moderate"]["cleanlab"] for r in kept if r["source"] == "docs"]
    assert docs == [{"skipped": "source has 1 records (< cleanlab.min_records 11)"}]
    m = stage["runs"][0]["metrics"]
    assert m["flagged_cleanlab_label_issue"] >= 1
    scored = [r["meta"]["moderate"]["cleanlab"] for r in kept if r["source"] == "demo"]  # the conversation too
    assert m["flagged_cleanlab_near_duplicate"] == sum(s["is_near_duplicate"] for s in scored)
    assert m["flagged_cleanlab_outlier"] == sum(s["is_outlier"] for s in scored)


def test_stage_is_deterministic(stage):
    a, b = (run["dir"] for run in stage["runs"])
    for name in ("moderated.parquet", "rejected/moderate.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # the second run reads every embedding from the cache; the metrics must not tell the difference
    ma, mb = (run["metrics"] for run in stage["runs"])
    assert ma == mb


def test_same_bytes_for_any_worker_count(stage, tmp_path, monkeypatch):
    """The rules in batches of 4 across 1 and 2 processes: the bytes and metrics of the stage's run."""
    monkeypatch.setattr(mod, "RULES_BATCH_RECORDS", 4)  # 35 records: 9 batches
    first = stage["runs"][0]
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        m = run_stage(out, first["dir"].parent / "pulled", first["dir"].parent / "cache", **{"common.workers": workers})
        assert m == first["metrics"]
        for name in ("moderated.parquet", "rejected/moderate.parquet"):
            assert (out / name).read_bytes() == (first["dir"] / name).read_bytes(), (workers, name)


def test_cleanlab_drop_is_a_params_choice(stage, tmp_path):
    pulled = stage["runs"][0]["dir"].parent / "pulled"
    m = run_stage(
        tmp_path,
        pulled,
        stage["runs"][0]["dir"].parent / "cache",
        **{"moderate.cleanlab.enable_drop_label_issues": True},
    )
    assert m["dropped_cleanlab_label_issue"] == m["flagged_cleanlab_label_issue"] >= 1
    rejects = read_records(tmp_path / "rejected" / "moderate.parquet", REJECT_SCHEMA)
    assert 40 in [r["meta"]["row"] for r in rejects if r["reason"] == "cleanlab_label_issue"]


def test_cleanlab_near_duplicates_flagged(tmp_path):
    # 14 different tasks, and one of them again with another wording of the same question and answer
    records = [rec(instruction=q, output=a, row=i) for i, (q, a) in enumerate(MATH[:7] + GEO[:7])]
    records.append(
        rec(instruction="What is the capital city of France ?", output="The capital of France is Paris.", row=99)
    )
    for r in records:
        r["meta"]["moderate"] = {"cleanlab": {}}
    # MiniLM and its threshold: the rewording is a pair MiniLM tells apart from the other tasks
    cfg = load_params(
        **{
            "moderate.cleanlab.min_records": 15,
            "moderate.cleanlab.label_k": 10,
            "common.embedding.kind": "transformer",
            "moderate.cleanlab.near_duplicate_threshold": 0.13,
        }
    )
    counts = mod.cleanlab_scores(
        records, cfg.moderate.cleanlab, seed=cfg.common.seed, embedding=cfg.common.embedding, cache_dir=tmp_path
    )
    flagged = {
        r["meta"]["row"]: r["meta"]["moderate"]["cleanlab"]
        for r in records
        if r["meta"]["moderate"]["cleanlab"]["is_near_duplicate"]
    }
    assert sorted(flagged) == [7, 99]  # GEO[0] (row 7) and its rewording
    assert flagged[99]["near_duplicate_of"] == [records[7]["id"]]
    assert flagged[7]["near_duplicate_of"] == [records[-1]["id"]]
    assert counts["flagged_cleanlab_near_duplicate"] == 2
    assert counts["flagged_cleanlab_outlier"] == sum(r["meta"]["moderate"]["cleanlab"]["is_outlier"] for r in records)


def test_cleanlab_label_check_needs_labels_told_apart(stage, tmp_path):
    pulled = stage["runs"][0]["dir"].parent / "pulled"
    m = run_stage(
        tmp_path, pulled, stage["runs"][0]["dir"].parent / "cache", **{"moderate.cleanlab.min_label_vote_accuracy": 1.0}
    )
    assert m["flagged_cleanlab_label_issue"] == 0
    kept = read_records(tmp_path / "moderated.parquet")
    skipped = next(r for r in kept if r["meta"]["row"] == 40)["meta"]["moderate"]["cleanlab"]["skipped"]
    assert "min_label_vote_accuracy 1.0" in skipped and "is_label_issue" not in skipped


def test_cleanlab_params_are_checked():
    with pytest.raises(StageError, match=r"min_records \(5\) must exceed every k \(largest: 20\)"):
        load_params(**{"moderate.cleanlab.min_records": 5})


def test_unreadable_input_is_one_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "stages.curate.moderate", "--params", "params.yaml", "--in", str(tmp_path / "missing")]
    cmd += ["--out", str(tmp_path / "o.parquet"), "--rejects", str(tmp_path / "r.parquet")]
    cmd += ["--metrics", str(tmp_path / "m.json"), "--cache", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "no .parquet record files" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.parquet").exists()
