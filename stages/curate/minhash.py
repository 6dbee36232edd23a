"""MinHash near-duplicate detection: text normalization, word shingles, signatures and an LSH index.

A shared module, not a stage: the dedup stage uses it for its exact and MinHash passes and for reference
overlap, and ``benchmarks/dedup_near_duplicates.py`` measures it against plain datasketch.
Signatures are computed for all documents at once with numpy, equal value for value to datasketch's
``MinHash`` (``affine32`` scheme) fed every shingle; candidate pairs come from the banding of datasketch's
``MinHashLSH``, kept in numpy arrays (:class:`NearDuplicateIndex`).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from stages.core.params.dedup import MinHash as MinHashParams

# Shingles hashed at once in the signature pass: (P, 4096) uint32 = 2 MiB at P = 128 (stays in cache).
SIGNATURE_CHUNK_SHINGLES = 1 << 12
# Candidate pairs verified at once: (65536, P) bools = 8 MiB at P = 128.
VERIFY_CHUNK_PAIRS = 1 << 16


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


def lsh_bands(threshold: float, num_permutations: int) -> tuple[int, int]:
    """(bands, rows per band) of datasketch's ``MinHashLSH`` for this threshold (its false positive and negative
    weights 0.5 each): the same banding, hence the same candidate pairs."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_permutations)
    return lsh.b, lsh.r


def _band_keys(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """(N,) opaque keys of one band of signatures (N, P): equal exactly when the band's values are equal."""
    part = np.ascontiguousarray(sigs[:, band * rows : (band + 1) * rows])
    return part.view(np.dtype((np.void, part.dtype.itemsize * rows))).ravel()


def jaccards(a: np.ndarray, i: np.ndarray, b: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of the signature rows ``a[i[k]]`` and ``b[j[k]]`` of each pair k (share of equal values),
    VERIFY_CHUNK_PAIRS pairs at a time: (chunk, P) comparisons, not (pairs, P) (1.8M pairs would be 2 GB)."""
    out = np.empty(len(i))
    for lo in range(0, len(i), VERIFY_CHUNK_PAIRS):
        hi = lo + VERIFY_CHUNK_PAIRS
        out[lo:hi] = (a[i[lo:hi]] == b[j[lo:hi]]).mean(axis=1)
    return out


@dataclass
class NearDuplicateIndex:
    """MinHash signatures of a set of documents and an LSH index over them, in numpy.

    The banding is datasketch's ``MinHashLSH`` (:func:`lsh_bands`): two documents are candidates when all the
    values of one band of their signatures are equal, as datasketch's hash tables decide (its band keys are the
    bands' bytes). Here each band is a sort of the (N,) band keys, so the index holds integer arrays, not a
    Python object per document and band (1M documents: ~100 MB against several GB).
    """

    sigs: np.ndarray  # (N, P) uint32
    has_text: np.ndarray  # (N,) bool: documents with at least one shingle (the only ones indexed)
    bands: int
    rows: int
    order: list[np.ndarray]  # per band: indexed documents sorted by their band key
    sorted_keys: list[np.ndarray]  # per band: the band keys in that order
    threshold: float
    candidates: int = 0

    @classmethod
    def build_from(cls, sigs: np.ndarray, has_text: np.ndarray, params: MinHashParams, seed: int) -> NearDuplicateIndex:
        """Index precomputed signatures (N, P) of the documents where `has_text` is set (`seed`: unused, kept for
        the callers' signature; the signatures hold it)."""
        del seed
        bands, rows = lsh_bands(params.jaccard_threshold, params.num_permutations)
        indexed = np.flatnonzero(has_text)
        order, sorted_keys = [], []
        for band in range(bands):
            keys = _band_keys(sigs, band, rows)[indexed]  # the band's columns only: no (N, P) copy per band
            perm = np.argsort(keys, kind="stable")
            order.append(indexed[perm])
            sorted_keys.append(keys[perm])
        return cls(sigs, has_text, bands, rows, order, sorted_keys, params.jaccard_threshold)

    def pairs(self, members: np.ndarray) -> list[tuple[int, int, float]]:
        """Verified near-duplicate pairs ``(i, j, jaccard)``, i < j, among `members` (document indices), in
        (i, j) order; ``candidates`` counts the distinct candidate pairs checked.

        The candidates of a bucket (documents of `members` whose band is equal) are a star: each member
        against the bucket's first (smallest index), not every pair of it. That is O(N) pairs per band
        however large a bucket grows (a corpus of near-copies puts hundreds of documents in one bucket, and
        all its pairs grow with the square: 1M records of ~19 copies each gathered 19.7 GB of pairs), and it
        keeps the components of the candidate graph: two documents in one bucket are joined through its
        first. What it gives up: two members both under the threshold against the first yet above it with
        each other are linked only if another band, or a chain, joins them.
        """
        allowed = np.zeros(len(self.sigs), dtype=bool)
        allowed[members] = True
        found: list[np.ndarray] = []
        n = np.int64(len(self.sigs))
        for docs, keys in zip(self.order, self.sorted_keys, strict=True):
            keep = allowed[docs]
            docs, keys = docs[keep], keys[keep]
            if len(docs) < 2:
                continue
            new_bucket = np.concatenate([[True], keys[1:] != keys[:-1]])
            bucket = np.cumsum(new_bucket) - 1  # bucket number of every position
            first = np.minimum.reduceat(docs, np.flatnonzero(new_bucket))[bucket]  # each bucket's smallest doc
            spoke = docs != first
            found.append(np.unique(first[spoke] * n + docs[spoke]))
        codes = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
        self.candidates += len(codes)
        left, right = codes // n, codes % n
        return self._verify(left, None, right)

    def _verify(self, left: np.ndarray, mine: np.ndarray | None, right: np.ndarray) -> list[tuple[int, int, float]]:
        if len(left) == 0:
            return []
        if mine is None:  # `left`'s own rows
            jac = jaccards(self.sigs, left, self.sigs, right)
        else:
            jac = jaccards(mine, np.arange(len(mine)), self.sigs, right)
        ok = jac >= self.threshold
        return [(int(i), int(j), float(s)) for i, j, s in zip(left[ok], right[ok], jac[ok], strict=True)]

    def query(self, signature: np.ndarray) -> list[int]:
        """Indexed documents whose LSH bands collide with `signature`'s, sorted."""
        hits: set[int] = set()
        for band, (docs, keys) in enumerate(zip(self.order, self.sorted_keys, strict=True)):
            key = _band_keys(signature[None, :], band, self.rows)[0]
            lo, hi = np.searchsorted(keys, key, side="left"), np.searchsorted(keys, key, side="right")
            hits.update(docs[lo:hi].tolist())
        return sorted(hits)

    def matches(self, signature: np.ndarray, members: np.ndarray) -> list[tuple[int, float]]:
        """Indexed documents among `members` whose estimated Jaccard with `signature` reaches the threshold."""
        allowed = set(members.tolist())
        cands = np.array([j for j in self.query(signature) if j in allowed], dtype=np.int64)
        if len(cands) == 0:
            return []
        found = self._verify(cands, np.broadcast_to(signature, (len(cands), len(signature))), cands)
        return [(i, s) for i, _, s in found]


def signatures_of(texts: Sequence[str], params: MinHashParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalize, shingle and sign `texts`: signatures (N, P) uint32 and a (N,) mask of texts with words."""
    if not texts:  # no references (dedup.references: []), no pairs
        return np.zeros((0, params.num_permutations), dtype=np.uint32), np.zeros(0, dtype=bool)
    hashes, offsets = shingle_hashes([normalize_text(t).split() for t in texts], params.shingle_words)
    return signatures(hashes, offsets, params.num_permutations, seed), np.diff(offsets) > 0


def signature_batch(texts: Sequence[str], shingle_words: int, num_permutations: int, seed: int) -> np.ndarray:
    """Signatures (N, P) uint32 of normalized `texts`: one batch of dedup's MinHash pass.

    A row depends on its own text only, so signing the texts in batches gives the rows of signing them at once.
    """
    hashes, offsets = shingle_hashes([t.split() for t in texts], shingle_words)
    return signatures(hashes, offsets, num_permutations, seed)
