"""The comparisons of ``steep audit``: a commit's dvc.lock and metrics against a rerun's, one verdict per output.

Pure functions of the two sides' lock entries, metrics and environment records (plus a reader of the original
bytes, for naming the first differing records). Verdicts: ``identical`` (same md5), ``within tolerance`` (train's
losses, probe's scores: the stated tolerance, the same verdicts), ``different``; environment rows say
``environment differs`` (a library or Python version: the audit fails) or ``noted`` (CPU kernels, device:
expected across machines).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DATA = {"pull", "moderate", "dedup", "generator", "models", "synthesize", "template", "tokenize"}
SCORED = {"baseline", "probe"}
# the loss keys of metrics/train_<v>.json, compared relatively; the counts must be equal
LOSSES = ("train_loss", "eval_loss", "first_eval_loss")
COUNTS = ("best_step", "steps", "stopped_early")
HOLDS = {"identical", "within tolerance", "noted"}


@dataclass(frozen=True)
class Row:
    """One line of the audit table."""

    stage: str
    output: str
    verdict: str
    detail: str = ""

    @property
    def holds(self) -> bool:
        """Whether this verdict lets the audit pass."""
        return self.verdict in HOLDS


def outs(lock_stage: dict[str, Any]) -> dict[str, str]:
    """path -> md5 of a dvc.lock stage entry's outputs."""
    return {o["path"]: o.get("md5", "") for o in lock_stage.get("outs", [])}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): value}


def json_diff(old: Any, new: Any, limit: int = 3) -> str:
    """The first `limit` keys whose values differ between two JSON values, as ``key: old -> new``."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; ... {len(keys) - limit} more" if len(keys) > limit else "")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def train_rows(
    stage: str, old: dict[str, Any], new: dict[str, Any], md5s: dict[str, tuple[str, str]], tol: float
) -> list[Row]:
    """train@<v>: the adapter and curves hold when every loss is within `tol` relative and the counts are equal."""
    worst = max((_rel(float(old[k]), float(new[k])) for k in LOSSES if k in old and k in new), default=0.0)
    counts = [k for k in COUNTS if old.get(k) != new.get(k)]
    losses = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in LOSSES if k in old)
    ok = worst <= tol and not counts
    detail = f"losses within {tol:.0%} (largest relative difference {worst:.2e})" if ok else f"{losses}"
    if counts:
        detail += "; differ: " + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in counts)
    rows = []
    for path, (a, b) in sorted(md5s.items()):
        if a == b:
            rows.append(Row(stage, path, "identical"))
        else:
            rows.append(Row(stage, path, "within tolerance" if ok else "different", detail))
    return rows


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in _flat(metrics).items() if isinstance(v, float | int) and not isinstance(v, bool)}


def scored_rows(
    stage: str, old: dict[str, Any], new: dict[str, Any], md5s: dict[str, tuple[str, str]], tol: float
) -> list[Row]:
    """baseline/probe@<v>: the same forgetting/gain verdicts, and every score within `tol` (absolute)."""
    verdict_keys = ("forgetting", "gain")
    flips = [
        f"{task}.{k}: {old[task].get(k)} -> {new.get(task, {}).get(k)}"
        for task in sorted(old)
        if isinstance(old[task], dict)
        for k in verdict_keys
        if old[task].get(k) != new.get(task, {}).get(k)
    ]
    a, b = _scores(old), _scores(new)
    a = {k: v for k, v in a.items() if k.rsplit(".", 1)[-1] not in verdict_keys}
    gaps = {k: abs(a[k] - b.get(k, float("inf"))) for k in a}
    worst_key = max(gaps, key=lambda k: gaps[k], default=None)
    worst = gaps[worst_key] if worst_key else 0.0
    ok = not flips and worst <= tol
    if ok:
        detail = f"same verdicts; scores within {tol} (largest difference {worst:.2e}, {worst_key})"
    else:
        detail = "; ".join(flips) or f"{worst_key}: {a.get(worst_key)} -> {b.get(worst_key)} (tolerance {tol})"
    return [
        Row(
            stage,
            path,
            "identical" if x == y else ("within tolerance" if ok else "different"),
            "" if x == y else detail,
        )
        for path, (x, y) in sorted(md5s.items())
    ]


def data_rows(stage: str, md5s: dict[str, tuple[str, str]], explain: Callable[[str, str], str]) -> list[Row]:
    """A data stage: every output byte-identical; a difference is explained by `explain(path, old_md5)`."""
    return [
        Row(stage, path, "identical") if a == b else Row(stage, path, "different", explain(path, a))
        for path, (a, b) in sorted(md5s.items())
    ]


def environment_rows(old: dict[str, Any], new: dict[str, Any], stages: list[str]) -> list[Row]:
    """What the two sides ran with, per stage that ran: libraries and Python fail the audit, kernels are noted."""
    from stages.core.environment import stage_packages

    rows = []
    for name in stages:
        o, n = old.get("stages", {}).get(name), new.get("stages", {}).get(name)
        if o is None or n is None:
            rows.append(Row(name, "environment.json", "noted", "no environment record on the commit's side"))
            continue
        po, pn = stage_packages(old, name), stage_packages(new, name)
        libs = [
            f"{p} {po.get(p, 'none')} -> {pn.get(p, 'none')}"
            for p in sorted(set(po) | set(pn))
            if po.get(p) != pn.get(p)
        ]
        if o.get("python") != n.get("python"):
            libs.insert(0, f"python {o.get('python')} -> {n.get('python')}")
        if libs:
            rows.append(
                Row(
                    name,
                    "environment.json",
                    "environment differs",
                    "; ".join(libs[:4]) + (f"; ... {len(libs) - 4} more" if len(libs) > 4 else ""),
                )
            )
        kernels = [
            f"{k} {o.get(k)} -> {n.get(k)}" for k in ("cpu_capability", "device", "platform") if o.get(k) != n.get(k)
        ]
        if kernels:
            rows.append(Row(name, "environment.json", "noted", "; ".join(kernels)))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| stage | output | verdict | detail |", "|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.output} | {r.verdict} | {r.detail.replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def as_json(rows: list[Row]) -> str:
    """The rows as JSON (a list of objects), for tools."""
    return json.dumps([r.__dict__ for r in rows], indent=1)
