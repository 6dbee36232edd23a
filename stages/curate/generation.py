"""Generation calls of the synthesize stage: what to ask the local LLM, and the ids and cache keys of the calls.

A shared module, not a stage: the synthesize stage builds its :class:`Call` list here (document chunks into
``documents.prompt``, seed tasks into ``self_instruct.prompt``), gives each call its content id (:func:`call_id`,
recorded in the output) and its cache key (:func:`cache_key`: the id and the source of :mod:`stages.curate.llm`,
which completes the missing calls), and opens the cache of completions (:func:`completion_cache`: its entries are
checked before they are served, and keyed on the versions of the libraries that generate too).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core import cache as _cache
from stages.core import code as _code
from stages.core import io as _io
from stages.core.io import StageError
from stages.core.params.synthesize import DocumentGenerator, Generation, SelfInstruct
from stages.core.records import Record
from stages.curate import llm as _llm
from stages.curate.llm import STOP


@dataclass(frozen=True)
class Call:
    """One generation call: a prompt, the generator it belongs to, its seed and provenance."""

    generator: str
    prompt: str
    seed: int
    provenance: dict[str, Any]
    # the pool an answer must be grounded in (document chunks); "" for self-instruct
    context: str = ""
    # its content id (:func:`call_id`), set once the model is known
    id: str = field(default="", compare=False)


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
    tasks = []
    fix = "set synthesize.self_instruct.seed_tasks"
    for n, task in _io.read_jsonl(path, f"one object a line like {example}", label="seed task file", fix=fix):
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
                f"{path}, line {n}: a seed task needs a non-empty 'instruction' and 'instances' (a list of objects "
                f"with 'input' and 'output'); got {_io.snippet(task, 120)}; expected {example}"
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


# --- ids and cache keys ---------------------------------------------------------------------------------------------


def call_id(model_fp: str, gen: Generation, call: Call) -> str:
    """The content id of a call: sha256 of (model files, prompt, generation params, seed, stop strings).

    What the output records of the call (``meta.synthesize.call``) and the order its pairs are checked for novelty
    in; the code that computes the completion is not part of it (a code edit that changes no completion changes no
    output byte): :func:`cache_key` adds it.
    """
    blob = json.dumps(
        {
            # a constant of the id's payload since the first outputs, kept so that their ids stay as they are
            "v": 1,
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


def cache_key(call_id: str, code: str) -> str:
    """The key of a call's completion in the cache: its id and `code`, :func:`completion_code` (the source of the code
    that computes the completion), so that an edit there generates again and no version constant needs a bump."""
    return hashlib.sha256(f"{call_id}\0{code}".encode()).hexdigest()


def completion_code() -> str:
    """:func:`stages.core.code.code_hash` of :mod:`stages.curate.llm`: model loading, seeded sampling, generating."""
    return _code.code_hash(_llm.__name__)


# The libraries that generate a completion (their versions are part of its cache entry's name).
LIBRARIES = ("accelerate", "tokenizers", "torch", "transformers")
# What synthesize reads of a cached completion (:func:`stages.curate.llm.generate`'s result).
COMPLETION = {"fields": {"completion": "str", "finished": "bool", "new_tokens": "int"}}


def completion_cache(root: Path) -> _cache.JsonCache:
    """The cache of completions under `root`: entries of the code of :mod:`stages.curate.llm` and :data:`LIBRARIES`,
    each checked (checksum, :data:`COMPLETION`) before it is served."""
    return _cache.JsonCache(root, _cache.origin((_llm.__name__,), LIBRARIES), COMPLETION)
