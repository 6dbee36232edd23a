"""Thresholds for ``common.embedding.kind: static``: semantic dedup and cleanlab, calibrated on T0 by reading.

The thresholds of ``params.yaml`` were measured on MiniLM (``kind: transformer``) vectors; static vectors
(token rows distilled from MiniLM, :mod:`stages.curate.static_embed`) spread differently, so they get their
own. Three measurements, all with ``common.embedding`` of ``params.yaml`` but ``kind: static``:

1. Semantic dedup on all of T0 (``--corpus``, default ``../shared/data/t0_train_50k.jsonl``, 55,185 lines as
   pull makes them, :mod:`_t0`): dedup's own exact and MinHash passes (``dedup.minhash`` of params.yaml),
   then :func:`stages.curate.semantic.cosine_pairs` over the survivors' embedded text (``record_text`` over
   ``common.embedding.fields``), clustered the way dedup does (the earliest line survives). Per threshold of
   ``--sweep``: pairs, records dropped, and pairs whose outputs are the same. Pairs are found once at the
   lowest threshold; a higher threshold's pairs are those with cosine >= it (the index's probing does not
   depend on the threshold and every pair is decided by its exact cosine, so this equals a run at it).
2. Precision by reading: all pairs at the lowest ``--candidates`` threshold in one seeded random order
   (``random.Random("<seed>:static_pairs")``); for each candidate threshold the first ``--read`` pairs at or
   above it (a simple random sample of that threshold's pairs; candidates share the pairs they have in
   common). Verdicts are in ``benchmarks/labels/t0_static_pairs.csv`` (T0 line numbers, ids, cosine,
   ``right`` = a real duplicate: same task and same answer, or a trivial rewording; ``wrong`` = not one;
   a note in our own words, never T0's text). ``--review FILE`` writes the sampled pairs without a verdict,
   both texts clipped, to read. Precision = right / read with a 95% Wilson interval.
   The planted-duplicate corpus of ``benchmarks/dedup_near_duplicates.py`` (102 planted copies, 8 hard-negative
   pairs) is scored at each candidate: the semantic decision alone and dedup's whole stage.
3. Cleanlab on the 3,000-record T0 sample of ``benchmarks/cleanlab_calibration.py`` and its 10 planted junk
   records: Datalab's outlier check over ``--outlier-thresholds`` and near-duplicate check over
   ``--near-duplicate-thresholds`` (k of params.yaml), flags, junk caught, and agreement with
   ``benchmarks/labels/t0_cleanlab.csv`` over the flags that have a verdict; ``--review-cleanlab FILE`` writes
   the flags without a verdict (a near-duplicate with its nearest record).

Run (from the project root; ~5 min once the static table is distilled, +2-5 min the first time)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/static_calibration.py [--corpus PATH] [--cache DIR]

Writes ``benchmarks/results/static_calibration.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
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
import embedding_choice as ec  # noqa: E402

from stages.core import params as _params  # noqa: E402
from stages.core.records import make_record, record_text  # noqa: E402
from stages.curate import clustering, dedup, embed, minhash, semantic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "static_calibration.json"
PAIR_LABELS = ROOT / "benchmarks" / "labels" / "t0_static_pairs.csv"
PAIR_FIELDS = ["line_a", "line_b", "id_a", "id_b", "cosine", "verdict", "note"]
SWEEP = [0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995]
CANDIDATES = [0.95, 0.97, 0.98, 0.99]
OUTLIER_THRESHOLDS = [0.2, 0.25, 0.3, 0.32, 0.33, 0.34, 0.35, 0.37037, 0.4, 0.45, 0.5, 0.55]
NEAR_DUPLICATE_THRESHOLDS = [0.02, 0.03, 0.05, 0.07, 0.1, 0.13]


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval of k successes in n."""
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 3), round(min(1.0, c + h), 3)]


def t0_records(corpus: Path) -> list[dict[str, Any]]:
    """Every T0 line as pull's record, ``meta.line`` its 1-based line number (also its input order)."""
    return [_t0.record(line, {"line": i + 1}) for i, line in enumerate(_t0.lines(corpus))]


def moderated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records dedup gets from moderate: on T0 its only drop is ``empty_output`` (1,400 TREC records,
    benchmarks/README.md); every other rule only flags."""
    return [r for r in records if r["output"].strip()]


def survivors_of_exact_and_minhash(records: list[dict[str, Any]], params: _params.Scoped) -> tuple[list[int], dict]:
    """Indices that dedup's exact and MinHash passes keep (dedup.run's steps 1-2, in one process)."""
    cfg, seed = params.dedup, params.common.seed
    order = list(range(len(records)))
    normalized = [minhash.normalize_text(record_text(r)) for r in records]
    first: dict[str, int] = {}
    pairs = []
    for i, t in enumerate(normalized):
        j = first.setdefault(hashlib.sha256(t.encode("utf-8")).hexdigest(), i)
        if j != i:
            pairs.append((j, i, 1.0))
    _, dropped = clustering.clusters(order, pairs, order)
    alive = [i for i in order if i not in dropped]
    counts = {"exact_dropped": len(dropped)}
    sigs = np.concatenate(
        [
            minhash.signature_batch(
                normalized[lo : lo + 2000], cfg.minhash.shingle_words, cfg.minhash.num_permutations, seed
            )
            for lo in range(0, len(normalized), 2000)
        ]
    )
    has_words = np.array([bool(t) for t in normalized], dtype=bool)
    index = minhash.NearDuplicateIndex.build_from(sigs, has_words, cfg.minhash, seed)
    members = [i for i in alive if index.has_text[i]]
    _, mh_dropped = clustering.clusters(members, index.pairs(np.array(members, dtype=np.int64)), order)
    counts["minhash_dropped"] = len(mh_dropped)
    return [i for i in alive if i not in mh_dropped], counts


def t0_semantic(corpus: Path, cache: Path, sweep: list[float]) -> tuple[dict[str, Any], list[dict[str, Any]], list]:
    """Semantic pairs and drops per threshold of `sweep` on T0, after dedup's exact and MinHash passes."""
    params = _params.load(ROOT / "params.yaml", [*dedup.PARAMS])
    emb = ec.embedding_of("static")
    all_records = t0_records(corpus)
    records = moderated(all_records)
    t = time.perf_counter()
    alive, counts = survivors_of_exact_and_minhash(records, params)
    counts["seconds_exact_minhash"] = round(time.perf_counter() - t, 1)
    members = [i for i in alive if minhash.normalize_text(record_text(records[i], emb.fields))]
    t = time.perf_counter()
    vectors = embed.embed([record_text(records[i], emb.fields) for i in members], emb, cache)
    counts["seconds_embed"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    found = semantic.cosine_pairs(vectors, min(sweep), params.dedup.semantic, params.common.seed)
    counts["seconds_pairs"] = round(time.perf_counter() - t, 1)
    pairs = [(members[a], members[b], s) for a, b, s in found]
    out: dict[str, Any] = {
        "records": len(all_records),
        "dropped_empty_output": len(all_records) - len(records),
        **counts,
        "semantic_members": len(members),
        "sweep": {},
    }
    for th in sweep:
        at = [p for p in pairs if p[2] >= th]
        _, dropped = clustering.clusters(members, at, list(range(len(records))))
        same = sum(_same_output(records[i], records[j]) for i, j, _ in at)
        out["sweep"][str(th)] = {"pairs": len(at), "dropped": len(dropped), "pairs_same_output": same}
    return out, records, pairs


def _same_output(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["output"].strip().lower() == b["output"].strip().lower()


def read_pair_verdicts(path: Path) -> dict[tuple[int, int], dict[str, str]]:
    """{(line_a, line_b): row} of the pair labels file (empty when it does not exist yet)."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        return {(int(r["line_a"]), int(r["line_b"])): r for r in csv.DictReader(f) if r.get("verdict")}


def pair_samples(pairs: list, candidates: list[float], n: int, seed: int) -> dict[float, list]:
    """For each candidate threshold, the first `n` pairs at or above it in one seeded order of all pairs."""
    pool = sorted(p for p in pairs if p[2] >= min(candidates))
    random.Random(f"{seed}:static_pairs").shuffle(pool)
    return {t: [p for p in pool if p[2] >= t][:n] for t in candidates}


def clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n // 2] + " [...] " + s[-n // 2 :]


def pair_review(records: list[dict[str, Any]], samples: dict[float, list], verdicts: dict) -> str:
    """The sampled pairs without a verdict, both records clipped, for a person to read."""
    seen: set[tuple[int, int]] = set()
    out = []
    for pairs in samples.values():
        for i, j, s in pairs:
            a, b = records[i], records[j]
            key = (a["meta"]["line"], b["meta"]["line"])
            if key in verdicts or key in seen:
                continue
            seen.add(key)
            out.append(
                f"=== {key[0]},{key[1]},{a['id']},{b['id']},{s:.4f}\n"
                f"A prompt: {clip(a['instruction'], 700)}\nA output: {clip(a['output'], 200)}\n"
                f"B prompt: {clip(b['instruction'], 700)}\nB output: {clip(b['output'], 200)}\n"
            )
    return "\n".join(out)


def precision(records: list[dict[str, Any]], samples: dict[float, list], verdicts: dict) -> dict[str, Any]:
    out = {}
    for t, pairs in samples.items():
        marks = [verdicts.get((records[i]["meta"]["line"], records[j]["meta"]["line"])) for i, j, _ in pairs]
        read = [m["verdict"] for m in marks if m]
        right = read.count("right")
        out[str(t)] = {
            "sampled": len(pairs),
            "read": len(read),
            "right": right,
            "precision": round(right / len(read), 3) if read else None,
            "wilson95": wilson(right, len(read)),
        }
    return out


def planted(candidates: list[float], cache: Path) -> dict[str, Any]:
    """Static on dedup's planted corpus at each candidate: the semantic decision alone and the whole stage."""
    params = _params.load(ROOT / "params.yaml", [*dedup.PARAMS])
    records, truth, info = dn.build_corpus(params.common.seed)
    hard_pairs = {x for pair in dn.HARD_NEGATIVES for x in pair}
    hard = {r["id"] for r in records if (r["instruction"], r["output"]) in hard_pairs}
    emb = ec.embedding_of("static")
    vectors = embed.embed([record_text(r, emb.fields) for r in records], emb, cache)
    out: dict[str, Any] = {"corpus": info}
    for t in candidates:
        s = dn.score(truth, ec.semantic_drops(records, vectors, t), hard)
        with tempfile.TemporaryDirectory() as tmp:
            w = dn.score(
                truth,
                dn.run_steep(
                    records,
                    Path(tmp),
                    cache=cache,
                    common__embedding__kind="static",
                    dedup__semantic__cosine_threshold=t,
                ),
                hard,
            )
        keep = ("precision", "recall", "false_positives", "hard_negatives_dropped")
        out[str(t)] = {
            "semantic_only": {k: s[k] for k in keep} | {"f1": ec.f1(s)},
            "whole_stage": {k: w[k] for k in keep} | {"f1": ec.f1(w), "per_kind": w["per_kind"]},
        }
    return out


def cleanlab_static(
    corpus: Path, n: int, seed: int, cache: Path, outlier_ts: list[float], dup_ts: list[float], read_n: int
) -> tuple[dict[str, Any], str]:
    """Outlier and near-duplicate sweeps on static vectors of the calibration sample; review text of new flags.

    Agreement over the flags that have a verdict mixes older reading (of MiniLM's flags) with new; so each
    setting also reports a simple random sample of `read_n` of its own flags
    (``random.Random("<seed>:<issue>:<threshold>")``), and only that sample's unread flags go to the review.
    """
    cfg = _params.load(ROOT / "params.yaml", ["moderate", "common.seed"])
    chosen, dseed = cfg.moderate.cleanlab, cfg.common.seed
    emb = ec.embedding_of("static")
    records = cc.load_sample(corpus, n, seed)
    vectors = embed.embed([record_text(r, emb.fields) for r in records], emb, cache).astype(np.float64)
    junk = [make_record(source="t0", kind="instruction", meta={}, instruction=a, output=b) for a, b in cc.PLANTED]
    junk_vecs = embed.embed([record_text(r, emb.fields) for r in junk], emb, cache).astype(np.float64)
    verdicts = cc.read_verdicts(cc.LABELS)
    sims = embed.cosine(vectors, vectors)
    np.fill_diagonal(sims, -2.0)
    rows: list[dict[str, Any]] = []
    review: dict[tuple[str, str], str] = {}
    settings = [("outlier", {"k": chosen.outlier_k, "threshold": t}) for t in outlier_ts]
    settings += [("near_duplicate", {"k": chosen.near_duplicate_k, "threshold": t}) for t in dup_ts]
    for issue, kwargs in settings:
        flagged, extra = cc.run_setting(records, vectors, issue, kwargs, None, dseed, junk_vecs)
        reason = cc.REASONS[issue]
        marks = [
            verdicts[(records[i]["id"], reason)]["verdict"] for i in flagged if (records[i]["id"], reason) in verdicts
        ]
        sample = sorted(
            random.Random(f"{seed}:{issue}:{kwargs['threshold']}").sample(flagged, min(read_n, len(flagged)))
        )
        sample_marks = []
        for i in sample:
            key = (records[i]["id"], reason)
            if key in verdicts:
                sample_marks.append(verdicts[key]["verdict"])
            elif key not in review:
                nn = int(np.argmax(sims[i]))
                note = f"nearest {records[nn]['id']} line {records[nn]['meta']['line']} cosine {sims[i, nn]:.4f}"
                text = cc.review_text(records[i], reason, f"line {records[i]['meta']['line']}; {note}")
                if issue == "near_duplicate":
                    text += f"+++ nearest prompt: {clip(records[nn]['instruction'], 700)}\n"
                    text += f"+++ nearest completion: {clip(records[nn]['output'], 300)}\n"
                review[key] = f"[{issue} t={kwargs['threshold']}] " + text
        right, s_right = marks.count("right"), sample_marks.count("right")
        rows.append(
            {
                "issue": issue,
                **kwargs,
                "flagged": len(flagged),
                "read": len(marks),
                "agreed": right,
                "agreement": round(right / len(marks), 3) if marks else None,
                "sample": len(sample),
                "sample_read": len(sample_marks),
                "sample_agreed": s_right,
                "sample_agreement": round(s_right / len(sample_marks), 3) if sample_marks else None,
                "sample_wilson95": wilson(s_right, len(sample_marks)),
                **extra,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {"sample": len(records), "sample_seed": seed, "datalab_seed": dseed, "settings": rows}
    return result, "\n".join(review[k] for k in sorted(review))


def markdown(result: dict[str, Any]) -> str:
    """The tables printed at the end (and pasted into benchmarks/README.md)."""
    sem, prec, pl = result["t0_semantic"], result["t0_precision"], result["planted"]
    lines = [
        f"T0: {sem['records']:,} records, {sem['exact_dropped']:,} dropped by the exact pass, "
        f"{sem['minhash_dropped']:,} by MinHash; the semantic pass sees {sem['semantic_members']:,}.",
        "",
        "| cosine >= | pairs | records dropped | pairs with the same output |",
        "|---:|---:|---:|---:|",
    ]
    for t, s in sem["sweep"].items():
        lines.append(f"| {t} | {s['pairs']:,} | {s['dropped']:,} | {s['pairs_same_output']:,} |")
    lines += [
        "",
        "| cosine >= | T0 pairs read | real duplicates | precision (95% Wilson) | planted: semantic only P / R "
        "| planted: whole stage P / R / F1 |",
        "|---:|---:|---:|---|---|---|",
    ]
    for t, p in prec.items():
        s, w = pl[t]["semantic_only"], pl[t]["whole_stage"]
        ci = f" ({p['wilson95'][0]}-{p['wilson95'][1]})" if p["wilson95"] else ""
        lines.append(
            f"| {t} | {p['read']} | {p['right']} | {p['precision']}{ci} | {s['precision']} / {s['recall']} | "
            f"{w['precision']} / {w['recall']} / {w['f1']} |"
        )
    cl = result["cleanlab"]
    lines += [
        "",
        f"Cleanlab on {cl['sample']:,} T0 records (static vectors):",
        "",
        "| check | k | threshold | flagged | read | agreed | planted junk |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cl["settings"]:
        lines.append(
            f"| {r['issue']} | {r['k']} | {r['threshold']} | {r['flagged']} | {r['read']} | {r['agreed']} | "
            f"{r.get('planted_junk_flagged', '')} |"
        )
    return "\n".join(lines)


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=_t0.DEFAULT_CORPUS, help="the T0 JSONL")
    ap.add_argument("--cache", type=Path, default=ec.CACHE, help="embedding cache (static table and vectors)")
    ap.add_argument("--sweep", type=_floats, default=SWEEP, help="cosine thresholds counted on T0")
    ap.add_argument("--candidates", type=_floats, default=CANDIDATES, help="cosine thresholds read and scored")
    ap.add_argument("--read", type=int, default=40, help="T0 pairs sampled per candidate threshold")
    ap.add_argument("--seed", type=int, default=0, help="seed of the T0 samples")
    ap.add_argument("--sample", type=int, default=3000, help="T0 records for cleanlab")
    ap.add_argument("--read-cleanlab", type=int, default=40, help="flags sampled per cleanlab setting")
    ap.add_argument("--outlier-thresholds", type=_floats, default=OUTLIER_THRESHOLDS)
    ap.add_argument("--near-duplicate-thresholds", type=_floats, default=NEAR_DUPLICATE_THRESHOLDS)
    ap.add_argument("--review", type=Path, help="write the sampled T0 pairs without a verdict here, to read")
    ap.add_argument("--review-cleanlab", type=Path, help="write cleanlab flags without a verdict here, to read")
    ap.add_argument("--skip-planted", action="store_true", help="leave out the planted corpus (dedup stage runs)")
    args = ap.parse_args(argv)
    _t0.require(args.corpus)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("steep").setLevel(logging.WARNING)
    sweep = sorted({*args.sweep, *args.candidates})
    result: dict[str, Any] = {
        "corpus": args.corpus.name,
        "embedding": ec.embedding_of("static").model_dump(),
        "pair_labels": str(PAIR_LABELS.relative_to(ROOT)),
    }
    sem, records, pairs = t0_semantic(args.corpus, args.cache, sweep)
    result["t0_semantic"] = sem
    print(json.dumps(sem), flush=True)
    samples = pair_samples(pairs, args.candidates, args.read, args.seed)
    verdicts = read_pair_verdicts(PAIR_LABELS)
    if args.review:
        args.review.write_text(pair_review(records, samples, verdicts), encoding="utf-8")
        print(f"unread sampled pairs written to {args.review}")
    result["t0_precision"] = precision(records, samples, verdicts)
    print(json.dumps(result["t0_precision"]), flush=True)
    if not args.skip_planted:
        result["planted"] = planted(args.candidates, args.cache)
    result["cleanlab"], review = cleanlab_static(
        args.corpus,
        args.sample,
        args.seed,
        args.cache,
        args.outlier_thresholds,
        args.near_duplicate_thresholds,
        args.read_cleanlab,
    )
    if args.review_cleanlab:
        args.review_cleanlab.write_text(review, encoding="utf-8")
        print(f"cleanlab flags without a verdict written to {args.review_cleanlab}")
    if args.skip_planted:
        print(json.dumps(result, indent=1))
        return
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
