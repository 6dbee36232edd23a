"""Tokenize: turn a variant's templated rows into token ids and loss labels, split into train and validation.

Inputs: ``--in`` (``data/templated/<variant>.parquet``, rows of ``stages.variant.template``); ``--model``
    (``models/<variant>/base``), whose tokenizer is used.
Outputs: ``--out`` (``data/tokenized/<variant>``), a ``datasets.DatasetDict`` saved with ``save_to_disk``, splits
    ``train`` and ``validation`` (either may be empty), one row per training sequence::

        ids             ["<record id>/<chunk>[#<copy>]", ...]: the examples in the sequence (one, or several when
                        packed); ``#<copy>`` marks the mixture's repeats (copy 1 and later)
        input_ids       token ids, at most max_tokens                                 # (T,)
        attention_mask  1 on tokens, 0 on padding                                     # (T,)
        labels          the token id where the loss is taken, -100 elsewhere          # (T,)
        position_ids    0.. within each example, restarting at every packed example   # (T,)
        seq_lengths     the length of each example in the sequence (and of its padding)  # (n examples,)

``--metrics`` (``metrics/tokenize_<variant>.json``): total, kept, dropped_<reason> (per templated row), the
    longest example (tokens, before truncation, and its id), truncated and chunked rows, and per split the examples,
    sequences, tokens (padding excluded) and trainable tokens (labels not -100); after the mixture, the train tokens
    per kind (``train_tokens_<kind>``) and per source (``train_tokens_source_<source>``).
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
``validation_ratio`` of 2**64: the same row always lands in the same split, whatever rows are added. With
``validation_kinds``, only rows of those kinds may (``[doc_qa]``: held-out qa_seen pairs, the loss that picks a
checkpoint by how well the model answers questions about the documents); the others all train.

Mixture. ``mixture`` repeats train rows: a row of source s and kind k goes into the train split
``sources[s] * kinds[k]`` times (1 for a source or kind not listed), as passes over the data (every first copy in id
order, then every second copy, ...), so ``kinds: {document: 20}`` is twenty passes over the documents per epoch
beside one over the rest. A fractional factor adds its extra copy to the rows whose seeded hash of the id falls
below the fraction (``common.seed``: the same rows on every run); a row left with no copy is counted as
``mixture_subsample``. Validation rows are never repeated, and a row's copies all stay in its split. A source name
no row has stops the stage (a typo would otherwise change nothing).

Packing and padding. With ``use_packing``, examples (in id order) are placed greedily into sequences of at most
max_tokens, a new sequence started when the next example does not fit; ``position_ids`` restart at each example so
that an attention implementation that honours them keeps examples apart: the train stage sees packed rows (a
``seq_lengths`` of more than one entry) and trains padding-free, where TRL's collator rebuilds the position ids from
``seq_lengths`` and transformers masks attention block-diagonally, one block per example. With ``use_padding``,
each sequence is padded on the right to max_tokens (the tokenizer's pad token, else its EOS) with attention_mask 0
and labels -100.

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
from stages.core.params.tokenize import KINDS, TokenizeParams
from stages.variant.lm import leading_specials, load_tokenizer, read_templated

log = logging.getLogger("steep.tokenize")

STAGE = cli.Stage(
    params=("common.seed", "tokenize.${key}"),
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
        row["position_ids"], row["seq_lengths"] = [], []
        for ex in group:
            row["ids"].append(ex.id)
            row["input_ids"] += ex.input_ids
            row["labels"] += ex.labels
            row["attention_mask"] += [1] * len(ex.input_ids)
            row["position_ids"] += list(range(len(ex.input_ids)))
            row["seq_lengths"].append(len(ex.input_ids))
        if p.use_padding:
            missing = p.max_tokens - len(row["input_ids"])
            row["seq_lengths"] += [missing] if missing else []
            row["input_ids"] += [pad] * missing
            row["labels"] += [IGNORE] * missing
            row["attention_mask"] += [0] * missing
            row["position_ids"] += [0] * missing
        rows.append(row)
    return rows


# --- the mixture ----------------------------------------------------------------------------------------------------


def copies_of(record_id: str, factor: float, seed: int) -> int:
    """How many times a row goes into the train split: floor(factor), plus one more copy when a seeded hash of its
    id, read as a fraction of 2**64, falls below the factor's fractional part (so 0.5 keeps a stable half)."""
    whole = int(factor)
    if factor == whole:
        return whole
    h = int.from_bytes(hashlib.sha256(f"{seed}\0mixture\0{record_id}".encode()).digest()[:8], "big")
    return whole + (h < (factor - whole) * 2**64)


def mix(rows: list[tuple[dict[str, Any], list[Example]]], counts: list[int]) -> list[Example]:
    """The train examples of `rows` (in id order) repeated `counts` times each, as passes: every copy-0 example,
    then every copy-1, ... A repeated example's id gets ``#<copy>`` (copy 1 and later), so that every sequence of
    the dataset stays traceable; the copies of a row share its split (the split is decided per row id).
    """
    out: list[Example] = []
    for k in range(max(counts, default=0)):
        for (_, built), n in zip(rows, counts, strict=True):
            if k < n:
                out += [ex if k == 0 else Example(f"{ex.id}#{k}", ex.input_ids, ex.labels) for ex in built]
    return out


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
            "seq_lengths": ints,
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
        params: the scoped params (``common.seed``, ``tokenize.<variant>``).
        variant: the variant tokenized for.
        inputs: ``{"in": templated Parquet, "model": checkpoint directory}``.
        outputs: ``{"out": DatasetDict directory}``.

    Returns:
        Metrics: total, kept, dropped_no_trainable_tokens, dropped_mixture_subsample, longest_tokens, longest_id,
        truncated, chunked, <split>_examples, <split>_sequences, <split>_tokens, <split>_trainable_tokens for train
        and validation, train_tokens_<kind> and train_tokens_source_<source> (after the mixture).
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

    unknown = sorted(set(spec.mixture.sources) - {row["source"] for row in rows})
    if unknown:
        raise StageError(
            f"tokenize.{variant}.mixture.sources names {unknown}, which no templated row has; "
            f"sources present: {sorted({row['source'] for row in rows})}"
        )
    seed: int = params.common.seed
    built_rows: dict[str, list[tuple[dict[str, Any], list[Example]]]] = {s: [] for s in SPLITS}
    dropped: Counter[str] = Counter({"no_trainable_tokens": 0, "mixture_subsample": 0})
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
        held = not spec.validation_kinds or row["kind"] in spec.validation_kinds
        built_rows[split_of(row["id"], spec.validation_ratio if held else 0.0)].append((row, built))

    # The mixture repeats train rows only: validation measures each row once, whatever the mixture.
    mixture = spec.mixture
    copies = [copies_of(row["id"], mixture.factor(row["source"], row["kind"]), seed) for row, _ in built_rows["train"]]
    dropped["mixture_subsample"] = copies.count(0)
    mixed_tokens: Counter[str] = Counter()
    for (row, built), n in zip(built_rows["train"], copies, strict=True):
        tokens = n * sum(len(ex.input_ids) for ex in built)
        mixed_tokens[f"train_tokens_{row['kind']}"] += tokens
        mixed_tokens[f"train_tokens_source_{row['source']}"] += tokens
    examples = {"train": mix(built_rows["train"], copies)}
    examples["validation"] = mix(built_rows["validation"], [1] * len(built_rows["validation"]))
    for s in SPLITS:
        counts[f"{s}_examples"] = len(examples[s])
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
    # After the mixture (padding excluded): per kind (every kind, 0 if none) and per source present in train.
    extra |= {f"train_tokens_{k}": mixed_tokens[f"train_tokens_{k}"] for k in KINDS}
    extra |= {k: v for k, v in sorted(mixed_tokens.items()) if k.startswith("train_tokens_source_")}
    return _io.drop_metrics(len(rows), kept, dropped, **extra)


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the tokenize stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
