"""Generation calls of the synthesize stage: what to ask the local LLM, and asking it, cached and seeded.

A shared module, not a stage: the synthesize stage builds its :class:`Call` list here (document chunks into
``documents.prompt``, seed tasks into ``self_instruct.prompt``), keys each call for the on-disk :class:`Cache`,
and completes the missing ones with :func:`generate`, whose sampling draws each row from its own seed so that
a call's output does not depend on the other calls of its batch.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.core.io import StageError
from stages.core.params.synthesize import DocumentGenerator, Generation, SelfInstruct
from stages.core.records import Record

# Raised when a cached call's format changes: older entries are then simply not found.
CACHE_VERSION = 1
# Where a completion ends: the model starting the next few-shot example (a new text, question or task) or a
# heading of its own. Generation stops there, and the parser ignores anything after. One set for every call, so
# that a row's stopping does not depend on the other calls of its batch.
STOP = ("\nText:", "\nQuestion:", "\nInstruction:", "\n#")


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
