"""Which sentence embedder: MiniLM itself (``transformer``, float64) or static vectors distilled from it.

For each kind of ``common.embedding`` (the rest of it as in ``params.yaml``):

1. Speed: texts/s on a seeded sample of T0 records (``--corpus``, default ``../shared/data/t0_train_50k.jsonl``
   relative to the project root: 55,185 prompt/completion records, ``<|endoftext|>`` stripped), embedded cold
   (no cache): ``--speed-n`` texts for the transformer (its batch size from params.yaml), and the same texts
   and then the whole corpus for static. The one-off distillation of the static table is timed when it runs.
2. Near-duplicate quality: the corpus of ``benchmarks/dedup_near_duplicates.py`` (clean demo Alpaca records,
   102 planted near-duplicates of four kinds, 8 hand-written hard-negative pairs; its own builder and
   scoring). The semantic decision alone (pairs with cosine >= t, clustered, the first record in order
   survives, as dedup does): precision, recall and F1 of the planted copies dropped, at
   ``dedup.semantic.cosine_threshold`` and at the best-F1 threshold of a sweep; then dedup's whole stage
   (exact, MinHash, semantic) at the params threshold. On T0, where nobody planted duplicates: how many
   pairs of the sample each embedder puts at cosine >= the threshold, and how far the two pair sets agree.
3. Cleanlab agreement: ``stages.curate.moderate.cleanlab_scores`` with ``moderate.cleanlab`` of params.yaml on
   the 3,000-record T0 sample of ``benchmarks/cleanlab_calibration.py`` (``--sample``, ``--seed 0``): the
   Jaccard of the two embedders' flagged sets per check, each one's agreement with the verdicts of
   ``benchmarks/labels/t0_cleanlab.csv`` (over the flagged records that have one), how many of the 10
   planted junk records the outlier check flags; and the sample's pairs at the dedup threshold, with how
   many of them have the same output (a pair with different outputs is two tasks, not a duplicate).

Run (from the project root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embedding_choice.py [--corpus PATH] [--speed-n 300]

Vectors go through the shared cache (``.steep_cache/embeddings``): the first run embeds the 3,000 T0 texts
with MiniLM (~10 min on two cores), later runs read them back. Writes
``benchmarks/results/embedding_choice.json`` and prints a Markdown section.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _t0  # noqa: E402
import cleanlab_calibration as cc  # noqa: E402
import dedup_near_duplicates as dn  # noqa: E402

from stages.core import params as _params  # noqa: E402
from stages.core.params.common import Embedding  # noqa: E402
from stages.core.records import make_record, record_text  # noqa: E402
from stages.curate import clustering, dedup, embed, moderate, static_embed  # noqa: E402

CACHE = ROOT / ".steep_cache" / "embeddings"
RESULTS = ROOT / "benchmarks" / "results" / "embedding_choice.json"
KINDS = ("transformer", "static")
SWEEP = [round(t, 2) for t in np.arange(0.80, 1.0, 0.01)]
CHECKS = {"outlier": "is_outlier", "near_duplicate": "is_near_duplicate", "label_issue": "is_label_issue"}


def embedding_of(kind: str) -> Embedding:
    """``common.embedding`` of params.yaml with `kind`."""
    base = _params.load(ROOT / "params.yaml", ["common.embedding"]).common.embedding
    return base.model_copy(update={"kind": kind})


def t0_texts(corpus: Path) -> list[str]:
    """Every T0 record's embedded text, as pull and moderate make it."""
    return [record_text(_t0.record(line)) for line in _t0.lines(corpus)]


def speed(texts: list[str], speed_n: int, seed: int) -> dict[str, Any]:
    """Cold texts/s of each kind (no cache): transformer and static on `speed_n` texts, static on all."""
    sample = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), min(speed_n, len(texts))))]
    # other jobs share the CPU cores: the load average says how much they took from these timings
    out: dict[str, Any] = {"texts": len(sample), "load_average_1min_before": round(os.getloadavg()[0], 2)}
    tr = embedding_of("transformer")
    model = embed._load(embed.resolve_model_dir(tr.model), tr.max_tokens)
    embed.snap(embed._encode(model, sample[:8], tr.batch_size))  # warm-up: first-call allocations
    start = time.perf_counter()
    a = embed.snap(embed._encode(model, sample, tr.batch_size))
    t_tr = time.perf_counter() - start
    st = embedding_of("static")
    model_dir = embed.resolve_model_dir(st.model)
    start = time.perf_counter()
    folder = static_embed.ensure_static(model_dir, st.static_dims, CACHE)
    distill_s = time.perf_counter() - start
    sm = static_embed.load_static(str(folder))
    start = time.perf_counter()
    b = embed.snap(static_embed.token_sums(sm, sample, st.max_tokens))
    t_st = time.perf_counter() - start
    start = time.perf_counter()
    embed.snap(static_embed.token_sums(sm, texts, st.max_tokens))
    t_all = time.perf_counter() - start
    # how close the two embedders' pair geometry is on this sample: correlation of their cosines
    ca, cb = embed.cosine(a, a)[np.triu_indices(len(a), 1)], embed.cosine(b, b)[np.triu_indices(len(b), 1)]
    out.update(
        {
            "transformer_texts_per_s": round(len(sample) / t_tr, 1),
            "transformer_batch_size": tr.batch_size,
            "static_texts_per_s": round(len(sample) / t_st, 1),
            "static_all_texts": len(texts),
            "static_all_texts_per_s": round(len(texts) / t_all, 1),
            "static_all_seconds": round(t_all, 2),
            "speedup": round(t_tr / t_st, 1),
            "static_distill_seconds": round(distill_s, 1) if distill_s > 1 else "cached",
            "cosine_pearson_transformer_vs_static": round(float(np.corrcoef(ca, cb)[0, 1]), 4),
        }
    )
    return out


def semantic_drops(records: list[dict[str, Any]], vectors: np.ndarray, threshold: float) -> dict[str, str]:
    """The semantic decision alone: id -> "semantic" of each record dedup would drop at `threshold`."""
    sims = embed.cosine(vectors, vectors)
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    order = [(r["meta"]["source_index"], r["meta"]["row"]) for r in records]
    _, dropped = clustering.clusters(
        list(range(len(records))), [(int(i), int(j), 1.0) for i, j in zip(a, b, strict=True)], order
    )
    return {records[i]["id"]: "semantic" for i in dropped}


def f1(s: dict[str, Any]) -> float:
    p, r = s["precision"], s["recall"]
    return round(2 * p * r / (p + r), 4) if p + r else 0.0


def near_duplicates(seed: int, threshold: float) -> dict[str, Any]:
    """Semantic-only and whole-stage scores of each kind on dedup's benchmark corpus."""
    records, truth, info = dn.build_corpus(seed)
    pairs = {x for pair in dn.HARD_NEGATIVES for x in pair}
    hard = {r["id"] for r in records if (r["instruction"], r["output"]) in pairs}
    out: dict[str, Any] = {"corpus": info, "cosine_threshold": threshold}
    for kind in KINDS:
        emb = embedding_of(kind)
        vectors = embed.embed([record_text(r, emb.fields) for r in records], emb, CACHE)
        sweep = {}
        for t in sorted({*SWEEP, threshold}):
            s = dn.score(truth, semantic_drops(records, vectors, t), hard)
            sweep[t] = {k: s[k] for k in ("precision", "recall", "hard_negatives_dropped")} | {"f1": f1(s)}
        at = dn.score(truth, semantic_drops(records, vectors, threshold), hard)
        best_t = max(sweep, key=lambda t: (sweep[t]["f1"], t))
        with tempfile.TemporaryDirectory() as tmp:
            stage = dn.score(truth, dn.run_steep(records, Path(tmp), common__embedding__kind=kind), hard)
        out[kind] = {
            "semantic_only": {**at, "f1": f1(at)},
            "best_f1_threshold": best_t,
            "best_f1": sweep[best_t],
            "sweep": {str(t): v for t, v in sweep.items()},
            "whole_stage": {**stage, "f1": f1(stage)},
        }
    return out


def cleanlab(corpus: Path, n: int, seed: int, threshold: float) -> dict[str, Any]:
    """Cleanlab's flags under each kind on the calibration sample, their overlap and their agreement."""
    cfg = _params.load(ROOT / "params.yaml", ["moderate", "common.seed"])
    verdicts = cc.read_verdicts(cc.LABELS)
    flags: dict[str, dict[str, set[str]]] = {}
    pairs: dict[str, set[tuple[int, int]]] = {}
    out: dict[str, Any] = {"sample": n, "sample_seed": seed, "settings": cfg.moderate.cleanlab.model_dump()}
    for kind in KINDS:
        emb = embedding_of(kind)
        records = cc.load_sample(corpus, n, seed)
        junk = [make_record(source="t0", kind="instruction", meta={}, instruction=a, output=b) for a, b in cc.PLANTED]
        for r in records + junk:
            r["meta"]["moderate"] = {"cleanlab": {}}
        t0 = time.perf_counter()
        moderate.cleanlab_scores(records, cfg.moderate.cleanlab, seed=cfg.common.seed, embedding=emb, cache_dir=CACHE)
        seconds = time.perf_counter() - t0
        both = [dict(r, meta={**r["meta"], "moderate": {"cleanlab": {}}}) for r in records] + junk
        moderate.cleanlab_scores(both, cfg.moderate.cleanlab, seed=cfg.common.seed, embedding=emb, cache_dir=CACHE)
        caught = sum(bool(r["meta"]["moderate"]["cleanlab"].get("is_outlier")) for r in junk)
        flags[kind] = {
            c: {r["id"] for r in records if r["meta"]["moderate"]["cleanlab"].get(key)} for c, key in CHECKS.items()
        }
        vectors = embed.embed([record_text(r) for r in records], emb, CACHE)
        a, b = np.nonzero(np.triu(embed.cosine(vectors, vectors) >= threshold, 1))
        pairs[kind] = set(zip(a.tolist(), b.tolist(), strict=True))
        row: dict[str, Any] = {"seconds_with_cache": round(seconds, 1), "planted_junk_outliers": f"{caught}/10"}
        for c, ids in flags[kind].items():
            marks = [verdicts[(i, f"cleanlab_{c}")]["verdict"] for i in ids if (i, f"cleanlab_{c}") in verdicts]
            row[c] = {
                "flagged": len(ids),
                "read": len(marks),
                "agreed": marks.count("right"),
                "agreement": round(marks.count("right") / len(marks), 3) if marks else None,
            }
        row["semantic_pairs_at_threshold"] = len(pairs[kind])
        # a pair with different outputs is two tasks (often two questions on one passage), not a duplicate
        row["semantic_pairs_with_the_same_output"] = sum(_same_output(records, i, j) for i, j in pairs[kind])
        out[kind] = row
    out["jaccard_transformer_vs_static"] = {
        c: _jaccard(flags["transformer"][c], flags["static"][c]) for c in CHECKS
    } | {"semantic_pairs_at_threshold": _jaccard(pairs["transformer"], pairs["static"])}
    return out


def _same_output(records: list[dict[str, Any]], i: int, j: int) -> bool:
    return records[i]["output"].strip().lower() == records[j]["output"].strip().lower()


def _jaccard(a: set, b: set) -> float | None:
    return round(len(a & b) / len(a | b), 3) if a | b else None


def markdown(result: dict[str, Any]) -> str:
    """The section printed at the end (and pasted into benchmarks/README.md)."""
    sp, nd, cl = result["speed"], result["near_duplicates"], result["cleanlab"]
    t = nd["cosine_threshold"]
    lines = [
        "### Speed (texts/s, cold, two CPU cores)",
        "",
        "| embedder | texts/s |",
        "|---|---:|",
        f"| transformer (MiniLM, float64, batch {sp['transformer_batch_size']}) | {sp['transformer_texts_per_s']} |",
        f"| static ({sp['texts']} texts) | {sp['static_texts_per_s']} |",
        f"| static (all {sp['static_all_texts']:,} T0 texts, {sp['static_all_seconds']} s) | "
        f"{sp['static_all_texts_per_s']} |",
        "",
        f"Static is {sp['speedup']}x faster; distilling its table (once per model and params): "
        f"{sp['static_distill_seconds']}{'' if sp['static_distill_seconds'] == 'cached' else ' s'}. "
        "Pearson correlation of the two embedders' cosines on the sample: "
        f"{sp['cosine_pearson_transformer_vs_static']}.",
        "",
        f"### Near-duplicates (dedup benchmark corpus, {nd['corpus']['total_records']} records)",
        "",
        f"| embedder | semantic only at {t}: P / R / F1 | best F1 (threshold) | whole stage at {t}: P / R / F1 |",
        "|---|---|---|---|",
    ]
    for k in KINDS:
        s, b, w = nd[k]["semantic_only"], nd[k]["best_f1"], nd[k]["whole_stage"]
        lines.append(
            f"| {k} | {s['precision']} / {s['recall']} / {s['f1']} | {b['f1']} ({nd[k]['best_f1_threshold']}) | "
            f"{w['precision']} / {w['recall']} / {w['f1']} |"
        )
    lines += [
        "",
        f"### Cleanlab on {cl['sample']} T0 records",
        "",
        "| check | transformer: flagged (agreed/read) | static: flagged (agreed/read) | Jaccard |",
        "|---|---|---|---:|",
    ]
    for c in CHECKS:
        a, b = cl["transformer"][c], cl["static"][c]
        jac = cl["jaccard_transformer_vs_static"][c]
        lines.append(
            f"| {c} | {a['flagged']} ({a['agreed']}/{a['read']}) | {b['flagged']} ({b['agreed']}/{b['read']}) | {jac} |"
        )
    pa, pb = cl["transformer"]["semantic_pairs_at_threshold"], cl["static"]["semantic_pairs_at_threshold"]
    pj = cl["jaccard_transformer_vs_static"]["semantic_pairs_at_threshold"]
    lines += [
        f"| planted junk caught as outliers | {cl['transformer']['planted_junk_outliers']} | "
        f"{cl['static']['planted_junk_outliers']} | |",
        f"| T0 pairs at cosine >= {t} | {pa} | {pb} | {pj} |",
        f"| ... of them with the same output | {cl['transformer']['semantic_pairs_with_the_same_output']} | "
        f"{cl['static']['semantic_pairs_with_the_same_output']} | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=cc.DEFAULT_CORPUS)
    ap.add_argument("--speed-n", type=int, default=300, help="T0 texts timed for both embedders")
    ap.add_argument("--sample", type=int, default=3000, help="T0 records for the cleanlab comparison")
    ap.add_argument("--seed", type=int, default=0, help="seed of the T0 samples")
    args = ap.parse_args(argv)
    _t0.require(args.corpus)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("steep").setLevel(logging.WARNING)
    params = _params.load(ROOT / "params.yaml", [*dedup.PARAMS])
    threshold = params.dedup.semantic.cosine_threshold
    texts = t0_texts(args.corpus)
    result = {
        "embedding": {k: embedding_of(k).model_dump() for k in KINDS},
        "corpus": args.corpus.name,
        "speed": speed(texts, args.speed_n, args.seed),
    }
    print(json.dumps(result["speed"]), flush=True)
    result["near_duplicates"] = near_duplicates(params.common.seed, threshold)
    print(json.dumps({k: result["near_duplicates"][k]["semantic_only"]["f1"] for k in KINDS}), flush=True)
    result["cleanlab"] = cleanlab(args.corpus, args.sample, args.seed, threshold)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
