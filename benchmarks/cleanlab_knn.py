"""Cleanlab's neighbour graph at scale: the exact graph against the IVF graph, recall, flag agreement, time, memory.

Corpus (first argument; ``../shared/data/t0_train_50k.jsonl`` in the shared workspace): 55,185
prompt/completion records of the public T0 training mixture, made into records the way pull makes them
(:mod:`_t0`), embedded with ``common.embedding`` of ``params.yaml`` with ``kind: static`` (the distilled
table and the vectors are cached under ``--cache``; distilling takes a few minutes once). Then:

- the exact graph (:func:`stages.curate.knn.knn_graph` below ``ann.min_records``) and the IVF graph
  (``moderate.cleanlab.ann`` of ``params.yaml``, and ``--probes`` other probe counts): wall time, peak
  memory above the vectors (RSS sampled every 5 ms), recall of the exact k nearest (a neighbour counts when
  it is no farther than the exact k-th: ties count), and the outlier / near-duplicate flags Datalab
  derives from each graph (``moderate.cleanlab`` thresholds) against those of the exact one;
- cleanlab's own search (``Datalab.find_issues(features=...)``) against our exact graph on ``--sample``
  evenly spaced records: largest score difference and flags;
- ``--rows`` (default 1,000,000) synthetic rows: the T0 vectors repeated with seeded perturbations (each a
  copy plus Gaussian noise of norm ``--noise``, snapped to the grid), one source: the IVF graph and the
  Datalab checks on it, time and peak memory. ``--rows 0`` skips it.

Run (from the project root)::

    .venv/bin/python benchmarks/cleanlab_knn.py ../shared/data/t0_train_50k.jsonl --cache /tmp/hknn_cache

Writes ``benchmarks/results/cleanlab_knn.json`` (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _measure  # noqa: E402
import _t0  # noqa: E402

from stages.core import params as _params  # noqa: E402
from stages.core.records import record_text  # noqa: E402
from stages.curate import cleanlab_checks, embed, knn  # noqa: E402

SEED = 1234


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """:func:`_measure.measured`, rounded: seconds to 0.1, MiB to 1."""
    out, wall, mib = _measure.measured(fn)
    return out, round(wall, 1), round(mib)


def flags(vectors_n: int, graph, cfg) -> dict[str, np.ndarray]:
    """Datalab's outlier and near-duplicate flags from `graph` (both checks' k cut from it)."""
    lab = cleanlab_checks._datalab(vectors_n, None, SEED)
    out = {}
    for name, check in (
        ("outlier", {"k": cfg.outlier_k, "threshold": cfg.outlier_threshold}),
        ("near_duplicate", {"k": cfg.near_duplicate_k, "threshold": cfg.near_duplicate_threshold}),
    ):
        cleanlab_checks._run(
            lab, {name: {**check, "metric": "cosine"}}, knn_graph=cleanlab_checks._first(graph, check["k"])
        )
        out[name] = lab.get_issues(name)[f"is_{name}_issue"].to_numpy()
    return out


def agreement(ours: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    both = int((ours & exact).sum())
    return {
        "exact": int(exact.sum()),
        "approx": int(ours.sum()),
        "both": both,
        "jaccard": round(both / max(1, int((ours | exact).sum())), 4),
    }


def recall(found, exact) -> float:
    n = exact.shape[0]
    return round(float((found.data.reshape(n, -1) <= exact.data.reshape(n, -1)[:, -1:]).mean()), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path, help="T0 JSONL (../shared/data/t0_train_50k.jsonl)")
    ap.add_argument("--cache", default="/tmp/hknn_cache", help="embedding cache directory")
    ap.add_argument("--probes", default="8,32", help="probe_lists to compare besides params.yaml's")
    ap.add_argument("--sample", type=int, default=5000, help="records for the check against cleanlab's own")
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (0: skip)")
    ap.add_argument("--noise", type=float, default=0.1, help="norm of each synthetic row's perturbation")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cleanlab_knn.json")
    args = ap.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"T0 corpus not found at {args.corpus}: pass the path of t0_train_50k.jsonl")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    scoped = _params.load(ROOT / "params.yaml", ["common", "moderate"], overrides={"common.embedding.kind": "static"})
    emb, cfg = scoped.common.embedding, scoped.moderate.cleanlab
    records = [_t0.record(line) for line in _t0.lines(args.corpus)]
    vectors = embed.embed([record_text(r, emb.fields) for r in records], emb, args.cache)  # (55185, 256)
    n, k = len(vectors), max(cfg.outlier_k, cfg.near_duplicate_k)
    result: dict[str, Any] = {"records": n, "dim": int(vectors.shape[1]), "k": k, "ann": cfg.ann.model_dump()}

    exact, t, mem = measured(
        lambda: knn.knn_graph(vectors, k, cfg.ann.model_copy(update={"min_records": n + 1}), seed=SEED)
    )
    exact_flags = flags(n, exact, cfg)
    result["exact"] = {"seconds": t, "peak_mib": mem, **{f: int(v.sum()) for f, v in exact_flags.items()}}
    rows = []
    for probes in sorted({cfg.ann.probe_lists, *(int(p) for p in args.probes.split(","))}):
        ann = cfg.ann.model_copy(update={"min_records": 2, "probe_lists": probes})
        graph, t, mem = measured(lambda ann=ann: knn.knn_graph(vectors, k, ann, seed=SEED))
        got = flags(n, graph, cfg)
        rows.append(
            {
                "probe_lists": probes,
                "seconds": t,
                "peak_mib": mem,
                "recall": recall(graph, exact),
                "nearest_exact": round(float((graph.data[::k] == exact.data[::k]).mean()), 4),
                **{f: agreement(got[f], exact_flags[f]) for f in got},
            }
        )
        print(rows[-1], flush=True)
    result["ivf"] = rows

    pick = np.linspace(0, n - 1, args.sample).astype(int)
    checks = {
        "outlier": {"k": cfg.outlier_k, "threshold": cfg.outlier_threshold},
        "near_duplicate": {"k": cfg.near_duplicate_k, "threshold": cfg.near_duplicate_threshold},
    }
    ours, t_ours, _ = measured(lambda: cleanlab_checks.knn_issues(vectors[pick], checks, None, cfg.ann, SEED))
    theirs, t_theirs, _ = measured(
        lambda: cleanlab_checks.datalab_issues(vectors[pick].astype(np.float64), checks, None, SEED)
    )
    result["vs_cleanlab_search"] = {
        "records": args.sample,
        "seconds_ours": t_ours,
        "seconds_cleanlab": t_theirs,
        **{
            name: {
                "max_abs_score_diff": float(np.abs(ours[name][col].to_numpy() - theirs[name][col].to_numpy()).max()),
                "scores_equal_6_decimals": bool(np.array_equal(ours[name][col].round(6), theirs[name][col].round(6))),
                "flags_equal": bool(np.array_equal(ours[name][f"is_{name}_issue"], theirs[name][f"is_{name}_issue"])),
            }
            for name, col in (("outlier", "outlier_score"), ("near_duplicate", "near_duplicate_score"))
        },
    }
    print(result["vs_cleanlab_search"], flush=True)

    if args.rows:
        rng = np.random.default_rng(SEED)
        big = np.empty((args.rows, vectors.shape[1]), dtype=np.float32)
        for lo in range(0, args.rows, 65536):
            hi = min(lo + 65536, args.rows)
            base = vectors[np.arange(lo, hi) % n].astype(np.float64)
            noise = rng.standard_normal(base.shape) * (args.noise / np.sqrt(base.shape[1]))
            big[lo:hi] = embed.snap(base + noise)
        del base, noise
        graph, t_graph, mem_graph = measured(lambda: knn.knn_graph(big, k, cfg.ann, seed=SEED))
        got, t_checks, mem_checks = measured(lambda: flags(args.rows, graph, cfg))
        result["synthetic"] = {
            "rows": args.rows,
            "noise": args.noise,
            "vectors_mib": round(big.nbytes / 2**20),
            "graph_seconds": t_graph,
            "graph_peak_mib": mem_graph,
            "checks_seconds": t_checks,
            "checks_peak_mib": mem_checks,
            "process_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10),
            **{f: int(v.sum()) for f, v in got.items()},
        }
        print(result["synthetic"], flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
