"""semantic: the exact pass against plain float64 all-pairs, the IVF pass against the exact pass, determinism.

Inline data: unit vectors around 60 topic centres (so that k-means has something to find), with planted
near-duplicate pairs whose cosines straddle the threshold, some within 1e-5 of it; snapped to the grid of
:func:`stages.curate.embed.snap` as the stage's vectors are.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.dedup import Semantic
from stages.curate import semantic
from stages.curate.embed import cosine, snap

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 0.95


def planted(n: int = 3000, dim: int = 384, pairs: int = 400, seed: int = 0) -> np.ndarray:
    """(n, dim) grid unit vectors: 60 topics, and `pairs` rows replaced by a near copy of another row."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim))
    x = centres[rng.integers(0, 60, n)] + 1.2 * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src, dst = rng.permutation(n)[: 2 * pairs].reshape(2, pairs)
    target = rng.uniform(0.93, 0.99, pairs)  # cosines around the threshold
    target[:20] = THRESHOLD + rng.uniform(-1e-5, 1e-5, 20)  # a few right at it
    for s, d, c in zip(src, dst, target, strict=True):
        noise = rng.standard_normal(dim)
        noise -= (noise @ x[s]) * x[s]
        x[d] = c * x[s] + np.sqrt(1 - c * c) * noise / np.linalg.norm(noise)
    return snap(x)


def config(**ann: int) -> Semantic:
    """dedup.semantic of params.yaml, with `ann` keys replaced."""
    cfg = _params.load(ROOT / "params.yaml", ["dedup"]).dedup.semantic
    return cfg.model_copy(update={"ann": cfg.ann.model_copy(update=ann)})


@pytest.fixture(scope="module")
def emb() -> np.ndarray:
    return planted()


@pytest.fixture(scope="module")
def exact(emb: np.ndarray) -> list[tuple[int, int, float]]:
    return semantic.exact_pairs(emb, THRESHOLD)


def test_exact_pass_equals_float64_all_pairs(emb: np.ndarray, exact: list[tuple[int, int, float]]) -> None:
    sims = cosine(emb, emb)  # (3000, 3000) float64, exact on grid vectors
    rows, cols = np.nonzero(np.triu(sims >= THRESHOLD, k=1))
    assert exact == [(int(i), int(j), float(sims[i, j])) for i, j in zip(rows, cols, strict=True)]
    assert 240 < len(exact) < 280  # planted pairs: ~2 in 3 of 380 in [0.93, 0.99], ~10 of 20 at the threshold
    near = [s for _, _, s in exact if abs(s - THRESHOLD) < 1e-4]
    assert near  # the float32 screen let through the pairs right at the threshold


def test_exact_pass_tiles(monkeypatch: pytest.MonkeyPatch, emb: np.ndarray, exact: list) -> None:
    """Small tiles (and tiles that do not divide N) give the same pairs in the same order."""
    monkeypatch.setattr(semantic, "TILE", 700)
    assert semantic.exact_pairs(emb, THRESHOLD) == exact


@pytest.mark.parametrize(("per_list", "probes"), [(256, 16), (64, 8)])
def test_ann_pass_finds_the_exact_pairs(emb: np.ndarray, exact: list, per_list: int, probes: int) -> None:
    """params.yaml's index (11 lists, all probed) and a finer one (46 lists, 8 probed): recall 1.0."""
    ann = semantic.ann_pairs(emb, THRESHOLD, config(records_per_list=per_list, probe_lists=probes), 1234)
    assert ann == exact


def test_ann_pass_misses_only_unprobed_pairs(emb: np.ndarray, exact: list) -> None:
    """One list probed of 187: a few pairs missed (the approximation); every pair found is an exact-pass pair."""
    ann = semantic.ann_pairs(emb, THRESHOLD, config(records_per_list=16, probe_lists=1), 1234)
    assert set(ann) < set(exact) and len(ann) > 0.95 * len(exact)


def test_cosine_pairs_switches_at_min_records(monkeypatch: pytest.MonkeyPatch, emb: np.ndarray) -> None:
    used = []
    monkeypatch.setattr(semantic, "exact_pairs", lambda e, t: used.append("exact") or [])
    monkeypatch.setattr(semantic, "ann_pairs", lambda e, t, c, s: used.append("ann") or [])
    semantic.cosine_pairs(emb, THRESHOLD, config(min_records=3001), 1234)
    semantic.cosine_pairs(emb, THRESHOLD, config(min_records=3000), 1234)
    assert used == ["exact", "ann"]


def test_quantized_dot_products_within_margin(emb: np.ndarray) -> None:
    q = semantic.quantize(emb[:500])
    assert np.abs(q).max() <= 2**semantic.QUANT_BITS
    exact = cosine(emb[:500], emb[:500])
    approx = q @ q.T / 4.0**semantic.QUANT_BITS
    assert np.abs(approx - exact).max() < semantic.ann_margin(emb.shape[1])
    # integer dot products below 2**24: float32 computes them exactly
    assert np.abs(q @ q.T).max() < 2**24
    assert np.array_equal(q.astype(np.float32) @ q.astype(np.float32).T, (q @ q.T).astype(np.float32))


def test_kmeans_is_seeded(emb: np.ndarray) -> None:
    q = semantic.quantize(emb)
    a = semantic.kmeans(q, 20, 5, 1234, 64)
    assert np.array_equal(a, semantic.kmeans(q, 20, 5, 1234, 64))
    assert not np.array_equal(a, semantic.kmeans(q, 20, 5, 1235, 64))
    assert np.array_equal(a, np.rint(a)) and np.abs(np.linalg.norm(a, axis=1) - 2**11).max() < 10


SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.stages.test_semantic import THRESHOLD, config, planted
from stages.curate import semantic
pairs = semantic.ann_pairs(planted(), THRESHOLD, config(records_per_list=64, probe_lists=4), 1234)
print(len(pairs), hashlib.sha256(repr(pairs).encode()).hexdigest())
"""


def test_ann_pass_same_pairs_on_any_threads_and_kernels(emb: np.ndarray) -> None:
    """Same pairs in process and in fresh processes on 1 and 2 threads, PyTorch and faiss on generic kernels."""
    pairs = semantic.ann_pairs(emb, THRESHOLD, config(records_per_list=64, probe_lists=4), 1234)
    want = f"{len(pairs)} {hashlib.sha256(repr(pairs).encode()).hexdigest()}"
    code = SCRIPT.format(root=str(ROOT))
    for env in (
        {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "default"},
        {"OMP_NUM_THREADS": "2", "FAISS_OPT_LEVEL": "generic"},
    ):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == want, env


def test_ann_params_validated() -> None:
    with pytest.raises(StageError, match="probe_lists") as err:
        _params.load(
            ROOT / "params.yaml",
            ["dedup"],
            overrides={"dedup.semantic.ann.probe_lists": 0, "dedup.semantic.ann.min_records": 1},
        )
    assert "min_records" in str(err.value)
