"""Task scores from per-item rows, and base vs adapted: paired bootstrap intervals, and the main score's test.

A task score is computed from its items as its type's registry entry says (``stages/probe/types.py``:
``Metric.aggregate``); the main metric of the type is tested (``stages/probe/significance.py``), and its test
decides forgetting and gain. Floats are rounded to 6 decimals.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np

from stages.probe import significance as _sig
from stages.probe import types as _types
from stages.probe.scorers import bleu_stats, corpus_bleu_from_stats
from stages.probe.tables import Row, round_score

_PERPLEXITY = ("token_perplexity", "bits_per_byte", "byte_perplexity")


def _arrays(task_type: str, rows: list[Row]) -> dict[str, np.ndarray]:
    """Per-item arrays the task scores and tests are computed from, shape (n,) or (n, 10) for BLEU statistics."""
    scores = [r["scores"] if isinstance(r["scores"], dict) else json.loads(r["scores"]) for r in rows]
    out: dict[str, np.ndarray] = {}
    for m in _types.get(task_type).metrics:
        if m.aggregate == "mean":
            out[m.name] = np.array([s[m.name] for s in scores], dtype=np.float64)
        elif m.aggregate == "corpus_bleu":
            out["bleu_stats"] = np.array([bleu_stats(r["prediction"], r["reference"]) for r in rows], dtype=np.float64)
            out[m.name] = np.array([s[m.name] for s in scores], dtype=np.float64)  # sentence BLEU: what a test reads
        else:  # the perplexities: from the summed nll, token and byte counts
            out |= {k: np.array([s[k] for s in scores], dtype=np.float64) for k in ("nll", "tokens", "bytes")}
    return out


def _scores(task_type: str, arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Task scores on the items `idx` (shape (n,) -> scalars, or (B, n) -> one score per resample)."""
    metrics = _types.get(task_type).metrics
    out: dict[str, np.ndarray] = {}
    if any(m.aggregate in _PERPLEXITY for m in metrics):
        nll, tokens, nbytes = (arrays[k][idx].sum(axis=-1) for k in ("nll", "tokens", "bytes"))
        bpb = nll / nbytes / math.log(2)
        ppl = {"token_perplexity": np.exp(nll / tokens), "bits_per_byte": bpb, "byte_perplexity": np.exp2(bpb)}
    for m in metrics:
        if m.aggregate == "mean":
            out[m.name] = arrays[m.name][idx].mean(axis=-1)
        elif m.aggregate == "corpus_bleu":
            out[m.name] = corpus_bleu_from_stats(arrays["bleu_stats"][idx].sum(axis=-2))
        else:
            out[m.name] = ppl[m.aggregate]
    return out


def aggregate(task_type: str, rows: list[Row]) -> dict[str, float]:
    """The task scores of per-item rows (scores as dicts or JSON text), rounded to 6 decimals."""
    scores = _scores(task_type, _arrays(task_type, rows), np.arange(len(rows)))
    return {k: round_score(v) for k, v in scores.items()}


def _rng(seed: int, task: str) -> np.random.Generator:
    # one stream per task: adding or reordering tasks leaves every other task's interval unchanged
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def compare(
    task: str,
    task_type: str,
    base: list[Row],
    adapted: list[Row],
    *,
    seed: int,
    resamples: int,
    confidence: float,
    permutation_resamples: int,
    mde_alpha: float,
) -> dict[str, Any]:
    """Base vs adapted on one task: per score base/adapted/delta and a paired-bootstrap interval of delta; the test
    of the main score.

    The same resampled item indices serve base and adapted and every score, and each task score (corpus BLEU, the
    bits-per-byte ratio) is recomputed on each resample. The interval is the percentile interval of the resampled
    deltas at `confidence`: the range of the effect, not a test (it excludes zero too easily when every changed item
    moved one way). The main score's paired test (``test``, ``n``, ``changed``, ``p``, ``mde`` at `mde_alpha`):
    :func:`stages.probe.significance.assess`, with `permutation_resamples` random sign patterns where it draws them;
    the verdicts come after, over all the variant's tasks (:func:`stages.probe.significance.decide`).
    """
    spec = _types.get(task_type)
    n = len(base)
    if [r["item"] for r in base] != [r["item"] for r in adapted]:
        raise RuntimeError(f"broken invariant: task {task}: base and adapted rows are not the same items")
    arr_b, arr_a = _arrays(task_type, base), _arrays(task_type, adapted)
    full = np.arange(n)
    point_b, point_a = _scores(task_type, arr_b, full), _scores(task_type, arr_a, full)
    idx = _rng(seed, task).integers(0, n, size=(resamples, n))
    boot_b, boot_a = _scores(task_type, arr_b, idx), _scores(task_type, arr_a, idx)
    tail = (1 - confidence) / 2 * 100
    out: dict[str, Any] = {}
    for metric in spec.metric_names:
        deltas = np.asarray(boot_a[metric]) - np.asarray(boot_b[metric])
        lo, hi = np.percentile(deltas, [tail, 100 - tail])
        out[metric] = {
            "base": round_score(point_b[metric]),
            "adapted": round_score(point_a[metric]),
            "delta": round_score(point_a[metric] - point_b[metric]),
            "ci_low": round_score(lo),
            "ci_high": round_score(hi),
        }
    pair = _sig.paired(task_type, arr_b, arr_a)
    return out | _sig.assess(task, pair, seed=seed, resamples=permutation_resamples, mde_alpha=mde_alpha)
