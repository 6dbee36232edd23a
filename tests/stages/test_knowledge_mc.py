"""The knowledge facts and what is built from them: the facts file, the familiarity of the wrong options, the probe
files, pull's ``fact`` format (restatement and doc_qa records), their templates, the tokenize mixture and split by
kind, train's ``select``, and the knowledge_mc type's ``p_right`` on a tiny model.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.core import facts as _facts
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.pull import Source, Web
from stages.core.params.tokenize import TokenizeParams
from stages.core.params.train import TrainSpec
from stages.core.records import make_record
from stages.curate.pull import pull_source
from stages.variant import template
from stages.variant import tokenize as _tokenize
from tests.stages._tiny import chat_tokenizer

ROOT = Path(__file__).resolve().parents[2]
FACTS = ROOT / "data" / "sources" / "knowledge" / "facts.jsonl"
DOCS = ROOT / "data" / "sources" / "docs"
HELDOUT = ROOT / "data" / "sources" / "heldout"
# Every option of a document-only question occurs in the training data (documents, restatements, qa_seen pairs)
# within this factor of its right answer's count: no option can be ruled out by never having been seen.
FAMILIARITY_FACTOR = 5.0


@pytest.fixture(scope="module")
def facts() -> list[dict[str, Any]]:
    return [f for _, f in _facts.read_facts(FACTS)]


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md"))}


# --- the facts file ----------------------------------------------------------------------------------------------


def test_splits_sizes_and_every_steep_knowledge_fact_is_document_only(facts: list[dict[str, Any]]) -> None:
    splits = Counter(f["split"] for f in facts)
    assert splits["document_only"] >= 60 and splits["qa_seen"] >= 60
    assert all(len(f["statements"]) == 2 for f in facts)
    document_only = {(f["question"], f["answer"]) for f in facts if f["split"] == "document_only"}
    old = [json.loads(line) for line in (HELDOUT / "steep_knowledge.jsonl").read_text().splitlines() if line]
    assert len(old) == 30 and all((q["question"], q["answer"]) in document_only for q in old)


def test_each_answer_is_stated_in_its_document_and_its_restatements(
    facts: list[dict[str, Any]], documents: dict[str, str]
) -> None:
    for f in facts:
        assert _facts.occurrences(f["answer"], [documents[f["document"]]]) >= 1, (f["id"], f["answer"])
        for s in f["statements"]:
            assert _facts.occurrences(f["answer"], [s]) >= 1, (f["id"], s)


def test_wrong_options_are_other_facts_answers_of_the_same_type(facts: list[dict[str, Any]]) -> None:
    answers: dict[str, set[str]] = {}
    for f in facts:
        answers.setdefault(f["type"], set()).add(f["answer"])
    for f in facts:
        assert f["answer"] not in f["wrong"] and len(set(f["wrong"])) == 3
        assert set(f["wrong"]) <= answers[f["type"]], f["id"]


def test_familiarity_every_option_as_familiar_as_the_answer(
    facts: list[dict[str, Any]], documents: dict[str, str]
) -> None:
    counts = _facts.familiarity(facts, documents.values())
    document_only = [f for f in facts if f["split"] == "document_only"]
    ratios = {f["id"]: _facts.familiar_ratio(counts[f["id"]]) for f in document_only}
    bad = {i: counts[i] for i, r in ratios.items() if r > FAMILIARITY_FACTOR}
    assert not bad, f"options much rarer or commoner in training than the answer: {bad}"
    all_seen = sum(all(c > 0 for c in counts[f["id"]].values()) for f in document_only)
    assert all_seen == len(document_only)  # README's table: items whose wrong options all occur in training


def test_familiarity_catches_an_unseen_option() -> None:
    fact = {"id": "x", "answer": "0.7", "wrong": ["0.5", "0.9", "purple"], "statements": ["It is 0.7."]}
    fact |= {"split": "document_only", "question": "q"}
    counts = _facts.familiarity([fact], ["0.7 and 0.5 and 0.9, and 0.75 and 10.7"])
    assert counts["x"] == {"0.7": 2, "0.5": 1, "0.9": 1, "purple": 0}
    assert _facts.familiar_ratio(counts["x"]) == math.inf


def test_no_trained_question_nears_a_held_out_one(facts: list[dict[str, Any]]) -> None:
    """A qa_seen question trains; one that copies a document-only question but for a word would be dropped by dedup's
    reference check (MinHash Jaccard 0.7 on 3-word shingles), losing the pair. Questions of one form about sibling
    facts ("which pull format reads ...") stay: they teach the form, as QA on some facts is meant to."""

    def shingles(text: str) -> set[tuple[str, ...]]:
        words = _facts.normalize(text).replace("?", "").split()
        return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}

    held = [(f["id"], shingles(f["question"])) for f in facts if f["split"] == "document_only"]
    for f in (f for f in facts if f["split"] == "qa_seen"):
        s = shingles(f["question"])
        near = [(i, round(len(s & h) / len(s | h), 2)) for i, h in held if len(s & h) / len(s | h) >= 0.7]
        assert not near, (f["id"], near)


def test_probe_files_are_built_from_the_facts(facts: list[dict[str, Any]]) -> None:
    for split, name in (("document_only", "knowledge_mc.jsonl"), ("qa_seen", "knowledge_mc_seen.jsonl")):
        items = [json.loads(line) for line in (HELDOUT / name).read_text().splitlines() if line]
        ordered = sorted(facts, key=_facts.item_order)
        assert items == [_facts.probe_item(f) for f in ordered if f["split"] == split], (
            f"{name} is stale: run .venv/bin/python data/sources/build/build_knowledge.py"
        )
    positions = Counter(_facts.choices(f)[1] for f in facts)
    assert len(positions) == 4 and min(positions.values()) >= len(facts) // 8  # the right answer is not always first


def test_params_hold_document_only_questions_out_and_probe_both_halves() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    refs = {r["path"]: r["fields"] for r in raw["dedup"]["references"]}
    assert refs["data/sources/heldout/knowledge_mc.jsonl"] == ["question"]
    assert "data/sources/heldout/knowledge_mc_seen.jsonl" not in refs  # training data by design
    tasks = {t["name"]: t for t in raw["probe"]["tasks"]}
    assert tasks["knowledge_mc"]["type"] == tasks["knowledge_mc_seen"]["type"] == "knowledge_mc"
    assert {"format": "fact", "location": "data/sources/knowledge/facts.jsonl"}.items() <= next(
        s for s in raw["pull"]["sources"] if s["format"] == "fact"
    ).items()


# --- pull ----------------------------------------------------------------------------------------------------------


def _fact(i: str, split: str, **over: Any) -> dict[str, Any]:
    return {
        "id": i, "document": "01-overview.md", "fact": "steep keeps settings in params.yaml.",
        "question": f"Which file holds steep's settings ({i})?", "answer": "params.yaml", "type": "file_name",
        "wrong": ["dvc.yaml", "pyproject.toml", "answer_key.json"],
        "statements": [f"steep reads params.yaml ({i}).", f"The settings file is params.yaml ({i})."], "split": split,
    } | over  # fmt: skip


def _pull(path: Path) -> list[dict[str, Any]]:
    source = Source(name="facts", format="fact", location=str(path))
    return list(pull_source(source, 3, Web(timeout_s=1, max_bytes=1, user_agent="t")))


def test_pull_fact_gives_restatements_and_doc_qa_for_qa_seen_only(tmp_path: Path) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(json.dumps(_fact(i, s)) for i, s in (("a", "qa_seen"), ("b", "document_only"))) + "\n")
    records = _pull(path)
    assert [(r["kind"], r["meta"]["fact"], r["meta"]["row"]) for r in records] == [
        ("restatement", "a", 1), ("restatement", "a", 1), ("doc_qa", "a", 1),
        ("restatement", "b", 2), ("restatement", "b", 2),
    ]  # fmt: skip
    qa = records[2]
    assert qa["instruction"] == "Which file holds steep's settings (a)?" and qa["output"] == "params.yaml"
    assert records[0]["text"] == "steep reads params.yaml (a)." and records[0]["meta"]["statement"] == 1
    assert {"split": "document_only", "document": "01-overview.md", "source_index": 3}.items() <= records[3][
        "meta"
    ].items()


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (_fact("a", "seen"), r"line 1: not a valid fact .*'split' must be one of"),
        (_fact("a", "qa_seen", wrong=["dvc.yaml"]), r"'wrong' must be a list of 3"),
        (_fact("a", "qa_seen", wrong=["params.yaml", "x", "y"]), r"none of them the answer"),
        ({k: v for k, v in _fact("a", "qa_seen").items() if k != "question"}, r"missing field 'question'"),
    ],
)
def test_pull_refuses_a_bad_fact_naming_file_and_line(tmp_path: Path, line: dict[str, Any], match: str) -> None:
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(StageError, match=match):
        _pull(path)


def test_the_demo_facts_file_pulls(facts: list[dict[str, Any]]) -> None:
    kinds = Counter(r["kind"] for r in _pull(FACTS))
    qa_seen = sum(f["split"] == "qa_seen" for f in facts)
    assert kinds == {"restatement": 2 * len(facts), "doc_qa": qa_seen}


# --- template, tokenize, train -----------------------------------------------------------------------------------


def _spec(variant: str) -> Any:
    return _params.get(_params.load(ROOT / "params.yaml", template.STAGE.keys(variant)), f"template.{variant}")


RESTATEMENT = make_record(source="f", kind="restatement", meta={}, text="steep's seed is 1234.")
DOC_QA = make_record(source="f", kind="doc_qa", meta={}, instruction="What is steep's seed?", output="1234")


def test_template_restatement_is_plain_text_and_doc_qa_a_prompted_answer(tmp_path: Path) -> None:
    base = _spec("base")
    assert template.render_alpaca(RESTATEMENT, base) == [{"text": "steep's seed is 1234.", "train": True}]
    prompt = base.prompts.without_input.format(instruction="What is steep's seed?")
    assert template.render_alpaca(DOC_QA, base) == [{"text": prompt, "train": False}, {"text": "1234", "train": True}]
    chat = _spec("chat")
    assert chat.documents_as == "skip"  # documents are skipped by the chat variant; restatements are not
    tok = chat_tokenizer(tmp_path / "tok")
    assert template.render_chat(RESTATEMENT, chat, tok) == [{"text": "steep's seed is 1234.", "train": True}]
    segments = template.render_chat(DOC_QA, chat, tok)
    assert (
        segments[-1]["train"]
        and segments[-1]["text"].startswith("1234")
        and "What is steep's seed?" in (segments[0]["text"])
    )


def test_tokenize_params_take_the_new_kinds_a_zero_factor_and_validation_kinds() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["tokenize"]["chat"]
    spec = TokenizeParams.model_validate(
        raw | {"validation_kinds": ["doc_qa"], "mixture": {"sources": {}, "kinds": {"restatement": 0, "doc_qa": 3}}}
    )
    assert spec.mixture.factor("steep_facts", "restatement") == 0 and spec.mixture.factor("x", "doc_qa") == 3
    assert _tokenize.copies_of("abc", 0.0, 1) == 0
    with pytest.raises(ValueError, match="validation_kinds"):
        TokenizeParams.model_validate(raw | {"validation_kinds": ["fact"]})


def test_train_select_last_refuses_early_stopping() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["chat"]
    assert TrainSpec.model_validate(raw).select == "last"
    with pytest.raises(ValueError, match="select: last does not use"):
        TrainSpec.model_validate(raw | {"early_stopping_patience": 2})
    assert TrainSpec.model_validate(raw | {"select": "eval_loss", "early_stopping_patience": 2}).select == "eval_loss"


# --- the knowledge_mc type on a tiny model -------------------------------------------------------------------------


def test_p_right_is_the_softmax_of_the_harness_loglikelihoods(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from lm_eval.api.instance import Instance
    from transformers import LlamaConfig, LlamaForCausalLM

    from stages.core.params.probe import ProbeTask
    from stages.core.params.template import ChatPrompts
    from stages.probe.engine import Engine
    from stages.probe.model import Rendering
    from stages.probe.settings import Settings
    from stages.probe.tasks import read_task

    tok = chat_tokenizer(tmp_path / "model")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "model")
    items = [_facts.probe_item(f) for f in [_fact("a", "qa_seen"), _fact("b", "document_only", answer="dvc.yaml",
             wrong=["params.yaml", "pyproject.toml", "answer_key.json"])]]  # fmt: skip
    (tmp_path / "k.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    fields = {"question": "question", "choices": "choices", "answer": "answer"}
    tasks = [
        read_task(ProbeTask(name=n, type=t, path=str(tmp_path / "k.jsonl"), fields=fields))
        for n, t in (("k", "knowledge_mc"), ("mc", "multiple_choice"))
    ]
    prompt = "Question: {question}\nAnswer:"
    settings = Settings(
        precision="fp32", quantization="none", compute_dtype="float32",
        template=Rendering("chat_template", ChatPrompts(system="")), batch_size=4, max_new_tokens=4,
        multiple_choice_prompt=prompt, bertscore_model="", showcase_prompts=(), tasks=(),
    )  # fmt: skip
    engine = Engine(settings, tmp_path / "model", device="cpu")
    rows = engine.choices(tasks)
    # multiple_choice keeps its scores; knowledge_mc adds p_right beside the same acc / acc_norm
    assert [sorted(r["scores"]) for r in rows["mc"]] == [["acc", "acc_norm"]] * 2
    assert [{k: r["scores"][k] for k in ("acc", "acc_norm")} for r in rows["k"]] == [r["scores"] for r in rows["mc"]]
    for item, row in zip(items, rows["k"], strict=True):
        requests = [
            Instance(
                request_type="loglikelihood",
                doc={},
                arguments=(prompt.format(question=item["question"]), f" {c}"),
                idx=i,
            )
            for i, c in enumerate(item["choices"])
        ]
        lls = np.array([ll for ll, _ in engine.lm.loglikelihood(requests, disable_tqdm=True)])
        p = np.exp(lls - lls.max()) / np.exp(lls - lls.max()).sum()
        assert row["scores"]["p_right"] == pytest.approx(p[item["answer"]], abs=1e-5)
        assert row["scores"]["acc"] == float(int(np.argmax(lls)) == item["answer"])
