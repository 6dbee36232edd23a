"""Near-duplicate quality and speed of steep's dedup, side by side with a plain datasketch loop.

1. Quality: a corpus of the clean demo Alpaca records (``data/sources/build/clean_*.jsonl``, or
   ``data/sources/alpaca_demo.jsonl`` minus the rows its answer key marks) plus planted near-duplicates of
   known kinds -- whitespace/punctuation/case edits, reordered sentences, swapped words, hand-written
   paraphrases -- and hand-written hard negatives (lexically close, different task: must be kept). steep's
   dedup stage (``stages.curate.dedup.run``, the params of ``params.yaml`` without references) runs twice, without
   and with the semantic pass; a plain datasketch MinHash LSH loop runs on the same records for reference.
   Precision = planted copies dropped / records dropped; recall per kind = planted copies dropped / planted.
2. Speed: docs/s of the MinHash + LSH pass on ~8k documents (the corpus replicated with random word edits),
   steep's vectorized signatures vs a plain datasketch loop (``MinHash()`` per doc, ``update()`` per
   shingle, ``MinHashLSH`` insert and query) and vs datasketch's own batch API (``MinHash.bulk``), same
   normalization, shingles, thresholds and LSH; plus how the pairs they find agree.

Run (from the project root): ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dedup_near_duplicates.py``.
Writes ``benchmarks/results/dedup.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.core import cli  # noqa: E402
from stages.core import io as _io  # noqa: E402
from stages.core import params as _params  # noqa: E402
from stages.core.params.dedup import MinHash as MinHashParams  # noqa: E402
from stages.core.records import REJECT_SCHEMA, make_record, read_records, record_text, write_records  # noqa: E402
from stages.curate import clustering, dedup, minhash  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dedup.json"

# (original, paraphrase): same task and answer, reworded by hand.
PARAPHRASES: list[tuple[tuple[str, str], tuple[str, str]]] = [
    (
        ("What is the capital of France?", "The capital of France is Paris."),
        ("What is the capital city of France?", "Paris is the capital of France."),
    ),
    (
        ("Give three tips for staying healthy.", "1. Eat a balanced diet. 2. Exercise regularly. 3. Get enough sleep."),
        ("Provide three tips to stay healthy.", "1. Eat a balanced diet. 2. Exercise often. 3. Sleep enough."),
    ),
    (
        ("Name the largest planet in the solar system.", "Jupiter is the largest planet in the solar system."),
        ("Which planet is the biggest in our solar system?", "The biggest planet in our solar system is Jupiter."),
    ),
    (
        (
            "Explain why ice floats on water.",
            "Ice floats because it is less dense than liquid water: when water freezes, its molecules lock into "
            "an open hexagonal lattice that takes up more space than the liquid.",
        ),
        (
            "Why does ice float on water?",
            "Frozen water is less dense than liquid water, because on freezing the molecules arrange themselves "
            "in an open hexagonal lattice that occupies more volume, so ice floats.",
        ),
    ),
    (
        ("Convert 100 degrees Celsius to Fahrenheit.", "100 degrees Celsius is 212 degrees Fahrenheit."),
        ("What is 100 °C in Fahrenheit?", "100 °C equals 212 °F."),
    ),
    (
        (
            "Suggest a name for a bakery.",
            "Golden Crust Bakery: it suggests fresh bread with a perfectly baked crust.",
        ),
        (
            "Come up with a name for a bakery.",
            "How about Golden Crust Bakery? The name evokes freshly baked bread with a perfect crust.",
        ),
    ),
    (
        ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
        ("Who is the author of Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ),
    (
        (
            "Describe the water cycle in one sentence.",
            "Water evaporates from oceans and lakes, condenses into clouds, falls back as rain or snow, and flows "
            "back to the sea.",
        ),
        (
            "Summarize the water cycle in a single sentence.",
            "Water from seas and lakes evaporates, condenses to form clouds, returns as rain or snow, and runs back "
            "into the ocean.",
        ),
    ),
    (
        ("What is the boiling point of water at sea level?", "At sea level, water boils at 100 degrees Celsius."),
        ("At what temperature does water boil at sea level?", "Water boils at 100 °C at sea level."),
    ),
    (
        (
            "Give an example of a renewable energy source.",
            "Solar power is a renewable energy source, since sunlight is replenished every day.",
        ),
        (
            "Name one renewable source of energy.",
            "One renewable energy source is solar power, because the sunlight it uses is replenished daily.",
        ),
    ),
    (
        ("Translate 'good morning' into Spanish.", "'Good morning' in Spanish is 'buenos días'."),
        ("How do you say 'good morning' in Spanish?", "In Spanish, 'good morning' is 'buenos días'."),
    ),
    (
        (
            "List the three primary colors.",
            "The three primary colors are red, blue and yellow.",
        ),
        (
            "What are the three primary colors?",
            "Red, yellow and blue are the three primary colors.",
        ),
    ),
]

# (a, b): lexically close but a different task or answer; both must be kept.
HARD_NEGATIVES: list[tuple[tuple[str, str], tuple[str, str]]] = [
    (
        ("Convert 5 kilometers to miles.", "5 kilometers is about 3.11 miles."),
        ("Convert 5 miles to kilometers.", "5 miles is about 8.05 kilometers."),
    ),
    (
        ("What is the capital of Australia?", "The capital of Australia is Canberra."),
        ("What is the capital of Austria?", "The capital of Austria is Vienna."),
    ),
    (
        ("What is the boiling point of water in Fahrenheit?", "Water boils at 212 degrees Fahrenheit at sea level."),
        ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit at sea level."),
    ),
    (
        (
            "Write a haiku about the sea.",
            "Waves fold into foam, / salt wind combs the empty dunes, / gulls sign the tide.",
        ),
        (
            "Write a haiku about the desert.",
            "Dunes fold into heat, / dry wind combs the empty sand, / lizards sign the rock.",
        ),
    ),
    (
        ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
        ("Who painted The Starry Night?", "The Starry Night was painted by Vincent van Gogh."),
    ),
    (
        (
            "Sort these numbers in ascending order.",
            "Sorted in ascending order: 2, 5, 9, 14, 21.",
        ),
        (
            "Sort these numbers in descending order.",
            "Sorted in descending order: 21, 14, 9, 5, 2.",
        ),
    ),
    (
        ("Is 91 a prime number?", "No, 91 is not a prime number, because 91 = 7 × 13."),
        ("Is 97 a prime number?", "Yes, 97 is a prime number: no whole number other than 1 and 97 divides it."),
    ),
    (
        ("Name a mammal that can fly.", "The bat is a mammal that can fly."),
        ("Name a bird that cannot fly.", "The ostrich is a bird that cannot fly."),
    ),
]

AUTO_KINDS = ("whitespace_punct", "reordered_sentences", "word_swaps")
KINDS = (*AUTO_KINDS, "paraphrase")
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


# --- corpus ---------------------------------------------------------------------


def load_base() -> tuple[list[dict[str, str]], str]:
    """The clean demo Alpaca records (instruction, input, output) and where they came from."""
    clean = sorted((ROOT / "data/sources/build").glob("clean_*.jsonl"))
    if clean:
        rows = [json.loads(line) for f in clean for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        return rows, ", ".join(str(f.relative_to(ROOT)) for f in clean)
    demo = ROOT / "data/sources/alpaca_demo.jsonl"
    key_path = ROOT / "data/sources/answer_key.json"
    if not demo.exists():
        raise SystemExit("no demo data: expected data/sources/build/clean_*.jsonl or data/sources/alpaca_demo.jsonl")
    planted = set()
    if key_path.exists():
        key = json.loads(key_path.read_text(encoding="utf-8"))
        planted = {int(r) for name, rows in key.items() if "alpaca" in name for r in rows}
    lines = demo.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for n, line in enumerate(lines, start=1) if line.strip() and n not in planted]
    return rows, f"{demo.relative_to(ROOT)} minus {len(planted)} answer-key rows"


def whitespace_punct(text: str, rng: random.Random) -> str:
    """Whitespace, punctuation and case edits only: equal after normalization."""
    words = text.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < 0.08:
            w = w.upper()
        elif r < 0.16:
            w = w.rstrip(".,;:!?")
        elif r < 0.22:
            w = w + ","
        out.append(w)
    sep = rng.choice(["  ", " \n", "\t", " "])
    text = sep.join(out)
    return text.rstrip(".") + rng.choice(["!", "...", " .", ""])


def reorder_sentences(text: str, rng: random.Random) -> str | None:
    sentences = SENTENCE_SPLIT.split(text)
    if len(sentences) < 3:
        return None
    shuffled = sentences[:]
    while shuffled == sentences:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def swap_words(text: str, rng: random.Random) -> str:
    """Swap adjacent words: one swap per 40 words (at least one)."""
    words = text.split()
    for _ in range(max(1, len(words) // 40)):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def build_corpus(seed: int) -> tuple[list[dict[str, Any]], dict[str, str | None], dict[str, Any]]:
    """Records (base at source 0, plants at source 1) and truth: id -> planted kind or None."""
    base, origin = load_base()
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    truth: dict[str, str | None] = {}

    def add(row: dict[str, str], source_index: int, kind: str | None) -> None:
        meta = {"source_file": "benchmark", "row": len(records) + 1, "source_index": source_index}
        r = make_record(
            source=f"bench{source_index}",
            kind="instruction",
            instruction=row["instruction"],
            input=row.get("input", ""),
            output=row["output"],
            meta=meta,
        )
        if r["id"] in truth:  # an edit that changed nothing (or a repeat): not a plant
            return
        records.append(r)
        truth[r["id"]] = kind

    for row in base:
        add(row, 0, None)
    for a, b in HARD_NEGATIVES:
        add({"instruction": a[0], "output": a[1]}, 0, None)
        add({"instruction": b[0], "output": b[1]}, 0, None)
    for a, _ in PARAPHRASES:
        add({"instruction": a[0], "output": a[1]}, 0, None)

    per_kind = 30
    order = list(range(len(base)))
    rng.shuffle(order)
    pool = iter(order)  # each base record is planted at most once
    for kind in AUTO_KINDS:
        made = 0
        while made < per_kind:
            row = dict(base[next(pool)])
            if kind == "whitespace_punct":
                row["instruction"] = whitespace_punct(row["instruction"], rng)
                row["output"] = whitespace_punct(row["output"], rng)
            elif kind == "reordered_sentences":
                new = reorder_sentences(row["output"], rng)
                if new is None:
                    continue
                row["output"] = new
            else:
                if len(row["output"].split()) < 10:
                    continue
                row["output"] = swap_words(row["output"], rng)
            add(row, 1, kind)
            made += 1
    for _, b in PARAPHRASES:
        add({"instruction": b[0], "output": b[1]}, 1, "paraphrase")
    info = {
        "base_source": origin,
        "base_records": len(base),
        "hard_negative_records": 2 * len(HARD_NEGATIVES),
        "paraphrase_originals": len(PARAPHRASES),
        "planted": dict(Counter(k for k in truth.values() if k)),
        "total_records": len(records),
    }
    return records, truth, info


# --- quality --------------------------------------------------------------------


def score(truth: dict[str, str | None], dropped: dict[str, str], hard_negative_ids: set[str]) -> dict[str, Any]:
    """Precision/recall of the dropped set against the planted copies; per kind, which method caught them."""
    planted = {i for i, k in truth.items() if k}
    tp = len(planted & dropped.keys())
    fp = len(dropped.keys() - planted)
    out: dict[str, Any] = {
        "dropped": len(dropped),
        "true_positives": tp,
        "false_positives": fp,
        "hard_negatives_dropped": len(hard_negative_ids & dropped.keys()),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
        "recall": round(tp / len(planted), 4),
        "per_kind": {},
    }
    for kind in KINDS:
        ids = [i for i, k in truth.items() if k == kind]
        caught = [dropped[i] for i in ids if i in dropped]
        out["per_kind"][kind] = {
            "planted": len(ids),
            "recall": round(len(caught) / len(ids), 4) if ids else None,
            "caught_by": dict(sorted(Counter(caught).items())),
        }
    return out


def run_steep(
    records: list[dict[str, Any]], tmp: Path, cache: Path = ROOT / ".steep_cache/embeddings", **overrides: Any
) -> dict[str, str]:
    """steep's dedup stage on `records` (params.yaml, no references, `overrides`, embeddings from `cache`):
    id -> reason of each drop."""
    inp, out, rej = tmp / "in.parquet", tmp / "out.parquet", tmp / "rejects.parquet"
    write_records(inp, records)
    overrides = {"dedup.references": [], **{k.replace("__", "."): v for k, v in overrides.items()}}
    params = _params.load(ROOT / "params.yaml", dedup.PARAMS, overrides=overrides)
    dedup.run(params, inputs={"in": inp}, outputs={"out": out, "rejects": rej}, cache=cache)
    return {r["id"]: r["reason"] for r in read_records(rej, REJECT_SCHEMA)}


# --- the two MinHash + LSH implementations ---------------------------------------


def shingles(text: str, k: int) -> set[str]:
    """The same shingles steep hashes, as strings: k consecutive normalized words (padded when shorter)."""
    words = minhash.normalize_text(text).split()
    if not words:
        return set()
    if len(words) < k:
        words = words + [""] * (k - len(words))
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def plain_datasketch(texts: list[str], p: MinHashParams, seed: int, bulk: bool = False) -> tuple[set, dict]:
    """The textbook loop: MinHash() per doc, update() per shingle, MinHashLSH insert, then query every doc."""
    t0 = time.perf_counter()
    sets = [shingles(t, p.shingle_words) for t in texts]
    if bulk:
        mhs = MinHash.bulk([[s.encode("utf-8") for s in sh] for sh in sets], num_perm=p.num_permutations, seed=seed)
    else:
        mhs = []
        for sh in sets:
            m = MinHash(num_perm=p.num_permutations, seed=seed)
            for s in sh:
                m.update(s.encode("utf-8"))
            mhs.append(m)
    t1 = time.perf_counter()
    lsh = MinHashLSH(threshold=p.jaccard_threshold, num_perm=p.num_permutations)
    for i, (m, sh) in enumerate(zip(mhs, sets, strict=True)):
        if sh:
            lsh.insert(i, m)
    pairs = set()
    for i, (m, sh) in enumerate(zip(mhs, sets, strict=True)):
        if not sh:
            continue
        for j in lsh.query(m):
            if j > i and m.jaccard(mhs[j]) >= p.jaccard_threshold:
                pairs.add((i, j))
    t2 = time.perf_counter()
    return pairs, {"signatures_s": t1 - t0, "lsh_s": t2 - t1, "total_s": t2 - t0}


def steep_minhash(texts: list[str], p: MinHashParams, seed: int) -> tuple[set, dict]:
    """steep's pass: vectorized signatures, the same datasketch MinHashLSH, vectorized verification."""
    t0 = time.perf_counter()
    sigs, has_text = minhash.signatures_of(texts, p, seed)
    t1 = time.perf_counter()
    index = minhash.NearDuplicateIndex.build_from(sigs, has_text, p, seed)
    pairs = {(i, j) for i, j, _ in index.pairs(np.arange(len(texts), dtype=np.int64))}
    t2 = time.perf_counter()
    return pairs, {"signatures_s": t1 - t0, "lsh_s": t2 - t1, "total_s": t2 - t0}


def speed_corpus(records: list[dict[str, Any]], n_docs: int, seed: int) -> list[str]:
    """`n_docs` texts: the corpus repeated, each copy with a share of its words replaced (0-20%)."""
    rng = random.Random(seed)
    base = [record_text(r) for r in records]
    vocab = sorted({w for t in base for w in t.split()})
    out = []
    for n in range(n_docs):
        words = base[n % len(base)].split()
        rate = rng.choice([0.0, 0.02, 0.05, 0.1, 0.2]) if n >= len(base) else 0.0
        for i in range(len(words)):
            if rng.random() < rate:
                words[i] = rng.choice(vocab)
        out.append(" ".join(words))
    return out


def exact_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def time_best(fn, repeat: int) -> tuple[Any, dict]:
    """Run `fn` `repeat` times; the result of the last run and the per-phase minimum over runs."""
    runs = [fn() for _ in range(repeat)]
    timing = {k: min(r[1][k] for r in runs) for k in runs[0][1]}
    return runs[-1][0], timing


# --- main -----------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=8000, help="documents in the speed run")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per implementation (best is kept)")
    ap.add_argument("--skip-semantic", action="store_true", help="quality without the embedding pass")
    args = ap.parse_args()
    cli.setup_logging()
    logging.getLogger("steep").setLevel(logging.WARNING)  # the stage's per-run lines, times 11 runs
    params = _params.load(ROOT / "params.yaml", dedup.PARAMS)
    seed, mh = params.common.seed, params.dedup.minhash

    # 1. quality
    records, truth, info = build_corpus(seed)
    hard = {r["id"] for r in records if (r["instruction"], r["output"]) in {x for pair in HARD_NEGATIVES for x in pair}}
    quality: dict[str, Any] = {}
    sweep: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        quality["steep_exact_minhash"] = score(truth, run_steep(records, tmp, dedup__semantic__enable=False), hard)
        if not args.skip_semantic:
            quality["steep_exact_minhash_semantic"] = score(truth, run_steep(records, tmp), hard)
        # the thresholds around the chosen ones (the other params as in params.yaml)
        for t in (0.5, 0.6, 0.7, 0.8, 0.9):
            drops = run_steep(records, tmp, dedup__semantic__enable=False, dedup__minhash__jaccard_threshold=t)
            sweep[f"exact_minhash jaccard_threshold={t}"] = score(truth, drops, hard)
        if not args.skip_semantic:
            for t in (0.85, 0.9, 0.95, 0.98):
                drops = run_steep(records, tmp, dedup__semantic__cosine_threshold=t)
                sweep[f"exact_minhash_semantic cosine_threshold={t}"] = score(truth, drops, hard)
    # the plain loop, minhash only, survivors by the same rule
    ordered = sorted(records, key=lambda r: (r["meta"]["source_index"], r["meta"]["row"]))
    pairs, _ = plain_datasketch([record_text(r) for r in ordered], mh, seed)
    order = [(r["meta"]["source_index"], r["meta"]["row"]) for r in ordered]
    _, dropped = clustering.clusters(list(range(len(ordered))), [(i, j, 1.0) for i, j in sorted(pairs)], order)
    quality["datasketch_loop_minhash_only"] = score(truth, {ordered[i]["id"]: "minhash" for i in dropped}, hard)

    # 2. speed
    docs = speed_corpus(records, args.docs, seed)
    n_shingles = sum(len(shingles(t, mh.shingle_words)) for t in docs)
    impls = {
        "datasketch_loop": lambda: plain_datasketch(docs, mh, seed),
        "datasketch_bulk": lambda: plain_datasketch(docs, mh, seed, bulk=True),
        "steep": lambda: steep_minhash(docs, mh, seed),
    }
    speed: dict[str, Any] = {}
    found: dict[str, set] = {}
    for name, fn in impls.items():
        found[name], timing = time_best(fn, args.repeat)
        speed[name] = {k: round(v, 3) for k, v in timing.items()}
        speed[name]["docs_per_s"] = round(len(docs) / timing["total_s"], 1)
        speed[name]["signature_docs_per_s"] = round(len(docs) / timing["signatures_s"], 1)
        speed[name]["pairs"] = len(found[name])
    for name in impls:
        speed[name]["speedup_vs_loop"] = round(speed[name]["docs_per_s"] / speed["datasketch_loop"]["docs_per_s"], 2)
    # agreement: both estimate the same Jaccard with different hash functions; judge against the exact Jaccard
    sets = [shingles(t, mh.shingle_words) for t in docs]
    union = found["steep"] | found["datasketch_loop"]
    true_pairs = {(i, j) for i, j in union if exact_jaccard(sets[i], sets[j]) >= mh.jaccard_threshold}
    agreement = {
        "pairs_either": len(union),
        "pairs_both": len(found["steep"] & found["datasketch_loop"]),
        "pairs_with_exact_jaccard_at_threshold": len(true_pairs),
        "steep_pairs_exact_jaccard_ok": round(len(found["steep"] & true_pairs) / max(1, len(found["steep"])), 4),
        "loop_pairs_exact_jaccard_ok": round(
            len(found["datasketch_loop"] & true_pairs) / max(1, len(found["datasketch_loop"])), 4
        ),
        "steep_recall_of_exact_pairs": round(len(found["steep"] & true_pairs) / max(1, len(true_pairs)), 4),
        "loop_recall_of_exact_pairs": round(len(found["datasketch_loop"] & true_pairs) / max(1, len(true_pairs)), 4),
    }

    result = {
        "params": {
            "common.seed": seed,
            "dedup.minhash": mh.model_dump(),
            "dedup.semantic": params.dedup.semantic.model_dump(),
            "common.embedding.model": params.common.embedding.model,
            "common.embedding.fields": list(params.common.embedding.fields),
        },
        "corpus": info,
        "quality": quality,
        "threshold_sweep": sweep,
        "speed": {"docs": len(docs), "shingles": n_shingles, "repeat": args.repeat, **speed},
        "agreement": agreement,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    _io.write_json(RESULTS, result)
    print_tables(result)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


def print_tables(result: dict[str, Any]) -> None:
    c = result["corpus"]
    print(
        f"\ncorpus: {c['total_records']} records ({c['base_records']} base from {c['base_source']}, "
        f"{c['hard_negative_records']} hard negatives, {c['paraphrase_originals']} paraphrase originals); "
        f"planted {c['planted']}"
    )
    for title, rows in (("quality (params.yaml)", result["quality"]), ("threshold sweep", result["threshold_sweep"])):
        head = f"{'precision':>9} {'recall':>7} {'FP':>3} {'hard_neg':>8}  " + " ".join(f"{k:>19}" for k in KINDS)
        print(f"\n{title:44} {head}")
        for name, q in rows.items():
            kinds = " ".join(f"{q['per_kind'][k]['recall']:>19.2f}" for k in KINDS)
            cells = (
                f"{q['precision']:>9.3f} {q['recall']:>7.3f} {q['false_positives']:>3} {q['hard_negatives_dropped']:>8}"
            )
            print(f"{name:44} {cells}  {kinds}")
    s = result["speed"]
    print(f"\nspeed: {s['docs']} docs, {s['shingles']} shingles, best of {s['repeat']}")
    cols = f"{'signatures s':>12} {'lsh+verify s':>12} {'total s':>8} {'docs/s':>9} {'x loop':>7} {'pairs':>6}"
    print(f"{'implementation':20} {cols}")
    for name in ("datasketch_loop", "datasketch_bulk", "steep"):
        r = s[name]
        print(
            f"{name:20} {r['signatures_s']:>12.3f} {r['lsh_s']:>12.3f} {r['total_s']:>8.3f} {r['docs_per_s']:>9.0f} "
            f"{r['speedup_vs_loop']:>7.2f} {r['pairs']:>6}"
        )
    print("agreement:", json.dumps(result["agreement"]))


if __name__ == "__main__":
    main()
