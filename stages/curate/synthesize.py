"""Synthesize: Alpaca-style instruction pairs from the curated documents and from seed tasks, with a local LLM.

Inputs: ``--in`` (``data/curated.parquet``): its documents are the corpus the grounded pairs come from, and its
    instruction pairs join the pool generated instructions must be novel against; ``--model`` (a directory made by the
    ``models`` stage, ``models/chat/base`` by default): the generator; ``--seed-tasks``
    (``synthesize.self_instruct.seed_tasks``, Self-Instruct's ``seed_tasks.jsonl`` format).
Outputs: ``--out`` (``data/synthetic.parquet``), kept pairs as ``instruction`` records of
    ``stages.core.records``, sorted by id, each with ``meta.synthesize``: the generator (``documents`` |
    ``self_instruct``), the call key, the chunk
    (document id, source file, chunk index) or the seed task ids, and its max ROUGE-L against the pool;
    ``--rejects`` (``data/rejected/synthesize.parquet``): every dropped pair or malformed output with its reason;
    ``--metrics`` (``metrics/synthesize.json``): prompts, model_calls, cache_hits, pairs_parsed, total, kept,
    dropped_<reason>, acceptance_rate, new_tokens, tokens_per_s (of this run's model calls; 0 when all were cached).
    ``--cache`` (``.steep_cache/synthesize``): one JSON file per generation call, named by its key.
Run: ``dvc repro synthesize`` (= ``python -m stages.curate.synthesize --params params.yaml --in data/curated.parquet
    --model models/chat/base --seed-tasks data/sources/seed_tasks.jsonl --out data/synthetic.parquet
    --rejects data/rejected/synthesize.parquet --metrics metrics/synthesize.json --cache .steep_cache/synthesize``).

Generators:

1. ``documents``: each curated document is cut at paragraph breaks into chunks (``max_chunk_chars``; short ones
   merged into the next; with ``use_prose_only`` fenced code and tables are left out), and each chunk goes into
   ``documents.prompt`` ``samples_per_chunk`` times, each call with its own seed. The completion is parsed as
   ``Question: ... / Answer: ...`` pairs; a pair's answer must be grounded in its chunk.
2. ``self_instruct``: ``num_prompts`` prompts, each with ``seeds_per_prompt`` seed tasks drawn (seeded) from the seed
   file as ``Instruction: / Input: / Output:`` blocks; the completion is parsed the same way.

Every call is cached by ``sha256(model files, prompt, generation params, call seed)``; a call's seed comes from
``common.seed`` and the call itself, and sampling draws from a generator of that seed alone (Gumbel-max over the
warped logits), so a call's output does not depend on the other prompts of its batch: a rerun with nothing changed
makes zero model calls, and editing one document makes calls for that document's chunks only.

Drop reasons, in order: malformed output (``no_pair_parsed``: nothing parsable; ``truncated_json``: JSON cut off;
``truncated_pair``: the last pair cut off by ``max_new_tokens``; ``empty_instruction``; ``empty_answer``), then the
filters of Self-Instruct/Alpaca: ``instruction_too_short`` / ``instruction_too_long`` (words),
``blacklisted_word``, ``ungrounded_answer`` (document pairs: too few of the answer's content words in the chunk),
then moderate's rules (the same ``stages.curate.rules.check_record``, with its reason codes: ``canned_response``,
``pii_email``, ...), then ``not_novel`` (ROUGE-L F1 above ``max_rouge_l`` against the seed instructions, the curated
instructions and the pairs kept before it, in call-key order).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core import records as _records
from stages.core.io import StageError
from stages.core.params.synthesize import DocumentGenerator, Generation, SelfInstruct, SynthFilters
from stages.core.records import Record
from stages.curate import rules

log = logging.getLogger("steep.synthesize")

PARAMS = ["common.seed", "moderate", "synthesize"]

# Raised when a cached call's format changes: older entries are then simply not found.
CACHE_VERSION = 1
# Where a completion ends: the model starting the next few-shot example (a new text, question or task) or a
# heading of its own. Generation stops there, and the parser ignores anything after. One set for every call, so
# that a row's stopping does not depend on the other calls of its batch.
STOP = ("\nText:", "\nQuestion:", "\nInstruction:", "\n#")
LABELS = {"question": "instruction", "instruction": "instruction", "input": "input", "answer": "output"}
LABELS |= {"output": "output", "response": "output"}
_LABEL_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?\**(" + "|".join(LABELS) + r")\**\s*:\s?(.*)$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about grounding: an answer of only these is not checked against its chunk.
STOPWORDS = frozenset(
    re.findall(
        r"[a-z]+",
        "a an the and or but if then of to in on at by for with from as is are was were be been being it its this "
        "that these those there here what which who whom whose when where why how do does did done can could should "
        "would will may might must not no yes you your we our they their he she his her i me my so than too very also "
        "just into out up down over under about after before between each every all any some such only own same other",
    )
)


@dataclass(frozen=True)
class Call:
    """One generation call: a prompt, the generator it belongs to, its seed and provenance."""

    generator: str
    prompt: str
    seed: int
    provenance: dict[str, Any]
    # the pool an answer must be grounded in (document chunks); "" for self-instruct
    context: str = ""
    key: str = field(default="", compare=False)


# --- inputs -----------------------------------------------------------------------------------------------------------


def chunk_document(text: str, max_chars: int, min_chars: int, prose_only: bool) -> list[str]:
    """Cut a document into chunks of whole paragraphs.

    Paragraphs (blank-line separated) are packed in order up to ``max_chars``; a longer paragraph is its own
    chunk. A chunk under ``min_chars`` (a heading alone) is merged into the next one. With ``prose_only``, fenced
    code blocks and table rows are removed first.
    """
    if prose_only:
        text = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.MULTILINE | re.DOTALL)
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    cur = ""
    for para in paras:
        if cur and len(cur) + 2 + len(para) > max_chars and len(cur) >= min_chars:
            chunks.append(cur)
            cur = para
        else:
            cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        if chunks and len(cur) < min_chars:
            chunks[-1] = f"{chunks[-1]}\n\n{cur}"
        else:
            chunks.append(cur)
    return chunks


def read_seed_tasks(path: Path) -> list[dict[str, Any]]:
    """Seed tasks in Self-Instruct's format: one JSON object a line with instruction, instances, is_classification."""
    example = '{"id": "seed_task_0", "instruction": "...", "instances": [{"input": "", "output": "..."}]}'
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise StageError(f"{path}: seed task file not found; set synthesize.self_instruct.seed_tasks") from None
    tasks = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as e:
            raise StageError(
                f"{path}:{n}: not valid JSON ({e.msg}); expected one object a line like {example}"
            ) from None
        instances = task.get("instances") if isinstance(task, dict) else None
        if (
            not isinstance(task, dict)
            or not isinstance(task.get("instruction"), str)
            or not task["instruction"].strip()
            or not isinstance(instances, list)
            or not instances
            or not all(isinstance(i, dict) and isinstance(i.get("output"), str) for i in instances)
        ):
            raise StageError(
                f"{path}:{n}: a seed task needs a non-empty 'instruction' and 'instances' (a list of objects with "
                f"'input' and 'output'); got {line[:120]!r}; expected {example}"
            )
        tasks.append({**task, "id": str(task.get("id", f"line_{n}")), "line": n})
    if not tasks:
        raise StageError(f"{path}: no seed tasks; write at least seeds_per_prompt of them, like {example}")
    return tasks


def _format_task(task: dict[str, Any]) -> str:
    inst = task["instances"][0]
    lines = [f"Instruction: {task['instruction'].strip()}", f"Input: {str(inst.get('input', '')).strip()}"]
    return "\n".join([*lines, f"Output: {inst['output'].strip()}"])


def _call_seed(seed: int, *parts: Any) -> int:
    blob = json.dumps([seed, *parts], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:4], "big")


def document_calls(records: list[Record], cfg: DocumentGenerator, seed: int) -> list[Call]:
    """One call per (chunk, sample) of every document record."""
    calls = []
    for rec in records:
        if rec["kind"] != "document":
            continue
        chunks = chunk_document(rec["text"], cfg.max_chunk_chars, cfg.min_chunk_chars, cfg.use_prose_only)
        for index, chunk in enumerate(chunks):
            prompt = cfg.prompt.format(document=chunk)
            for sample in range(cfg.samples_per_chunk):
                provenance = {
                    "document_id": rec["id"],
                    # a document pulled from a folder names its own file in meta.path
                    "source_file": rec["meta"].get("path", rec["meta"].get("source_file", "")),
                    "row": rec["meta"].get("row", 0),
                    "chunk_index": index,
                    "chunk_sha256": hashlib.sha256(chunk.encode("utf-8")).hexdigest()[:16],
                    "sample": sample,
                }
                calls.append(Call("documents", prompt, _call_seed(seed, prompt, sample), provenance, context=chunk))
    return calls


def self_instruct_calls(tasks: list[dict[str, Any]], cfg: SelfInstruct, seed: int) -> list[Call]:
    """``num_prompts`` prompts, each with ``seeds_per_prompt`` seed tasks drawn with a seeded generator."""
    if cfg.seeds_per_prompt > len(tasks):
        raise StageError(
            f"synthesize.self_instruct.seeds_per_prompt is {cfg.seeds_per_prompt}, but {cfg.seed_tasks} has "
            f"{len(tasks)} seed tasks; lower it or add tasks"
        )
    calls = []
    for i in range(cfg.num_prompts):
        picked = random.Random(_call_seed(seed, "self_instruct", i)).sample(tasks, cfg.seeds_per_prompt)
        prompt = cfg.prompt.format(examples="\n\n".join(_format_task(t) for t in picked))
        provenance = {"prompt_index": i, "seed_tasks": [t["id"] for t in picked]}
        calls.append(Call("self_instruct", prompt, _call_seed(seed, prompt, i), provenance))
    return calls


# --- the generation cache ---------------------------------------------------------------------------------------------


def call_key(model_fp: str, gen: Generation, call: Call) -> str:
    """The cache key of a call: (model, prompt, generation params, seed, stop string)."""
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "model": model_fp,
            "prompt": call.prompt,
            "generation": gen.model_dump(mode="json", exclude={"batch_size"}),
            "seed": call.seed,
            "stop": STOP,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Cache:
    """Completions on disk, one JSON file per call key (``<key[:2]>/<key>.json``), written atomically."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, sort_keys=True, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)


# --- generation -------------------------------------------------------------------------------------------------------


def _seeded_sampler(seeds: list[int], gen: Generation) -> Any:
    """A logits processor that samples each row from its own seeded generator (Gumbel-max over warped logits).

    Greedy decoding over ``warped logits + Gumbel noise`` draws exactly from the warped distribution, and each row's
    noise comes from its own ``torch.Generator``: a row's tokens do not depend on the other rows of the batch.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList([TemperatureLogitsWarper(gen.temperature)])
    if gen.min_p > 0:
        warpers.append(MinPLogitsWarper(gen.min_p))
    if gen.top_p < 1:
        warpers.append(TopPLogitsWarper(gen.top_p))

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator().manual_seed(s) for s in seeds]

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            # scores: (B, V) next-token logits
            warped = warpers(input_ids, scores.float())
            u = torch.stack([torch.rand(warped.shape[1], generator=g) for g in self.generators])
            gumbel = -torch.log(-torch.log(u.clamp_(1e-12, 1 - 1e-7)))
            return warped + gumbel.to(warped.device)

    return SeededSampler()


def load_generator(model_dir: Path, dtype: str) -> tuple[Any, Any]:
    """The generator model (eval mode) and its tokenizer, left-padded for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), trust_remote_code=False)
    model.eval()
    return model, tok


def generate(model: Any, tok: Any, calls: list[Call], gen: Generation) -> Iterator[tuple[Call, dict[str, Any]]]:
    """Complete every call, ``batch_size`` at a time; yields (call, {completion, new_tokens, finished}) per call.

    ``finished`` is false when the completion ran into ``max_new_tokens`` (its last pair may be cut off).
    """
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=gen.max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        stop_strings=list(STOP),
    )
    bar = tqdm(total=len(calls), desc="synthesize: generating", unit="call")
    for start in range(0, len(calls), gen.batch_size):
        batch = calls[start : start + gen.batch_size]
        texts = [
            tok.apply_chat_template([{"role": "user", "content": c.prompt}], tokenize=False, add_generation_prompt=True)
            if gen.use_chat_template
            else c.prompt
            for c in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not gen.use_chat_template)
        with torch.no_grad():
            out = model.generate(
                **enc,
                generation_config=config,
                logits_processor=[_seeded_sampler([c.seed for c in batch], gen)],
                tokenizer=tok,
            )
        new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new), right-padded with pad ids once a row is done
        for call, row in zip(batch, new, strict=True):
            ids = row.tolist()
            stop_at = next((i for i, t in enumerate(ids) if t in (tok.eos_token_id, tok.pad_token_id)), None)
            kept = ids if stop_at is None else ids[:stop_at]
            text = tok.decode(kept, skip_special_tokens=True)
            finished = stop_at is not None or any(s in text for s in STOP)
            yield call, {"completion": text, "new_tokens": len(kept), "finished": finished}
        bar.update(len(batch))
    bar.close()


# --- parsing ----------------------------------------------------------------------------------------------------------


@dataclass
class Parsed:
    """The pairs parsed from one completion and the malformed fragments, each with its reason."""

    pairs: list[dict[str, str]]
    malformed: list[tuple[str, str, dict[str, str]]]  # (reason, detail, partial pair)


def _from_json(text: str) -> Parsed | None:
    """Pairs from a JSON object or array of objects, or None when the text is not JSON."""
    start = text.lstrip()
    if not start.startswith(("{", "[")):
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(start)
    except json.JSONDecodeError as e:
        return Parsed([], [("truncated_json", f"JSON stops at char {e.pos}: {e.msg}", {})])
    items = data if isinstance(data, list) else [data]
    pairs, malformed = [], []
    for item in items:
        if not isinstance(item, dict):
            malformed.append(("no_pair_parsed", f"JSON item is not an object: {str(item)[:60]!r}", {}))
            continue
        pair = {"instruction": "", "input": "", "output": ""}
        for k, v in item.items():
            name = LABELS.get(str(k).lower())
            if name and isinstance(v, str):
                pair[name] = v.strip()
        pairs.append(pair)
    return Parsed(pairs, malformed)


def parse_completion(text: str, finished: bool, stop: tuple[str, ...] = (), lead: str = "") -> Parsed:
    """Parse a completion into instruction/input/output pairs.

    Accepts JSON (an object or a list of objects with instruction|question, input, output|answer|response keys)
    or labelled lines (``Question:``/``Instruction:``, ``Input:``, ``Answer:``/``Output:``/``Response:``, a label's
    value running on until the next label). Text from the first of `stop` on (the model starting a new example)
    is ignored.
    `lead` is the label the prompt ended with (``Question:``): the completion continues it, unless it is JSON.
    A pair without an instruction or an answer is malformed; when the completion was cut off by the token
    limit (``finished`` false), its last pair is ``truncated_pair``.
    """
    cuts = [text.index(s) for s in stop if s in text]
    if cuts:
        text, finished = text[: min(cuts)], True
    parsed = _from_json(text)
    if parsed is None:
        text = lead + text
        pairs: list[dict[str, str]] = []
        cur: dict[str, str] | None = None
        name = ""
        for line in text.splitlines():
            m = _LABEL_LINE.match(line)
            if m:
                name = LABELS[m.group(1).lower()]
                if cur is None or name == "instruction" or cur.get(name):
                    cur = {"instruction": "", "input": "", "output": ""}
                    pairs.append(cur)
                cur[name] = m.group(2).strip()
            elif cur is not None and name:
                cur[name] = f"{cur[name]}\n{line}".strip() if line.strip() or cur[name] else cur[name]
        parsed = Parsed(pairs, [])
        if not pairs:
            detail = f"no labelled pair in {text.strip()[:80]!r}" if text.strip() else "empty completion"
            parsed.malformed.append(("no_pair_parsed", detail, {}))
    if parsed.pairs and not finished:
        parsed.malformed.append(("truncated_pair", "the completion ran into max_new_tokens", parsed.pairs.pop()))
    kept = []
    for pair in parsed.pairs:
        pair = {k: v.strip() for k, v in pair.items()}
        if not pair["instruction"]:
            parsed.malformed.append(("empty_instruction", "a pair with no question or instruction", pair))
        elif not pair["output"]:
            parsed.malformed.append(("empty_answer", "a pair with no answer or output", pair))
        else:
            kept.append(pair)
    parsed.pairs = kept
    return parsed


def lead_label(prompt: str) -> str:
    """The label a prompt ends with (``"Question:"``), which its completion continues; "" when none."""
    m = re.search(r"(?:^|\n)([A-Za-z]+:)\s*$", prompt)
    return m.group(1) if m and m.group(1)[:-1].lower() in LABELS else ""


# --- filters ----------------------------------------------------------------------------------------------------------


def content_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words that carry meaning (not in STOPWORDS)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def check_pair(pair: dict[str, str], context: str, cfg: SynthFilters) -> tuple[str | None, str]:
    """Self-Instruct/Alpaca's filters on one pair: (reason, detail), or (None, "") when it passes."""
    words = pair["instruction"].split()
    if len(words) < cfg.min_instruction_words:
        return "instruction_too_short", f"{len(words)} words < min_instruction_words {cfg.min_instruction_words}"
    if len(words) > cfg.max_instruction_words:
        return "instruction_too_long", f"{len(words)} words > max_instruction_words {cfg.max_instruction_words}"
    for word in cfg.blacklist:
        if re.search(rf"\b{re.escape(word)}\b", pair["instruction"], re.IGNORECASE):
            return "blacklisted_word", f"instruction names {word!r}, which a language model cannot see or make"
    if context:
        answer = content_words(pair["output"])
        if answer:
            have = set(content_words(context))
            ratio = sum(w in have for w in answer) / len(answer)
            if ratio < cfg.min_answer_overlap_ratio:
                return "ungrounded_answer", (
                    f"{ratio:.2f} of the answer's content words are in its chunk < min_answer_overlap_ratio "
                    f"{cfg.min_answer_overlap_ratio}"
                )
    return None, ""


class Novelty:
    """ROUGE-L F1 of an instruction against a growing pool (Self-Instruct's novelty filter)."""

    def __init__(self, pool: list[str]):
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._pool: list[list[str]] = []
        for text in pool:
            self.add(text)

    def _tokens(self, text: str) -> list[str]:
        return self._scorer._tokenizer.tokenize(text)

    def add(self, text: str) -> None:
        tokens = self._tokens(text)
        if tokens:
            self._pool.append(tokens)

    def max_score(self, text: str) -> float:
        """The highest ROUGE-L F1 of `text` against the pool (0 for an empty pool)."""
        from rouge_score.rouge_scorer import _score_lcs

        tokens = self._tokens(text)
        if not tokens:
            return 0.0
        return max((_score_lcs(ref, tokens).fmeasure for ref in self._pool), default=0.0)


# --- the stage --------------------------------------------------------------------------------------------------------


def _pair_record(call: Call, pair: dict[str, str], key: str, index: int, parsed: bool) -> Record:
    meta: dict[str, Any] = {
        # not from a pulled source: source_index -1 sorts synthetic pairs before pulled records
        "source_index": -1,
        "source_file": f"synthesize:{call.generator}",
        "row": index + 1,
        "synthesize": {"generator": call.generator, "call": key[:16], "pair": index, **call.provenance},
    }
    if not parsed:
        meta["synthesize"]["parsed"] = False
    return _records.make_record(
        source=f"synthetic_{call.generator}",
        kind="instruction",
        instruction=pair.get("instruction", ""),
        input=pair.get("input", ""),
        output=pair.get("output", ""),
        meta=meta,
    )


def run(
    params: Any,
    *,
    inputs: dict[str, Path],
    outputs: dict[str, Path],
    cache_dir: Path,
    generator: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Generate, parse and filter the pairs; write the kept records, the rejects and return the metrics.

    Args:
        params: the scoped params (``PARAMS``).
        inputs: ``in`` (curated records), ``model`` (the generator's directory), ``seed_tasks``.
        outputs: ``out`` (kept pairs), ``rejects``.
        cache_dir: the generation cache directory.
        generator: an already loaded (model, tokenizer), used instead of loading ``inputs["model"]`` (tests).
    """
    cfg = params.synthesize
    seed = params.common.seed
    records = _records.read_records(inputs["in"])
    calls: list[Call] = []
    if cfg.documents.enable:
        calls += document_calls(records, cfg.documents, seed)
    seeds: list[dict[str, Any]] = []
    if cfg.self_instruct.enable:
        seeds = read_seed_tasks(inputs["seed_tasks"])
        calls += self_instruct_calls(seeds, cfg.self_instruct, seed)

    model_fp = _io.fingerprint(inputs["model"])
    calls = sorted(
        (
            Call(c.generator, c.prompt, c.seed, c.provenance, c.context, call_key(model_fp, cfg.generation, c))
            for c in calls
        ),
        key=lambda c: c.key,
    )
    cache = Cache(cache_dir)
    done = {c.key: hit for c in calls if (hit := cache.get(c.key)) is not None}
    missing = [c for c in calls if c.key not in done]
    log.info("%d prompts: %d cached, %d to generate", len(calls), len(done), len(missing))
    new_tokens, seconds = 0, 0.0
    if missing:
        model, tok = generator if generator is not None else load_generator(inputs["model"], cfg.generation.dtype)
        t0 = time.perf_counter()
        for call, result in generate(model, tok, missing, cfg.generation):
            cache.put(call.key, result)  # each call is kept as soon as it is made: a killed run resumes
            done[call.key] = result
            new_tokens += result["new_tokens"]
        seconds = time.perf_counter() - t0

    pool = [t["instruction"] for t in seeds]
    pool += [r["instruction"] for r in records if r["kind"] in ("instruction", "qa") and r["instruction"]]
    novelty = Novelty(pool)
    kept: dict[str, Record] = {}
    rejects: list[tuple[Record, str, str, str]] = []
    dropped: Counter[str] = Counter()
    pairs_parsed = 0
    malformed = 0

    def reject(rec: Record, reason: str, detail: str) -> None:
        dropped[reason] += 1
        rejects.append((rec, "synthesize", reason, detail))

    for call in calls:
        result = done[call.key]
        parsed = parse_completion(result["completion"], result["finished"], STOP, lead_label(call.prompt))
        malformed += len(parsed.malformed)
        for reason, detail, partial in parsed.malformed:
            rec = _pair_record(call, partial, call.key, -1, parsed=False)
            rec["meta"]["synthesize"]["completion"] = result["completion"]
            reject(rec, reason, detail)
        pairs_parsed += len(parsed.pairs)
        for index, pair in enumerate(parsed.pairs):
            rec = _pair_record(call, pair, call.key, index, parsed=True)
            reason, detail = check_pair(pair, call.context, cfg.filters)
            if reason is None and cfg.filters.use_moderate_rules:
                moderated, reason, detail = rules.check_record(rec, params.moderate)
                if reason is None:
                    rec = moderated
            if reason is None:
                score = novelty.max_score(rec["instruction"])
                rec["meta"]["synthesize"]["max_rouge_l"] = round(score, 4)
                if score > cfg.filters.max_rouge_l:
                    reason, detail = "not_novel", f"ROUGE-L {score:.2f} > max_rouge_l {cfg.filters.max_rouge_l}"
                elif rec["id"] in kept:
                    reason, detail = "not_novel", f"the same pair as {rec['id']}"
            if reason is not None:
                reject(rec, reason, detail)
                continue
            kept[rec["id"]] = rec
            novelty.add(rec["instruction"])

    with _io.atomic_outputs(outputs["out"], outputs["rejects"]) as (out, rej):
        _records.write_records(out, list(kept.values()))
        _records.write_rejects(rej, rejects)
    total = pairs_parsed + malformed  # every completion yields parsed pairs and/or malformed fragments
    kept_by = Counter(r["meta"]["synthesize"]["generator"] for r in kept.values())
    return _io.drop_metrics(
        total,
        len(kept),
        dropped,
        prompts=len(calls),
        model_calls=len(missing),
        cache_hits=len(calls) - len(missing),
        pairs_parsed=pairs_parsed,
        acceptance_rate=round(len(kept) / total, 4) if total else 0.0,
        kept_documents=kept_by["documents"],
        kept_self_instruct=kept_by["self_instruct"],
        new_tokens=new_tokens,
        tokens_per_s=round(new_tokens / seconds, 1) if seconds else 0.0,
    )


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m stages.curate.synthesize")
    ap.add_argument("--params", required=True, type=Path, help="params.yaml")
    ap.add_argument("--in", dest="inp", required=True, type=Path, help="curated records (parquet)")
    ap.add_argument("--model", required=True, type=Path, help="the generator model directory (models/<variant>/base)")
    ap.add_argument("--seed-tasks", required=True, type=Path, help="seed tasks (Self-Instruct seed_tasks.jsonl format)")
    ap.add_argument("--out", required=True, type=Path, help="kept pairs (parquet)")
    ap.add_argument("--rejects", required=True, type=Path, help="rejected pairs (parquet)")
    ap.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
    ap.add_argument("--cache", required=True, type=Path, help="generation cache directory")
    args = ap.parse_args()
    params = _params.load(args.params, PARAMS)
    if Path(params.synthesize.self_instruct.seed_tasks) != args.seed_tasks:
        raise StageError(
            f"--seed-tasks {args.seed_tasks} differs from synthesize.self_instruct.seed_tasks "
            f"{params.synthesize.self_instruct.seed_tasks}; make dvc.yaml and params.yaml name the same file"
        )
    for key in PARAMS:
        cli.log_params(key, _params.get(params, key))
    metrics = run(
        params,
        inputs={"in": args.inp, "model": args.model, "seed_tasks": args.seed_tasks},
        outputs={"out": args.out, "rejects": args.rejects},
        cache_dir=args.cache,
    )
    with _io.atomic_outputs(args.metrics) as (tmp,):
        _io.write_json(tmp, metrics)
    log.info("synthesize: %s", metrics)


if __name__ == "__main__":
    cli.run_main(main)
