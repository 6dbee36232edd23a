"""Datalab's outlier and near-duplicate checks computed straight from a k-NN graph, and compact per-record scores.

cleanlab 2.9's ``OutlierIssueManager`` and ``NearDuplicateIssueManager``, given ``knn_graph=``, only read the
graph's distances and indices; what they add around it is what makes Datalab big at a million records: per
check an issues ``DataFrame``, Python lists of every row's nearest neighbour and distance, and one NumPy array
per row for the near-duplicate sets, closed under symmetry by a Python loop over every row. Here the same
floating-point operations run on the graph's arrays (:func:`outlier_issues`, :func:`near_duplicate_issues`),
the sets stay one sparse matrix, and :class:`Scores` keeps a source's results in columns, building a record's
``meta.moderate.cleanlab`` entry only when it is read. Tests hold both to Datalab's own results on the same
graph, bit for bit (tests/stages/test_knn.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

# cleanlab.internal.constants.EPSILON: the floor of the scaling factor and of the median nearest distance
EPSILON = 1e-6


def _distances(graph: csr_matrix) -> np.ndarray:
    return graph.data.reshape(graph.shape[0], -1)


def first(graph: csr_matrix, k: int) -> csr_matrix:
    """The graph of each row's first `k` neighbours (rows sorted nearest first)."""
    n = graph.shape[0]
    wide = graph.indptr[1] - graph.indptr[0]
    if k == wide:
        return graph
    data = graph.data.reshape(n, wide)[:, :k].ravel()
    indices = graph.indices.reshape(n, wide)[:, :k].ravel()
    return csr_matrix((data, indices, np.arange(0, n * k + 1, k)), shape=(n, n))


def outlier_issues(graph: csr_matrix, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(outlier_score, is_outlier_issue) of each row of a cosine k-NN `graph` (its k: the check's k).

    cleanlab 2.9 ``OutlierIssueManager.find_issues`` with ``knn_graph``, ``t = 1``, no scaling factor given:
    a row is an issue where its mean distance exceeds Q3 + (1 / threshold - 1) x IQR of the mean distances;
    its score is ``exp(-1 * mean / max(median mean, 100 eps, EPSILON))``, 1 where the mean is below
    ``100 * epsneg`` (``correct_precision_errors`` for cosine).
    """
    from scipy.stats import iqr  # scipy.stats takes ~50 MB and a second to import: only when checked

    avg = _distances(graph).mean(axis=1)
    if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
        raise ValueError(f"outlier threshold must be in (0, 1], got {threshold!r}")
    issue_threshold = float(np.percentile(avg, 75) + (1 / threshold - 1) * iqr(avg))
    is_issue = avg > issue_threshold
    scaling = float(max(np.median(avg), 100 * np.finfo(np.float64).eps))
    scores = np.exp(-1 * avg / max(scaling, EPSILON))
    scores[avg < 100 * np.finfo(np.float64).epsneg] = 1
    return scores, is_issue


def near_duplicate_issues(graph: csr_matrix, threshold: float) -> tuple[np.ndarray, np.ndarray, csr_matrix]:
    """(near_duplicate_score, is_near_duplicate_issue, sets) of each row of a cosine k-NN `graph`.

    cleanlab 2.9 ``NearDuplicateIssueManager.find_issues`` with ``knn_graph``: a row's set holds its
    neighbours nearer than ``threshold`` x the median nearest-neighbour distance, and every row that holds it
    in its own (the symmetric closure); a row is an issue where its set is not empty; its score is
    ``1 - exp(-d / median)`` of its nearest distance d, 0 where d is close to 0. `sets`: an (N, N) CSR
    matrix whose row i holds the indices of i's set (ascending).
    """
    n = graph.shape[0]
    d = _distances(graph)
    nearest = d[:, 0]
    median = max(np.median(nearest), EPSILON)
    mask = d < threshold * median
    rows = np.nonzero(mask)[0]
    cols = graph.indices.reshape(n, -1)[mask]
    both_r, both_c = np.concatenate([rows, cols]), np.concatenate([cols, rows])
    sets = csr_matrix((np.ones(len(both_r), dtype=np.int8), (both_r, both_c)), shape=(n, n))
    sets.sum_duplicates()  # also sorts each row's indices
    is_issue = np.diff(sets.indptr) > 0
    temperature = 1.0 / median
    scores = 1 - np.exp(-temperature * nearest)
    scores[np.isclose(nearest, 0)] = 0
    return scores, is_issue, sets


class Scores(Sequence[dict[str, Any]]):
    """Per record (in the order of the checks' input) its ``meta.moderate.cleanlab`` entries, held in columns.

    ``scores[i]`` builds the dict: ``skipped`` for a record of a source too small to check; else
    ``outlier_score``, ``is_outlier``, ``near_duplicate_score``, ``is_near_duplicate``, ``near_duplicate_of``
    (the ids of its set, sorted) for a near-duplicate; then ``label_score``, ``is_label_issue``,
    ``predicted_label`` where its labels were checked, or ``skipped`` with the label check's reason.
    Scores are rounded to 6 decimals when read.
    """

    def __init__(self, ids: Sequence[str]) -> None:
        n = len(ids)
        self.ids = ids
        self.checked = np.zeros(n, dtype=bool)
        self.outlier = np.zeros(n)
        self.is_outlier = np.zeros(n, dtype=bool)
        self.duplicate = np.zeros(n)
        self.is_duplicate = np.zeros(n, dtype=bool)
        self.duplicate_of: dict[int, np.ndarray] = {}  # row -> rows of its set, for flagged rows only
        self.labeled = np.zeros(n, dtype=bool)
        self.label = np.zeros(n)
        self.is_label_issue = np.zeros(n, dtype=bool)
        self.predicted = np.empty(n, dtype=object)
        self.skipped = np.empty(n, dtype=object)  # a source's (or its label check's) note, shared by its rows

    def __len__(self) -> int:
        return len(self.checked)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        out: dict[str, Any] = {}
        if self.checked[i]:
            out["outlier_score"] = round(float(self.outlier[i]), 6)
            out["is_outlier"] = bool(self.is_outlier[i])
            out["near_duplicate_score"] = round(float(self.duplicate[i]), 6)
            out["is_near_duplicate"] = bool(self.is_duplicate[i])
            if self.is_duplicate[i]:
                out["near_duplicate_of"] = sorted(self.ids[int(m)] for m in self.duplicate_of[i])
        if self.labeled[i]:
            out["label_score"] = round(float(self.label[i]), 6)
            out["is_label_issue"] = bool(self.is_label_issue[i])
            out["predicted_label"] = self.predicted[i]
        if self.skipped[i] is not None:
            out["skipped"] = self.skipped[i]
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))

    def set_checks(
        self, rows: np.ndarray, graph: csr_matrix, outlier_check: tuple[int, float], dup_check: tuple[int, float]
    ) -> None:
        """Both checks on the records `rows` (indices into the scores; `graph` is over them, in that order),
        each check given as (k, threshold)."""
        out, is_out = outlier_issues(first(graph, outlier_check[0]), outlier_check[1])
        dup, is_dup, sets = near_duplicate_issues(first(graph, dup_check[0]), dup_check[1])
        self.checked[rows] = True
        self.outlier[rows], self.is_outlier[rows] = out, is_out
        self.duplicate[rows], self.is_duplicate[rows] = dup, is_dup
        for j in np.nonzero(is_dup)[0].tolist():
            self.duplicate_of[int(rows[j])] = rows[sets.indices[sets.indptr[j] : sets.indptr[j + 1]]]
