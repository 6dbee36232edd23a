"""``steep audit``: rerun a commit (or the working tree) in a clean clone and compare every output with its dvc.lock.

The reproducibility audit a colleague signs: the commit is cloned into a temporary folder, its pipeline rerun
with ``dvc repro --force`` from a cold cache (no ``.steep_cache``, a fresh static-embedding home; ``--warm`` lends
the project's), and each output of each stage that ran is compared with what the commit's ``dvc.lock`` and
``metrics/`` say:

- data stages (pull, moderate, dedup, generator, models, synthesize, template, tokenize): byte-identical, or the
  first differing records and fields are named (the commit's bytes come from the project's DVC cache);
- train: final, first and best losses within ``--loss-tolerance`` (relative), the same best step and step count;
- baseline and probe: the same forgetting and gain verdicts, every score within ``--score-tolerance``;
- report: identical, or within tolerance when its headline's verdicts are the same;
- the environment each side ran with (``metrics/environment.json``): another library or Python version is a
  failing ``environment differs``; other CPU kernels or another device are ``noted``.

Prints a table (stage, output, verdict, detail) and exits 0 only when every verdict holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from stages.commands import _compare as C
from stages.commands._records_diff import explain
from stages.core.io import StageError

_RAN = re.compile(r"Running stage '([^']+)'")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``audit`` subcommand's flags."""
    p = sub.add_parser(
        "audit",
        help="rerun a commit in a clean clone and compare every output with its dvc.lock",
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("rev", nargs="?", default="HEAD", help="the commit to audit (default HEAD)")
    p.add_argument("--workspace", action="store_true", help="audit the working tree, uncommitted edits included")
    p.add_argument("--warm", action="store_true", help="lend the project's .steep_cache and static tables")
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="rerun these (and what they need) only")
    p.add_argument("--loss-tolerance", type=float, default=0.01, help="train's losses, relative (default 0.01)")
    p.add_argument("--score-tolerance", type=float, default=0.02, help="probe scores, absolute (default 0.02)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set for the rerun")
    p.add_argument("--keep", type=Path, help="rerun in this folder and keep it (default: a temporary one, removed)")
    p.add_argument("--json", type=Path, help="also write the table here as JSON")
    return p


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StageError(f"git {' '.join(args)} in {root}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _setup_clone(root: Path, work: Path, rev: str, workspace: bool) -> Path:
    """A clean clone of `rev` (or of HEAD with the working tree's edits) in ``work/repo``; ../shared beside it."""
    sha = _git(root, "rev-parse", "--verify", f"{'HEAD' if workspace else rev}^{{commit}}")
    repo = work / "repo"
    _git(work, "clone", "--quiet", "--no-checkout", str(root), str(repo))
    _git(repo, "checkout", "--quiet", "--detach", sha)
    if workspace:
        changed = _git(root, "ls-files", "-z", "--modified", "--others", "--exclude-standard").split("\0")
        for rel in filter(None, changed):
            src, dst = root / rel, repo / rel
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        for rel in filter(None, _git(root, "ls-files", "-z", "--deleted").split("\0")):
            (repo / rel).unlink(missing_ok=True)
    shared = root.parent / "shared"
    if shared.is_dir() and not (work / "shared").exists():
        (work / "shared").symlink_to(shared)
    return repo


def _metrics(repo: Path) -> dict[str, Any]:
    """Every ``metrics/*.json`` of a checkout, by path relative to it."""
    return {
        p.relative_to(repo).as_posix(): json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))
    }


def _snapshot(repo: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The commit's side, read before the rerun overwrites it: dvc.lock, every metrics JSON, the environment."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8")) or {}
    metrics = {
        p.relative_to(repo).as_posix(): json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))
    }
    return lock.get("stages", {}), metrics, metrics.get("metrics/environment.json", {})


def _setup_env(root: Path, work: Path, repo: Path, warm: bool, extra: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1")
    if warm:
        if (root / ".steep_cache").is_dir():
            (repo / ".steep_cache").symlink_to(root / ".steep_cache")
    else:
        env["STEEP_CACHE_HOME"] = str(work / "cache-home")  # a cold static-embedding home too
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise StageError(f"--env {item!r}: give KEY=VALUE, e.g. --env ATEN_CPU_CAPABILITY=default")
        env[key] = value
    return env


def _rerun(repo: Path, env: dict[str, str], stages: list[str] | None, log_path: Path) -> list[str]:
    """``dvc repro --force [stages]`` in the clone, its output in `log_path`; the stages that ran, in order."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--force", *(stages or [])]
    ran: list[str] = []
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            m = _RAN.search(line)
            if m:
                ran.append(m.group(1))
                print(f"steep audit: running {m.group(1)} ({len(ran)})", file=sys.stderr, flush=True)
        code = proc.wait()
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
        raise StageError(f"dvc repro failed in the clean clone (exit {code}); its log: {log_path}\n{tail}")
    return ran


def compare(
    root: Path, repo: Path, ran: list[str], old: tuple[dict, dict, dict], loss_tol: float, score_tol: float
) -> list[C.Row]:
    """Every output of every stage that ran, against the commit's side `old` (lock stages, metrics, environment)."""
    old_lock, old_metrics, old_env = old
    new_lock = (yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8")) or {}).get("stages", {})
    new_metrics = _metrics(repo)
    cache = root / ".dvc" / "cache"

    def why(path: str, md5: str) -> str:
        if path in old_metrics and path in new_metrics:
            return C.json_diff(old_metrics[path], new_metrics[path])
        return explain(cache, repo, path, md5)

    rows: list[C.Row] = []
    for stage in ran:
        if stage not in old_lock:
            rows.append(C.Row(stage, "(stage)", "different", "not in the commit's dvc.lock"))
            continue
        a, b = C.outs(old_lock[stage]), C.outs(new_lock.get(stage, {}))
        md5s = {p: (a[p], b.get(p, "")) for p in a}
        kind = stage.split("@")[0]
        metrics_path = next((p for p in a if p.startswith("metrics/") and p.endswith(".json")), None)
        if kind == "train" and metrics_path:
            rows += C.train_rows(stage, old_metrics[metrics_path], new_metrics[metrics_path], md5s, loss_tol)
        elif kind in C.SCORED and metrics_path:
            rows += C.scored_rows(stage, old_metrics[metrics_path], new_metrics[metrics_path], md5s, score_tol)
        elif kind == "report":
            upstream_ok = all(r.holds for r in rows)
            same = {k: v for k, v in old_metrics.get("metrics/headline.json", {}).items() if k.endswith("verdict")}
            now = {k: v for k, v in new_metrics.get("metrics/headline.json", {}).items() if k.endswith("verdict")}
            ok = upstream_ok and same == now
            for path, (x, y) in sorted(md5s.items()):
                verdict = "identical" if x == y else ("within tolerance" if ok else "different")
                rows.append(
                    C.Row(stage, path, verdict, "" if x == y else ("same verdicts" if ok else C.json_diff(same, now)))
                )
        else:
            rows += C.data_rows(stage, md5s, why)
    # a stage's environment record is named after its --metrics file: only those of the stages that ran, not every
    # metrics file they write (report's headline, funnel, ... have no record of their own)
    new_env = new_metrics.get("metrics/environment.json", {})
    outs = {Path(o).stem for s in ran for o in C.outs(old_lock.get(s, {})) if o.startswith("metrics/")}
    rows += C.environment_rows(old_env, new_env, sorted(outs & set(new_env.get("stages", {}))))
    return rows


def run(args: argparse.Namespace) -> int:
    """Clone, rerun, compare, print the table; 0 when every verdict holds, 1 otherwise."""
    root = Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="steep-audit-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        repo = _setup_clone(root, work, args.rev, args.workspace)
        old = _snapshot(repo)
        env = _setup_env(root, work, repo, args.warm, args.env)
        ran = _rerun(repo, env, args.stages, work / "repro.log")
        rows = compare(root, repo, ran, old, args.loss_tolerance, args.score_tolerance)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    side = "the working tree" if args.workspace else args.rev
    print(f"steep audit of {side}: {len(ran)} stages rerun{' (warm cache)' if args.warm else ' from a cold cache'}")
    print(C.table(rows))
    if args.json:
        args.json.write_text(C.as_json(rows) + "\n", encoding="utf-8")
    failed = [r for r in rows if not r.holds]
    print(f"{len(rows) - len(failed)} of {len(rows)} hold" + (f"; {len(failed)} do not" if failed else ""))
    return 1 if failed else 0
