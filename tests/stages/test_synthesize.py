"""Tests of the synthesize stage: the parser on recorded model outputs, the filters, and the whole stage on a tiny
random model (cache: zero calls on a rerun, one document's calls after editing it; batch-independent sampling)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from stages.core import io as _io
from stages.core import params as _params
from stages.core import records as _records
from stages.core.io import StageError
from stages.curate import generation, pairs, synthesize
from tests.stages._code import printed_after_edits
from tests.stages._tiny import chat_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parents[2]

# Completions SmolLM2-135M-Instruct gave for the demo prompts (after the prompt's closing "Question:" / "Instruction:").
RECORDED = {
    "grounded": " What is the purpose of the pull stage?\nAnswer: The pull stage reads every entry of "
    "`pull.sources` and writes one Parquet per source under `data/pulled/`.\n\nText:",
    "invented_next_example": " How many books can be renewed?\nAnswer: Twice.\n\nText: The company has a new policy."
    "\nQuestion: Who must wear a uniform?\nAnswer: All employees.",
    "empty_answer": " How to create a random sentence-embedding model?\n\nAnswer:\n\nQuestion: How to create a "
    "random sentence-embedding model?\n\nAnswer:\n\n",
    "no_pair": "The user's questions are:\n1. What is the moderating role?\n2. How does the moderating role work?",
    "truncated_json": '{"instruction": "List three uses of a dedup stage", "output": "It removes exact copies, ne',
    "json_list": '[{"question": "Which stage removes near-duplicates?", "answer": "The dedup stage."}]',
    "cut_off": " What is the maximum number of tokens?\nAnswer: The maximum number of tokens that can be added to a",
}

DOC = (
    "# Pulling sources\n\n"
    "The pull stage reads every entry of `pull.sources` and writes one Parquet file per source under the pulled "
    "folder. Each record keeps its provenance: the source file, the line or row, and the sha256 of the file.\n\n"
    "```yaml\npull:\n  sources: []\n```\n\n"
    "| key | meaning |\n|---|---|\n| name | the source name |\n\n"
    "Sources can be JSONL, JSON, CSV or Parquet files, folders of documents, Hugging Face datasets or web pages. "
    "A malformed line stops the stage with the file and the line number."
)


# --- parser -------------------------------------------------------------------------------------------------------


def test_parser_on_recorded_outputs() -> None:
    stop = generation.STOP
    p = pairs.parse_completion(RECORDED["grounded"], True, stop, "Question:")
    assert p.pairs == [
        {
            "instruction": "What is the purpose of the pull stage?",
            "input": "",
            "output": "The pull stage reads every entry of `pull.sources` and writes one Parquet per source under "
            "`data/pulled/`.",
        }
    ]
    assert p.malformed == []

    # the model starting a new "Text:" example is cut there: its invented pair is not taken
    p = pairs.parse_completion(RECORDED["invented_next_example"], False, stop, "Question:")
    assert [q["instruction"] for q in p.pairs] == ["How many books can be renewed?"] and p.malformed == []

    p = pairs.parse_completion(RECORDED["empty_answer"], True, stop, "Question:")
    assert p.pairs == [] and [m[0] for m in p.malformed] == ["empty_answer"]
    p = pairs.parse_completion(RECORDED["empty_answer"], True, (), "Question:")
    assert p.pairs == [] and [m[0] for m in p.malformed] == ["empty_answer", "empty_answer"]

    p = pairs.parse_completion(RECORDED["no_pair"], True, stop)
    assert p.pairs == [] and [m[0] for m in p.malformed] == ["no_pair_parsed"]

    p = pairs.parse_completion(RECORDED["truncated_json"], False, stop, "Question:")
    assert p.pairs == [] and [m[0] for m in p.malformed] == ["truncated_json"]

    p = pairs.parse_completion(RECORDED["json_list"], True, stop, "Question:")
    assert p.pairs == [
        {"instruction": "Which stage removes near-duplicates?", "input": "", "output": "The dedup stage."}
    ]

    # ran into max_new_tokens: the last pair is cut off
    p = pairs.parse_completion(RECORDED["cut_off"], False, stop, "Question:")
    assert p.pairs == [] and [m[0] for m in p.malformed] == ["truncated_pair"]

    p = pairs.parse_completion("", True, stop, "Question:")
    assert [m[0] for m in p.malformed] == ["empty_instruction"]
    p = pairs.parse_completion("", True, stop)
    assert [m[0] for m in p.malformed] == ["no_pair_parsed"]


def test_parser_reads_self_instruct_blocks() -> None:
    text = (
        "Instruction: Sort the words by length.\nInput: pear, fig, banana\nOutput: fig, pear, banana.\n\n"
        "Instruction: Name a primary colour.\nInput:\nOutput: Red.\nInstruction: Half a task"
    )
    p = pairs.parse_completion(text, True, generation.STOP)
    # the stop string ("\nInstruction:") ends the completion at the second task
    assert p.pairs == [
        {"instruction": "Sort the words by length.", "input": "pear, fig, banana", "output": "fig, pear, banana."}
    ]
    p = pairs.parse_completion(text, True, ())
    assert [q["instruction"] for q in p.pairs] == ["Sort the words by length.", "Name a primary colour."]
    assert [m[0] for m in p.malformed] == ["empty_answer"]


# --- inputs and filters ---------------------------------------------------------------------------------------------


def test_chunks_are_whole_paragraphs_without_code_or_tables() -> None:
    chunks = generation.chunk_document(DOC, max_chars=300, min_chars=100, prose_only=True)
    assert len(chunks) == 2
    assert chunks[0].startswith("# Pulling sources\n\nThe pull stage")  # the heading is merged into its paragraph
    assert not any("```" in c or "|" in c for c in chunks)
    assert all(len(c) <= 300 for c in chunks)
    kept = generation.chunk_document(DOC, max_chars=5000, min_chars=100, prose_only=False)
    assert kept == [DOC.strip()]


def _cfg(**over: Any) -> Any:
    p = _params.load(
        ROOT / "params.yaml", ["synthesize"], overrides={f"synthesize.filters.{k}": v for k, v in over.items()}
    )
    return p.synthesize.filters


def test_filters_give_their_reason() -> None:
    cfg = _cfg()
    ctx = "The dedup stage drops near copies with MinHash and paraphrases with sentence embeddings."

    def check(instruction: str, output: str, context: str = ctx) -> str | None:
        return pairs.check_pair({"instruction": instruction, "input": "", "output": output}, context, cfg)[0]

    assert check("Which stage drops near copies?", "The dedup stage drops them with MinHash.") is None
    assert check("Why?", "The dedup stage.") == "instruction_too_short"
    assert check(" ".join(["word"] * 151), "The dedup stage.") == "instruction_too_long"
    assert check("Describe the image of the pipeline.", "The dedup stage.") == "blacklisted_word"
    assert check("Draw the stages as boxes.", "The dedup stage.") == "blacklisted_word"
    assert check("Which stage drops near copies?", "The most recent record is from a court case in Ohio.") == (
        "ungrounded_answer"
    )
    # self-instruct pairs have no chunk: grounding is not checked
    assert check("Which stage drops near copies?", "A court case in Ohio.", context="") is None


def test_novelty_is_rouge_l_against_the_pool() -> None:
    novelty = pairs.Novelty(["Give three tips for staying healthy."])
    assert novelty.max_score("Give three tips for staying healthy.") == pytest.approx(1.0)
    assert novelty.max_score("Give three tips for staying healthy and happy.") > 0.7
    assert novelty.max_score("Translate the sentence into French.") < 0.3
    novelty.add("Translate the sentence into French.")
    assert novelty.max_score("Translate the sentence into French.") == pytest.approx(1.0)


def test_seed_tasks_errors_name_file_and_line(tmp_path: Path) -> None:
    good = {"id": "seed_task_0", "instruction": "Say hi.", "instances": [{"input": "", "output": "Hi."}]}
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(StageError, match=r"seeds.jsonl, line 2: not valid JSON"):
        generation.read_seed_tasks(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"instruction": "No instances."}) + "\n")
    with pytest.raises(StageError, match=r"seeds.jsonl, line 2: a seed task needs .*'instances'"):
        generation.read_seed_tasks(path)
    with pytest.raises(StageError, match="seed task file not found"):
        generation.read_seed_tasks(tmp_path / "missing.jsonl")
    demo = generation.read_seed_tasks(ROOT / "data/sources/seed_tasks.jsonl")
    assert len(demo) >= 30 and any(t["is_classification"] for t in demo)


# --- the whole stage on a tiny model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    return tiny_llama(root / "model", chat_tokenizer(root / "tok"), max_positions=4096)


def _docs(tmp: Path, texts: list[str], extra: list[_records.Record] | None = None) -> Path:
    records = [
        _records.make_record(
            source="docs",
            kind="document",
            text=t,
            meta={"source_file": f"docs/{i}.md", "row": i + 1, "source_index": 0},
        )
        for i, t in enumerate(texts)
    ]
    path = tmp / "curated.parquet"
    _records.write_records(path, records + (extra or []))
    return path


def _params_for(**over: Any) -> Any:
    overrides = {
        "synthesize.generation.max_new_tokens": 12,
        "synthesize.generation.batch_size": 3,
        "synthesize.documents.max_chunk_chars": 300,
        "synthesize.documents.min_chunk_chars": 100,
        "synthesize.documents.samples_per_chunk": 2,
        # off by default (params.yaml); the tests run both generators
        "synthesize.self_instruct.enable": True,
        "synthesize.self_instruct.num_prompts": 2,
        **over,
    }
    return _params.load(ROOT / "params.yaml", synthesize.PARAMS, overrides=overrides)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run(params: Any, curated: Path, model: Path, out: Path, cache: Path) -> dict[str, Any]:
    """The stage's metrics, with its log's counts beside them: model_calls, cache_hits, new_tokens."""
    out.mkdir(parents=True, exist_ok=True)
    handler = _Lines()
    logger = logging.getLogger("steep.synthesize")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        m = synthesize.run(
            params,
            inputs={"in": curated, "model": model, "seed_tasks": ROOT / "data/sources/seed_tasks.jsonl"},
            outputs={"out": out / "synthetic.parquet", "rejects": out / "rejected.parquet"},
            cache=cache,
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert not {"model_calls", "cache_hits", "new_tokens", "tokens_per_s"} & set(m)  # machine and cache: the log's
    text = "\n".join(handler.lines)
    prompts, cached, missing = map(int, re.search(r"(\d+) prompts: (\d+) cached, (\d+) to generate", text).groups())
    assert prompts == m["prompts"]
    tokens = re.search(r"generated \d+ completions, (\d+) new tokens in [\d.]+ s \(([\d.]+) tokens/s\)", text)
    new_tokens, rate = (int(tokens[1]), float(tokens[2])) if tokens else (0, 0.0)
    return {**m, "model_calls": missing, "cache_hits": cached, "new_tokens": new_tokens, "tokens_per_s": rate}


def _counts_add_up(m: dict[str, Any], out: Path) -> None:
    dropped = {k: v for k, v in m.items() if k.startswith("dropped_")}
    assert m["total"] == m["kept"] + sum(dropped.values())
    assert pq.read_table(out / "synthetic.parquet").num_rows == m["kept"]
    reasons = pq.read_table(out / "rejected.parquet").column("reason").to_pylist()
    assert {f"dropped_{r}": reasons.count(r) for r in set(reasons)} == {k: v for k, v in dropped.items() if v}
    # dedup's reasons are always counted, as in dedup's own metrics
    assert {f"dropped_{r}" for r in ("exact_duplicate", "minhash_duplicate", "reference_overlap")} <= set(dropped)


OTHER = (
    "Dedup removes copies in three passes. Exact copies share the hash of their normalized text; near copies "
    "share most of their word shingles, which MinHash estimates; paraphrases have sentence embeddings whose cosine "
    "similarity reaches the threshold. The first record of a cluster survives."
)


def test_rerun_makes_no_calls_and_an_edit_regenerates_only_that_document(model_dir: Path, tmp_path: Path) -> None:
    params = _params_for()
    curated = _docs(tmp_path, [DOC, OTHER])
    cache = tmp_path / "cache"
    m1 = _run(params, curated, model_dir, tmp_path / "a", cache)
    # DOC: 2 chunks, OTHER: 1 chunk, 2 samples each; 2 self-instruct prompts
    assert (m1["prompts"], m1["model_calls"], m1["cache_hits"]) == (8, 8, 0)
    assert m1["new_tokens"] > 0 and m1["tokens_per_s"] > 0
    _counts_add_up(m1, tmp_path / "a")

    m2 = _run(params, curated, model_dir, tmp_path / "b", cache)
    assert (m2["model_calls"], m2["cache_hits"], m2["new_tokens"]) == (0, 8, 0)
    for name in ("synthetic.parquet", "rejected.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    edited = _docs(tmp_path, [DOC, OTHER.replace("three passes", "three passes, in order")])
    m3 = _run(params, edited, model_dir, tmp_path / "c", cache)
    assert (m3["model_calls"], m3["cache_hits"]) == (2, 6)  # OTHER's one chunk, two samples

    # a generation param is part of every key
    m4 = _run(_params_for(**{"synthesize.generation.temperature": 0.9}), curated, model_dir, tmp_path / "d", cache)
    assert m4["model_calls"] == 8


def test_sampling_does_not_depend_on_the_batch(model_dir: Path, tmp_path: Path) -> None:
    curated = _docs(tmp_path, [DOC, OTHER])
    a = _run(
        _params_for(**{"synthesize.generation.batch_size": 1}), curated, model_dir, tmp_path / "a", tmp_path / "c1"
    )
    b = _run(
        _params_for(**{"synthesize.generation.batch_size": 8}), curated, model_dir, tmp_path / "b", tmp_path / "c2"
    )
    assert a["model_calls"] == b["model_calls"] == 8
    completions = [
        sorted(json.loads(p.read_text())["value"]["completion"] for p in (tmp_path / c).rglob("*.json"))
        for c in ("c1", "c2")
    ]
    assert completions[0] == completions[1]
    assert len(set(completions[0])) > 1  # seeds differ between calls


def test_recorded_completions_go_through_every_filter(model_dir: Path, tmp_path: Path) -> None:
    """Completions put in the cache (as a model would have made them) are parsed and filtered with zero calls."""
    params = _params_for(**{"synthesize.self_instruct.enable": False, "synthesize.documents.samples_per_chunk": 3})
    existing = _records.make_record(
        source="demo",
        kind="instruction",
        instruction="What does the pull stage write under the pulled folder?",
        output="One Parquet file per source.",
        meta={"source_file": "a.jsonl", "row": 1, "source_index": 0},
    )
    curated = _docs(tmp_path, [DOC], extra=[existing])
    calls = generation.document_calls(_records.read_records(curated), params.synthesize.documents, params.common.seed)
    assert [c.provenance["chunk_index"] for c in calls] == [0, 0, 0, 1, 1, 1]
    fp = _io.fingerprint(model_dir)
    code = generation.completion_code()
    keys = [generation.cache_key(generation.call_id(fp, params.synthesize.generation, c), code) for c in calls]
    completions = [
        # chunk 0 (the pull stage writes one Parquet file per source): an answer not in the chunk; the curated pair
        # asked again (not novel); a request a language model cannot act on
        " Who wrote the pull stage?\nAnswer: A team of scientists in Ohio in 1998.\n\nText:",
        " What does the pull stage write under the pulled folder?\nAnswer: One Parquet file per source.",
        " Describe the image of the pull stage.\nAnswer: The pull stage reads every entry.\nQuestion: Why?",
        # chunk 1 (source formats): a good pair and its near copy (one of the two is kept), a canned answer
        " Which file formats can a source be?\nAnswer: JSONL, JSON, CSV or Parquet files, folders of documents, "
        "Hugging Face datasets or web pages.",
        " Which file formats can a source be in?\nAnswer: JSONL, JSON, CSV or Parquet files.",
        " What does a malformed line do?\nAnswer: As an AI model, I cannot say, but a malformed line stops the stage "
        "with the file and the line number.",
    ]
    cache = generation.completion_cache(tmp_path / "cache")
    for key, text in zip(keys, completions, strict=True):
        # the prompt ends in "Question:", which the completion continues
        cache.put(key, {"completion": text, "new_tokens": 40, "finished": True})
    m = _run(params, curated, model_dir, tmp_path / "out", tmp_path / "cache")
    assert m["model_calls"] == 0 and m["pairs_parsed"] == 6
    assert {k: v for k, v in m.items() if k.startswith("dropped_")} == {
        "dropped_not_novel": 2,
        "dropped_blacklisted_word": 1,
        "dropped_canned_response": 1,
        "dropped_ungrounded_answer": 1,
        "dropped_exact_duplicate": 0,
        "dropped_minhash_duplicate": 0,
        "dropped_semantic_duplicate": 0,
        "dropped_reference_overlap": 0,
    }
    kept = _records.read_records(tmp_path / "out" / "synthetic.parquet")
    assert len(kept) == 1 and kept[0]["instruction"].startswith("Which file formats can a source be")
    meta = kept[0]["meta"]
    assert meta["synthesize"]["generator"] == "documents" and meta["synthesize"]["source_file"] == "docs/0.md"
    assert meta["synthesize"]["chunk_index"] == 1 and meta["moderate"]["passed"]  # moderate's rules ran on it
    _counts_add_up(m, tmp_path / "out")


def test_cache_keys_follow_the_code_that_generates(tmp_path: Path) -> None:
    """A call's cache key changes with an edit of stages/curate/llm.py (model loading and sampling), not with one of
    prompt building (generation.py) or parsing (pairs.py); its id, written into the output, changes with neither."""
    snippet = """
from stages.core.params.synthesize import Generation
from stages.curate import generation as g
gen = Generation(dtype="float32", temperature=0.7, top_p=0.9, min_p=0.0, max_new_tokens=8, batch_size=1,
                 use_chat_template=False)
i = g.call_id("model-fp", gen, g.Call("documents", "Text: a\\nQuestion:", 7, {}))
print(i, g.cache_key(i, g.completion_code()))
"""
    edits = ["stages/curate/pairs.py", "stages/curate/generation.py", "stages/curate/llm.py"]
    printed = [line.split() for line in printed_after_edits(tmp_path, snippet, edits)]
    assert len({call_id for call_id, _ in printed}) == 1
    assert [key for _, key in printed][:3] == [printed[0][1]] * 3 and printed[3][1] != printed[0][1]


def test_lead_label_is_the_prompts_last_label() -> None:
    p = _params.load(ROOT / "params.yaml", ["synthesize"]).synthesize
    assert pairs.lead_label(p.documents.prompt) == "Question:"
    assert pairs.lead_label(p.self_instruct.prompt) == "Instruction:"
    assert pairs.lead_label("Write a question.") == ""


LONG_ANSWER = (
    "Each record keeps its provenance from the first stage on: the source file it came from, the line or row inside "
    "that file, the sha256 of the file, the filters it passed and the cluster it was put in by the dedup stage."
)


def test_pairs_are_decontaminated_with_dedups_methods(model_dir: Path, tmp_path: Path) -> None:
    """Pairs that restate a probe item, copy a curated record or copy each other are dropped under dedup's reasons."""
    params = _params_for(**{"synthesize.documents.enable": False, "synthesize.self_instruct.num_prompts": 5})
    conversation = _records.make_record(
        source="demo",
        kind="conversation",
        messages=[
            {"role": "user", "content": "Which stage writes the curated records?"},
            {"role": "assistant", "content": "The dedup stage writes them, after moderate."},
        ],
        meta={"source_file": "c.jsonl", "row": 1, "source_index": 0},
    )
    curated = _docs(tmp_path, [], extra=[conversation])
    seeds = generation.read_seed_tasks(ROOT / "data/sources/seed_tasks.jsonl")
    calls = generation.self_instruct_calls(seeds, params.synthesize.self_instruct, params.common.seed)
    fp = _io.fingerprint(model_dir)
    code = generation.completion_code()
    ids = [generation.call_id(fp, params.synthesize.generation, c) for c in calls]
    completions = [
        # a probe item of general_qa.jsonl, line 1, word for word (punctuation aside)
        " What is the capital of Japan?\nInput:\nOutput: the capital of Japan is Tokyo",
        # a probe item of steep_knowledge.jsonl, line 18, asked again with a longer answer
        " Which DVC command shows all of steep's experiments side by side with their params and metrics?\nInput:\n"
        "Output: dvc exp show, in the project root",
        # the curated conversation as a pair (conversations are not in the ROUGE-L pool)
        " Which stage writes the curated records\nInput:\nOutput: The dedup stage writes them after moderate!",
        # a good pair, and a near copy of it whose instruction is new enough for ROUGE-L, but not its whole text
        f" Explain what provenance a record keeps.\nInput:\nOutput: {LONG_ANSWER}",
        f" Tell me which details travel with every record.\nInput:\nOutput: {LONG_ANSWER}",
    ]
    cache = generation.completion_cache(tmp_path / "cache")
    for call_id, text in zip(ids, completions, strict=True):
        cache.put(generation.cache_key(call_id, code), {"completion": text, "new_tokens": 40, "finished": True})
    m = _run(params, curated, model_dir, tmp_path / "out", tmp_path / "cache")
    assert m["model_calls"] == 0 and m["pairs_parsed"] == 5
    assert {k: v for k, v in m.items() if k.startswith("dropped_")} == {
        "dropped_reference_overlap": 2,
        "dropped_exact_duplicate": 1,
        "dropped_minhash_duplicate": 1,
        "dropped_semantic_duplicate": 0,
    }
    assert m["kept"] == 1 and m["flagged_minhash_duplicate"] == 0 and m["flagged_semantic_duplicate"] == 0
    _counts_add_up(m, tmp_path / "out")
    rejects = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    details = sorted((r["reason"], r["detail"]) for r in rejects)
    assert details[0] == ("exact_duplicate", f"duplicate of curated record {conversation['id']}")
    kept = _records.read_records(tmp_path / "out" / "synthetic.parquet")
    # the earlier of the two near copies (in call-id order) stays, the other names it
    assert re.fullmatch(rf"duplicate of synthetic pair {kept[0]['id']} \(jaccard 0\.\d+\)", details[1][1])
    assert details[2:] == [
        ("reference_overlap", "overlaps data/sources/heldout/general_qa.jsonl:1 (exact)"),
        ("reference_overlap", details[3][1]),
    ]
    probe = r"overlaps data/sources/heldout/steep_knowledge.jsonl:\d+ \(minhash, jaccard 0\.\d+\)"
    assert re.fullmatch(probe, details[3][1])

    # with dedup.minhash.action flag, the near copy stays, flagged; references and exact copies still drop
    flag = _params_for(
        **{
            "synthesize.documents.enable": False,
            "synthesize.self_instruct.num_prompts": 5,
            "dedup.minhash.action": "flag",
        }
    )
    m = _run(flag, curated, model_dir, tmp_path / "flag", tmp_path / "cache")
    assert (m["kept"], m["dropped_minhash_duplicate"], m["flagged_minhash_duplicate"]) == (2, 0, 1)
    assert m["dropped_reference_overlap"] == 2 and m["dropped_exact_duplicate"] == 1


def test_semantic_decontamination_flags_or_drops_a_reworded_copy(tmp_path: Path) -> None:
    """A pair with a curated record's words in another order: not an exact or MinHash copy, but its static embedding
    is nearly the record's (a weighted mean of nearly the same token vectors), so dedup's semantic pass finds it:
    flagged with dedup.semantic.action flag (the default), dropped with drop; an unrelated pair is left alone."""
    from stages.curate.decontaminate import decontaminate
    from stages.curate.embed import embed

    def record(instruction: str, output: str, row: int) -> _records.Record:
        meta = {"source_file": "x.jsonl", "row": row, "source_index": 0}
        return _records.make_record(
            source="demo", kind="instruction", instruction=instruction, output=output, meta=meta
        )

    first = "Pull, moderate, dedup and synthesize run first."
    curated = [record("Name the stages that run before training.", first, 1)]
    pairs = [
        record("Before training, name the stages that run.", "First pull, moderate, dedup and synthesize run.", 2),
        record("How many probe tasks does the demo define?", "Five: general_mc, general_text and three others.", 3),
    ]
    for action, where in (("flag", "flagged"), ("drop", "dropped")):
        params = _params_for(**{"dedup.semantic.action": action})
        emb = params.common.embedding
        vectors = embed([_records.record_text(r, emb.fields) for r in curated + pairs], emb, tmp_path / "emb")
        found = decontaminate(pairs, curated, [], params.dedup.minhash, 1234, params.dedup.semantic, vectors)
        if where == "flagged":
            assert list(found.flagged) == [0] and list(found.flagged[0]) == ["semantic_duplicate"]
            assert not found.dropped
            detail = found.flagged[0]["semantic_duplicate"]
        else:
            assert list(found.dropped) == [0] and found.dropped[0][0] == "semantic_duplicate"
            assert not found.flagged
            detail = found.dropped[0][1]
        # cosine 0.989 (>= dedup.semantic.cosine_threshold 0.98)
        assert re.fullmatch(rf"duplicate of curated record {curated[0]['id']} \(cosine 0\.9[89]\d\)", detail)
        without = decontaminate(pairs, curated, [], params.dedup.minhash, 1234)  # no semantic pass: not caught
        assert not without.dropped and not without.flagged
