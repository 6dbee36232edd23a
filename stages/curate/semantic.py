"""Semantic near-duplicate pairs: exact all-pairs cosine for small sets, an inverted-file index for large ones.

A shared module, not a stage: the dedup stage calls :func:`cosine_pairs` on the grid embeddings of
:mod:`stages.curate.embed` and clusters the pairs it returns.

Both passes decide a pair the same way: its exact float64 cosine (:func:`stages.curate.embed.cosine`;
grid vectors make it exact on every CPU) is at least the threshold. They differ in which pairs they look
at, and both are deterministic: same pairs, in the same order, on any CPU and any thread count.

- :func:`exact_pairs` (below ``dedup.semantic.ann.min_records`` records) looks at every pair, in
  ``(TILE, TILE)`` tiles of the upper triangle (memory stays O(N), not O(N²)). A float32 matrix product
  screens each tile: the grid vectors are exact in float32, so its error on a unit-vector dot product is
  at most ``D * 2**-24 / (1 - D * 2**-24)`` (~2.3e-5 for D = 384) in any summation order, well inside
  :data:`SCREEN_MARGIN`, and every pair it passes is decided in float64. The pairs are those of a full
  float64 pass, at half its cost.
- :func:`ann_pairs` looks only at the pairs an inverted-file index puts within reach: ``N /
  records_per_list`` lists from spherical k-means; each record goes to the list of its nearest centroid
  and is compared with every record of its ``probe_lists`` nearest lists (found by ``faiss.IndexFlatIP``
  over the centroids), and a pair is a candidate when its dot product exceeds the threshold less
  :func:`ann_margin`; a pair is found when either record probes the other's list. The index holds the
  vectors rounded to multiples of ``2**-QUANT_BITS``: integers times a power of two whose dot products
  stay below ``2**23``, so float32 arithmetic on them is exact whatever the SIMD level, blocking or
  threads, and the rounding moves a cosine by at most :func:`ann_margin` (~0.0096 for D = 384), which the
  radius gives away: a pair is missed only when neither record probes the other's list. The k-means runs
  here, in float64 on those integers (exact sums, seeded sample and start, first maximum on ties, norms
  of exact integer sums), so its centroids are the same on every CPU. The lists are scanned with float32
  matrix products rather than ``faiss.IndexIVFFlat``: the faiss-cpu wheel here loads only its generic
  kernels, and its range search over the same lists took 26 s where the matrix products took 5 s
  (20,000 T0 records, 78 lists, 16 probed; benchmarks/semantic_dedup_ann.py).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stages.core.params.dedup import Semantic

log = logging.getLogger("steep.semantic")

# Side of the tiles of the exact pass: (TILE, TILE) float32 similarities, 16 MiB.
TILE = 2048
# Pairs whose float32 cosine reaches threshold - SCREEN_MARGIN are decided in float64 (error bound ~2.3e-5).
SCREEN_MARGIN = 1e-4
# The ANN index holds vectors rounded to multiples of 2**-QUANT_BITS; see ann_margin.
QUANT_BITS = 11
# Rows compared with one inverted list at once (and assigned to centroids at once).
QUERY_BATCH = 4096
# Candidate pairs whose exact cosine is computed at once: (VERIFY_BATCH, D) float64 twice.
VERIFY_BATCH = 8192

Pairs = list[tuple[int, int, float]]


def cosine_pairs(emb: np.ndarray, threshold: float, cfg: Semantic, seed: int) -> Pairs:
    """Pairs ``(i, j, cosine)``, i < j, sorted, of grid rows of `emb` (N, D) with exact cosine >= threshold.

    The exact pass below ``cfg.ann.min_records`` rows, the IVF index from there on.
    """
    if len(emb) < cfg.ann.min_records:
        return exact_pairs(emb, threshold)
    return ann_pairs(emb, threshold, cfg, seed)


def _verified(emb: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float) -> Pairs:
    """The candidate pairs ``(i[k], j[k])`` (i < j, sorted, distinct) whose exact cosine is >= threshold."""
    keep_i, keep_j, keep_s = [], [], []
    for lo in range(0, len(i), VERIFY_BATCH):
        a, b = i[lo : lo + VERIFY_BATCH], j[lo : lo + VERIFY_BATCH]
        # row-wise dot products of grid vectors: exact in any order, like cosine(); float64 rows of the batch
        # only (an (N, D) float64 copy is 2 GiB at 1M x 256)
        s = np.einsum("nd,nd->n", emb[a].astype(np.float64), emb[b].astype(np.float64))
        hit = s >= threshold
        keep_i.append(a[hit])
        keep_j.append(b[hit])
        keep_s.append(s[hit])
    if not keep_i:
        return []
    return list(
        zip(
            np.concatenate(keep_i).tolist(),
            np.concatenate(keep_j).tolist(),
            np.concatenate(keep_s).tolist(),
            strict=True,
        )
    )


def _sorted_unique(i: list[np.ndarray], j: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (i < j) from blocks of candidates, sorted by (i, j)."""
    if not i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    code = np.unique(np.concatenate(i).astype(np.int64) * n + np.concatenate(j).astype(np.int64))
    return code // n, code % n


def exact_pairs(emb: np.ndarray, threshold: float) -> Pairs:
    """Every pair of rows of `emb` (N, D) with exact cosine >= threshold, by tiles of the upper triangle."""
    x = np.ascontiguousarray(emb, dtype=np.float32)  # grid vectors: exact in float32
    n = len(x)
    screen = np.float32(threshold - SCREEN_MARGIN)
    cand_i: list[np.ndarray] = []
    cand_j: list[np.ndarray] = []
    for a in range(0, n, TILE):
        for b in range(a, n, TILE):
            rows, cols = np.nonzero(x[a : a + TILE] @ x[b : b + TILE].T >= screen)  # (TILE, TILE) float32
            rows += a
            cols += b
            upper = cols > rows
            cand_i.append(rows[upper])
            cand_j.append(cols[upper])
    i, j = _sorted_unique(cand_i, cand_j, n)
    return _verified(emb, i, j, threshold)


def ann_margin(dim: int) -> float:
    """Most that rounding two unit vectors to multiples of ``2**-QUANT_BITS`` moves their dot product.

    With ``q(x) = x + e``, ``|e_k| <= 2**-(QUANT_BITS + 1)``: ``|q(x).q(y) - x.y| <= |x.e_y| + |e_x.y| +
    |e_x.e_y| <= 2 sqrt(D) 2**-(QUANT_BITS+1) + D 2**-(2 QUANT_BITS+2)``; grid vectors' norms are 1 within
    ~1e-6, covered by the factor 1.001.
    """
    half = 2.0 ** -(QUANT_BITS + 1)
    return 1.001 * (2 * math.sqrt(dim) * half + dim * half * half)


def quantize(emb: np.ndarray) -> np.ndarray:
    """Rows of `emb` (N, D) times ``2**QUANT_BITS``, rounded: float64 integers of at most ~2**QUANT_BITS norm.

    Dot products of two such rows are integers below ``2**23`` (``(2**11 + sqrt(D)/2)**2``), so float32
    computes them exactly in any order; the sum of up to ``2**29`` rows is exact in float64.
    """
    return np.rint(np.asarray(emb, dtype=np.float64) * 2.0**QUANT_BITS)


class Quantized:
    """Rows of `x` as :func:`quantize` gives them, computed when indexed.

    :func:`kmeans` only indexes its input (to draw its sample), so it runs on this without an (N, D) float64
    copy of the quantized vectors (2 GiB at 1M x 256).
    """

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return quantize(self.x[idx])


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the centroid of largest dot product for each row (the first on ties), exact in float64."""
    out = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), QUERY_BATCH):
        out[lo : lo + QUERY_BATCH] = (x[lo : lo + QUERY_BATCH] @ centroids.T).argmax(axis=1)
    return out


def _rescale(sums: np.ndarray) -> np.ndarray:
    """Integer rows (K, D) scaled to norm ``2**QUANT_BITS`` and rounded, computed the same on every CPU.

    The squared norm is summed in Python integers (exact), then one correctly rounded sqrt, divide and
    multiply per element: IEEE operations that no SIMD level changes.
    """
    norms = [math.sqrt(sum(v * v for v in row)) for row in sums.astype(np.int64).tolist()]
    scale = np.array([2.0**QUANT_BITS / s if s > 0 else 0.0 for s in norms])
    return np.rint(sums * scale[:, None])


def kmeans(x: np.ndarray, lists: int, iterations: int, seed: int, sample_per_list: int) -> np.ndarray:
    """Spherical k-means centroids (lists, D) of quantized rows `x`, as quantized float64 integers.

    Trained on a seeded sample of ``sample_per_list * lists`` rows (all when fewer), started from `lists`
    of them; a list left empty keeps its centroid.
    """
    rng = np.random.default_rng(seed)
    n = len(x)
    train = x[np.sort(rng.choice(n, size=min(n, sample_per_list * lists), replace=False))]
    centroids = train[np.sort(rng.choice(len(train), size=lists, replace=False))]
    for _ in range(iterations):
        assign = _assign(train, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, train)  # integer sums: exact
        filled = np.bincount(assign, minlength=lists) > 0
        centroids = np.where(filled[:, None], _rescale(sums), centroids)
    return centroids


def _lists(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `labels` grouped by label (stable: ascending within a label) and each label's bounds."""
    order = np.argsort(labels, kind="stable")
    return order, np.searchsorted(labels[order], np.arange(count + 1))


def ann_pairs(emb: np.ndarray, threshold: float, cfg: Semantic, seed: int) -> Pairs:
    """Pairs of rows of `emb` (N, D) with exact cosine >= threshold among those the IVF index finds.

    Each row's ``probe_lists`` nearest centroids come from a ``faiss.IndexFlatIP`` over the k-means
    centroids, the first one being its own list. A row is compared with every row of each list it probes
    (float32 matrix products, exact on quantized rows), and a pair whose quantized dot product exceeds the
    threshold less :func:`ann_margin` is a candidate; a pair is found when either row probes the other's list.
    """
    import faiss

    ann = cfg.ann
    n, dim = emb.shape
    lists = max(1, min(n // ann.records_per_list, n))
    centroids = kmeans(Quantized(emb), lists, ann.kmeans_iterations, seed, ann.kmeans_sample_per_list)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids.astype(np.float32))
    q32 = np.empty((n, dim), dtype=np.float32)  # no (N, D) float64 copy (2 GiB at 1M x 256)
    for lo in range(0, n, QUERY_BATCH):
        q32[lo : lo + QUERY_BATCH] = quantize(emb[lo : lo + QUERY_BATCH])  # exact: integers below 2**12
    probes = min(ann.probe_lists, lists)
    _, probe = quantizer.search(q32, probes)  # (N, probes) list ids, nearest first; exact scores
    members, member_bounds = _lists(probe[:, 0], lists)
    queries, query_bounds = _lists(probe.ravel(), lists)
    queries //= probes  # position in probe.ravel() -> row
    # integer dot products: above radius <=> at least ceil(scaled (threshold - margin))
    radius = np.float32(math.ceil((threshold - ann_margin(dim)) * 4.0**QUANT_BITS) - 0.5)
    cand_i: list[np.ndarray] = []
    cand_j: list[np.ndarray] = []
    for lst in range(lists):
        cols = members[member_bounds[lst] : member_bounds[lst + 1]]
        rows = queries[query_bounds[lst] : query_bounds[lst + 1]]
        for a in range(0, len(rows), QUERY_BATCH):
            for b in range(0, len(cols), TILE):
                r, c = rows[a : a + QUERY_BATCH], cols[b : b + TILE]
                hit_r, hit_c = np.nonzero(q32[r] @ q32[c].T > radius)  # (QUERY_BATCH, TILE) exact integers
                i, j = r[hit_r], c[hit_c]
                cand_i.append(np.minimum(i, j)[i != j])
                cand_j.append(np.maximum(i, j)[i != j])
    del q32, probe, members, queries  # the index is done with: verification needs the vectors only
    i, j = _sorted_unique(cand_i, cand_j, n)
    del cand_i, cand_j
    pairs = _verified(emb, i, j, threshold)
    log.info("semantic (ann): %d lists, %d probed, %d candidate pairs, %d pairs", lists, probes, len(i), len(pairs))
    return pairs
