"""template: Alpaca prompts and chat-template spans as prompt/response segments, documents, drops, params errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from stages.core import params as _params
from stages.core import records as _records
from stages.core.io import StageError
from stages.variant import lm as variant_lm
from stages.variant import template
from tests.stages._tiny import base_tokenizer, chat_tokenizer, write_params


def load_params(path: Path, variant: str) -> Any:
    """``template.<variant>`` as the stage loads it (the whole section validated)."""
    return _params.get(_params.load(path, template.STAGE.keys(variant)), f"template.{variant}")


ROOT = Path(__file__).resolve().parents[2]

ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
# The template section proposed for params.yaml (the Alpaca strings are Stanford Alpaca's).
PARAMS = {
    "template": {
        "base": {
            "format": "alpaca",
            "prompts": {
                "with_input": ALPACA_INPUT,
                "without_input": ALPACA_NO_INPUT,
                "next_turn": "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
            },
            "documents_as": "text",
        },
        "chat": {
            "format": "chat_template",
            "prompts": {"system": ""},
            "documents_as": "skip",
            "document_prompt": "Tell me what the steep documentation says.",
        },
    }
}
META = {"source_file": "x.jsonl", "row": 1, "source_index": 0}


def records() -> list[_records.Record]:
    """One of each kind: instruction without / with input, qa, a multi-turn conversation with a system turn, a
    conversation with no assistant turn, a document."""
    r = _records.make_record
    return [
        r(source="s", kind="instruction", meta=META, instruction="Name the capital of France.", output="Paris."),
        r(source="s", kind="instruction", meta=META, instruction="Translate.", input="Bonjour", output="Hello."),
        r(source="s", kind="qa", meta=META, instruction="What is 2+2?", output="4"),
        r(
            source="s",
            kind="conversation",
            meta=META,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Capital of Germany?"},
                {"role": "assistant", "content": "Berlin."},
                {"role": "user", "content": "Thanks"},  # after the last assistant turn: left out
            ],
        ),
        r(source="s", kind="conversation", meta=META, messages=[{"role": "user", "content": "Anyone there?"}]),
        r(source="s", kind="document", meta=META, text="Steep curates data.\n\nIt fine-tunes small models."),
    ]


def by_content(rows: list[dict[str, Any]], recs: list[_records.Record]) -> dict[str, list[dict[str, Any]]]:
    """Segments keyed by a short name of each record."""
    names = ["no_input", "input", "qa", "conversation", "no_assistant", "document"]
    ids = {rec["id"]: name for rec, name in zip(recs, names, strict=True)}
    return {ids[row["id"]]: row["segments"] for row in rows}


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml", **PARAMS)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tok")
    chat_tokenizer(base / "chat")
    base_tokenizer(base / "base")
    return {"chat": base / "chat", "base": base / "base"}


def render(
    tmp_path: Path, params: Any, model: Path, recs: list[_records.Record] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    recs = records() if recs is None else recs
    src, out = tmp_path / "curated.parquet", tmp_path / "templated.parquet"
    _records.write_records(src, recs)
    metrics = template.run(
        _params.of({"template.v": params}), variant="v", inputs={"in": src, "model": model}, outputs={"out": out}
    )
    return variant_lm.read_templated(out), metrics


# --- alpaca ---------------------------------------------------------------------------------------------------------


def test_alpaca_segments(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    params = load_params(params_file, "base")
    rows, metrics = render(tmp_path, params, tokenizers["base"])
    seg = by_content(rows, records())
    prompt = ALPACA_NO_INPUT.format(instruction="Name the capital of France.")
    assert seg["no_input"] == [{"text": prompt, "train": False}, {"text": "Paris.", "train": True}]
    prompt = ALPACA_INPUT.format(instruction="Translate.", input="Bonjour")
    assert seg["input"] == [{"text": prompt, "train": False}, {"text": "Hello.", "train": True}]
    assert seg["qa"][1] == {"text": "4", "train": True}
    # Multi-turn: the system turn goes before the first instruction; both assistant turns are responses.
    assert seg["conversation"] == [
        {"text": ALPACA_NO_INPUT.format(instruction="Be brief.\n\nHi"), "train": False},
        {"text": "Hello!", "train": True},
        {"text": "\n\n### Instruction:\nCapital of Germany?\n\n### Response:\n", "train": False},
        {"text": "Berlin.", "train": True},
    ]
    assert seg["document"] == [{"text": "Steep curates data.\n\nIt fine-tunes small models.", "train": True}]
    assert metrics == {
        "total": 6,
        "kept": 5,
        "dropped_no_assistant_turn": 1,
        "kept_instruction": 2,
        "kept_qa": 1,
        "kept_conversation": 1,
        "kept_document": 1,
        "kept_restatement": 0,
        "kept_doc_qa": 0,
    }


def test_alpaca_documents_skipped(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    params = load_params(params_file, "base").model_copy(update={"documents_as": "skip"})
    rows, metrics = render(tmp_path, params, tokenizers["base"])
    assert metrics["dropped_document_skipped"] == 1 and metrics["kept_document"] == 0 and len(rows) == 4


# --- chat template ----------------------------------------------------------------------------------------------------


def test_chat_segments_are_the_assistant_spans(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    params = load_params(params_file, "chat")
    rows, metrics = render(tmp_path, params, tokenizers["chat"])
    seg = by_content(rows, records())
    assert seg["no_input"] == [
        {"text": "<|im_start|>user\nName the capital of France.<|im_end|>\n<|im_start|>assistant\n", "train": False},
        {"text": "Paris.<|im_end|>\n", "train": True},
    ]
    assert seg["input"][0]["text"] == "<|im_start|>user\nTranslate.\n\nBonjour<|im_end|>\n<|im_start|>assistant\n"
    assert seg["conversation"] == [
        {"text": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"}
        | {"train": False},
        {"text": "Hello!<|im_end|>\n", "train": True},
        {"text": "<|im_start|>user\nCapital of Germany?<|im_end|>\n<|im_start|>assistant\n", "train": False},
        {"text": "Berlin.<|im_end|>\n", "train": True},
    ]
    # The segments are exactly the template's rendering of the conversation (up to the last assistant turn).
    tok = variant_lm.load_tokenizer(tokenizers["chat"])
    conv = records()[3]["messages"][:5]
    assert "".join(s["text"] for s in seg["conversation"]) == tok.apply_chat_template(conv, tokenize=False)
    assert metrics["dropped_document_skipped"] == 1 and metrics["dropped_no_assistant_turn"] == 1
    assert metrics["kept"] == 4


def test_chat_system_prompt_and_documents(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    params = load_params(params_file, "chat")
    prompts = params.prompts.model_copy(update={"system": "You are steep."})
    params = params.model_copy(update={"prompts": prompts, "documents_as": "user_assistant"})
    rows, metrics = render(tmp_path, params, tokenizers["chat"])
    seg = by_content(rows, records())
    assert seg["document"] == [
        {
            "text": "<|im_start|>system\nYou are steep.<|im_end|>\n<|im_start|>user\n"
            "Tell me what the steep documentation says.<|im_end|>\n<|im_start|>assistant\n",
            "train": False,
        },
        {"text": "Steep curates data.\n\nIt fine-tunes small models.<|im_end|>\n", "train": True},
    ]
    # A record's own system turn wins over prompts.system.
    assert seg["conversation"][0]["text"].startswith("<|im_start|>system\nBe brief.")
    assert metrics["kept_document"] == 1 and "dropped_document_skipped" not in metrics


def test_chat_documents_as_text_are_plain_text(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    """Knowledge infusion for a chat model: the document alone, outside the template, all of it trained."""
    params = load_params(params_file, "chat")
    prompts = params.prompts.model_copy(update={"system": "You are steep."})
    params = params.model_copy(update={"prompts": prompts, "documents_as": "text"})
    rows, metrics = render(tmp_path, params, tokenizers["chat"])
    seg = by_content(rows, records())
    assert seg["document"] == [{"text": "Steep curates data.\n\nIt fine-tunes small models.", "train": True}]
    # The other records still go through the chat template, with the system turn.
    assert seg["no_input"][0]["text"].startswith("<|im_start|>system\nYou are steep.<|im_end|>")
    assert metrics["kept_document"] == 1 and "dropped_document_skipped" not in metrics


def test_template_that_rewrites_earlier_turns_stops_the_stage(
    tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]
) -> None:
    """Like Qwen3's: earlier assistant turns render differently once a later turn exists."""
    model = tmp_path / "model"
    tok = chat_tokenizer(model)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '[old]' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok.save_pretrained(model)
    params = load_params(params_file, "chat")
    with pytest.raises(StageError, match=r"(?s)record \w+: the chat template is not prefix-stable.*Fix:"):
        render(tmp_path, params, model)
    assert not (tmp_path / "templated.parquet").exists()


def test_chat_template_format_needs_a_chat_template(
    tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]
) -> None:
    params = load_params(params_file, "chat")
    with pytest.raises(StageError, match=r"has no chat template.*format: alpaca"):
        render(tmp_path, params, tokenizers["base"])
    with pytest.raises(StageError, match=r"no tokenizer_config.json; run `dvc repro models`"):
        render(tmp_path, params, tmp_path / "missing")


# --- params and inputs ----------------------------------------------------------------------------------------------


def test_params_errors_list_every_problem(tmp_path: Path) -> None:
    raw = copy.deepcopy(PARAMS)
    raw["template"]["base"]["prompts"]["with_input"] = "### Instruction:\n{instruction}\n### Response:\n"
    raw["template"]["base"]["documents_as"] = "user_assistant"
    raw["template"]["base"]["colour"] = "blue"
    path = write_params(tmp_path / "params.yaml", **raw)
    with pytest.raises(StageError) as err:
        load_params(path, "base")
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "template.base.prompts.with_input: expected the placeholders {input}, {instruction}" in msg
    assert "template.base.documents_as: Input should be 'text' or 'skip'" in msg
    assert "template.base.colour: unknown key" in msg
    raw = copy.deepcopy(PARAMS)
    raw["template"]["chat"]["format"] = "jinja"
    write_params(path, **raw)
    with pytest.raises(StageError) as err:
        load_params(path, "chat")
    msg = str(err.value)
    assert "1 problem(s)" in msg
    assert "template.chat.format: expected one of ['alpaca', 'chat_template'], got 'jinja'" in msg
    # The whole file is validated before the variant is looked up: an undeclared one needs a valid file to show.
    write_params(path, **PARAMS)
    with pytest.raises(StageError, match=r"no 'large' in template \(declared: \['base', 'chat'\]\)"):
        load_params(path, "large")


def test_unreadable_input_is_a_clear_error(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    bad = tmp_path / "curated.parquet"
    bad.write_text("not parquet")
    params = load_params(params_file, "base")
    with pytest.raises(StageError, match=r"curated.parquet: cannot read records"):
        template.run(
            _params.of({"template.v": params}),
            variant="v",
            inputs={"in": bad, "model": tokenizers["base"]},
            outputs={"out": tmp_path / "o.parquet"},
        )
    with pytest.raises(StageError, match=r"not a templated file, missing columns \['segments'\]"):
        _records.write_records(bad, records())
        variant_lm.read_templated(bad)


def test_command_line_is_deterministic(tmp_path: Path, params_file: Path, tokenizers: dict[str, Path]) -> None:
    src = tmp_path / "curated.parquet"
    _records.write_records(src, records())
    outs = []
    for run in ("a", "b"):
        out, metrics = tmp_path / run / "chat.parquet", tmp_path / run / "template_chat.json"
        cmd = [sys.executable, "-m", "stages.variant.template", "--params", str(params_file), "--variant", "chat"]
        cmd += ["--in", str(src), "--model", str(tokenizers["chat"]), "--out", str(out), "--metrics", str(metrics)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "template.chat params:" in done.stderr
        outs.append((out.read_bytes(), metrics.read_bytes()))
    assert outs[0] == outs[1]
    assert json.loads(outs[0][1])["kept"] == 4
    assert pq.read_table(tmp_path / "a" / "chat.parquet").column("id").to_pylist() == sorted(
        r["id"] for r in rows_of(src)
    )
    bad = subprocess.run([*cmd[:6], "large", *cmd[7:]], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "error: " in bad.stderr and "Traceback" not in bad.stderr


def rows_of(path: Path) -> list[_records.Record]:
    """The kept records of `path` under the chat params (documents skipped, no-assistant conversations dropped)."""
    return [r for r in _records.read_records(path) if r["kind"] != "document" and len(r["messages"]) != 1]
