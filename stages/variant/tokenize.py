"""Tokenize: turn a variant's templated rows into token ids and loss labels, split into train and validation.

Inputs: ``--in`` (``data/templated/<variant>.parquet``, rows of ``stages.variant.template``); ``--model``
    (``models/<variant>/base``), whose tokenizer is used.
Outputs: ``--out`` (``data/tokenized/<variant>``), a ``datasets.DatasetDict`` saved with ``save_to_disk``, splits
    ``train`` and ``validation`` (either may be empty), one row per training sequence::

        ids             ["<record id>/<chunk>", ...]: the examples in the sequence (one, or several when packed)
        input_ids       token ids, at most max_tokens                                 # (T,)
        attention_mask  1 on tokens, 0 on padding                                     # (T,)
        labels          the token id where the loss is taken, -100 elsewhere          # (T,)
        position_ids    0.. within each example, restarting at every packed example   # (T,)

``--metrics`` (``metrics/tokenize_<variant>.json``): total, kept, dropped_<reason> (per templated row), the
    longest example (tokens, before truncation, and its id), truncated and chunked rows, and per split the examples,
    sequences, tokens (padding excluded) and trainable tokens (labels not -100).
Run: ``dvc repro tokenize@chat`` (= ``python -m stages.variant.tokenize --params params.yaml --variant chat
    --in data/templated/chat.parquet --model models/chat/base --out data/tokenized/chat
    --metrics metrics/tokenize_chat.json``).

How an example is built. Each segment is tokenized on its own (no special tokens added) and the ids concatenated, so
a label mask is exactly the response text, and a prompt is tokenized as it will be at generation time. The special
tokens the tokenizer itself puts in front of a text (Gemma's ``<bos>``; none for SmolLM2) go first, unless the text
already starts with them (a chat template that writes its own ``<bos>``); with ``use_eos`` the tokenizer's EOS is
appended as a response token (for chat templates, whose end-of-turn token already closes each response, leave it
off). Labels are the ids of the response tokens (of every token with ``use_completion_only_loss: false``), -100 on
the rest and always on an example's first token, which nothing before it predicts: so a packed sequence never
learns one example's start from the end of another.

Too long. A row with no prompt segment (a document: plain text) is cut into max_tokens chunks, each an example of
its own; any other example is truncated to max_tokens on ``truncation_side`` (``left`` keeps the end of the
response, ``right`` the start of the prompt). An example left with no trainable token (a response cut off, a
one-token last chunk) is dropped; a row none of whose examples is left is counted as ``no_trainable_tokens``.

Split. A row goes to validation when the first 8 bytes of sha256(id), read as an integer, fall below
``validation_ratio`` of 2**64: the same row always lands in the same split, whatever rows are added.

Packing and padding. With ``use_packing``, examples (in id order) are placed greedily into sequences of at most
max_tokens, a new sequence started when the next example does not fit; ``position_ids`` restart at each example so
that an attention implementation that honours them (flash-attention varlen, TRL's padding-free collator) keeps
examples apart. With ``use_padding``, each sequence is padded on the right to max_tokens (the tokenizer's pad
token, else its EOS) with attention_mask 0 and labels -100.

Determinism. Rows are sorted by id, each split is saved as one shard, and the dataset fingerprints are hashes of the
content, so the same inputs and params give the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.tokenize import TokenizeParams
from stages.variant.lm import leading_specials, load_tokenizer, read_templated

log = logging.getLogger("steep.tokenize")

STAGE = cli.Stage(
    params=("tokenize.${key}",),
    inputs={"in": "templated rows (Parquet)", "model": "the variant's checkpoint directory (its tokenizer)"},
    outputs={"out": "DatasetDict directory to write"},
)
PARAMS = list(STAGE.params)
IGNORE = -100  # the label PyTorch's cross-entropy ignores
SPLITS = ("train", "validation")


# --- examples -------------------------------------------------------------------------------------------------------


@dataclass
class Example:
    """One training example: a row, or a chunk of a document row.

    Attributes:
        id: ``<record id>/<chunk>``.
        input_ids: token ids.
        labels: the id where the loss is taken, IGNORE elsewhere (same length).
    """

    id: str
    input_ids: list[int]
    labels: list[int]


def split_of(record_id: str, validation_ratio: float) -> str:
    """``validation`` when sha256(id)'s first 8 bytes fall below validation_ratio of 2**64, else ``train``."""
    h = int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big")
    return "validation" if h < validation_ratio * 2**64 else "train"


def build(
    row: dict[str, Any], seg_ids: list[list[int]], p: TokenizeParams, prefix: list[int], eos: int | None
) -> tuple[list[Example], int, bool, bool]:
    """The examples of a row, its length before truncation, and whether it was truncated / chunked.

    Args:
        row: a templated row (id, segments).
        seg_ids: the token ids of each segment, in order.
        p: the variant's tokenize section.
        prefix: the tokenizer's leading special tokens.
        eos: the EOS id to append, or None.
    """
    ids: list[int] = []
    train: list[bool] = []
    for seg, toks in zip(row["segments"], seg_ids, strict=True):
        ids += toks
        train += [seg["train"]] * len(toks)
    if prefix and ids[: len(prefix)] != prefix:
        ids, train = prefix + ids, [False] * len(prefix) + train
    if eos is not None:
        ids, train = [*ids, eos], [*train, True]
    length = len(ids)
    labels = [t if (m or not p.use_completion_only_loss) else IGNORE for t, m in zip(ids, train, strict=True)]
    n = p.max_tokens
    is_text = all(seg["train"] for seg in row["segments"])
    if is_text:
        windows = [(ids[i : i + n], labels[i : i + n]) for i in range(0, length, n)]
    elif length <= n:
        windows = [(ids, labels)]
    elif p.truncation_side == "right":
        windows = [(ids[:n], labels[:n])]
    else:
        windows = [(ids[-n:], labels[-n:])]
    examples = []
    for k, (w_ids, w_labels) in enumerate(windows):
        w_labels = [IGNORE, *w_labels[1:]]  # nothing predicts an example's first token
        if any(label != IGNORE for label in w_labels):
            examples.append(Example(f"{row['id']}/{k}", w_ids, w_labels))
    return examples, length, length > n and not is_text, length > n and is_text


def sequences(examples: list[Example], p: TokenizeParams, pad: int) -> list[dict[str, Any]]:
    """Examples as dataset rows: one per example, or packed; padded to max_tokens if asked."""
    groups: list[list[Example]] = []
    used = 0
    for ex in examples:
        if not p.use_packing or not groups or used + len(ex.input_ids) > p.max_tokens:
            groups.append([])
            used = 0
        groups[-1].append(ex)
        used += len(ex.input_ids)
    rows = []
    for group in groups:
        row: dict[str, list[Any]] = {"ids": [], "input_ids": [], "attention_mask": [], "labels": []}
        row["position_ids"] = []
        for ex in group:
            row["ids"].append(ex.id)
            row["input_ids"] += ex.input_ids
            row["labels"] += ex.labels
            row["attention_mask"] += [1] * len(ex.input_ids)
            row["position_ids"] += list(range(len(ex.input_ids)))
        if p.use_padding:
            missing = p.max_tokens - len(row["input_ids"])
            row["input_ids"] += [pad] * missing
            row["labels"] += [IGNORE] * missing
            row["attention_mask"] += [0] * missing
            row["position_ids"] += [0] * missing
        rows.append(row)
    return rows


# --- the stage ------------------------------------------------------------------------------------------------------


def _features() -> Any:
    from datasets import Features, List, Value

    ints = List(Value("int64"))
    return Features(
        {
            "ids": List(Value("string")),
            "input_ids": ints,
            "attention_mask": ints,
            "labels": ints,
            "position_ids": ints,
        }
    )


def save(path: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    """Save the splits as a DatasetDict, one shard each (an empty split still gets its file, and loads)."""
    import datasets

    datasets.disable_progress_bars()
    features = _features()
    columns = list(features)
    dd = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns}, features=features)
            for name, rows in splits.items()
        }
    )
    dd.save_to_disk(str(path), num_shards=dict.fromkeys(splits, 1))


def run(params: _params.Scoped, *, variant: str, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Tokenize ``inputs["in"]`` with the tokenizer of ``inputs["model"]`` into ``outputs["out"]``; return metrics.

    Args:
        params: the scoped params (``tokenize.<variant>``).
        variant: the variant tokenized for.
        inputs: ``{"in": templated Parquet, "model": checkpoint directory}``.
        outputs: ``{"out": DatasetDict directory}``.

    Returns:
        Metrics: total, kept, dropped_no_trainable_tokens, longest_tokens, longest_id, truncated, chunked, and
        <split>_examples, <split>_sequences, <split>_tokens, <split>_trainable_tokens for train and validation.
    """
    spec: TokenizeParams = _params.get(params, f"tokenize.{variant}")
    rows = sorted(read_templated(inputs["in"]), key=lambda r: r["id"])
    tokenizer = load_tokenizer(inputs["model"])
    eos = None
    if spec.use_eos:
        if tokenizer.eos_token_id is None:
            raise StageError(f"{inputs['model']}: the tokenizer has no EOS token; set use_eos: false")
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if spec.use_padding and pad is None:
        raise StageError(f"{inputs['model']}: the tokenizer has neither a pad nor an EOS token; set use_padding: false")
    prefix = leading_specials(tokenizer)
    texts = [seg["text"] for row in rows for seg in row["segments"]]
    flat = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    examples: dict[str, list[Example]] = {s: [] for s in SPLITS}
    dropped: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    longest, longest_id = 0, ""
    at = 0
    for row in rows:
        seg_ids = flat[at : at + len(row["segments"])]
        at += len(row["segments"])
        built, length, truncated, chunked = build(row, seg_ids, spec, prefix, eos)
        if length > longest:
            longest, longest_id = length, row["id"]
        counts["truncated"] += truncated
        counts["chunked"] += chunked
        if not built:
            dropped["no_trainable_tokens"] += 1
            continue
        split = split_of(row["id"], spec.validation_ratio)
        examples[split] += built
        counts[f"{split}_examples"] += len(built)

    splits = {s: sequences(examples[s], spec, pad if pad is not None else 0) for s in SPLITS}
    for s, seqs in splits.items():
        counts[f"{s}_sequences"] = len(seqs)
        counts[f"{s}_tokens"] = sum(sum(r["attention_mask"]) for r in seqs)
        counts[f"{s}_trainable_tokens"] = sum(sum(1 for x in r["labels"] if x != IGNORE) for r in seqs)
    with _io.atomic_outputs(outputs["out"]) as (tmp,):
        save(tmp, splits)
    kept = len(rows) - sum(dropped.values())
    extra: dict[str, Any] = {"longest_tokens": longest, "longest_id": longest_id, "truncated": counts["truncated"]}
    extra["chunked"] = counts["chunked"]
    for s in SPLITS:
        for what in ("examples", "sequences", "tokens", "trainable_tokens"):
            extra[f"{s}_{what}"] = counts[f"{s}_{what}"]
    return _io.drop_metrics(len(rows), kept, dropped, **extra)


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the tokenize stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
