"""k-nearest-neighbour graphs of grid vectors, as cleanlab's Datalab builds them, without its brute force.

A shared module, not a stage: :mod:`stages.curate.cleanlab_checks` hands the graph to Datalab
(``find_issues(knn_graph=...)``), which otherwise searches all pairs itself (sklearn, O(N² D)).

The graph is the one cleanlab 2.9 builds from ``features=``: for (N, D > 3) features the cosine distance
``1 - a.b / (|a| |b|)`` (``cleanlab.internal.neighbor.metric.decide_default_metric``), each row's k nearest
other rows sorted by distance (self left out), exact duplicates at distance 0 (what its
``correct_knn_graph`` enforces), as a CSR matrix of N x k float64 distances with ``indptr = 0, k, 2k, ...``
(the outlier check averages ``data.reshape(N, -1)``, the near-duplicate check reads column 0 as the nearest).
``metric="euclidean"`` gives the neighbours of the label check (sklearn's ``KNeighborsClassifier`` default).

Same bytes on every CPU and thread count: the vectors are :mod:`stages.curate.embed`'s grid vectors, whose
float64 dot products are exact in any summation order (BLAS kernel, blocking, threads), so every distance is a
fixed sequence of correctly rounded IEEE operations on exact values (a dot product, two divisions by
correctly rounded norms, a subtraction; for euclidean ``|a|² + |b|² - 2 a.b`` is itself exact, then a sqrt).
Neighbours are ranked by (distance, index): ties go to the lower index. A row's k best of a set of candidates
are merged into its running k best by that total order, so the result does not depend on the order in which
candidates are scanned.

- Exact (below ``ann.min_records`` rows): every row against every other, in (rows, TILE) blocks of about
  :data:`BLOCK_ELEMENTS` distances, so memory stays O(N k), not O(N²).
- Approximate (from ``ann.min_records`` on): the inverted-file index of :mod:`stages.curate.semantic` (its
  seeded spherical k-means on quantized vectors, ``N / records_per_list`` lists, each row's ``probe_lists``
  nearest lists from ``faiss.IndexFlatIP`` on exact integer scores). A row's neighbours are the exact k nearest
  among the rows of the lists it probes; a row whose lists hold fewer than k other rows is searched exactly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.sparse import csr_matrix

from stages.curate import semantic

if TYPE_CHECKING:
    from stages.core.params.dedup import Ann

log = logging.getLogger("steep.knn")

# Distances computed at once: a (rows, cols) float64 block of 2**23 entries, 64 MiB.
BLOCK_ELEMENTS = 2**23
# Columns per block of the exact pass.
TILE = 8192
# Rows whose squared norms are computed at once.
SQ_ROWS = 65536
# Near pairs whose exact squared gap is computed at once: (GAP_PAIRS, D) float64 rows, 128 MiB at D = 256.
GAP_PAIRS = 65536
# Distances below this are checked for exact duplicates (distinct grid vectors lie ~4.5e-13 apart at least).
TINY = 2.0**-30

Metric = Literal["cosine", "euclidean"]


def knn_graph(vectors: np.ndarray, k: int, ann: Ann, *, seed: int, metric: Metric = "cosine") -> csr_matrix:
    """Each row's `k` nearest other rows of grid `vectors` (N, D), as an (N, N) CSR matrix of N*k distances.

    Args:
        vectors: grid unit vectors (:func:`stages.curate.embed.snap`), float32 or float64.
        k: neighbours per row; at most N - 1.
        ann: ``moderate.cleanlab.ann``: exact below ``min_records`` rows, the IVF index from there on.
        seed: ``common.seed`` (the k-means sample and start).
        metric: ``cosine`` (Datalab's outlier and near-duplicate checks) or ``euclidean`` (its label check).

    Returns:
        Row i holds its k neighbours in ``indices[i*k:(i+1)*k]`` nearest first (ties: lower index first) and
        their distances in ``data``; exact duplicates are at distance 0.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)  # grid vectors: exact in float32
    n = len(x)
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} rows, got {k}")
    space = _Space(x, metric)
    best_d = np.full((n, k), np.inf)
    best_i = np.full((n, k), -1, dtype=np.int64)
    if n < ann.min_records:
        _exact(space, np.arange(n), best_d, best_i)
    else:
        _ivf(space, ann, seed, best_d, best_i)
    indptr = np.arange(0, n * k + 1, k)
    return csr_matrix((best_d.ravel(), best_i.ravel().astype(np.int32), indptr), shape=(n, n))


class _Space:
    """The vectors, their exact squared norms and correctly rounded norms, and the distance of blocks."""

    def __init__(self, x: np.ndarray, metric: Metric):
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
        self.x, self.metric = x, metric
        self.sq = np.empty(len(x))
        for lo in range(0, len(x), SQ_ROWS):  # no (N, D) float64 copy at once (2 GiB at 1M x 256)
            x64 = x[lo : lo + SQ_ROWS].astype(np.float64)
            self.sq[lo : lo + SQ_ROWS] = np.einsum("nd,nd->n", x64, x64)  # exact: 42-bit products below 2**53
        norms = np.sqrt(self.sq)
        # a zero vector is at cosine distance 1 from every other (sklearn's normalize leaves it zero)
        self.norms = np.where(norms > 0, norms, np.inf)

    def distances(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(len(rows), len(cols)) float64 distances; a row's distance to itself is inf."""
        dot = self.x[rows].astype(np.float64) @ self.x[cols].astype(np.float64).T  # exact in any order
        if self.metric == "cosine":
            dot /= self.norms[rows, None]
            dot /= self.norms[None, cols]
            d = np.subtract(1.0, dot, out=dot)
            near = np.nonzero(d < TINY)
        else:
            d = np.multiply(dot, -2.0, out=dot)
            d += self.sq[rows, None]
            d += self.sq[None, cols]  # |a|² + |b|² - 2 a.b: exact (multiples of 2**-40 below 4)
            near = ()
        if self.metric == "cosine" and len(near[0]):
            # exact duplicates (|a-b|² = 0, computed exactly) at 0, as cleanlab's correct_knn_graph sets them
            r, c = rows[near[0]], cols[near[1]]
            gap = np.empty(len(r))
            for lo in range(0, len(r), GAP_PAIRS):  # a block of identical vectors has a near pair per cell
                a, b = r[lo : lo + GAP_PAIRS], c[lo : lo + GAP_PAIRS]
                gap[lo : lo + GAP_PAIRS] = (
                    self.sq[a] + self.sq[b] - 2 * np.einsum("nd,nd->n", self.x[a].astype(np.float64), self.x[b])
                )
            d[near] = np.where(gap == 0, 0.0, np.maximum(d[near], 0.0))
        if self.metric == "cosine" and np.isinf(self.norms).any():
            zr, zc = np.isinf(self.norms[rows]), np.isinf(self.norms[cols])
            d[np.ix_(zr, zc)] = 0.0  # zero vectors are exact duplicates of each other
        if self.metric == "euclidean":
            np.sqrt(d, out=d)
        # each row's self, where it is among the columns (columns are ascending)
        pos = np.minimum(np.searchsorted(cols, rows), len(cols) - 1)
        own = np.nonzero(cols[pos] == rows)[0]
        d[own, pos[own]] = np.inf
        return d


def _merge(space: _Space, rows: np.ndarray, cols: np.ndarray, best_d: np.ndarray, best_i: np.ndarray) -> None:
    """Merge each of `rows`' k nearest among ascending `cols` into its running k best, by (distance, index)."""
    k = best_d.shape[1]
    d = space.distances(rows, cols)
    kk = min(k, len(cols))
    # every entry at most the kk-th smallest value of its row: the row's kk best and all their ties
    kth = np.partition(d, kk - 1, axis=1)[:, kk - 1]
    r, c = np.nonzero(d <= kth[:, None])
    all_r = np.concatenate([np.repeat(np.arange(len(rows)), k), r])
    all_d = np.concatenate([best_d[rows].ravel(), d[r, c]])
    all_i = np.concatenate([best_i[rows].ravel(), cols[c]])
    finite = np.isfinite(all_d) | (all_i < 0)  # self (inf, a real index) is never a neighbour
    all_r, all_d, all_i = all_r[finite], all_d[finite], all_i[finite]
    # placeholders (inf, -1) sort after every real distance; a row has at least k entries (its old k)
    order = np.lexsort((all_i, all_d, all_r))
    starts = np.concatenate([[0], np.cumsum(np.bincount(all_r, minlength=len(rows)))[:-1]])
    take = order[(starts[:, None] + np.arange(k)).ravel()]
    best_d[rows] = all_d[take].reshape(len(rows), k)
    best_i[rows] = all_i[take].reshape(len(rows), k)


def _exact(space: _Space, rows: np.ndarray, best_d: np.ndarray, best_i: np.ndarray) -> None:
    """The k nearest of every row of `rows` (ascending) among all rows, by blocks."""
    n = len(space.x)
    tile = min(TILE, n)
    step = max(1, BLOCK_ELEMENTS // tile)
    for b in range(0, n, tile):
        cols = np.arange(b, min(b + tile, n))
        for a in range(0, len(rows), step):
            _merge(space, rows[a : a + step], cols, best_d, best_i)


def _ivf(space: _Space, ann: Ann, seed: int, best_d: np.ndarray, best_i: np.ndarray) -> None:
    """The k nearest of every row among the rows of its ``ann.probe_lists`` nearest inverted lists."""
    import faiss

    x = space.x
    n, dim = x.shape
    lists = max(1, min(n // ann.records_per_list, n))
    centroids = semantic.kmeans(semantic.Quantized(x), lists, ann.kmeans_iterations, seed, ann.kmeans_sample_per_list)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids.astype(np.float32))
    probes = min(ann.probe_lists, lists)
    probe = np.empty((n, probes), dtype=np.int64)
    for lo in range(0, n, semantic.QUERY_BATCH):
        # quantized rows: integers whose products with the centroids float32 sums exactly
        q32 = semantic.quantize(x[lo : lo + semantic.QUERY_BATCH]).astype(np.float32)
        probe[lo : lo + semantic.QUERY_BATCH] = quantizer.search(q32, probes)[1]
    members, member_bounds = semantic._lists(probe[:, 0], lists)
    queries, query_bounds = semantic._lists(probe.ravel(), lists)
    queries //= probes  # position in probe.ravel() -> row
    for lst in range(lists):
        cols = members[member_bounds[lst] : member_bounds[lst + 1]]
        rows = queries[query_bounds[lst] : query_bounds[lst + 1]]
        if not len(cols):
            continue
        step = max(1, BLOCK_ELEMENTS // len(cols))
        for a in range(0, len(rows), step):
            _merge(space, rows[a : a + step], cols, best_d, best_i)
    short = np.nonzero((best_i < 0).any(axis=1))[0]
    if len(short):
        best_d[short], best_i[short] = np.inf, -1
        _exact(space, short, best_d, best_i)
    log.info("knn (ivf): %d rows, %d lists, %d probed, %d rows searched exactly", n, lists, probes, len(short))
