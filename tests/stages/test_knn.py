"""knn: the exact graph against brute force and against cleanlab's own search, the IVF graph's recall, determinism.

Inline data: :func:`tests.stages.test_semantic.planted` grid vectors (60 topics, planted near copies), with
groups of exact duplicates as T0's sibling templates make them: one of 4 rows, one of 30 (more than k + 1, so
cleanlab's duplicate correction decides its rows' neighbours) and one of 5 copies of a vector that lies at one
distance from a fourth record, so that its k-th neighbour ties.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.dedup import Ann
from stages.curate import cleanlab_checks, graph_checks, knn
from stages.curate.embed import snap
from tests.stages.test_semantic import planted

ROOT = Path(__file__).resolve().parents[2]
K = 10


def vectors(n: int = 2000, dim: int = 64) -> np.ndarray:
    """(n, dim) grid vectors of `planted`, with three groups of exact duplicates."""
    x = planted(n=n, dim=dim, pairs=n // 10)
    x[11:14] = x[10]
    x[100:130] = x[99]
    x[500:505] = x[400]
    return x


def config(**update: int) -> Ann:
    """moderate.cleanlab.ann of params.yaml, with keys replaced."""
    ann = _params.load(ROOT / "params.yaml", ["moderate"]).moderate.cleanlab.ann
    return ann.model_copy(update=update)


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest others by plain float64 cosine distance, ties by index: (indices, distances)."""
    x64 = x.astype(np.float64)
    unit = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    d = 1 - unit @ unit.T
    d[np.nonzero((x64[:, None, :] == x64[None, :, :]).all(axis=2))] = 0.0  # exact duplicates
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


@pytest.fixture(scope="module")
def emb() -> np.ndarray:
    return vectors()


@pytest.fixture(scope="module")
def exact(emb: np.ndarray):
    return knn.knn_graph(emb, K, config(), seed=1234)


def test_exact_graph_is_brute_force_with_ties_by_index(emb: np.ndarray, exact) -> None:
    want_idx, want_d = brute_force(emb, K)
    assert exact.shape == (2000, 2000) and exact.nnz == 2000 * K and exact.data.dtype == np.float64
    assert np.array_equal(exact.indptr, np.arange(0, 2000 * K + 1, K))
    assert np.array_equal(exact.indices.reshape(-1, K), want_idx)
    assert np.abs(exact.data.reshape(-1, K) - want_d).max() < 1e-12
    assert np.all(np.diff(exact.data.reshape(-1, K), axis=1) >= 0)  # nearest first
    assert list(exact.indices[11 * K : 11 * K + 3]) == [10, 12, 13] and not exact.data[11 * K : 11 * K + 3].any()


def test_exact_graph_in_small_blocks(monkeypatch: pytest.MonkeyPatch, emb: np.ndarray, exact) -> None:
    """Blocks that do not divide N (and merges of partial results) give the same bytes, and so does checking the
    exact duplicates' gaps a few pairs at a time (a block of 30 copies has 870 near pairs)."""
    monkeypatch.setattr(knn, "TILE", 300)
    monkeypatch.setattr(knn, "BLOCK_ELEMENTS", 300 * 77)
    monkeypatch.setattr(knn, "GAP_PAIRS", 7)
    small = knn.knn_graph(emb, K, config(), seed=1234)
    assert small.data.tobytes() == exact.data.tobytes() and small.indices.tobytes() == exact.indices.tobytes()


def test_exact_path_scores_equal_cleanlabs_own_search(emb: np.ndarray) -> None:
    """Datalab on our graph vs Datalab searching itself (features=): the same scores to 6 decimals, same flags.

    Near-duplicate sets are the same but around groups of exact copies: where a row's k nearest end inside
    such a group, sklearn keeps whichever copies its partial sort leaves, we keep the lowest indices, and the
    reciprocal pass of Datalab carries that choice into the copies' own sets.
    """
    checks = {"outlier": {"k": K, "threshold": 0.55}, "near_duplicate": {"k": 5, "threshold": 0.5}}
    ours = cleanlab_checks.knn_issues(emb, checks, None, config(), 1234)
    theirs = cleanlab_checks.datalab_issues(emb.astype(np.float64), checks, None, 1234)
    for name, score in (("outlier", "outlier_score"), ("near_duplicate", "near_duplicate_score")):
        assert np.array_equal(ours[name][score].round(6), theirs[name][score].round(6)), name
        assert np.array_equal(ours[name][f"is_{name}_issue"], theirs[name][f"is_{name}_issue"]), name
    assert 100 < ours["near_duplicate"]["is_near_duplicate_issue"].sum() < 600  # the planted copies (200 pairs), dups
    assert ours["outlier"]["is_outlier_issue"].sum() > 0
    sets = [
        (set(map(int, a)), set(map(int, b)))
        for a, b in zip(ours["near_duplicate_sets"], theirs["near_duplicate_sets"], strict=True)
    ]
    assert sum(a == b for a, b in sets) > 0.95 * len(sets)  # 32 of 2,000 differ here
    _, group, size = np.unique(emb, axis=0, return_inverse=True, return_counts=True)
    copied = set(np.nonzero(size[group.ravel()] > 1)[0].tolist())
    assert all(i in copied or (a | b) & copied for i, (a, b) in enumerate(sets) if a != b)


def test_graph_checks_equal_datalab_on_the_same_graph(emb: np.ndarray, exact) -> None:
    """graph_checks' outlier and near-duplicate checks: Datalab's scores, flags and sets on the same graph, bit for
    bit (the stage uses them: no Datalab, no per-row arrays and Python loop, at a million records)."""
    checks = {"outlier": {"k": K, "threshold": 0.55}, "near_duplicate": {"k": 5, "threshold": 0.5}}
    ref = cleanlab_checks.knn_issues(emb, checks, None, config(), 1234, exact)
    score, flag = graph_checks.outlier_issues(graph_checks.first(exact, K), 0.55)
    assert np.array_equal(score, ref["outlier"]["outlier_score"].to_numpy())
    assert np.array_equal(flag, ref["outlier"]["is_outlier_issue"].to_numpy()) and flag.sum() > 0
    score, flag, sets = graph_checks.near_duplicate_issues(graph_checks.first(exact, 5), 0.5)
    assert np.array_equal(score, ref["near_duplicate"]["near_duplicate_score"].to_numpy())
    assert np.array_equal(flag, ref["near_duplicate"]["is_near_duplicate_issue"].to_numpy()) and flag.sum() > 100
    theirs = [sorted(map(int, s)) for s in ref["near_duplicate_sets"]]
    ours = [sets.indices[sets.indptr[i] : sets.indptr[i + 1]].tolist() for i in range(len(emb))]
    assert ours == theirs


def test_scores_read_like_the_dicts_they_replace(emb: np.ndarray) -> None:
    """cleanlab_scores' Scores: per row the keys, order and rounding of meta.moderate.cleanlab; a small source is
    skipped with its note; near_duplicate_of names the ids of the row's set."""
    cfg = _params.load(ROOT / "params.yaml", ["moderate"]).moderate.cleanlab
    sources = ["big"] * (len(emb) - 5) + ["tiny"] * 5
    ids = [f"id{i:05d}" for i in range(len(emb))]
    scores, counts = cleanlab_checks.cleanlab_scores(emb, sources, [None] * len(emb), ids, cfg, seed=1234)
    assert len(scores) == len(emb) and len(list(scores)) == len(emb)
    assert list(scores[0]) == ["outlier_score", "is_outlier", "near_duplicate_score", "is_near_duplicate"]
    assert scores[len(emb) - 1] == {"skipped": f"source has 5 records (< cleanlab.min_records {cfg.min_records})"}
    dup = scores[11]  # one of a group of exact copies (rows 10-13)
    assert dup["is_near_duplicate"] and {"id00010", "id00012", "id00013"} <= set(dup["near_duplicate_of"])
    assert dup["near_duplicate_of"] == sorted(dup["near_duplicate_of"]) and "id00011" not in dup["near_duplicate_of"]
    assert counts["flagged_cleanlab_near_duplicate"] == sum(s.get("is_near_duplicate", False) for s in scores)
    assert all(round(s["outlier_score"], 6) == s["outlier_score"] for s in scores if "outlier_score" in s)
    with pytest.raises(IndexError):
        scores[len(emb)]


def test_label_check_equals_cleanlabs_own(emb: np.ndarray) -> None:
    """pred_probs from our euclidean graph: Datalab's label scores, flags and predicted labels, bit for bit."""
    rng = np.random.default_rng(7)
    centre = snap(rng.standard_normal((4, emb.shape[1])))
    labels = [f"topic{int(i)}" for i in (emb.astype(np.float64) @ centre.T.astype(np.float64)).argmax(axis=1)]
    for i in rng.choice(len(labels), 40, replace=False):
        labels[i] = f"topic{rng.integers(0, 4)}"
    ours = cleanlab_checks.knn_issues(emb, {"label": {"k": 20}}, labels, config(), 1234)["label"]
    theirs = cleanlab_checks.datalab_issues(emb.astype(np.float64), {"label": {"k": 20}}, labels, 1234)["label"]
    assert np.array_equal(ours["label_score"], theirs["label_score"])
    assert np.array_equal(ours["is_label_issue"], theirs["is_label_issue"])
    assert list(ours["predicted_label"]) == list(theirs["predicted_label"])
    assert ours["is_label_issue"].sum() > 10


def test_sparse_vote_prediction_is_the_dense_argmax() -> None:
    """_predicted (k labels a row) equals argmax of _vote's dense rows, ties included (few classes, many ties)."""
    rng = np.random.default_rng(5)
    for classes, k in ((2, 10), (3, 4), (7, 9), (40, 10)):
        codes = rng.integers(0, classes, 3000)
        neighbours = rng.integers(0, 3000, (3000, k))
        dense = cleanlab_checks._vote(codes, neighbours)
        assert np.array_equal(cleanlab_checks._predicted(codes, neighbours), dense.argmax(axis=1))


def _labels(emb: np.ndarray) -> list[str]:
    """A topic label per row from 4 seeded centres, 40 rows relabelled at random (label issues to find)."""
    rng = np.random.default_rng(7)
    centre = rng.standard_normal((4, emb.shape[1]))
    labels = [f"topic{int(i)}" for i in (emb.astype(np.float64) @ centre.T).argmax(axis=1)]
    for i in rng.choice(len(labels), 40, replace=False):
        labels[i] = f"topic{rng.integers(0, 4)}"
    return labels


def test_label_check_in_chunks(monkeypatch: pytest.MonkeyPatch, emb: np.ndarray) -> None:
    """The stage's label check equals knn_issues' (one chunk); over the cells budget it runs in chunks that keep
    every row's score and prediction, and flags nearly the same rows (the per-class thresholds are estimated
    per chunk: 667 rows here, 59k at 1M). It runs in the stage's process: cleanlab forks no pool (each child's RSS
    would count the stage's pages again)."""
    import multiprocessing.pool

    def refuse(*_a, **_k):
        raise AssertionError("cleanlab forked a process pool")

    monkeypatch.setattr(multiprocessing.pool.Pool, "__init__", refuse)
    cfg = _params.load(ROOT / "params.yaml", ["moderate"]).moderate.cleanlab
    labels = _labels(emb)
    ids = [f"id{i}" for i in range(len(emb))]
    whole, counts = cleanlab_checks.cleanlab_scores(emb, ["s"] * len(emb), labels, ids, cfg, seed=1234)
    ref = cleanlab_checks.knn_issues(emb, {"label": {"k": cfg.label_k}}, labels, config(), 1234)["label"]
    assert [s["label_score"] for s in whole] == [round(float(v), 6) for v in ref["label_score"]]
    assert [s["is_label_issue"] for s in whole] == ref["is_label_issue"].tolist()
    assert [s["predicted_label"] for s in whole] == [str(p) for p in ref["predicted_label"]]
    assert counts["flagged_cleanlab_label_issue"] > 10
    monkeypatch.setattr(cleanlab_checks, "LABEL_CELLS", len(emb) * 4 // 3)  # 3 chunks of ~667 rows
    chunked, chunked_counts = cleanlab_checks.cleanlab_scores(emb, ["s"] * len(emb), labels, ids, cfg, seed=1234)
    assert [s["label_score"] for s in chunked] == [s["label_score"] for s in whole]
    assert [s["predicted_label"] for s in chunked] == [s["predicted_label"] for s in whole]
    same = sum(a["is_label_issue"] == b["is_label_issue"] for a, b in zip(chunked, whole, strict=True))
    assert same >= 0.95 * len(emb)  # measured: 1,939 of 2,000 (584 flags whole, 593 in 3 chunks)
    n_flags = counts["flagged_cleanlab_label_issue"]
    assert abs(chunked_counts["flagged_cleanlab_label_issue"] - n_flags) <= 0.03 * n_flags
    assert cleanlab_checks.ONE_PROCESS == {"clean_learning_kwargs": {"find_label_issues_kwargs": {"n_jobs": 1}}}


def test_cleanlab_scores_never_search_all_pairs(monkeypatch: pytest.MonkeyPatch, emb: np.ndarray) -> None:
    """cleanlab_scores hands Datalab every neighbour: its own search (and sklearn's classifier) never runs."""
    import cleanlab.datalab.internal.issue_manager.knn_graph_helpers as helpers
    import cleanlab.datalab.internal.issue_manager.label as label_manager

    def refuse(*_a, **_k):
        raise AssertionError("cleanlab searched the neighbours itself")

    monkeypatch.setattr(helpers, "create_knn_graph_and_index", refuse)
    monkeypatch.setattr(label_manager, "KNeighborsClassifier", refuse)
    cfg = _params.load(ROOT / "params.yaml", ["moderate"]).moderate.cleanlab
    labels = ["a" if v[0] > 0 else "b" for v in emb]
    scores, counts = cleanlab_checks.cleanlab_scores(
        emb, ["s"] * len(emb), labels, [f"id{i}" for i in range(len(emb))], cfg, seed=1234
    )
    assert all("outlier_score" in s and "near_duplicate_score" in s for s in scores)
    assert counts["flagged_cleanlab_near_duplicate"] > 0


def recall(found, exact) -> float:
    """Share of found neighbours no farther than the exact k-th (ties count as found)."""
    n = exact.shape[0]
    return float((found.data.reshape(n, -1) <= exact.data.reshape(n, -1)[:, -1:]).mean())


def test_ivf_graph_recall_on_a_seeded_set() -> None:
    """3,000 planted rows, 46 lists of ~64, 8 probed: >= 0.98 of the exact neighbours; fewer probes, fewer."""
    x = vectors(n=3000, dim=128)
    exact = knn.knn_graph(x, K, config(), seed=1234)
    ivf = knn.knn_graph(x, K, config(min_records=2, records_per_list=64, probe_lists=8), seed=1234)
    one = knn.knn_graph(x, K, config(min_records=2, records_per_list=64, probe_lists=1), seed=1234)
    assert recall(ivf, exact) >= 0.98
    assert recall(one, exact) < recall(ivf, exact)
    # every neighbour found is a true distance, never self, each row sorted: only farther where missed
    n = len(x)
    assert not (ivf.indices.reshape(n, K) == np.arange(n)[:, None]).any()
    assert np.all(ivf.data.reshape(n, K) >= exact.data.reshape(n, K) - 1e-15)
    all_probed = knn.knn_graph(x, K, config(min_records=2, records_per_list=64, probe_lists=1000), seed=1234)
    assert all_probed.indices.tobytes() == exact.indices.tobytes()


SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.stages.test_knn import K, config, vectors
from stages.curate import knn
x = vectors(n=3000, dim=128)
for ann in (config(), config(min_records=2, records_per_list=64, probe_lists=4)):
    g = knn.knn_graph(x, K, ann, seed=1234)
    print(hashlib.sha256(g.data.tobytes() + g.indices.tobytes() + g.indptr.tobytes()).hexdigest())
"""


def test_same_graph_bytes_on_any_threads_and_kernels() -> None:
    """Exact and IVF graphs: same bytes on 1 and 2 threads, with PyTorch and faiss on their generic kernels."""
    code = SCRIPT.format(root=str(ROOT))
    outputs = set()
    for env in (
        {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "default"},
        {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "FAISS_OPT_LEVEL": "generic"},
    ):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1 and len(outputs.pop().split()) == 2


def test_ann_params_validated() -> None:
    with pytest.raises(StageError, match="probe_lists"):
        _params.load(ROOT / "params.yaml", ["moderate"], overrides={"moderate.cleanlab.ann.probe_lists": 0})


def test_k_must_fit() -> None:
    with pytest.raises(ValueError, match=r"k must be in 1\.\.9 for 10 rows"):
        knn.knn_graph(vectors()[:10], 10, config(), seed=1)
