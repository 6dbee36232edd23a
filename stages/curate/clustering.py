"""Union-find clustering of matching pairs, with the earliest record of a cluster as its survivor.

A shared module, not a stage: the dedup stage clusters the pairs of each method (exact, MinHash, cosine)
with it, and ``benchmarks/dedup_near_duplicates.py`` scores its clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Match:
    """Why a record left: the survivor of its cluster and its own closest match in the cluster."""

    survivor: int
    neighbor: int
    score: float


def clusters(
    members: Sequence[int], pairs: Sequence[tuple[int, int, float]], order: Sequence[Any]
) -> tuple[dict[int, int], dict[int, Match]]:
    """Union-find over `pairs` among `members`; the survivor of a cluster is its member of smallest `order`.

    Args:
        members: indices of the records this method sees.
        pairs: matches ``(i, j, score)`` between members.
        order: sort key of every record index (input position); decides survivors and ties.

    Returns:
        ``(survivor_of, dropped)``: the survivor's index for every member (itself when alone), and for
        every member that is not a survivor, its :class:`Match` (closest match: highest score, then
        earliest in input order).
    """
    parent = {m: m for m in members}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best: dict[int, tuple[float, int]] = {}
    for i, j, score in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            # the root is always the earliest record of the component
            if order[rj] < order[ri]:
                ri, rj = rj, ri
            parent[rj] = ri
        for a, b in ((i, j), (j, i)):
            cur = best.get(a)
            if cur is None or score > cur[0] or (score == cur[0] and order[b] < order[cur[1]]):
                best[a] = (score, b)
    survivor_of = {m: find(m) for m in members}
    dropped = {
        m: Match(s, best[m][1], best[m][0]) for m, s in survivor_of.items() if s != m
    }  # a non-survivor always has an edge
    return survivor_of, dropped
