"""Verdicts a person gives on what curation did, and the precision they measure.

One engine for ``steep review`` (sample, score), the report (each rule's precision beside its counts) and
``benchmarks/moderation_precision.py``: the seeded stratified sample, the verdict files, the Wilson interval and the
test of a rule's precision against its bar.

A verdict file (``reviews/<name>.csv``, tracked by git) has the columns ``id,reason,verdict,note``: one row per
(record id, reason), the verdict ``right`` (the record really has the defect; the rewrite was due), ``wrong`` or
``skip`` (read, but not judged: it counts in no precision and is not drawn again), and a note in the reviewer's
own words. No record text goes in: the records may be third-party data, the file is committed.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from stages.core.io import StageError, atomic_outputs

VERDICTS = ("right", "wrong", "skip")
COLUMNS = ("id", "reason", "verdict", "note")
Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...: a two-sided 95% interval
ALPHA = 0.05  # the level of the precision test, after Holm's correction over the rules tested
Key = tuple[str, str]  # (record id, reason)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `k` successes in `n` trials (95% for the default `z`); (0, 1) when n is 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def p_below(k: int, n: int, bar: float) -> float:
    """One-sided exact binomial p-value of `k` right in `n` against "the precision is at least `bar`":
    P(X <= k) for X ~ Binomial(n, bar). Small: the rule is below its bar; 1.0 when n is 0."""
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) * bar**i * (1 - bar) ** (n - i) for i in range(k + 1)))


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment of `ps` (same order): each p-value corrected for the number of tests."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out = [1.0] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def detectable(n: int, bar: float, alpha: float = ALPHA) -> float | None:
    """The highest precision a sample of `n` can tell from `bar` at level `alpha` (uncorrected): the largest k/n
    whose one-sided p-value is at most `alpha`. None: no outcome of `n` verdicts would show the rule below."""
    best = None
    for k in range(n + 1):
        if p_below(k, n, bar) > alpha:
            break
        best = k / n
    return best


@dataclass(frozen=True)
class Precision:
    """A reason's verdicts against its bar: ``right`` of ``n`` judged (skips left out), the Wilson interval, the
    one-sided p-value of "at least `bar`" (Holm-corrected when set by :func:`assess`), and the highest precision
    a sample of ``n`` could tell from the bar."""

    reason: str
    n: int
    right: int
    bar: float
    p: float = 1.0

    @property
    def precision(self) -> float | None:
        return self.right / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.right, self.n)

    @property
    def below(self) -> bool:
        """Measured below the bar (the point estimate; :attr:`p` says whether the sample shows it)."""
        return self.n > 0 and self.right / self.n < self.bar

    @property
    def detectable(self) -> float | None:
        return detectable(self.n, self.bar)


def assess(verdicts: Mapping[str, list[str]], bars: Mapping[str, float]) -> dict[str, Precision]:
    """Per reason of `verdicts` (reason -> its ``right``/``wrong`` verdicts): precision against `bars[reason]`, the
    p-values Holm-corrected over the reasons with at least one verdict. Sorted by reason."""
    out = {r: Precision(r, len(v), v.count("right"), bars[r]) for r, v in sorted(verdicts.items()) if r in bars}
    tested = [r for r, p in out.items() if p.n]
    for r, p in zip(tested, holm([p_below(out[r].right, out[r].n, out[r].bar) for r in tested]), strict=True):
        out[r] = Precision(r, out[r].n, out[r].right, out[r].bar, p)
    return out


def sample_ids(ids: Iterable[str], n: int, seed: int, reason: str) -> list[str]:
    """A seeded sample of `n` of `ids` (all when fewer), sorted: the same ids, seed and reason give the same sample,
    and each reason draws on its own (a stratum per reason)."""
    pool = sorted(set(ids))
    return pool if len(pool) <= n else sorted(random.Random(f"{seed}:{reason}").sample(pool, n))


def read_verdicts(path: Path, *, require: tuple[str, ...] = ("id", "reason", "verdict")) -> dict[Key, dict[str, str]]:
    """The marked rows of a verdict file or a marked review sheet: {(id, reason): {verdict, note}}.

    Rows with an empty verdict are not marked and left out; a verdict is read case-insensitively.

    Raises:
        StageError: a missing column, a verdict not in :data:`VERDICTS`, or one (id, reason) marked twice
            differently, naming the file and line.
    """
    out: dict[Key, dict[str, str]] = {}
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in require if c not in (reader.fieldnames or [])]
            if missing:
                raise StageError(
                    f"{path}: no column {missing}; expected a CSV with the columns {list(COLUMNS)} (got "
                    f"{reader.fieldnames}), as `steep review sample` writes it"
                )
            for line, row in enumerate(reader, start=2):
                verdict = (row.get("verdict") or "").strip().lower()
                if not verdict:
                    continue
                if verdict not in VERDICTS:
                    raise StageError(
                        f"{path}:{line}: verdict {row['verdict']!r}; write one of {list(VERDICTS)} (or leave it empty)"
                    )
                key = (row["id"].strip(), row["reason"].strip())
                mark = {"verdict": verdict, "note": " ".join((row.get("note") or "").split())}
                if key in out and out[key]["verdict"] != verdict:
                    raise StageError(f"{path}:{line}: {key[0]} {key[1]} is marked {out[key]['verdict']} above")
                out[key] = mark
    except (OSError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: cannot read it ({e}); give a verdict CSV") from None
    return out


def read_verdict_dir(folder: Path) -> dict[Key, dict[str, str]]:
    """Every verdict in the ``*.csv`` files of `folder`, read in name order (a later file's verdict on the same
    (id, reason) wins); empty when the folder is not there."""
    out: dict[Key, dict[str, str]] = {}
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        out.update(read_verdicts(path))
    return out


def merge_verdicts(path: Path, marked: Mapping[Key, dict[str, str]]) -> tuple[int, int]:
    """Merge `marked` into the verdict file `path` (created if absent), rows sorted by (reason, id); a new verdict
    on an (id, reason) already there replaces it. Written atomically. Returns (added, changed)."""
    rows = read_verdicts(path) if path.exists() else {}
    added = sum(1 for k in marked if k not in rows)
    changed = sum(1 for k, v in marked.items() if k in rows and rows[k] != v)
    rows.update(marked)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs(path) as (tmp,), tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for (rid, reason), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            w.writerow([rid, reason, v["verdict"], v["note"]])
    return added, changed


def judged(marks: Mapping[Key, dict[str, str]], keys: Iterable[Key] | None = None) -> dict[str, list[str]]:
    """reason -> its ``right``/``wrong`` verdicts (skips left out), of the (id, reason) in `keys` only when given
    (the catches of the run at hand: a verdict on a record the rule no longer catches does not count)."""
    wanted = None if keys is None else set(keys)
    out: dict[str, list[str]] = {}
    for key, mark in sorted(marks.items()):
        if mark["verdict"] != "skip" and (wanted is None or key in wanted):
            out.setdefault(key[1], []).append(mark["verdict"])
    return out
