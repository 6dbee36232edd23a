"""tokenize: labels cover exactly the response tokens, truncation, chunking, packing, padding, split, determinism."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages.core import params as _params
from stages.core import records as _records
from stages.core.io import StageError
from stages.core.params.template import FORMATS
from stages.variant import lm as variant_lm
from stages.variant import template, tokenize
from tests.stages._tiny import base_tokenizer, chat_tokenizer, write_params
from tests.stages.test_template import META, records
from tests.stages.test_template import PARAMS as TEMPLATE_PARAMS


def load_params(path: Path, variant: str) -> Any:
    """``tokenize.<variant>`` as the stage loads it (the whole section validated)."""
    return _params.get(_params.load(path, tokenize.STAGE.keys(variant)), f"tokenize.{variant}")


ROOT = Path(__file__).resolve().parents[2]
IGNORE = tokenize.IGNORE

# The tokenize section proposed for params.yaml.
PARAMS = {
    "tokenize": {
        "base": {
            "max_tokens": 1024,
            "truncation_side": "right",
            "use_completion_only_loss": True,
            "use_eos": True,
            "use_packing": False,
            "use_padding": False,
            "validation_ratio": 0.05,
            "validation_kinds": [],
            "mixture": {"sources": {}, "kinds": {}},
        },
        "chat": {
            "max_tokens": 1024,
            "truncation_side": "right",
            "use_completion_only_loss": True,
            "use_eos": False,
            "use_packing": False,
            "use_padding": False,
            "validation_ratio": 0.05,
            "validation_kinds": [],
            "mixture": {"sources": {}, "kinds": {}},
        },
    }
}
# What the loss is taken on, per record of test_template.records() (documents are skipped by the chat params).
RESPONSES = {
    "base": [["Paris.<eos>"], ["Hello.<eos>"], ["4<eos>"], ["Hello!", "Berlin.<eos>"], None],
    "chat": [["Paris.<|im_end|>\n"], ["Hello.<|im_end|>\n"], ["4<|im_end|>\n"]],
}
RESPONSES["chat"].append(["Hello!<|im_end|>\n", "Berlin.<|im_end|>\n"])
DOCUMENT = "Steep curates data.\n\nIt fine-tunes small models."


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tok")
    chat_tokenizer(base / "chat")
    base_tokenizer(base / "base")
    return {"chat": base / "chat", "base": base / "base"}


def params_for(variant: str, **changes: Any) -> tokenize.TokenizeParams:
    """The proposed section of `variant`, with `changes` (``mixture`` as a dict)."""
    return tokenize.TokenizeParams.model_validate({**PARAMS["tokenize"][variant], **changes})


def templated(
    tmp_path: Path, variant: str, model: Path, recs: list[_records.Record] | None = None, changes: Any = None
) -> Path:
    """Curated records rendered by the template stage with the proposed params (and `changes` to them)."""
    src, out = tmp_path / "curated.parquet", tmp_path / f"templated-{variant}.parquet"
    _records.write_records(src, records() if recs is None else recs)
    tparams = FORMATS[TEMPLATE_PARAMS["template"][variant]["format"]]
    tparams = tparams.model_validate({**TEMPLATE_PARAMS["template"][variant], **(changes or {})})
    template.run(
        _params.of({"template.v": tparams}), variant="v", inputs={"in": src, "model": model}, outputs={"out": out}
    )
    return out


def tokenized(
    tmp_path: Path,
    variant: str,
    model: Path,
    params: tokenize.TokenizeParams,
    recs: list[Any] | None = None,
    template_params: Any = None,
    seed: int = 0,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    from datasets import load_from_disk

    src = templated(tmp_path, variant, model, recs, template_params)
    out = tmp_path / f"tokenized-{variant}"
    metrics = tokenize.run(
        _params.of({"common.seed": seed, "tokenize.v": params}),
        variant="v",
        inputs={"in": src, "model": model},
        outputs={"out": out},
    )
    dd = load_from_disk(str(out))
    return {s: dd[s].to_list() for s in tokenize.SPLITS}, metrics


def trained_runs(row: dict[str, Any]) -> list[list[int]]:
    """The runs of consecutive label tokens (where the loss is taken), with their ids checked against input_ids."""
    runs: list[list[int]] = []
    prev = False
    for tok, label in zip(row["input_ids"], row["labels"], strict=True):
        on = label != IGNORE
        if on:
            assert label == tok
            if not prev:
                runs.append([])
            runs[-1].append(tok)
        prev = on
    return runs


def decode(tok: Any, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# --- masks ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "chat"])
def test_labels_cover_exactly_the_responses(tmp_path: Path, models: dict[str, Path], variant: str) -> None:
    tok = variant_lm.load_tokenizer(models[variant])
    rows, metrics = tokenized(tmp_path, variant, models[variant], params_for(variant, validation_ratio=0.0))
    assert rows["validation"] == []
    by_id = {r["ids"][0].split("/")[0]: r for r in rows["train"]}
    recs = records()
    texts = {row["id"]: row["segments"] for row in variant_lm.read_templated(tmp_path / f"templated-{variant}.parquet")}
    for rec, expected in zip(recs, RESPONSES[variant], strict=False):
        if expected is None:  # a conversation with no assistant turn: dropped by template
            continue
        row = by_id[rec["id"]]
        assert [decode(tok, run) for run in trained_runs(row)] == expected, rec["id"]
        # The tokens are the rendered text, plus <bos> in front and EOS at the end where the tokenizer has them.
        full = "".join(s["text"] for s in texts[rec["id"]])
        assert decode(tok, row["input_ids"]) == {"base": f"<bos>{full}<eos>", "chat": full}[variant]
        assert row["attention_mask"] == [1] * len(row["input_ids"])
        assert row["position_ids"] == list(range(len(row["input_ids"])))
    if variant == "base":
        # A document is trained whole; only <bos>, which nothing predicts, is masked.
        doc = by_id[recs[5]["id"]]
        assert doc["labels"][0] == IGNORE and decode(tok, doc["input_ids"][1:]) == DOCUMENT + "<eos>"
        assert trained_runs(doc) == [doc["input_ids"][1:]]
    n = {"base": 5, "chat": 4}[variant]
    assert metrics["total"] == metrics["kept"] == n and metrics["train_examples"] == n
    assert metrics["train_tokens"] == sum(len(r["input_ids"]) for r in rows["train"])
    assert metrics["train_trainable_tokens"] == sum(sum(x != IGNORE for x in r["labels"]) for r in rows["train"])
    longest = max(rows["train"], key=lambda r: len(r["input_ids"]))
    assert metrics["longest_tokens"] == len(longest["input_ids"]) and metrics["truncated"] == 0


def test_completion_only_loss_off_trains_every_token(tmp_path: Path, models: dict[str, Path]) -> None:
    params = params_for("chat", validation_ratio=0.0, use_completion_only_loss=False)
    rows, _ = tokenized(tmp_path, "chat", models["chat"], params)
    for row in rows["train"]:
        assert row["labels"] == [IGNORE, *row["input_ids"][1:]]


# --- too long -------------------------------------------------------------------------------------------------------


def test_truncation_sides(tmp_path: Path, models: dict[str, Path]) -> None:
    tok = variant_lm.load_tokenizer(models["chat"])
    recs = records()[:1]  # "Name the capital of France." -> "Paris."
    full, _ = tokenized(tmp_path, "chat", models["chat"], params_for("chat", validation_ratio=0.0), recs)
    ids = full["train"][0]["input_ids"]
    response = tok("Paris.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(response) :] == response and len(response) >= 3
    # Right: the prompt and the first response tokens are kept.
    n = len(ids) - 2
    rows, metrics = tokenized(
        tmp_path, "chat", models["chat"], params_for("chat", max_tokens=n, validation_ratio=0.0), recs
    )
    row = rows["train"][0]
    assert row["input_ids"] == ids[:n] and [decode(tok, r) for r in trained_runs(row)] == [decode(tok, response[:-2])]
    assert metrics["truncated"] == 1 and metrics["longest_tokens"] == len(ids)
    # Left: the end is kept, the first kept token is not trained (nothing before it predicts it).
    p = params_for("chat", max_tokens=len(response) + 1, truncation_side="left", validation_ratio=0.0)
    rows, metrics = tokenized(tmp_path, "chat", models["chat"], p, recs)
    row = rows["train"][0]
    assert row["input_ids"] == ids[-len(response) - 1 :] and row["labels"] == [IGNORE, *response]
    # A response cut off entirely leaves nothing to learn: the row is dropped under its reason.
    p = params_for("chat", max_tokens=len(ids) - len(response), validation_ratio=0.0)
    rows, metrics = tokenized(tmp_path, "chat", models["chat"], p, recs)
    assert rows["train"] == [] and metrics["dropped_no_trainable_tokens"] == 1
    assert metrics["total"] == 1 and metrics["kept"] == 0


def test_documents_are_chunked_not_truncated(tmp_path: Path, models: dict[str, Path]) -> None:
    tok = variant_lm.load_tokenizer(models["base"])
    doc = records()[5]
    full, _ = tokenized(tmp_path, "base", models["base"], params_for("base", validation_ratio=0.0), [doc])
    ids = full["train"][0]["input_ids"]  # <bos> text <eos>
    rows, metrics = tokenized(
        tmp_path, "base", models["base"], params_for("base", max_tokens=8, validation_ratio=0.0), [doc]
    )
    chunks = rows["train"]
    assert [r["ids"] for r in chunks] == [[f"{doc['id']}/{k}"] for k in range(len(chunks))]
    assert len(chunks) == -(-len(ids) // 8) and all(len(r["input_ids"]) <= 8 for r in chunks)
    assert [t for r in chunks for t in r["input_ids"]] == ids
    assert all(r["labels"] == [IGNORE, *r["input_ids"][1:]] for r in chunks)
    assert decode(tok, [t for r in chunks for t in r["input_ids"]]) == f"<bos>{DOCUMENT}<eos>"
    assert metrics["chunked"] == 1 and metrics["truncated"] == 0 and metrics["train_examples"] == len(chunks)


# --- packing and padding --------------------------------------------------------------------------------------------


def test_packing_keeps_examples_and_their_labels(tmp_path: Path, models: dict[str, Path]) -> None:
    plain, _ = tokenized(tmp_path, "base", models["base"], params_for("base", validation_ratio=0.0))
    examples = {r["ids"][0]: r for r in plain["train"]}
    n = max(len(r["input_ids"]) for r in plain["train"]) + 20
    packed, metrics = tokenized(
        tmp_path, "base", models["base"], params_for("base", max_tokens=n, use_packing=True, validation_ratio=0.0)
    )
    seqs = packed["train"]
    assert len(seqs) < len(examples) and metrics["train_sequences"] == len(seqs)
    assert metrics["train_examples"] == len(examples)
    assert sorted(i for s in seqs for i in s["ids"]) == sorted(examples)
    for seq in seqs:
        assert len(seq["input_ids"]) <= n
        at = 0
        for ex_id in seq["ids"]:
            ex = examples[ex_id]
            k = len(ex["input_ids"])
            assert seq["input_ids"][at : at + k] == ex["input_ids"] and seq["labels"][at : at + k] == ex["labels"]
            assert seq["position_ids"][at : at + k] == list(range(k))
            at += k
        assert at == len(seq["input_ids"])
    assert metrics["train_trainable_tokens"] == sum(sum(x != IGNORE for x in r["labels"]) for r in plain["train"])


def test_padding(tmp_path: Path, models: dict[str, Path]) -> None:
    tok = variant_lm.load_tokenizer(models["base"])
    plain, _ = tokenized(tmp_path, "base", models["base"], params_for("base", validation_ratio=0.0))
    padded, metrics = tokenized(
        tmp_path, "base", models["base"], params_for("base", max_tokens=200, use_padding=True, validation_ratio=0.0)
    )
    for a, b in zip(plain["train"], padded["train"], strict=True):
        k, pad = len(a["input_ids"]), 200 - len(a["input_ids"])
        assert b["input_ids"] == a["input_ids"] + [tok.pad_token_id] * pad
        assert b["labels"] == a["labels"] + [IGNORE] * pad
        assert b["attention_mask"] == [1] * k + [0] * pad
    assert metrics["train_tokens"] == sum(len(r["input_ids"]) for r in plain["train"])


# --- split ----------------------------------------------------------------------------------------------------------


def test_split_is_stable_when_records_are_added(tmp_path: Path, models: dict[str, Path]) -> None:
    def rec(i: int) -> _records.Record:
        return _records.make_record(
            source="s", kind="instruction", meta={**META, "row": i}, instruction=f"Question {i}?", output=f"Answer {i}."
        )

    def splits(rows: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
        return {r["ids"][0]: s for s, seqs in rows.items() for r in seqs}

    p = params_for("chat", validation_ratio=0.3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, m_small = tokenized(tmp_path / "a", "chat", models["chat"], p, [rec(i) for i in range(40)])
    large, _ = tokenized(tmp_path / "b", "chat", models["chat"], p, [rec(i) for i in range(80)])
    before, after = splits(small), splits(large)
    assert {k: after[k] for k in before} == before
    assert 0 < m_small["validation_examples"] < 40 and m_small["train_examples"] + m_small["validation_examples"] == 40
    ratio = sum(tokenize.split_of(f"{i:016x}", 0.3) == "validation" for i in range(4000)) / 4000
    assert 0.27 < ratio < 0.33


# --- documents as text for a chat model, the mixture ----------------------------------------------------------------


def test_chat_documents_as_text_train_every_token(tmp_path: Path, models: dict[str, Path]) -> None:
    """A chat model's document as plain text: no template tokens, cut into max_tokens blocks, each trained whole."""
    tok = variant_lm.load_tokenizer(models["chat"])
    doc = records()[5]
    p = params_for("chat", max_tokens=8, validation_ratio=0.0)
    rows, metrics = tokenized(tmp_path, "chat", models["chat"], p, [doc], {"documents_as": "text"})
    blocks = rows["train"]
    assert decode(tok, [t for r in blocks for t in r["input_ids"]]) == DOCUMENT  # no <|im_start|>, no EOS
    assert len(blocks) > 1 and all(len(r["input_ids"]) <= 8 for r in blocks)
    assert all(r["labels"] == [IGNORE, *r["input_ids"][1:]] for r in blocks)
    assert metrics["chunked"] == 1 and metrics["train_tokens_document"] == metrics["train_tokens"]


def mixture_records(n: int) -> list[_records.Record]:
    """`n` instructions of source ``chat`` and `n` documents of source ``docs``."""
    out = []
    for i in range(n):
        meta = {**META, "row": i}
        out.append(
            _records.make_record(
                source="chat", kind="instruction", meta=meta, instruction=f"Question {i}?", output=f"Answer {i}."
            )
        )
        out.append(_records.make_record(source="docs", kind="document", meta=meta, text=f"Fact number {i} is true."))
    return out


def test_mixture_repeats_train_rows_as_declared(tmp_path: Path, models: dict[str, Path]) -> None:
    recs = mixture_records(30)
    runs = {}
    for name, mixture in {
        "plain": {"sources": {}, "kinds": {}},
        "docs_x3": {"sources": {}, "kinds": {"document": 3}},
        "replay": {"sources": {"chat": 2}, "kinds": {"document": 3, "instruction": 0.5}},
    }.items():
        (tmp_path / name).mkdir()
        p = params_for("base", validation_ratio=0.2, mixture=mixture)
        runs[name] = tokenized(tmp_path / name, "base", models["base"], p, recs)
    (plain, m1), (x3, m3), (_, mr) = runs["plain"], runs["docs_x3"], runs["replay"]
    assert m1["train_tokens_document"] > 0 and m1["train_tokens_instruction"] > 0
    assert m1["train_tokens"] == m1["train_tokens_document"] + m1["train_tokens_instruction"]
    # Documents x3: three times the document tokens in train, the instructions and validation untouched.
    assert m3["train_tokens_document"] == 3 * m1["train_tokens_document"]
    assert m3["train_tokens_source_docs"] == m3["train_tokens_document"]
    assert m3["train_tokens_instruction"] == m1["train_tokens_instruction"] == m1["train_tokens_source_chat"]
    assert m3["train_tokens"] == m3["train_tokens_document"] + m3["train_tokens_instruction"]
    assert x3["validation"] == plain["validation"] and m3["validation_tokens"] == m1["validation_tokens"]
    # As passes: the first pass is the unmixed train split, then the copies, each marked with its copy number.
    ids = [r["ids"][0] for r in x3["train"]]
    assert ids[: len(plain["train"])] == [r["ids"][0] for r in plain["train"]]
    assert sorted(i for i in ids if "#" in i) == sorted(
        f"{i}#{k}" for i in ids if "#" not in i for k in (1, 2) if x3_kind(i, recs) == "document"
    )
    # A repeated row never straddles the split: no record id is in both.
    record_ids = {s: {i.split("/")[0] for r in x3[s] for i in r["ids"]} for s in tokenize.SPLITS}
    assert record_ids["validation"] and not record_ids["train"] & record_ids["validation"]
    # Replay: chat x2 times instruction x0.5 is x1, documents x3; a fraction alone drops a seeded share.
    assert mr["train_tokens_instruction"] == m1["train_tokens_instruction"]
    assert mr["train_tokens_document"] == m3["train_tokens_document"] and mr["dropped_mixture_subsample"] == 0
    half = params_for("base", validation_ratio=0.2, mixture={"sources": {}, "kinds": {"instruction": 0.5}})
    kept = {}
    for seed in (0, 0, 1):
        d = tmp_path / f"half{len(kept)}-{seed}"
        d.mkdir()
        rows, m = tokenized(d, "base", models["base"], half, recs, seed=seed)
        kept[len(kept)] = {r["ids"][0] for r in rows["train"]}
        n_train = m1["train_examples"] - m1["train_examples"] // 2  # documents + instructions in train
        assert 0 < m["dropped_mixture_subsample"] < n_train and m["kept"] == m["total"] - m["dropped_mixture_subsample"]
        assert m["train_tokens_document"] == m1["train_tokens_document"]
    assert kept[0] == kept[1] and kept[0] != kept[2]  # the same rows for the same seed


def x3_kind(example_id: str, recs: list[_records.Record]) -> str:
    return {r["id"]: r["kind"] for r in recs}[example_id.split("/")[0]]


def test_mixture_source_that_no_row_has_stops_the_stage(tmp_path: Path, models: dict[str, Path]) -> None:
    p = params_for("base", mixture={"sources": {"dcos": 3}, "kinds": {}})
    with pytest.raises(StageError, match=r"mixture.sources names \['dcos'\], which no templated row has; sources "):
        tokenized(tmp_path, "base", models["base"], p, mixture_records(2))


# --- params, inputs, the command line -------------------------------------------------------------------------------


def test_params_errors_list_every_problem(tmp_path: Path) -> None:
    raw = copy.deepcopy(PARAMS)
    raw["tokenize"]["chat"] |= {"max_tokens": 1, "truncation_side": "middle", "use_packing": "maybe", "pad": 1}
    raw["tokenize"]["chat"]["mixture"] = {"sources": {"docs": -1}, "kinds": {"documents": 2}}
    del raw["tokenize"]["chat"]["validation_ratio"]
    path = write_params(tmp_path / "params.yaml", **raw)
    with pytest.raises(StageError) as err:
        load_params(path, "chat")
    msg = str(err.value)
    assert "7 problem(s)" in msg
    assert "tokenize.chat.mixture.sources.docs: Input should be greater than or equal to 0 (got -1)" in msg
    assert "tokenize.chat.mixture.kinds.documents.[key]: Input should be 'instruction', 'conversation', 'qa'," in msg
    assert "tokenize.chat.max_tokens: Input should be greater than or equal to 2 (got 1)" in msg
    assert "tokenize.chat.truncation_side: Input should be 'left' or 'right' (got 'middle')" in msg
    assert "tokenize.chat.use_packing:" in msg and "tokenize.chat.validation_ratio: required key is missing" in msg
    assert "tokenize.chat.pad: unknown key (value 1); allowed here: ['max_tokens'" in msg
    # The whole file is validated: a bad chat entry stops the base variant too; a valid file gives each its own.
    with pytest.raises(StageError, match=r"7 problem\(s\)"):
        load_params(path, "base")
    write_params(path, **PARAMS)
    assert load_params(path, "base") == params_for("base")
    assert load_params(path, "chat") == params_for("chat")


def test_bad_inputs(tmp_path: Path, models: dict[str, Path]) -> None:
    bad = tmp_path / "templated.parquet"
    bad.write_text("not parquet")
    p = params_for("chat")
    with pytest.raises(StageError, match=r"templated.parquet: cannot read templated rows .*rerun `dvc repro template`"):
        tokenize.run(
            _params.of({"common.seed": 0, "tokenize.v": p}),
            variant="v",
            inputs={"in": bad, "model": models["chat"]},
            outputs={"out": tmp_path / "out"},
        )
    src = templated(tmp_path, "chat", models["chat"])
    no_eos = tmp_path / "no-eos"
    tok = chat_tokenizer(no_eos)
    config = json.loads((no_eos / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (no_eos / "tokenizer_config.json").write_text(json.dumps(config))
    del tok
    with pytest.raises(StageError, match=r"no-eos: the tokenizer has no EOS token; set use_eos: false"):
        tokenize.run(
            _params.of({"common.seed": 0, "tokenize.v": params_for("chat", use_eos=True)}),
            variant="v",
            inputs={"in": src, "model": no_eos},
            outputs={"out": bad},
        )
    assert not (tmp_path / "out").exists()


def test_command_line_is_byte_deterministic(tmp_path: Path, models: dict[str, Path]) -> None:
    src = templated(tmp_path, "chat", models["chat"])
    params = write_params(tmp_path / "params.yaml", **PARAMS)
    digests = []
    for run in ("a", "b"):
        out, metrics = tmp_path / run / "chat", tmp_path / run / "tokenize_chat.json"
        cmd = [sys.executable, "-m", "stages.variant.tokenize", "--params", str(params), "--variant", "chat"]
        cmd += ["--in", str(src), "--model", str(models["chat"]), "--out", str(out), "--metrics", str(metrics)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "tokenize.chat params:" in done.stderr
        files = sorted(p for p in out.rglob("*") if p.is_file())
        digests.append(
            {p.relative_to(out).as_posix(): p.read_bytes() for p in files} | {metrics.name: metrics.read_bytes()}
        )
    assert digests[0] == digests[1]
    assert sorted(digests[0]) == [
        "dataset_dict.json",
        "tokenize_chat.json",
        "train/data-00000-of-00001.arrow",
        "train/dataset_info.json",
        "train/state.json",
        "validation/data-00000-of-00001.arrow",
        "validation/dataset_info.json",
        "validation/state.json",
    ]
    m = json.loads(digests[0]["tokenize_chat.json"])
    assert m["total"] == m["kept"] == 4 and m["train_examples"] + m["validation_examples"] == 4
    bad = subprocess.run([*cmd[:6], "large", *cmd[7:]], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "error: " in bad.stderr and "Traceback" not in bad.stderr
