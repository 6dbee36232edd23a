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
   (:func:`normalize_text`: NFKC, lowercase, punctuation removed, whitespace collapsed), so edits of
   whitespace, punctuation or case do not hide a copy.
2. ``minhash_duplicate``: MinHash over word shingles (``dedup.minhash.shingle_words`` words,
   ``num_permutations`` permutations seeded with ``common.seed``), candidate pairs from datasketch's
   ``MinHashLSH``, each candidate kept only if its estimated Jaccard similarity is at least
   ``jaccard_threshold``. Signatures are computed for all records at once with numpy (datasketch's
   ``affine32`` permutation scheme, bit for bit) instead of one ``MinHash.update`` per shingle.
3. ``semantic_duplicate``: cosine similarity of unit sentence embeddings (``common.embedding``: model and
   the fields embedded) at least ``dedup.semantic.cosine_threshold``; skipped when ``semantic.enable`` is
   false. Vectors come from the content-addressed cache in :mod:`stages.curate.embed`; their cosines are exact
   (:func:`stages.curate.embed.cosine`), so a pair at the threshold is decided the same way on every CPU.
4. ``reference_overlap``: each text of each reference file (its ``fields`` joined by blank lines) is
   compared with every remaining record by the same three methods and thresholds; an overlapping record
   is dropped, and the detail names the reference file, line and method.

Clusters: within a method, matching pairs are joined by union-find (so matches chain). The survivor of a
cluster is the record that comes first in the declared input (:func:`stages.core.records.order_key`: the
smallest ``(meta.source_index, meta.source_file, meta.row)``, i.e. source order in ``pull.sources``, then
file within a folder source, then row), never the one whose id sorts first; the others
are dropped with a detail naming the survivor and their closest match. Every record, kept or dropped,
gets ``meta["dedup"] = {"exact_cluster", "minhash_cluster", "semantic_cluster"}``: the id of the
survivor of its cluster (its own id when it has no duplicate), or null for a method that did not see the
record (it was dropped by an earlier one, semantic dedup is off, or it has no text for that method).

Output rows are sorted by id; the same inputs and params give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.dedup import Dedup, Reference
from stages.core.params.dedup import MinHash as MinHashParams
from stages.core.records import Record, clean_text, order_key, read_records, record_text, write_records, write_rejects
from stages.curate.embed import cosine, embed

PARAMS = ["common.seed", "common.embedding", "dedup"]
STAGE = "dedup"
REASONS = ("exact_duplicate", "minhash_duplicate", "semantic_duplicate", "reference_overlap")
METHODS = ("exact", "minhash", "semantic")

log = logging.getLogger("steep.dedup")

# Rows of the embedding matrix compared at once in the cosine pass: (512, N) float64 similarities.
COSINE_CHUNK_ROWS = 512
# Shingles hashed at once in the signature pass: (P, 4096) uint32 = 2 MiB at P = 128 (stays in cache).
SIGNATURE_CHUNK_SHINGLES = 1 << 12


# --- text normalization -------------------------------------------------------


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    """str.translate table deleting every Unicode punctuation character (categories P*)."""
    return {cp: None for cp in range(0x110000) if unicodedata.category(chr(cp)).startswith("P")}


def normalize_text(text: str) -> str:
    """The form exact hashing and shingling see: NFKC, lowercase, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_punctuation_table())
    return " ".join(text.split())


def exact_key(text: str) -> str:
    """sha256 of the normalized text."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


# --- MinHash signatures -------------------------------------------------------

_U64 = np.uint64
_SHINGLE_MULT = _U64(0x9E3779B97F4A7C15)  # odd 64-bit constant: h = h * M + word, wrapping mod 2^64


def _word_hash(word: str) -> int:
    """Stable 64-bit hash of a word (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads the bits of the combined word hashes."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix of datasketch's affine32 scheme."""
    u = np.uint32
    h = h ^ (h >> u(16))
    h = h * u(0x85EBCA6B)
    h = h ^ (h >> u(13))
    h = h * u(0xC2B2AE35)
    return h ^ (h >> u(16))


def shingle_hashes(docs: Sequence[Sequence[str]], shingle_words: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the word shingles of each document, all documents in one array.

    A shingle is ``shingle_words`` consecutive words; a document shorter than that is one shingle (padded
    with empty words); a document with no words has no shingles.

    Args:
        docs: the words of each document (normalized text, split on whitespace).
        shingle_words: words per shingle (k).

    Returns:
        ``(hashes, offsets)``: hashes (S,) uint32 of every shingle, document by document (repeats kept,
        they do not change a minimum), and offsets (N + 1,) int64, the shingles of document ``i`` being
        ``hashes[offsets[i]:offsets[i + 1]]``.
    """
    k = shingle_words
    vocab: dict[str, int] = {}
    flat: list[str] = []
    lengths = np.zeros(len(docs), dtype=np.int64)
    for i, words in enumerate(docs):
        if words:
            padded = list(words) + [""] * (k - len(words)) if len(words) < k else words
            flat.extend(padded)
            lengths[i] = len(padded)
    for w in set(flat):
        vocab[w] = _word_hash(w)
    ids = np.fromiter((vocab[w] for w in flat), dtype=np.uint64, count=len(flat))  # (W,)
    # h[p] = combine(ids[p], ..., ids[p + k - 1]) for every position p, then keep the positions where a
    # whole shingle fits inside its document.
    n_words = len(ids)
    h = ids.copy()
    for t in range(1, k):
        nxt = np.zeros(n_words, dtype=np.uint64)
        nxt[: n_words - t] = ids[t:]
        h = h * _SHINGLE_MULT + nxt
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos_in_doc = np.arange(n_words, dtype=np.int64) - np.repeat(starts, lengths)
    valid = pos_in_doc <= np.repeat(lengths - k, lengths)
    hashes = (_fmix64(h[valid]) >> _U64(32)).astype(np.uint32)  # (S,)
    counts = np.where(lengths > 0, lengths - k + 1, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return hashes, offsets


def permutations(num_permutations: int, seed: int) -> np.ndarray:
    """datasketch's affine32 permutation parameters for (num_perm, seed): (2, P) uint32 rows a, b."""
    return MinHash(num_perm=num_permutations, seed=seed, scheme="affine32").permutations


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_permutations: int, seed: int) -> np.ndarray:
    """MinHash signatures of all documents: (N, P) uint32, all-max for documents without shingles.

    Equal, value for value, to ``datasketch.MinHash(num_perm, seed, hashfunc=<the shingle hash>)`` fed
    every shingle of the document (affine32 scheme: fmix32 pre-mix, then ``a * h + b mod 2^32``, min).
    """
    a, b = permutations(num_permutations, seed)
    n = len(offsets) - 1
    sigs = np.full((n, num_permutations), np.iinfo(np.uint32).max, dtype=np.uint32)
    counts = np.diff(offsets)
    docs = np.flatnonzero(counts > 0)
    mixed = _fmix32(hashes)
    starts = offsets[docs]
    i = 0
    while i < len(docs):
        # take documents until the chunk holds SIGNATURE_CHUNK_SHINGLES shingles (at least one document)
        j = int(np.searchsorted(starts, starts[i] + SIGNATURE_CHUNK_SHINGLES, side="right"))
        j = max(j, i + 1)
        chunk = docs[i:j]
        lo, hi = int(offsets[chunk[0]]), int(offsets[chunk[-1] + 1])
        # (P, S_chunk), wraps mod 2^32; permutations on rows so the per-document min runs along rows
        phv = a[:, None] * mixed[None, lo:hi] + b[:, None]
        sigs[chunk] = np.minimum.reduceat(phv, offsets[chunk] - lo, axis=1).T  # (n_chunk, P)
        i = j
    return sigs


def lean_minhash(signature: np.ndarray, seed: int) -> LeanMinHash:
    """A datasketch LeanMinHash around one signature row (for MinHashLSH)."""
    return LeanMinHash(seed=seed, hashvalues=signature, scheme="affine32")


@dataclass
class NearDuplicateIndex:
    """MinHash signatures of a set of documents and datasketch's LSH index over them."""

    sigs: np.ndarray  # (N, P) uint32
    has_text: np.ndarray  # (N,) bool: documents with at least one shingle (the only ones indexed)
    lsh: MinHashLSH
    lean: dict[int, LeanMinHash]  # the indexed sketches, by document index
    seed: int
    threshold: float
    candidates: int = 0

    @classmethod
    def build_from(cls, sigs: np.ndarray, has_text: np.ndarray, params: MinHashParams, seed: int) -> NearDuplicateIndex:
        """Index precomputed signatures (N, P) of the documents where `has_text` is set."""
        lsh = MinHashLSH(threshold=params.jaccard_threshold, num_perm=params.num_permutations)
        lean = {int(i): lean_minhash(sigs[i], seed) for i in np.flatnonzero(has_text)}
        with lsh.insertion_session() as session:
            for i, sketch in lean.items():
                session.insert(i, sketch, check_duplication=False)
        return cls(sigs, has_text, lsh, lean, seed, params.jaccard_threshold)

    def query(self, sketch: LeanMinHash) -> list[int]:
        """Indexed documents whose LSH bands collide with `sketch`, sorted."""
        return sorted(self.lsh.query(sketch))

    def pairs(self, members: np.ndarray) -> list[tuple[int, int, float]]:
        """Verified near-duplicate pairs ``(i, j, jaccard)``, i < j, among `members` (document indices)."""
        allowed = np.zeros(len(self.sigs), dtype=bool)
        allowed[members] = True
        cand_i: list[int] = []
        cand_j: list[int] = []
        for i in members:
            if not self.has_text[i]:
                continue
            for j in self.query(self.lean[int(i)]):
                if j > i and allowed[j]:
                    cand_i.append(int(i))
                    cand_j.append(j)
        self.candidates += len(cand_i)
        return self._verify(np.array(cand_i, dtype=np.int64), self.sigs[cand_i], np.array(cand_j, dtype=np.int64))

    def _verify(self, left: np.ndarray, left_sigs: np.ndarray, right: np.ndarray) -> list[tuple[int, int, float]]:
        if len(left) == 0:
            return []
        jac = (left_sigs == self.sigs[right]).mean(axis=1)  # estimated Jaccard per candidate pair
        ok = jac >= self.threshold
        return [(int(i), int(j), float(s)) for i, j, s in zip(left[ok], right[ok], jac[ok], strict=True)]

    def matches(self, signature: np.ndarray, members: np.ndarray) -> list[tuple[int, float]]:
        """Indexed documents among `members` whose estimated Jaccard with `signature` reaches the threshold."""
        allowed = set(members.tolist())
        cands = np.array([j for j in self.query(lean_minhash(signature, self.seed)) if j in allowed], dtype=np.int64)
        if len(cands) == 0:
            return []
        found = self._verify(cands, np.broadcast_to(signature, (len(cands), len(signature))), cands)
        return [(i, s) for i, _, s in found]


def signatures_of(texts: Sequence[str], params: MinHashParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalize, shingle and sign `texts`: signatures (N, P) uint32 and a (N,) mask of texts with words."""
    hashes, offsets = shingle_hashes([normalize_text(t).split() for t in texts], params.shingle_words)
    return signatures(hashes, offsets, params.num_permutations, seed), np.diff(offsets) > 0


# --- cosine -------------------------------------------------------------------


def cosine_pairs(emb: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, cosine)``, i < j, of unit-norm rows of `emb` (N, D) with cosine >= threshold."""
    out: list[tuple[int, int, float]] = []
    for lo in range(0, len(emb), COSINE_CHUNK_ROWS):
        block = cosine(emb[lo : lo + COSINE_CHUNK_ROWS], emb[lo:])  # (C, N - lo), exact: row r is item lo + r
        rows, cols = np.nonzero(block >= threshold)
        upper = cols > rows  # column c is item lo + c; keep j > i once
        for r, c in zip(rows[upper], cols[upper], strict=True):
            out.append((lo + int(r), lo + int(c), float(block[r, c])))
    return out


# --- clusters -----------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """Why a record left: the survivor of its cluster and its own closest match in the cluster."""

    survivor: int
    neighbor: int
    score: float


def clusters(
    members: Sequence[int], pairs: Sequence[tuple[int, int, float]], order: Sequence[Any]
) -> tuple[dict[int, int], dict[int, Match]]:
    """Union-find over `pairs` among `members`; the survivor of a cluster is its member of smallest `order`.

    Args:
        members: indices of the records this method sees.
        pairs: matches ``(i, j, score)`` between members.
        order: sort key of every record index (input position); decides survivors and ties.

    Returns:
        ``(survivor_of, dropped)``: the survivor's index for every member (itself when alone), and for
        every member that is not a survivor, its :class:`Match` (closest match: highest score, then
        earliest in input order).
    """
    parent = {m: m for m in members}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best: dict[int, tuple[float, int]] = {}
    for i, j, score in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            # the root is always the earliest record of the component
            if order[rj] < order[ri]:
                ri, rj = rj, ri
            parent[rj] = ri
        for a, b in ((i, j), (j, i)):
            cur = best.get(a)
            if cur is None or score > cur[0] or (score == cur[0] and order[b] < order[cur[1]]):
                best[a] = (score, b)
    survivor_of = {m: find(m) for m in members}
    dropped = {
        m: Match(s, best[m][1], best[m][0]) for m, s in survivor_of.items() if s != m
    }  # a non-survivor always has an edge
    return survivor_of, dropped


# --- references ---------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceText:
    """One text of a reference file: where it comes from (as written in params) and its text."""

    path: str
    line: int
    text: str


def read_references(refs: Sequence[Reference]) -> list[ReferenceText]:
    """Read every reference JSONL file; each line's `fields` joined by blank lines make its text.

    Raises:
        StageError: a file is missing, a line is not a JSON object, or lacks a field / has no text.
    """
    out: list[ReferenceText] = []
    for n, ref in enumerate(refs):
        path = Path(ref.path)
        where = f"params.yaml dedup.references[{n}]"
        expected = "one JSON object per line with string fields " + ", ".join(repr(f) for f in ref.fields)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise StageError(
                f"{ref.path}: reference file not found (listed in {where}.path); "
                "fix the path (relative to the project root) or remove the entry"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise StageError(f"{ref.path}: cannot read reference file ({e}); expected UTF-8 JSONL") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise StageError(
                    f"{ref.path}:{lineno}: not valid JSON ({e.msg}); expected {expected}, got {line[:80]!r}"
                ) from None
            if not isinstance(obj, dict):
                raise StageError(f"{ref.path}:{lineno}: expected {expected}, got a JSON {type(obj).__name__}")
            missing = [f for f in ref.fields if f not in obj]
            if missing:
                raise StageError(
                    f"{ref.path}:{lineno}: missing field(s) {missing}; expected {expected}, got keys "
                    f"{sorted(obj)} (or change {where}.fields)"
                )
            bad = [f for f in ref.fields if not isinstance(obj[f], str)]
            if bad:
                raise StageError(f"{ref.path}:{lineno}: field(s) {bad} are not strings; expected {expected}")
            text = "\n\n".join(t for t in (clean_text(obj[f]) for f in ref.fields) if t)
            if not normalize_text(text):
                raise StageError(f"{ref.path}:{lineno}: no text in fields {list(ref.fields)}; expected {expected}")
            out.append(ReferenceText(ref.path, lineno, text))
    return out


# --- the stage ----------------------------------------------------------------


def run(
    params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path], cache_dir: str | Path
) -> dict[str, Any]:
    """Deduplicate `inputs["in"]` into `outputs["out"]` and `outputs["rejects"]`; return the metrics.

    Args:
        params: scoped params (common.seed, common.embedding, dedup).
        inputs: ``{"in": <record parquet>}``.
        outputs: ``{"out": <kept records parquet>, "rejects": <rejected records parquet>}``.
        cache_dir: the embedding cache directory (shared with moderate).

    Returns:
        Flat metrics: total, kept, dropped_<reason> for every reason, and pair/cluster counts.
    """
    cfg: Dedup = params.dedup
    seed: int = params.common.seed
    records = read_records(inputs["in"])
    references = read_references(cfg.references)
    records.sort(key=order_key)  # input order: index = position in the declared sources
    order = [order_key(r) for r in records]
    ids = [r["id"] for r in records]
    n = len(records)
    clusters_meta: list[dict[str, str | None]] = [dict.fromkeys(f"{m}_cluster" for m in METHODS) for _ in range(n)]
    reason_of: dict[int, tuple[str, str]] = {}
    extra: dict[str, int] = {}

    def apply(
        method: str, reason: str, members: list[int], pairs: list[tuple[int, int, float]], score: str
    ) -> list[int]:
        """Cluster `members` by `pairs`, record cluster ids and drops; return the survivors."""
        survivor_of, dropped = clusters(members, pairs, order)
        for m, s in survivor_of.items():
            clusters_meta[m][f"{method}_cluster"] = ids[s]
        for m, match in sorted(dropped.items()):
            detail = f"duplicate of {ids[match.survivor]}"
            if method != "exact":
                via = "" if match.neighbor == match.survivor else f" with {ids[match.neighbor]}"
                detail += f" ({score} {match.score:.3f}{via})"
            reason_of[m] = (reason, detail)
        extra[f"{method}_clusters"] = len({match.survivor for match in dropped.values()})  # clusters of 2+
        log.info("%s: %d pairs, %d dropped", method, len(pairs), len(dropped))
        return [m for m in members if m not in dropped]

    # 1. exact: group by normalized-text hash; pairs link every member to the first of its group.
    normalized = [normalize_text(record_text(r)) for r in records]
    keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in normalized]  # == exact_key(record_text(r))
    first: dict[str, int] = {}
    exact_pairs: list[tuple[int, int, float]] = []
    for i in range(n):
        j = first.setdefault(keys[i], i)
        if j != i:
            exact_pairs.append((j, i, 1.0))
    alive = apply("exact", "exact_duplicate", list(range(n)), exact_pairs, "")

    # 2. MinHash + LSH, over every record (so references can query the same index), pairs among survivors.
    hashes, offsets = shingle_hashes([t.split() for t in normalized], cfg.minhash.shingle_words)
    sigs = signatures(hashes, offsets, cfg.minhash.num_permutations, seed)
    index = NearDuplicateIndex.build_from(sigs, np.diff(offsets) > 0, cfg.minhash, seed)
    mh_members = [i for i in alive if index.has_text[i]]
    alive_mh = apply(
        "minhash", "minhash_duplicate", mh_members, index.pairs(np.array(mh_members, dtype=np.int64)), "jaccard"
    )
    alive = sorted(set(alive_mh) | {i for i in alive if not index.has_text[i]})
    extra["minhash_candidate_pairs"] = index.candidates

    # 3. semantic: cosine of cached sentence embeddings of the embedding fields.
    emb_rows: dict[int, int] = {}
    emb = np.zeros((0, 0), dtype=np.float32)
    if cfg.semantic.enable:
        fields = params.common.embedding.fields
        sem_members = [i for i in alive if normalize_text(record_text(records[i], fields))]
        emb = embed([record_text(records[i], fields) for i in sem_members], params.common.embedding, cache_dir)
        emb_rows = {m: r for r, m in enumerate(sem_members)}
        pairs = [(sem_members[a], sem_members[b], s) for a, b, s in cosine_pairs(emb, cfg.semantic.cosine_threshold)]
        alive_sem = apply("semantic", "semantic_duplicate", sem_members, pairs, "cosine")
        alive = sorted(set(alive_sem) | {i for i in alive if i not in emb_rows})

    # 4. references: every remaining record against every reference text, by the same three methods.
    overlaps = reference_overlaps(keys, alive, references, index, emb, emb_rows, params, cache_dir)
    extra["reference_texts"] = len(references)
    for i, detail in overlaps.items():
        reason_of[i] = ("reference_overlap", detail)

    kept: list[Record] = []
    rejects: list[tuple[Record, str, str, str]] = []
    for i, rec in enumerate(records):
        rec["meta"] = {**rec["meta"], "dedup": clusters_meta[i]}
        if i in reason_of:
            reason, detail = reason_of[i]
            rejects.append((rec, STAGE, reason, detail))
        else:
            kept.append(rec)
    with _io.atomic_outputs(outputs["out"], outputs["rejects"]) as (out_tmp, rej_tmp):
        write_records(out_tmp, kept)
        write_rejects(rej_tmp, rejects)
    dropped = dict.fromkeys(REASONS, 0)
    for reason, _ in reason_of.values():
        dropped[reason] += 1
    log.info("dedup: %d records, %d kept, dropped %s", n, len(kept), dropped)
    return _io.drop_metrics(n, len(kept), dropped, **dict(sorted(extra.items())))


def reference_overlaps(
    keys: list[str],
    alive: list[int],
    references: list[ReferenceText],
    index: NearDuplicateIndex,
    emb: np.ndarray,
    emb_rows: dict[int, int],
    params: _params.Scoped,
    cache_dir: str | Path,
) -> dict[int, str]:
    """Records among `alive` that overlap a reference text: index -> detail (file:line, method, score).

    The first method that matches wins (exact, then MinHash, then cosine); within a method, the closest
    reference, then the first in file order.
    """
    if not references:
        return {}
    cfg: Dedup = params.dedup
    found: dict[int, str] = {}
    where = [f"{r.path}:{r.line}" for r in references]
    # exact
    ref_by_key: dict[str, int] = {}
    for r, ref in enumerate(references):
        ref_by_key.setdefault(exact_key(ref.text), r)
    for i in alive:
        if keys[i] in ref_by_key:
            found[i] = f"overlaps {where[ref_by_key[keys[i]]]} (exact)"
    # MinHash: query the records' LSH index with each reference signature
    ref_sigs, ref_has = signatures_of([r.text for r in references], cfg.minhash, params.common.seed)
    members = np.array([i for i in alive if i not in found and index.has_text[i]], dtype=np.int64)
    best: dict[int, tuple[float, int]] = {}
    for r in np.flatnonzero(ref_has):
        for i, score in index.matches(ref_sigs[r], members):
            if i not in best or score > best[i][0]:
                best[i] = (score, int(r))
    for i, (score, r) in best.items():
        found[i] = f"overlaps {where[r]} (minhash, jaccard {score:.3f})"
    # cosine
    if cfg.semantic.enable:
        rest = [i for i in alive if i not in found and i in emb_rows]
        if rest:
            ref_emb = embed([r.text for r in references], params.common.embedding, cache_dir)
            rows = emb[[emb_rows[i] for i in rest]]
            for lo in range(0, len(rest), COSINE_CHUNK_ROWS):
                sims = cosine(rows[lo : lo + COSINE_CHUNK_ROWS], ref_emb)  # (C, R), exact
                arg = sims.argmax(axis=1)  # first maximum: the earliest reference on ties
                for c, r in enumerate(arg):
                    score = float(sims[c, r])
                    if score >= cfg.semantic.cosine_threshold:
                        found[rest[lo + c]] = f"overlaps {where[r]} (semantic, cosine {score:.3f})"
    return found


def main() -> None:
    """Command line: the flags of the dedup stage's cmd in dvc.yaml."""
    cli.filter_stage_main(STAGE, PARAMS, run, in_help="moderated records (parquet)")


if __name__ == "__main__":
    cli.run_main(main)
