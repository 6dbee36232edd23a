"""Template: render each curated record as a variant's training text, split into prompt and response segments.

Inputs: ``--in`` (``data/curated.parquet`` and ``data/synthetic.parquet``: one or more files of records of
    ``stages.core.records``); ``--model`` (``models/<variant>/base``),
    whose tokenizer's chat template renders the ``chat_template`` format (the ``alpaca`` format does not read it).
Outputs: ``--out`` (``data/templated/<variant>.parquet``), one row per kept record, sorted by id::

    id        the record id
    source    the record's source name
    kind      instruction | conversation | qa | document | restatement | doc_qa
    segments  [{text, train}]: the example's text in order; ``train`` marks the response text (the loss is taken
              on it), the rest is prompt. Concatenated, the texts are exactly the rendered example.
    meta      the record's meta (JSON), unchanged

``--metrics`` (``metrics/template_<variant>.json``): total, kept, dropped_<reason>, and kept_<kind> per kind.
Run: ``dvc repro template@chat`` (= ``python -m stages.variant.template --params params.yaml --variant chat
    --in data/curated.parquet data/synthetic.parquet --model models/chat/base --out data/templated/chat.parquet
    --metrics metrics/template_chat.json``).

Formats (``template.<variant>.format``):

* ``alpaca``: Stanford Alpaca's prompts. An instruction or qa record is ``prompts.with_input`` (when it has an input)
  or ``prompts.without_input``, then its output. A conversation is its first user turn through
  ``prompts.without_input`` (a system turn, if any, goes before that turn's text, a blank line between) and each later
  user turn through ``prompts.next_turn``, every assistant turn a response. A document is one response segment (plain
  causal-LM text: knowledge infusion) with ``documents_as: text``, or dropped (``document_skipped``). A doc_qa
  record (a question about a document and its answer) renders as a qa record.
* ``chat_template``: the tokenizer's own chat template over the record's messages (``_records.as_messages``), with
  ``prompts.system`` as the system turn of records that have none (``""``: none added). Every assistant turn is a
  response segment: the span the template adds for it, from after the generation prompt to the end of the turn
  (its end-of-turn token included, so the model learns to stop). Spans come from rendering each prefix of the
  conversation; a template whose renderings are not prefixes of one another (one that rewrites earlier turns)
  stops the stage. A document is one response segment of plain causal-LM text, outside the chat template (knowledge
  infusion, as in ``alpaca``) with ``documents_as: text``; a user turn ``document_prompt`` answered by the document
  with ``documents_as: user_assistant``; or dropped (``document_skipped``). A doc_qa record is a user turn and
  the assistant's answer, like a qa record.

A restatement (one fact of a document in a short sentence) is one response segment of plain text in either format,
whatever ``documents_as`` says: it is the data that teaches a document's facts, so a variant that skips whole
documents still learns them (``tokenize.<variant>.mixture.kinds.restatement`` sets how often, or leaves it out).

Drop reasons: ``duplicate_input`` (a record whose id an earlier ``--in`` file already holds),
``document_skipped`` (documents_as says so), ``no_assistant_turn`` (a conversation with no assistant
turn: nothing to learn). Turns after a conversation's last assistant turn are left out, for the same reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core import records as _records
from stages.core.io import StageError
from stages.core.params.template import AlpacaTemplate, ChatTemplate
from stages.variant.lm import SCHEMA, load_tokenizer

log = logging.getLogger("steep.template")

STAGE = cli.Stage(
    params=("template.${key}",),
    inputs={"in": "record files (Parquet)", "model": "the variant's checkpoint directory (its tokenizer)"},
    outputs={"out": "templated rows (Parquet)"},
    many=("in",),
)
PARAMS = list(STAGE.params)

Segment = dict[str, Any]


# --- params ---------------------------------------------------------------------------------------------------------


# --- rendering ------------------------------------------------------------------------------------------------------


def _prompt(text: str) -> Segment:
    return {"text": text, "train": False}


def _response(text: str) -> Segment:
    return {"text": text, "train": True}


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join neighbours of the same kind and drop empty texts (fewer, longer segments; same text, same masks)."""
    out: list[Segment] = []
    for seg in segments:
        if not seg["text"]:
            continue
        if out and out[-1]["train"] == seg["train"]:
            out[-1] = {"text": out[-1]["text"] + seg["text"], "train": seg["train"]}
        else:
            out.append(dict(seg))
    return out


def _turns(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """Messages up to the last assistant turn, or None if there is none."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return messages[: last + 1] if last >= 0 else None


def render_alpaca(record: _records.Record, p: AlpacaTemplate) -> list[Segment] | str:
    """Segments of a record in the Alpaca format, or the drop reason."""
    if record["kind"] == "restatement":
        return [_response(record["text"])]
    if record["kind"] == "document":
        return [_response(record["text"])] if p.documents_as == "text" else "document_skipped"
    if record["kind"] in ("instruction", "qa", "doc_qa"):
        if record["input"]:
            prompt = p.prompts.with_input.format(instruction=record["instruction"], input=record["input"])
        else:
            prompt = p.prompts.without_input.format(instruction=record["instruction"])
        return _merge([_prompt(prompt), _response(record["output"])])
    turns = _turns(record["messages"])
    if turns is None:
        return "no_assistant_turn"
    segments: list[Segment] = []
    system: list[str] = []
    first = True
    for m in turns:
        if m["role"] == "system":
            system.append(m["content"])
        elif m["role"] == "user":
            if first:
                instruction = "\n\n".join([*system, m["content"]])
                segments.append(_prompt(p.prompts.without_input.format(instruction=instruction)))
                first = False
            else:
                segments.append(_prompt(p.prompts.next_turn.format(instruction=m["content"])))
        else:
            segments.append(_response(m["content"]))
    return _merge(segments)


def _apply(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    if not isinstance(text, str):
        raise StageError(f"the chat template rendered {type(text).__name__}, expected text")
    return text


def render_chat(record: _records.Record, p: ChatTemplate, tokenizer: Any) -> list[Segment] | str:
    """Segments of a record through the tokenizer's chat template, or the drop reason.

    For each assistant turn i: the prompt is what the template adds from the end of turn i-1 up to its generation
    prompt for turn i (``render(turns[:i], add_generation_prompt=True)``), the response what it adds from there to
    the end of turn i (``render(turns[:i+1])``). Each rendering must extend the one before.
    """
    if record["kind"] == "restatement":  # plain text, as in alpaca (module docstring)
        return [_response(record["text"])]
    if record["kind"] == "document":
        if p.documents_as == "skip":
            return "document_skipped"
        if p.documents_as == "text":  # no template, no system turn: the text as the model would read it anywhere
            return [_response(record["text"])]
        messages = [{"role": "user", "content": p.document_prompt}, {"role": "assistant", "content": record["text"]}]
    else:
        messages = _records.as_messages(record)
    turns = _turns(messages)
    if turns is None:
        return "no_assistant_turn"
    if p.prompts.system and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": p.prompts.system}, *turns]
    segments: list[Segment] = []
    done = ""
    for i, m in enumerate(turns):
        if m["role"] != "assistant":
            continue
        prompt = _apply(tokenizer, turns[:i], generation_prompt=True)
        full = _apply(tokenizer, turns[: i + 1], generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            before, after = (done, prompt) if not prompt.startswith(done) else (prompt, full)
            raise StageError(
                f"record {record['id']}: the chat template is not prefix-stable: rendering turns 1..{i + 1} does not "
                f"extend the rendering of the turns before it, so the assistant's tokens cannot be located.\n"
                f"  expected a text starting with: {before[-200:]!r}\n  got: {after[-200:]!r}\n"
                "Fix: use a model whose template renders earlier turns the same way whatever follows "
                "(ChatML, Llama, Gemma do), or `format: alpaca`"
            )
        response = full[len(prompt) :]
        if m["content"] not in response:
            raise StageError(
                f"record {record['id']}: the chat template does not render assistant turn {i + 1} verbatim: "
                f"expected {m['content'][:80]!r} in the text it adds, got {response[:200]!r}"
            )
        segments += [_prompt(prompt[len(done) :]), _response(response)]
        done = full
    return _merge(segments)


# --- the stage ------------------------------------------------------------------------------------------------------


def run(params: _params.Scoped, *, variant: str, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Render ``inputs["in"]`` (record files) into ``outputs["out"]`` (segment rows); return the metrics.

    Args:
        params: the scoped params (``template.<variant>``).
        variant: the variant rendered for.
        inputs: ``{"in": a record file or a list of them, "model": checkpoint directory}`` (the model is read by
            ``chat_template``).
        outputs: ``{"out": templated Parquet}``.

    Returns:
        Metrics: total, kept, dropped_<reason>, kept_<kind>.
    """
    spec: AlpacaTemplate | ChatTemplate = _params.get(params, f"template.{variant}")
    paths = inputs["in"] if isinstance(inputs["in"], list) else [inputs["in"]]
    records: list[_records.Record] = []
    seen: set[str] = set()
    dropped: Counter[str] = Counter()
    for path in paths:
        for record in _records.read_records(path):
            if record["id"] in seen:
                dropped["duplicate_input"] += 1
            else:
                seen.add(record["id"])
                records.append(record)
    total = len(records) + dropped["duplicate_input"]
    tokenizer = None
    if spec.format == "chat_template":
        tokenizer = load_tokenizer(inputs["model"])
        if not tokenizer.chat_template:
            raise StageError(
                f"{inputs['model']}: the tokenizer has no chat template, so `format: chat_template` cannot render "
                "conversations. Fix: use a chat model for this variant, or `format: alpaca`"
            )
    rows: list[dict[str, Any]] = []
    kinds: Counter[str] = Counter()
    for record in sorted(records, key=lambda r: r["id"]):
        out = render_alpaca(record, spec) if tokenizer is None else render_chat(record, spec, tokenizer)
        if isinstance(out, str):
            dropped[out] += 1
            continue
        kinds[record["kind"]] += 1
        row = {"id": record["id"], "source": record["source"], "kind": record["kind"], "segments": out}
        rows.append(row | {"meta": json.dumps(record["meta"], sort_keys=True, ensure_ascii=False)})
    with _io.atomic_outputs(outputs["out"]) as (tmp,):
        _io.write_table(tmp, pa.Table.from_pylist(rows, schema=SCHEMA))
    extra = {f"kept_{k}": kinds[k] for k in _records.KINDS}
    return _io.drop_metrics(total, len(rows), dropped, **extra)


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the template stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
