"""Curation at scale: wall time and peak memory of pull, moderate and dedup on real corpora, side by side with a peer.

Corpora: the T0 mixture (``--corpus``, default ``../shared/data/t0_train_50k.jsonl``: 55,185 real records) and
larger ones built from it (``--sizes``, e.g. ``1000000``): seeded copies of its records, each with one word
swapped and a copy number appended, so that they are new texts for every pass (exact, MinHash, semantic),
not exact duplicates dropped first. Each corpus becomes a project in a temporary folder: this checkout's
``stages/`` and ``params.yaml`` with ``pull.sources`` replaced by the corpus (``format: alpaca``, T0's field
mapping, ``strip_suffixes``), ``dedup.references`` emptied, and a cold embedding cache.

Each stage runs as its own process (``python -m stages.curate.<stage>`` with the flags of ``dvc.yaml``); its
wall time and peak RSS (the process tree, sampled every 0.1 s with psutil) are recorded, with records/s.
``--peer REV`` runs the same stages of another git revision (a ``git worktree`` of it) on the same corpus in
the same run, so the ratio compares implementations on the same machine and load; ``--workers`` sets
``common.workers`` and ``--set`` overrides params of this checkout only (a peer runs with its own
``params.yaml``, whose keys may differ). Progress and timing lines of the stages go to
``<out>/logs/``. The params are those of ``params.yaml`` unless ``--set key=value`` overrides one.

Run (from the project root)::

    .venv/bin/python benchmarks/scale.py --sizes 55185 --peer ab83f0d --check-bytes
    .venv/bin/python benchmarks/scale.py --sizes 1000000 --keep /tmp/scale1m --out benchmarks/results/scale_1m.json
    .venv/bin/python benchmarks/scale.py --rerun /tmp/scale1m/this_1000000 --stages moderate dedup \\
        --out benchmarks/results/scale_1m.json   # the same project again with this checkout's stages/

``--check-bytes`` reruns moderate and dedup of the first corpus under each variant the outputs must not
depend on (1 worker; embedding batch 1 and 64; a warm cache; ``ATEN_CPU_CAPABILITY=default``; the Ray
executor on a two-node cluster started on 127.0.0.1) and compares the md5 of every output with the run's.
A cold cache is cold: each project has its own embedding cache and its own user cache (``STEEP_CACHE_HOME``),
so the static table is distilled in the timed moderate run.

Writes ``benchmarks/results/scale.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "t0_train_50k.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
STAGES = ("pull", "moderate", "dedup")
FLAGS = {
    "pull": ["--out", "data/pulled", "--metrics", "metrics/pull.json"],
    "moderate": [
        "--in", "data/pulled", "--out", "data/moderated.parquet", "--rejects", "data/rejected/moderate.parquet",
        "--metrics", "metrics/moderate.json", "--cache", ".steep_cache/embeddings",
    ],
    "dedup": [
        "--in", "data/moderated.parquet", "--out", "data/curated.parquet", "--rejects", "data/rejected/dedup.parquet",
        "--metrics", "metrics/dedup.json", "--cache", ".steep_cache/embeddings",
    ],
}  # fmt: skip
MODULE = {"pull": "stages.curate.pull", "moderate": "stages.curate.moderate", "dedup": "stages.curate.dedup"}


def build_corpus(src: Path, size: int, out: Path, seed: int) -> Path:
    """`size` records: the corpus itself, then seeded copies with one word swapped and a copy number appended."""
    lines = src.read_text(encoding="utf-8").split("\n")
    lines = [ln for ln in lines if ln.strip()]
    if size <= len(lines):
        out.write_text("\n".join(lines[:size]) + "\n", encoding="utf-8")
        return out
    rng = random.Random(seed)
    with out.open("w", encoding="utf-8") as f:
        for ln in lines:
            f.write(ln + "\n")
        for n in range(size - len(lines)):
            rec = json.loads(lines[rng.randrange(len(lines))])
            words = rec["prompt"].split(" ")
            if len(words) > 3:
                i = rng.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
            rec["prompt"] = " ".join(words) + f" (copy {n + 1})"
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out


def make_project(code_root: Path, corpus: Path, dest: Path, overrides: dict[str, Any], workers: int | None) -> Path:
    """A project folder: `code_root`'s stages and params, with the corpus as the only source."""
    shutil.copytree(code_root / "stages", dest / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((code_root / "params.yaml").read_text(encoding="utf-8"))
    params["pull"]["sources"] = [
        {
            "name": "corpus",
            "format": "alpaca",
            "location": str(corpus),
            "fields": {"instruction": "prompt", "output": "completion"},
            "label_field": "template",
            "strip_suffixes": ["<|endoftext|>"],
        }
    ]
    src = params["pull"]["sources"][0]
    if "strip_suffixes" not in (code_root / "stages/core/params/pull.py").read_text(encoding="utf-8"):
        del src["strip_suffixes"]  # a peer from before the option: the marker stays in its texts
    params["dedup"]["references"] = []
    if workers is not None and "workers" in params.get("common", {}):
        params["common"]["workers"] = workers
    for key, value in overrides.items():
        node = params
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = yaml.safe_load(value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return dest


def run_stage(project: Path, stage: str, log: Path, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one stage as a process; its wall time and the peak RSS of its process tree."""
    cmd = [sys.executable, "-m", MODULE[stage], "--params", "params.yaml", *FLAGS[stage]]
    env = {**os.environ, "PYTHONPATH": str(project), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # a cold cache is cold: the distilled static table too (else it comes from the user's cache)
    env["STEEP_CACHE_HOME"] = str(project / ".steep_cache" / "user")
    env.update(env_extra or {})
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        peak = 0
        samples: list[tuple[int, int]] = []  # (bytes of the log written, RSS of the tree) every 0.1 s
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, rss)
                samples.append((log.stat().st_size, rss))
            except (psutil.Error, OSError):
                pass
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed in {project} (see {log})")
    metrics = json.loads((project / "metrics" / f"{stage}.json").read_text(encoding="utf-8"))
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(peak / 2**30, 2),
        "peak_by_phase": peak_by_phase(log, samples),
        "metrics": metrics,
    }


def peak_by_phase(log: Path, samples: list[tuple[int, int]]) -> list[tuple[str, float]]:
    """The peak RSS (GB) of the process tree while each log line was the last one written: the memory of the
    phase that ends with the next line (lines of no phase are kept, so that a peak is never lost)."""
    lines = (log.read_bytes() if log.exists() else b"").split(b"\n")
    ends = list(itertools.accumulate(len(line) + 1 for line in lines))  # byte offset after each line
    peaks: dict[int, int] = {}
    for size, rss in samples:
        k = min(bisect.bisect_right(ends, size), len(ends) - 1)  # the line being written
        peaks[k] = max(peaks.get(k, 0), rss)
    out = []
    for k in sorted(peaks):
        last = lines[k - 1].decode("utf-8", errors="replace")[:160] if k else "(start)"
        out.append((f"after: {last}", round(peaks[k] / 2**30, 2)))
    return out


def md5s(project: Path) -> dict[str, str]:
    """md5 of every Parquet file the curation stages wrote in `project`."""
    out = {}
    for p in sorted((project / "data").rglob("*.parquet")):
        out[p.relative_to(project).as_posix()] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def _ray_cluster(work: Path) -> tuple[str, Any]:
    """A two-node Ray cluster on 127.0.0.1 (one CPU each), for the executor variant; (address, stop)."""
    sys.path.insert(0, str(ROOT))
    from tests.stages import _ray

    temp_dir = tempfile.mkdtemp(prefix="steep-ray-", dir="/tmp")
    return _ray.start(temp_dir), lambda: _ray.stop(temp_dir)


VARIANTS = ("workers", "batch1", "batch64", "warm", "aten", "avx2", "ray")


def byte_checks(
    base: Path, work: Path, size: int, out: dict[str, Any], checkpoint: Any = None, only: Sequence[str] = VARIANTS
) -> None:
    """Rerun moderate and dedup of the project `base` under each variant; same md5s as the base run? (into `out`)

    Variants: 1 worker (the base uses params.yaml's, every core), embedding batch sizes 1 and 64, a warm
    embedding cache (the base's, after its run), PyTorch's generic kernels (``ATEN_CPU_CAPABILITY=default``,
    cold cache), ``avx2`` likewise, and the Ray executor on a local two-node cluster.
    """
    reference = md5s(base)
    variants: list[tuple[str, dict[str, Any], dict[str, str], bool]] = [
        ("workers 1", {"common.workers": 1}, {}, False),
        ("embedding batch 1", {"common.embedding.batch_size": 1}, {}, False),
        ("embedding batch 64", {"common.embedding.batch_size": 64}, {}, False),
        ("warm embedding cache", {}, {}, True),
        ("ATEN_CPU_CAPABILITY=default", {}, {"ATEN_CPU_CAPABILITY": "default"}, False),
        ("ATEN_CPU_CAPABILITY=avx2", {}, {"ATEN_CPU_CAPABILITY": "avx2"}, False),
        ("Ray executor (2 nodes)", {"common.executor": {"kind": "ray", "address": None}}, {}, False),
    ]
    variants = [v for key, v in zip(VARIANTS, variants, strict=True) if key in only]
    out.setdefault("variants", {})
    out.update(records=size, reference=reference)
    for name, overrides, env, warm in variants:
        project = work / f"check_{name.split()[0].lower()}_{len(out['variants'])}_{size}"
        shutil.copytree(
            base, project, ignore=shutil.ignore_patterns("moderated.parquet", "curated.parquet", "rejected")
        )
        if not warm:
            shutil.rmtree(project / ".steep_cache", ignore_errors=True)
        stop = None
        params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
        if "Ray" in name:
            address, stop = _ray_cluster(work)
            overrides = {"common.executor": {"kind": "ray", "address": address}}
        for key, value in overrides.items():
            node = params
            *path, last = key.split(".")
            for k in path:
                node = node[k]
            node[last] = value
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        try:
            print(f"bytes check, {size} records: {name} ...", flush=True)
            seconds = {}
            for stage in ("moderate", "dedup"):
                seconds[stage] = run_stage(project, stage, project / "logs" / f"{stage}.log", env)["seconds"]
        finally:
            if stop is not None:
                stop()
        got = md5s(project)
        same = got == reference
        out["variants"][name] = {"identical": same, "seconds": seconds, **({} if same else {"md5": got})}
        if checkpoint is not None:
            checkpoint()
        print(f"  identical: {same} ({seconds})", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[55185])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--peer", help="a git revision to run side by side (the implementation to compare against)")
    ap.add_argument("--workers", type=int, help="common.workers for the checkout (default: params.yaml)")
    ap.add_argument("--set", action="append", default=[], help="params override key=value (YAML value)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", type=Path, help="keep the projects under this folder (default: a temporary one)")
    ap.add_argument(
        "--check-bytes",
        action="store_true",
        help="after the first size's run, rerun moderate and dedup under each variant (workers, embedding batch, "
        "warm cache, another CPU's kernels, Ray) and compare the md5 of every output",
    )
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="the byte checks to run")
    ap.add_argument(
        "--check-project",
        type=Path,
        help="run only the byte checks, against this project of an earlier run (its outputs are the reference); "
        "results go into --out's 'bytes' beside what is there",
    )
    ap.add_argument(
        "--rerun",
        type=Path,
        help="rerun --stages of this project of an earlier run (--keep) with this checkout's stages/: seconds, "
        "peak RSS by phase, and whether every output kept its md5; results go into --out's 'reruns'",
    )
    args = ap.parse_args(argv)
    if args.rerun:
        results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"runs": []}
        results.setdefault("reruns", {}).update(rerun(args.rerun, [s for s in STAGES if s in args.stages]))
        save(results, args.out)
        print(f"wrote {args.out}")
        return
    if not args.corpus.exists():
        raise SystemExit(f"corpus not found: {args.corpus} (the T0 file is ../shared/data/t0_train_50k.jsonl)")
    if args.check_project:
        results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {"runs": []}
        results.setdefault("bytes", {})
        size = scale_size(args.check_project)
        byte_checks(
            args.check_project, args.check_project.parent, size, results["bytes"], lambda: save(results, args.out),
            args.variants,
        )  # fmt: skip
        return
    overrides = dict(kv.split("=", 1) for kv in args.set)
    work = args.keep or Path(tempfile.mkdtemp(prefix="steep-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    peers = [("this checkout", ROOT)]
    if args.peer:
        peer_dir = work / "peer"
        if not peer_dir.exists():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(peer_dir), args.peer], check=True
            )
        peers.append((f"peer {args.peer}", peer_dir))
    results: dict[str, Any] = {"cpus": os.cpu_count(), "params_overrides": overrides, "runs": []}
    for size in args.sizes:
        corpus = build_corpus(args.corpus, size, work / f"corpus_{size}.jsonl", args.seed)
        for name, code_root in peers:
            # --set and --workers are this checkout's; a peer runs with its own params.yaml (its keys may differ)
            mine = code_root == ROOT
            project = make_project(
                code_root, corpus, work / f"{name.split()[0]}_{size}", overrides if mine else {},
                args.workers if mine else None,
            )  # fmt: skip
            (project / "logs").mkdir(exist_ok=True)
            run: dict[str, Any] = {"implementation": name, "records": size, "stages": {}}
            common = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8")).get("common", {})
            run["workers"] = common.get("workers", 1) or os.cpu_count()  # 0: every core; absent: one process
            for stage in args.stages:
                print(f"{name}, {size} records: {stage} ...", flush=True)
                r = run_stage(project, stage, project / "logs" / f"{stage}.log")
                r["records_per_s"] = round(r["metrics"].get("total", size) / max(r["seconds"], 1e-9), 1)
                r["phases"] = phase_lines(project / "logs" / f"{stage}.log")
                run["stages"][stage] = r
                print(f"  {r['seconds']} s, peak {r['peak_rss_gb']} GB, {r['records_per_s']} records/s", flush=True)
            run["total_seconds"] = round(sum(s["seconds"] for s in run["stages"].values()), 1)
            run["peak_rss_gb"] = max(s["peak_rss_gb"] for s in run["stages"].values())
            run["md5"] = md5s(project)
            results["runs"].append(run)
            save(results, args.out)  # after each run: a long benchmark stopped later keeps what it measured
            if args.check_bytes and code_root == ROOT and "bytes" not in results:
                results["bytes"] = {}
                byte_checks(project, work, size, results["bytes"], lambda: save(results, args.out), args.variants)
    print("\n| implementation | records | stage | seconds | peak RSS (GB) | records/s |\n|---|---:|---|---:|---:|---:|")
    for run in results["runs"]:
        for stage, r in run["stages"].items():
            print(
                f"| {run['implementation']} | {run['records']} | {stage} | {r['seconds']} | {r['peak_rss_gb']} |"
                f" {r['records_per_s']} |"
            )
        total, peak = run["total_seconds"], run["peak_rss_gb"]
        print(f"| {run['implementation']} | {run['records']} | **total** | {total} | {peak} | |")
    save(results, args.out)
    print(f"\nwrote {args.out}")


def rerun(project: Path, stages: Sequence[str]) -> dict[str, Any]:
    """Rerun `stages` of an earlier run's `project` with this checkout's ``stages/`` (same params, warm caches):
    per stage its seconds, peak RSS (and by phase), timing lines, and whether every output kept its md5."""
    before = md5s(project)
    shutil.rmtree(project / "stages")
    shutil.copytree(ROOT / "stages", project / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    out: dict[str, Any] = {}
    for stage in stages:
        print(f"rerun {project.name}: {stage} ...", flush=True)
        r = run_stage(project, stage, project / "logs" / f"{stage}_rerun.log")
        r["phases"] = phase_lines(project / "logs" / f"{stage}_rerun.log")
        r["records_per_s"] = round(r.pop("metrics").get("total", 0) / max(r["seconds"], 1e-9), 1)
        out[stage] = r
        print(f"  {r['seconds']} s, peak {r['peak_rss_gb']} GB", flush=True)
    after = md5s(project)
    out["same_md5"] = {path: before.get(path) == digest for path, digest in after.items()}
    print(f"  outputs with the earlier md5: {sum(out['same_md5'].values())} of {len(after)}", flush=True)
    return out


def scale_size(project: Path) -> int:
    """Records of an earlier run's project (from its pull metrics)."""
    return int(json.loads((project / "metrics" / "pull.json").read_text(encoding="utf-8"))["total"])


def save(results: dict[str, Any], path: Path) -> None:
    """Write the results so far (stage metrics left out: the projects keep them)."""
    out = json.loads(json.dumps(results))
    for run in out["runs"]:
        for stage in run["stages"].values():
            stage.pop("metrics", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def phase_lines(log: Path) -> list[str]:
    """The stage log's per-phase timing lines (records in N s, records/s; cleanlab; pairs; embeddings)."""
    keep = (" in ", "embeddings (", "pairs,", "distilling static embeddings:")
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
    return [ln for ln in lines if ln.startswith("steep") and any(k in ln for k in keep) and "params" not in ln]


if __name__ == "__main__":
    main()
