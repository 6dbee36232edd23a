"""Synthesize: Alpaca-style instruction pairs from the curated documents and from seed tasks, with a local LLM.

Inputs: ``--in`` (``data/curated.parquet``): its documents are the corpus the grounded pairs come from, its
    instruction pairs join the pool generated instructions must be novel against, and every record is what a pair
    must not copy; the reference files of ``dedup.references`` (held-out probe items); ``--model`` (a directory
    made by the ``generator`` stage, ``models/generator``): the generator; ``--seed-tasks``
    (``synthesize.self_instruct.seed_tasks``, Self-Instruct's ``seed_tasks.jsonl`` format).
Outputs: ``--out`` (``data/synthetic.parquet``), kept pairs as ``instruction`` records of
    ``stages.core.records``, sorted by id, each with ``meta.synthesize``: the generator (``documents`` |
    ``self_instruct``), the call's content id (16 hex digits), the chunk
    (document id, source file, chunk index) or the seed task ids, and its max ROUGE-L against the pool;
    ``--rejects`` (``data/rejected/synthesize.parquet``): every dropped pair or malformed output with its reason;
    ``--metrics`` (``metrics/synthesize.json``): prompts, pairs_parsed, total, kept, dropped_<reason>,
    acceptance_rate, kept_documents, kept_self_instruct: numbers of the data only. How many prompts came from the
    cache, the model calls, new tokens and tokens/s go to the log (they depend on the cache and the machine).
    ``--cache`` (``.steep_cache/synthesize``): one JSON file per generation call, named by its cache key.
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

A call's content id is ``sha256(model files, prompt, generation params, call seed)``; its completion is cached under
the id and :func:`stages.core.code.code_hash` of :mod:`stages.curate.llm` (the code that loads the model and samples),
so an edit of that code generates again (with no version constant to bump) while the ids in the output stay, and
under the versions of the libraries that generate; an entry is checked before it is served (its checksum and the
fields read here: :func:`stages.curate.generation.completion_cache`), and a damaged one is generated again. A
call's seed comes from ``common.seed`` and the call itself, and sampling draws from a generator of that seed alone
(Gumbel-max over the warped logits), so a call's output does not depend on the other prompts of its batch: a rerun
with nothing changed makes zero model calls, and editing one document makes calls for that document's chunks only.

The calls (prompts, ids, cache keys) are built by :mod:`stages.curate.generation` and run by
:mod:`stages.curate.llm`; completions are parsed and pairs filtered by :mod:`stages.curate.pairs`.

Drop reasons, in order: malformed output (``no_pair_parsed``: nothing parsable; ``truncated_json``: JSON cut off;
``truncated_pair``: the last pair cut off by ``max_new_tokens``; ``empty_instruction``; ``empty_answer``), then the
filters of Self-Instruct/Alpaca: ``instruction_too_short`` / ``instruction_too_long`` (words),
``blacklisted_word``, ``ungrounded_answer`` (document pairs: too few of the answer's content words in the chunk),
then moderate's rules (the same ``stages.curate.rules.check_record``, with its reason codes: ``canned_response``,
``pii_email``, ...), then ``not_novel`` (ROUGE-L F1 above ``max_rouge_l`` against the seed instructions, the curated
instructions and the pairs kept before it, in call-id order), then dedup's methods on the kept pairs
(:mod:`stages.curate.decontaminate`, with ``dedup.minhash``, ``dedup.semantic`` and ``dedup.references``, under
dedup's reason codes): ``exact_duplicate``, ``minhash_duplicate`` and ``semantic_duplicate`` against the curated
records and the earlier pairs, and ``reference_overlap`` against the held-out reference texts, so that no generated
pair restates a probe item. Those four are always in the metrics (0 when nothing matched), as in dedup's;
``flagged_minhash_duplicate`` and ``flagged_semantic_duplicate`` count the copies kept with ``action: flag``
(``meta.synthesize.flags``). The semantic pass embeds with ``common.embedding`` through dedup's embedding cache
(``--embeddings``), so the curated records' vectors are cache hits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core import records as _records
from stages.core.io import StageError
from stages.core.records import Record, record_text
from stages.curate import rules
from stages.curate.decontaminate import REASONS as DEDUP_REASONS
from stages.curate.decontaminate import decontaminate
from stages.curate.embed import embed
from stages.curate.generation import (
    Call,
    cache_key,
    call_id,
    completion_cache,
    completion_code,
    document_calls,
    read_seed_tasks,
    self_instruct_calls,
)
from stages.curate.llm import STOP, generate, load_generator
from stages.curate.pairs import Novelty, check_pair, lead_label, parse_completion
from stages.curate.references import read_references

log = logging.getLogger("steep.synthesize")


def _local_paths(params: _params.Scoped, variant: str | None, inputs: Mapping[str, Path]) -> list[tuple[str, str]]:
    """The seed tasks file and the reference files (dependencies of the stage in dvc.yaml)."""
    refs = [(ref.path, "dedup.references") for ref in params.dedup.references]
    return [(params.synthesize.self_instruct.seed_tasks, "synthesize.self_instruct.seed_tasks"), *refs]


STAGE = cli.Stage(
    # synthesize.generator is the generator stage's: this stage reads its checkpoint (--model), not its source
    params=(
        "common.seed",
        "common.embedding",
        "moderate",
        # dedup's methods and references, run on the pairs (stages.curate.decontaminate)
        "dedup.minhash",
        "dedup.semantic",
        "dedup.references",
        "synthesize.generation",
        "synthesize.documents",
        "synthesize.self_instruct",
        "synthesize.filters",
    ),
    inputs={
        "in": "curated records (parquet)",
        "model": "the generator model directory",
        "seed_tasks": "seed tasks (Self-Instruct seed_tasks.jsonl format)",
    },
    outputs={"out": "kept pairs (parquet)", "rejects": "rejected pairs (parquet)"},
    options={"cache": "generation cache directory", "embeddings": "embedding cache directory (dedup's)"},
    local_paths=_local_paths,
)
PARAMS = list(STAGE.params)


# --- the stage --------------------------------------------------------------------------------------------------------


def _pair_record(call: Call, pair: dict[str, str], index: int, parsed: bool) -> Record:
    meta: dict[str, Any] = {
        # not from a pulled source: source_index -1 sorts synthetic pairs before pulled records
        "source_index": -1,
        "source_file": f"synthesize:{call.generator}",
        "row": index + 1,
        "synthesize": {"generator": call.generator, "call": call.id[:16], "pair": index, **call.provenance},
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
    cache: Path,
    embeddings: Path | None = None,
    generator: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Generate, parse and filter the pairs; write the kept records, the rejects and return the metrics.

    Args:
        params: the scoped params (``PARAMS``).
        inputs: ``in`` (curated records), ``model`` (the generator's directory), ``seed_tasks``.
        outputs: ``out`` (kept pairs), ``rejects``.
        cache: the generation cache directory.
        embeddings: the embedding cache directory (dedup's); None: a cache under `cache`.
        generator: an already loaded (model, tokenizer), used instead of loading ``inputs["model"]`` (tests).
    """
    cfg = params.synthesize
    seed = params.common.seed
    if Path(cfg.self_instruct.seed_tasks).resolve() != Path(inputs["seed_tasks"]).resolve():
        raise StageError(
            f"--seed-tasks {inputs['seed_tasks']} differs from synthesize.self_instruct.seed_tasks "
            f"{cfg.self_instruct.seed_tasks}; make dvc.yaml and params.yaml name the same file"
        )
    records = _records.read_records(inputs["in"])
    references = read_references(params.dedup.references)
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
            Call(c.generator, c.prompt, c.seed, c.provenance, c.context, call_id(model_fp, cfg.generation, c))
            for c in calls
        ),
        key=lambda c: c.id,
    )
    code = completion_code()
    keys = {c.id: cache_key(c.id, code) for c in calls}
    calls_cache = completion_cache(cache)  # every entry checked before it is served; a damaged one generated again
    done = {c.id: hit for c in calls if (hit := calls_cache.get(keys[c.id])) is not None}
    missing = [c for c in calls if c.id not in done]
    log.info("%d prompts: %d cached, %d to generate", len(calls), len(done), len(missing))
    new_tokens, seconds = 0, 0.0
    if missing:
        model, tok = generator if generator is not None else load_generator(inputs["model"], cfg.generation.dtype)
        t0 = time.perf_counter()
        for call, result in generate(model, tok, missing, cfg.generation):
            calls_cache.put(keys[call.id], result)  # each call is kept as soon as it is made: a killed run resumes
            done[call.id] = result
            new_tokens += result["new_tokens"]
        seconds = time.perf_counter() - t0
        log.info(
            "generated %d completions, %d new tokens in %.1f s (%.1f tokens/s)",
            len(missing),
            new_tokens,
            seconds,
            new_tokens / max(seconds, 1e-9),
        )

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
        result = done[call.id]
        parsed = parse_completion(result["completion"], result["finished"], STOP, lead_label(call.prompt))
        malformed += len(parsed.malformed)
        for reason, detail, partial in parsed.malformed:
            rec = _pair_record(call, partial, -1, parsed=False)
            rec["meta"]["synthesize"]["completion"] = result["completion"]
            reject(rec, reason, detail)
        pairs_parsed += len(parsed.pairs)
        for index, pair in enumerate(parsed.pairs):
            rec = _pair_record(call, pair, index, parsed=True)
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

    # dedup's methods on the pairs kept so far, in the order they were kept (the earlier of two copies stays)
    pairs = list(kept.values())
    vectors = None
    if params.dedup.semantic.enable and pairs:
        emb = params.common.embedding
        texts = [record_text(r, emb.fields) for r in [*records, *pairs]]
        vectors = embed(texts, emb, embeddings if embeddings is not None else Path(cache) / "embeddings")
    found = decontaminate(pairs, records, references, params.dedup.minhash, seed, params.dedup.semantic, vectors)
    dropped.update(dict.fromkeys(DEDUP_REASONS, 0))  # always in the metrics, as dedup's reasons are in its own
    for i, rec in enumerate(list(kept.values())):
        if i in found.dropped:
            del kept[rec["id"]]
            reject(rec, *found.dropped[i])
        elif i in found.flagged:
            rec["meta"]["synthesize"]["flags"] = dict(found.flagged[i])
    log.info("decontaminated against %d reference texts and %d curated records", len(references), len(records))

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
        pairs_parsed=pairs_parsed,
        acceptance_rate=round(len(kept) / total, 4) if total else 0.0,
        kept_documents=kept_by["documents"],
        kept_self_instruct=kept_by["self_instruct"],
        flagged_minhash_duplicate=sum("minhash_duplicate" in f for f in found.flagged.values()),
        flagged_semantic_duplicate=sum("semantic_duplicate" in f for f in found.flagged.values()),
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the synthesize stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
