"""Cleanlab's Datalab checks over sentence embeddings: outliers, near-duplicates and label issues, per source.

Moderate embeds its kept records (``common.embedding``) and hands the vectors here with each record's source,
label and id, in input order (:func:`stages.core.records.order_key`). Each source is checked on its own, since a
source is one distribution and a small source mixed into a large one would look like a cloud of outliers for
its kind alone: Datalab's outlier check (``outlier_k``, ``outlier_threshold``) and near-duplicate check
(``near_duplicate_k``, ``near_duplicate_threshold``) on every source with at least ``cleanlab.min_records``
records, and its label check on the records of a source that carry a label (pull's ``label_field``), kept only
where the labels' k-NN vote tells them apart (``min_label_vote_accuracy``).

The outlier and near-duplicate checks are computed from the source's graph by :mod:`stages.curate.graph_checks`
(Datalab's formulas on the same arrays, equal to Datalab's results bit for bit, without its per-row tables and
sets: a million records fit), the label check by Datalab itself in chunks (:func:`_label_issues`). Scores are
rounded to 6 decimals. Datalab never searches neighbours itself (all pairs, O(N² D): hours at
1M records): :func:`knn_issues` hands it the graph of :func:`stages.curate.knn.knn_graph` (exact below
``cleanlab.ann.min_records`` records of a source, an IVF index from there on), whose distances are exact
float64 cosines of the grid vectors of :mod:`stages.curate.embed`, the same bits on every CPU and thread
count, with ties broken by index. On the exact path the scores and flags equal Datalab's own search
(:func:`datalab_issues`, ``features=``) to 6 decimals (tests/stages/test_knn.py; 5,000 T0 records in
benchmarks/results/cleanlab_knn.json).
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from stages.core.params.moderate import Ann, Cleanlab
from stages.curate.graph_checks import Scores, first
from stages.curate.knn import knn_graph

log = logging.getLogger("steep.moderate")

# Labeled records x classes the label check holds densely at once (cleanlab takes dense class probabilities):
# 2^24 cells = 128 MiB a float64 copy, of which cleanlab makes a few. Above it, :func:`_label_issues` chunks.
LABEL_CELLS = 1 << 24

# The label check in the stage's own process: cleanlab's find_label_issues otherwise forks a pool of one process per
# core (Linux) from the stage, whose RSS each counts the stage's pages (1M records: 2.4 GB each); results are the
# same for any n_jobs (cleanlab's docs), and the pool only splits a per-class loop of milliseconds.
ONE_PROCESS = {"clean_learning_kwargs": {"find_label_issues_kwargs": {"n_jobs": 1}}}

COUNTS = ("flagged_cleanlab_outlier", "flagged_cleanlab_near_duplicate", "flagged_cleanlab_label_issue")


def _run(lab: Any, issue_types: dict[str, dict[str, Any]], seen: set[str] | None = None, **inputs: Any) -> None:
    """``lab.find_issues(**inputs)`` for `issue_types`, its warnings logged (deprecations left out; with `seen`,
    a message already in it is not logged again: the label check's chunks warn alike)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a deep copy per call: Datalab writes the features into the dicts it is given, and CleanLearning adds its
        # confident joint to find_label_issues_kwargs (ONE_PROCESS's nested dicts must stay as they are)
        lab.find_issues(**inputs, issue_types=copy.deepcopy(issue_types))
    for w in caught:
        # Deprecations are about cleanlab's own use of its libraries (pandas 3 deprecates
        # `rename(inplace=True)`, which cleanlab 2.9 calls), not about the data: left out of the log.
        message = str(w.message).splitlines()[0]
        if issubclass(w.category, DeprecationWarning | FutureWarning) or (seen is not None and message in seen):
            continue
        log.warning("cleanlab %s check: %s", "/".join(issue_types), message)
        if seen is not None:
            seen.add(message)


def _datalab(n: int, labels: list[Any] | None, seed: int, classes: list[str] | None = None) -> Any:
    """A Datalab over `n` rows with their `labels` (or none); with `classes`, the labels are codes into that list
    (a ``ClassLabel``), so that the label map holds every class even where some do not occur among the rows."""
    from cleanlab import Datalab

    np.random.seed(seed)  # cleanlab draws from numpy's global generator in places
    data: Any = {"label": labels} if labels is not None else {"row": list(range(n))}
    if classes is not None:
        import datasets

        features = datasets.Features({"label": datasets.ClassLabel(names=classes)})
        data = datasets.Dataset.from_dict(data, features=features)
    return Datalab(data=data, label_name="label" if labels is not None else None, verbosity=0)


def _collect(lab: Any, issue_types: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {issue: lab.get_issues(issue) for issue in issue_types}
    if "near_duplicate" in issue_types:
        out["near_duplicate_sets"] = lab.get_info("near_duplicate")["near_duplicate_sets"]
    return out


def datalab_issues(
    features: np.ndarray, issue_types: dict[str, dict[str, Any]], labels: list[str] | None, seed: int
) -> dict[str, Any]:
    """Datalab's issues table per check of `issue_types` (``{"outlier": {"k": 10}, ...}``) on (N, D) features.

    Datalab searches the neighbours itself (all pairs): the reference :func:`knn_issues` is held to.
    """
    lab = _datalab(len(features), labels, seed)
    _run(lab, issue_types, features=features)
    return _collect(lab, issue_types)


def knn_issues(
    vectors: np.ndarray,
    issue_types: dict[str, dict[str, Any]],
    labels: list[str] | None,
    ann: Ann,
    seed: int,
    graph: csr_matrix | None = None,
) -> dict[str, Any]:
    """:func:`datalab_issues` of grid `vectors` (N, D), with the neighbours from :func:`stages.curate.knn.knn_graph`.

    One cosine graph of the largest k of the checks (or `graph`, one computed before with at least that k)
    serves every check, each cutting its own k (a row's k nearest are the first k of its k' > k nearest):
    the outlier and near-duplicate checks get it as ``knn_graph=`` (``metric`` cosine, as Datalab picks for
    D > 3). The label check takes no graph in cleanlab 2.9, only ``features`` (for a ``KNeighborsClassifier``
    of k + 1 euclidean neighbours, self included) or ``pred_probs``: it gets the ``pred_probs`` that classifier
    would give, computed with the same operations from the first k neighbours of the cosine graph (for unit
    vectors the euclidean order, ``|a - b|² = 2 - 2 cos``, up to ties within the grid's rounding).
    """
    lab = _datalab(len(vectors), labels, seed)
    if graph is None:
        graph = knn_graph(vectors, max(c["k"] for c in issue_types.values()), ann, seed=seed)
    for name, check in issue_types.items():
        if name != "label":
            _run(lab, {name: {**check, "metric": "cosine"}}, knn_graph=first(graph, check["k"]))
    if "label" in issue_types:
        k = issue_types["label"]["k"]
        neighbours = first(graph, k).indices.reshape(len(vectors), k)
        label = {**ONE_PROCESS, **issue_types["label"]}
        _run(lab, {"label": label}, pred_probs=_vote(np.asarray(lab.labels), neighbours))
    return _collect(lab, issue_types)


def _vote(labels: np.ndarray, neighbours: np.ndarray, rows: np.ndarray | None = None, classes: int = 0) -> np.ndarray:
    """Out-of-sample class probabilities (N, C) from each row's k neighbours, as Datalab's label check makes them.

    cleanlab 2.9 (``LabelIssueManager.find_issues``): ``p`` = the class shares among the k + 1 nearest rows,
    self included (sklearn's ``predict_proba``: counts / (k + 1)), then ``(p - onehot / (k + 1)) * (k + 1) / k``;
    the same floating-point operations here, so ties between classes fall the same way. `neighbours` holds the
    rows `rows` of the graph (all rows when None); `classes`: C (at least the labels' largest code + 1).
    """
    n, k = neighbours.shape
    own = labels if rows is None else labels[rows]
    classes = max(classes, int(labels.max()) + 1)
    counts = np.zeros((n, classes))
    np.add.at(counts, (np.repeat(np.arange(n), k), labels[neighbours].ravel()), 1.0)
    counts[np.arange(n), own] += 1.0  # self
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), own] = 1.0
    return (counts / (k + 1) - 1 / (k + 1) * onehot) * (k + 1) / k


def cleanlab_scores(
    vectors: np.ndarray,
    sources: Sequence[str],
    labels: Sequence[str | None],
    ids: Sequence[str],
    cfg: Cleanlab,
    *,
    seed: int,
) -> tuple[Scores, dict[str, int]]:
    """Cleanlab's checks over (N, D) unit `vectors`, one source at a time.

    The outlier and near-duplicate checks are Datalab's, computed from the source's graph by
    :mod:`stages.curate.graph_checks` (equal to Datalab's own on that graph); the label check is Datalab's, in
    chunks (:func:`_label_issues`).

    Args:
        vectors: the records' grid embeddings, one row per record, in input order.
        sources: each record's source name.
        labels: each record's ``meta.label`` (None where it has none).
        ids: each record's id (for ``near_duplicate_of``).
        cfg: ``moderate.cleanlab``.
        seed: ``common.seed``.

    Returns:
        ``(scores, counts)``: per record the entries of its ``meta.moderate.cleanlab`` (``outlier_score``,
        ``is_outlier``, ``near_duplicate_score``, ``is_near_duplicate``, ``near_duplicate_of`` for a
        near-duplicate, ``label_score``, ``is_label_issue``, ``predicted_label`` where labels are checked, or
        ``skipped`` with the reason: :class:`stages.curate.graph_checks.Scores`, a dict per record when read),
        and the counts of flags (``flagged_cleanlab_*``).
    """
    n = len(vectors)
    scores = Scores(ids)
    counts = dict.fromkeys(COUNTS, 0)
    if not cfg.enable or n == 0:
        return scores, counts
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_source.setdefault(s, []).append(i)
    for source, members in by_source.items():
        idx = np.asarray(members, dtype=np.int64)
        if len(idx) < cfg.min_records:
            note = f"source has {len(idx)} records (< cleanlab.min_records {cfg.min_records})"
            log.info("cleanlab: %s skipped: %s", source, note)
            scores.skipped[idx] = note
            continue
        rows = vectors if len(idx) == len(vectors) else vectors[idx]  # one source: no copy
        all_labeled = all(labels[i] is not None for i in members)
        k = max(cfg.outlier_k, cfg.near_duplicate_k, cfg.label_k if all_labeled else 0)
        graph = knn_graph(rows, min(k, len(idx) - 1), cfg.ann, seed=seed)  # one graph for every check
        outlier = (cfg.outlier_k, cfg.outlier_threshold)
        scores.set_checks(idx, graph, outlier, (cfg.near_duplicate_k, cfg.near_duplicate_threshold))
        n_out, n_dup = int(scores.is_outlier[idx].sum()), int(scores.is_duplicate[idx].sum())
        counts["flagged_cleanlab_outlier"] += n_out
        counts["flagged_cleanlab_near_duplicate"] += n_dup
        summary = f"{n_out} outliers, {n_dup} near-duplicates in {len(idx)} records"
        graph = graph if all_labeled else None
        _label_check(vectors, members, labels, cfg, seed, scores, counts, source, summary, graph)
    return scores, counts


def _label_check(
    vectors: np.ndarray,
    idx: list[int],
    labels: Sequence[str | None],
    cfg: Cleanlab,
    seed: int,
    scores: Scores,
    counts: dict[str, int],
    source: str,
    summary: str,
    graph: csr_matrix | None,
) -> None:
    """Datalab's label check over the labeled records of one source (`idx`), into `scores` and `counts`; `graph`:
    the source's cosine graph when every record of it is labeled (else one is computed for the labeled ones).

    The vote's accuracy is taken from each row's k labels (:func:`_predicted`), so a check that is skipped never
    builds the dense (records x classes) class probabilities; a check that runs gets them a chunk at a time
    (:func:`_label_issues`).
    """
    labeled = [i for i in idx if labels[i] is not None]
    given = [str(labels[i]) for i in labeled]
    if not labeled:
        log.info("cleanlab: %s: %s (no labels)", source, summary)
        return
    note = ""
    classes, codes = np.unique(np.array(given, dtype=object).astype(str), return_inverse=True)  # Datalab's map
    del given
    if len(labeled) < cfg.min_records or len(classes) < 2:
        note = f"{len(labeled)} labeled records, {len(classes)} distinct labels (need {cfg.min_records}, 2)"
    else:
        rows = vectors if len(labeled) == len(vectors) else vectors[labeled]
        if graph is None:
            graph = knn_graph(rows, cfg.label_k, cfg.ann, seed=seed)
        neighbours = first(graph, cfg.label_k).indices.reshape(len(labeled), cfg.label_k)
        accuracy = float((_predicted(codes, neighbours) == codes).mean())
        if accuracy < cfg.min_label_vote_accuracy:
            note = (
                f"the {cfg.label_k}-NN vote predicts the given label for {accuracy:.3f} of the records "
                f"(< cleanlab.min_label_vote_accuracy {cfg.min_label_vote_accuracy}): labels not told apart"
            )
    at = np.asarray(labeled, dtype=np.int64)
    if note:
        log.info("cleanlab: %s: %s; label check skipped: %s", source, summary, note)
        scores.skipped[at] = f"label check: {note}"
        return
    names = [str(c) for c in classes]
    label_score, is_issue, predicted = _label_issues(codes, names, neighbours, seed)
    scores.labeled[at] = True
    scores.label[at] = label_score
    scores.is_label_issue[at] = is_issue
    scores.predicted[at] = predicted
    counts["flagged_cleanlab_label_issue"] += int(is_issue.sum())
    log.info("cleanlab: %s: %s, %d label issues (vote accuracy %.3f)", source, summary, int(is_issue.sum()), accuracy)


def _predicted(codes: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """The class of largest :func:`_vote` of each row (the first class among equals, as ``argmax``), from its k
    neighbours' labels alone: (N, k) work, not (N, classes). The value of a class is computed with _vote's own
    floating-point operations, so rows where two classes tie, or nearly, fall the same way."""
    n, k = neighbours.shape
    theirs = codes[neighbours]  # (N, k) the neighbours' classes
    mine = codes[:, None]
    counts = np.zeros((n, k))
    for j in range(k):  # how often each neighbour's class occurs among the k (k x (N, k): no (N, k, k) array)
        counts += theirs == theirs[:, j : j + 1]
    onehot = (theirs == mine).astype(np.float64)
    value = ((counts + onehot) / (k + 1) - 1 / (k + 1) * onehot) * (k + 1) / k
    # a class no neighbour has scores 0 (the row's own included: (1/(k+1) - 1/(k+1))...), below every present one
    best = value.max(axis=1, keepdims=True)
    return np.where(value == best, theirs, np.iinfo(np.int64).max).min(axis=1)


def _label_issues(
    codes: np.ndarray, classes: list[str], neighbours: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Datalab's label check on the vote :func:`_vote` of `neighbours`: (label_score, is_label_issue, predicted).

    The (rows x classes) class probabilities are dense for cleanlab, so above ``LABEL_CELLS`` cells the rows are
    checked in chunks of a seeded permutation (every chunk under the budget, each knowing every class): a row's
    score is its own (self-confidence of its vote, which the whole source's neighbours make), and only the
    per-class thresholds that decide ``is_label_issue`` are estimated on the chunk's rows instead of all of them.
    1M records of 283 classes: 17 chunks of 2.2 GB / 17 each, instead of several 2.2 GB copies at once.
    """
    n = len(codes)
    parts = -(-n * len(classes) // LABEL_CELLS)
    chunks = (
        [np.arange(n)]
        if parts <= 1
        else [np.sort(c) for c in np.array_split(np.random.default_rng(seed).permutation(n), parts)]
    )
    label_score, is_issue, predicted = np.empty(n), np.zeros(n, dtype=bool), [""] * n
    warned: set[str] = set()
    for rows in chunks:
        lab = _datalab(len(rows), codes[rows].tolist(), seed, classes)
        _run(lab, {"label": ONE_PROCESS}, warned, pred_probs=_vote(codes, neighbours[rows], rows, len(classes)))
        issues = lab.get_issues("label")
        label_score[rows] = issues["label_score"].to_numpy()
        is_issue[rows] = issues["is_label_issue"].to_numpy()
        for r, p in zip(rows.tolist(), issues["predicted_label"], strict=True):
            predicted[r] = sys.intern(str(p))  # one string per class, not per row
    return label_score, is_issue, predicted
