"""Dedup: drop exact, near and semantic duplicates, and records that overlap held-out reference sets.

Inputs: ``--in`` the moderated records (``data/moderated.parquet``); the reference files listed in
``dedup.references`` (JSONL, paths relative to the project root); the embedding cache ``--cache``
(``.steep_cache/embeddings``, filled by moderate, so dedup mostly reads vectors back).
Outputs: ``--out`` the kept records (``data/curated.parquet``), ``--rejects`` the dropped ones with reason
and detail (``data/rejected/dedup.parquet``), ``--metrics`` counts (``metrics/dedup.json``).
Run: ``dvc repro dedup``.

Four passes, in this order; each pass sees only the survivors of the passes before it, so a record is
dropped once, under the first reason that applies:

1. ``exact_duplicate``: same hash of the normalized text of the content fields
   (:func:`stages.curate.minhash.normalize_text`: NFKC, lowercase, punctuation removed, whitespace
   collapsed), so edits of whitespace, punctuation or case do not hide a copy.
2. ``minhash_duplicate``: MinHash over word shingles (``dedup.minhash.shingle_words`` words,
   ``num_permutations`` permutations seeded with ``common.seed``), candidate pairs from datasketch's
   ``MinHashLSH``, each candidate kept only if its estimated Jaccard similarity is at least
   ``jaccard_threshold`` and, where both records have an output, the estimated Jaccard of the outputs alone
   is at least ``output_jaccard_threshold`` (two questions on one long shared passage are no copies).
   Signatures are computed a batch of records at a time with numpy (datasketch's ``affine32`` permutation
   scheme, bit for bit) instead of one ``MinHash.update`` per shingle; the batches
   (``SIGNATURE_BATCH_RECORDS``) run across ``common.workers`` processes or as tasks on a Ray cluster
   (``common.executor``; :mod:`stages.core.executor`), and a row depends on its own record only, so the
   output is the same bytes for any worker count and either executor.
3. ``semantic_duplicate``: cosine similarity of unit sentence embeddings (``common.embedding``: model and
   the fields embedded) at least ``dedup.semantic.cosine_threshold``; skipped when ``semantic.enable`` is
   false. Vectors come from the content-addressed cache in :mod:`stages.curate.embed`; their cosines are exact
   (:func:`stages.curate.embed.cosine`), so a pair at the threshold is decided the same way on every CPU.
   Below ``dedup.semantic.ann.min_records`` records every pair is compared; from there on only the pairs an
   inverted-file index (faiss) finds, each still decided by its exact cosine (:mod:`stages.curate.semantic`).
4. ``reference_overlap``: each text of each reference file (its ``fields`` joined by blank lines) is
   compared with every remaining record by the same three methods and thresholds; an overlapping record
   is dropped, and the detail names the reference file, line and method.

Drop or flag: ``dedup.minhash.action`` and ``dedup.semantic.action`` say what a duplicate found by that
method becomes: ``drop`` (rejected under the method's reason) or ``flag`` (kept, with the reason and the
detail in ``meta.dedup.flags``, counted as ``flagged_<reason>``; the next passes still see it). A method
drops by default only where its precision on real data is at least 0.9 (benchmarks/README.md); exact
duplicates and reference overlaps always drop.

Clusters: within a method, matching pairs are joined by union-find (:mod:`stages.curate.clustering`, so
matches chain). The survivor of a cluster is the record that comes first in the declared input
(:func:`stages.core.records.order_key`: the smallest ``(meta.source_index, meta.source_file, meta.row)``,
i.e. source order in ``pull.sources``, then file within a folder source, then row), never the one whose id
sorts first; the others are dropped with a detail naming the survivor and their closest match. Every record,
kept or dropped, gets ``meta["dedup"] = {"exact_cluster", "minhash_cluster", "semantic_cluster", "flags"}``: the id
of the survivor of its cluster (its own id when it has no duplicate), or null for a method that did not see
the record (it was dropped by an earlier one, semantic dedup is off, or it has no text for that method).

Output rows are sorted by id; the same inputs and params give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.executor import imap_batches
from stages.core.params.dedup import Dedup
from stages.core.params.dedup import MinHash as MinHashParams
from stages.core.records import (
    REJECT_SCHEMA,
    RecordWriter,
    iter_records,
    order_key,
    rebatched,
    record_count,
    record_text,
)
from stages.curate.clustering import clusters
from stages.curate.embed import Embedder
from stages.curate.minhash import (
    NearDuplicateIndex,
    jaccards,
    normalize_text,
    signature_batch,
)
from stages.curate.references import read_references, reference_overlaps
from stages.curate.semantic import cosine_pairs


def _local_paths(params: _params.Scoped, variant: str | None, inputs: Mapping[str, Path]) -> list[tuple[str, str]]:
    """The reference files (each must be a dependency of the stage in dvc.yaml)."""
    return [(ref.path, "dedup.references") for ref in params.dedup.references]


NAME = "dedup"  # in the rejects' stage column
STAGE = cli.Stage(
    params=("common.seed", "common.workers", "common.executor", "common.embedding", "dedup"),
    inputs={"in": "moderated records (parquet)"},
    outputs={"out": "kept records (parquet)", "rejects": "rejected records (parquet)"},
    options={"cache": "embedding cache directory (shared by moderate and dedup)"},
    local_paths=_local_paths,
)
PARAMS = list(STAGE.params)
REASONS = ("exact_duplicate", "minhash_duplicate", "semantic_duplicate", "reference_overlap")
METHODS = ("exact", "minhash", "semantic")

log = logging.getLogger("steep.dedup")

# Records per batch of the MinHash signature pass (a task of a worker process or of a Ray task); fixed, so
# batches do not depend on the worker count. ~0.25 s per batch on the T0 corpus (~8,500 records/s on one core).
SIGNATURE_BATCH_RECORDS = 2000


# --- the stage ----------------------------------------------------------------


def text_keys(
    texts: Sequence[tuple[str, str | None, str]], shingle_words: int, num_permutations: int, seed: int
) -> list[tuple[str, bool, bool, np.ndarray, np.ndarray, bool]]:
    """One batch of dedup's first pass (module level: a worker process or a Ray task runs it).

    From each record's (content text, embedding-fields text or None when it is the same, output): its exact
    key (sha256 of the normalized content), whether the content has words, whether the embedding text has,
    the MinHash signature rows of its content and of its output, and whether the output has words.
    """
    normalized = [normalize_text(t) for t, _, _ in texts]
    outputs = [normalize_text(o) for _, _, o in texts]
    sigs = signature_batch(normalized, shingle_words=shingle_words, num_permutations=num_permutations, seed=seed)
    out_sigs = signature_batch(outputs, shingle_words=shingle_words, num_permutations=num_permutations, seed=seed)
    out = []
    for (_, emb_text, _), norm, sig, output, out_sig in zip(texts, normalized, sigs, outputs, out_sigs, strict=True):
        emb_norm = norm if emb_text is None else normalize_text(emb_text)
        key = hashlib.sha256(norm.encode("utf-8")).hexdigest()
        out.append((key, bool(norm), bool(emb_norm), sig, out_sig, bool(output)))
    return out


@dataclass
class _Columns:
    """Dedup's view of the input: a few compact columns per record, in input order (order_key)."""

    ids: list[str]
    keys: list[str]  # exact keys
    has_words: np.ndarray  # (n,) bool: normalized content has words
    has_emb_text: np.ndarray  # (n,) bool: the embedding fields have words
    sigs: np.ndarray  # (n, P) uint32
    out_sigs: np.ndarray  # (n, P) uint32: MinHash of the output alone
    has_output: np.ndarray  # (n,) bool: the output has words
    position: np.ndarray  # (n,) int64: the record's row in the input file


def _read_columns(path: Path, params: _params.Scoped) -> _Columns:
    """First pass over the input, a batch at a time: ids, exact keys and MinHash signatures, in input order."""
    cfg: Dedup = params.dedup
    fields = params.common.embedding.fields
    ids: list[str] = []
    order: list[tuple[int, str, int, str]] = []

    def parts() -> Iterator[list[tuple[str, str | None, str]]]:
        for batch in rebatched(iter_records(path), SIGNATURE_BATCH_RECORDS):
            texts = []
            for r in batch:
                ids.append(r["id"])
                order.append(order_key(r))
                text, emb_text = record_text(r), record_text(r, fields)
                texts.append((text, None if emb_text == text else emb_text, r["output"]))
            yield texts

    sign = functools.partial(
        text_keys,
        shingle_words=cfg.minhash.shingle_words,
        num_permutations=cfg.minhash.num_permutations,
        seed=params.common.seed,
    )
    n, p = record_count(path), cfg.minhash.num_permutations
    # file order first, filled a batch at a time: no Python object per record beside its key
    sigs = np.empty((n, p), dtype=np.uint32)
    out_sigs = np.empty((n, p), dtype=np.uint32)
    flags = np.zeros((n, 3), dtype=bool)  # has_words, has_emb_text, has_output
    keys: list[str] = []
    batches = imap_batches(
        sign,
        parts(),
        total=n,
        executor=params.common.executor,
        workers=params.common.workers,
        label="dedup keys and minhash signatures",
        log=log,
    )
    for batch in batches:
        lo = len(keys)
        for j, (key, has_words, has_emb, sig, out_sig, has_out) in enumerate(batch, start=lo):
            keys.append(key)
            sigs[j], out_sigs[j] = sig, out_sig
            flags[j] = (has_words, has_emb, has_out)
    perm = np.array(sorted(range(n), key=order.__getitem__), dtype=np.int64)  # input order -> file row
    sigs = sigs[perm]  # one (n, P) array permuted at a time: the file-order one is let go before the next
    out_sigs = out_sigs[perm]
    return _Columns(
        ids=[ids[j] for j in perm],
        keys=[keys[j] for j in perm],
        has_words=flags[perm, 0],
        has_emb_text=flags[perm, 1],
        sigs=sigs,
        out_sigs=out_sigs,
        has_output=flags[perm, 2],
        position=perm,
    )


def _outputs_agree(
    pairs: list[tuple[int, int, float]], cols: _Columns, cfg: MinHashParams
) -> list[tuple[int, int, float]]:
    """The MinHash pairs whose outputs agree too: where both records have an output, the estimated Jaccard of
    the outputs' shingles must reach ``output_jaccard_threshold`` (two tasks on one passage are no copies)."""
    if not pairs:
        return pairs
    i = np.array([p[0] for p in pairs], dtype=np.int64)
    j = np.array([p[1] for p in pairs], dtype=np.int64)
    both = cols.has_output[i] & cols.has_output[j]
    agree = jaccards(cols.out_sigs, i, cols.out_sigs, j) >= cfg.output_jaccard_threshold
    keep = ~both | agree
    return [p for p, k in zip(pairs, keep.tolist(), strict=True) if k]


def _embed_members(path: Path, cols: _Columns, members: list[int], params: _params.Scoped, cache: str | Path):
    """(len(members), D) embeddings of `members` (input-order indices), read from the input a batch at a time."""
    fields = params.common.embedding.fields
    row_of_position = {int(cols.position[m]): r for r, m in enumerate(members)}
    embedder = Embedder(params.common.embedding, cache)
    rows: list[int] = []
    for position, rec in enumerate(itertools.chain.from_iterable(iter_records(path))):
        r = row_of_position.get(position)
        if r is not None:
            rows.append(r)
            embedder.add([record_text(rec, fields)])
    vectors = embedder.vectors()
    emb = np.empty((len(members), vectors.shape[1]), dtype=np.float32)
    emb[np.array(rows, dtype=np.int64)] = vectors
    return emb


def run(
    params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path], cache: str | Path
) -> dict[str, Any]:
    """Deduplicate `inputs["in"]` into `outputs["out"]` and `outputs["rejects"]`; return the metrics.

    The input streams through three times a batch at a time (keys and signatures; the texts to embed; the
    records to write), so memory holds compact columns (ids, keys, signatures, vectors), not the records.

    Args:
        params: scoped params (common.seed, common.workers, common.executor, common.embedding, dedup).
        inputs: ``{"in": <record parquet>}``.
        outputs: ``{"out": <kept records parquet>, "rejects": <rejected records parquet>}``.
        cache: the embedding cache directory (shared with moderate).

    Returns:
        Flat metrics: total, kept, dropped_<reason> for every reason, and pair/cluster counts.
    """
    cfg: Dedup = params.dedup
    seed: int = params.common.seed
    references = read_references(cfg.references)
    cols = _read_columns(inputs["in"], params)  # index = position in the declared sources
    ids, n = cols.ids, len(cols.ids)
    order = range(n)  # indices are in input order already
    cluster_of = {m: np.full(n, -1, dtype=np.int64) for m in METHODS}  # survivor index per method, -1: unseen
    reason_of: dict[int, tuple[str, str]] = {}
    flags_of: dict[int, dict[str, str]] = {}
    extra: dict[str, int] = {"flagged_minhash_duplicate": 0, "flagged_semantic_duplicate": 0}
    actions = {"exact": "drop", "minhash": cfg.minhash.action, "semantic": cfg.semantic.action}

    def apply(
        method: str, reason: str, members: list[int], pairs: list[tuple[int, int, float]], score: str
    ) -> list[int]:
        """Cluster `members` by `pairs`, record cluster ids and drops (or flags); return the survivors."""
        start = time.perf_counter()
        survivor_of, dropped = clusters(members, pairs, order)
        for m, s in survivor_of.items():
            cluster_of[method][m] = s
        for m, match in sorted(dropped.items()):
            detail = f"duplicate of {ids[match.survivor]}"
            if method != "exact":
                via = "" if match.neighbor == match.survivor else f" with {ids[match.neighbor]}"
                detail += f" ({score} {match.score:.3f}{via})"
            if actions[method] == "flag":
                flags_of.setdefault(m, {})[reason] = detail
            else:
                reason_of[m] = (reason, detail)
        extra[f"{method}_clusters"] = len({match.survivor for match in dropped.values()})  # clusters of 2+
        if method != "exact":
            extra[f"flagged_{reason}"] = len(dropped) if actions[method] == "flag" else 0
        took = time.perf_counter() - start
        verb = "flagged" if actions[method] == "flag" else "dropped"
        log.info("%s: %d pairs, %d %s (clustered in %.2f s)", method, len(pairs), len(dropped), verb, took)
        return members if actions[method] == "flag" else [m for m in members if m not in dropped]

    # 1. exact: group by normalized-text hash; pairs link every member to the first of its group.
    first: dict[str, int] = {}
    exact_pairs: list[tuple[int, int, float]] = []
    for i, key in enumerate(cols.keys):
        j = first.setdefault(key, i)
        if j != i:
            exact_pairs.append((j, i, 1.0))
    del first
    alive = apply("exact", "exact_duplicate", list(range(n)), exact_pairs, "")

    # 2. MinHash + LSH, over every record (so references can query the same index), pairs among survivors.
    start = time.perf_counter()
    index = NearDuplicateIndex.build_from(cols.sigs, cols.has_words, cfg.minhash, seed)
    mh_members = [i for i in alive if index.has_text[i]]
    mh_pairs = _outputs_agree(index.pairs(np.array(mh_members, dtype=np.int64)), cols, cfg.minhash)
    log.info("minhash: LSH index and %d candidate pairs in %.2f s", index.candidates, time.perf_counter() - start)
    alive_mh = apply("minhash", "minhash_duplicate", mh_members, mh_pairs, "jaccard")
    alive = sorted(set(alive_mh) | {i for i in alive if not index.has_text[i]})
    extra["minhash_candidate_pairs"] = index.candidates

    # 3. semantic: cosine of cached sentence embeddings of the embedding fields.
    emb_rows: dict[int, int] = {}
    emb = np.zeros((0, 0), dtype=np.float32)
    if cfg.semantic.enable:
        sem_members = [i for i in alive if cols.has_emb_text[i]]
        emb = _embed_members(inputs["in"], cols, sem_members, params, cache)
        emb_rows = {m: r for r, m in enumerate(sem_members)}
        found = cosine_pairs(emb, cfg.semantic.cosine_threshold, cfg.semantic, seed)
        pairs = [(sem_members[a], sem_members[b], s) for a, b, s in found]
        alive_sem = apply("semantic", "semantic_duplicate", sem_members, pairs, "cosine")
        alive = sorted(set(alive_sem) | {i for i in alive if i not in emb_rows})

    # 4. references: every remaining record against every reference text, by the same three methods.
    overlaps = reference_overlaps(cols.keys, alive, references, index, emb, emb_rows, params, cache)
    extra["reference_texts"] = len(references)
    for i, detail in overlaps.items():
        reason_of[i] = ("reference_overlap", detail)
    del index, emb

    # the records again, a batch at a time: each with its clusters, to the kept or the rejected file
    index_of = np.empty(n, dtype=np.int64)
    index_of[cols.position] = np.arange(n)  # file row -> input-order index
    kept = 0
    with (
        _io.atomic_outputs(outputs["out"], outputs["rejects"]) as (out_tmp, rej_tmp),
        RecordWriter(out_tmp) as out,
        RecordWriter(rej_tmp, REJECT_SCHEMA) as rej,
    ):
        position = 0
        for batch in iter_records(inputs["in"]):
            for rec in batch:
                i = int(index_of[position])
                position += 1
                meta: dict[str, Any] = {
                    f"{m}_cluster": (ids[c] if (c := int(cluster_of[m][i])) >= 0 else None) for m in METHODS
                }
                meta["flags"] = flags_of.get(i, {})
                rec["meta"] = {**rec["meta"], "dedup": meta}
                if i in reason_of:
                    reason, detail = reason_of[i]
                    rej.write([{**rec, "stage": NAME, "reason": reason, "detail": detail}])
                else:
                    kept += 1
                    out.write([rec])
    dropped = dict.fromkeys(REASONS, 0)
    for reason, _ in reason_of.values():
        dropped[reason] += 1
    log.info("dedup: %d records, %d kept, dropped %s", n, kept, dropped)
    return _io.drop_metrics(n, kept, dropped, **dict(sorted(extra.items())))


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the dedup stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
