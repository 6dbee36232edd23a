"""Synthetic pairs against the references, the curated records and each other: dedup's methods, for synthesize.

A shared module, not a stage: the synthesize stage runs :func:`decontaminate` on the pairs that passed its own
filters, so that a generated pair that restates a held-out probe item, copies a curated record or another generated
pair does not reach training (synthesize runs after dedup, which never sees its pairs). The methods and thresholds
are dedup's (:mod:`stages.curate.dedup`), in its order, with its reason codes:

1. ``exact_duplicate``: the pair's normalized text (:func:`stages.curate.minhash.exact_key`) equals a curated
   record's or an earlier pair's.
2. ``minhash_duplicate``: MinHash + LSH with ``dedup.minhash`` (shingles, permutations seeded with ``common.seed``,
   ``jaccard_threshold``, and ``output_jaccard_threshold`` on the outputs when both have one) against the curated
   records and the earlier pairs; matches chain (union-find), curated records come first, so a pair survives only
   when its cluster holds no curated record and no earlier pair. With ``dedup.minhash.action: flag`` the pair stays,
   flagged.
3. ``semantic_duplicate``: cosine of the grid sentence embeddings (``common.embedding``, through dedup's cache) at
   least ``dedup.semantic.cosine_threshold``, with ``dedup.semantic``'s exact or IVF pass, against the curated
   records and the earlier pairs, chained as MinHash's matches; ``dedup.semantic.action: flag`` (the default: the
   static embeddings' threshold does not reach 0.9 precision on T0) flags the pair, ``drop`` drops it. Skipped
   when ``dedup.semantic.enable`` is false.
4. ``reference_overlap``: the exact and MinHash checks of dedup's reference pass
   (:func:`stages.curate.references.lexical_overlaps`) against every text of ``dedup.references``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stages.core.params.dedup import MinHash as MinHashParams
from stages.core.params.dedup import Semantic
from stages.core.records import Record, record_text
from stages.curate.clustering import clusters
from stages.curate.minhash import NearDuplicateIndex, exact_key, signatures_of
from stages.curate.references import ReferenceText, lexical_overlaps
from stages.curate.semantic import cosine_pairs

REASONS = ("exact_duplicate", "minhash_duplicate", "semantic_duplicate", "reference_overlap")


@dataclass
class Decontaminated:
    """What :func:`decontaminate` found: drops and flags by the pair's index in its input."""

    dropped: dict[int, tuple[str, str]] = field(default_factory=dict)  # pair index -> (reason, detail)
    flagged: dict[int, dict[str, str]] = field(default_factory=dict)  # pair index -> {reason: detail}


def decontaminate(
    pairs: Sequence[Record],
    curated: Sequence[Record],
    references: list[ReferenceText],
    minhash: MinHashParams,
    seed: int,
    semantic: Semantic | None = None,
    vectors: np.ndarray | None = None,
) -> Decontaminated:
    """Check `pairs` (in the order they were kept) against `curated`, `references` and each other.

    Args:
        pairs: the synthetic pair records, earliest first (an earlier pair survives a later copy).
        curated: the curated records (dedup's output); never dropped here, they only make pairs duplicates.
        references: the texts of ``dedup.references``.
        minhash: ``dedup.minhash``.
        seed: ``common.seed`` (MinHash permutations, as in dedup).
        semantic: ``dedup.semantic`` (None: no semantic pass).
        vectors: the grid embeddings of `curated` then `pairs`, one row each (needed when `semantic` is enabled).

    Returns:
        The dropped pairs (a pair is dropped once, under the first reason that applies) and the flagged ones.
    """
    out = Decontaminated()
    if not pairs:
        return out
    records = [*curated, *pairs]  # index: curated first, then the pairs in their order
    n_cur = len(curated)
    texts = [record_text(r) for r in records]
    keys = [exact_key(t) for t in texts]
    ids = [r["id"] for r in records]

    # 1. exact: against every curated record and the earlier surviving pairs
    first: dict[str, int] = {}
    for i in range(n_cur):
        first.setdefault(keys[i], i)
    for i in range(n_cur, len(records)):
        j = first.setdefault(keys[i], i)
        if j != i:
            where = "curated record" if j < n_cur else "synthetic pair"
            out.dropped[i - n_cur] = ("exact_duplicate", f"duplicate of {where} {ids[j]}")
    alive = [i for i in range(n_cur, len(records)) if i - n_cur not in out.dropped]

    # 2. MinHash + LSH over curated records and pairs; only matches that touch a pair count
    sigs, has_text = signatures_of(texts, minhash, seed)
    out_sigs, has_output = signatures_of([r["output"] for r in records], minhash, seed)
    index = NearDuplicateIndex.build_from(sigs, has_text, minhash, seed)
    members = [i for i in range(n_cur) if has_text[i]] + [i for i in alive if has_text[i]]
    found = [
        (i, j, s)
        for i, j, s in index.pairs(np.array(members, dtype=np.int64))
        if j >= n_cur  # i < j: a match with at least one pair
        and (
            not (has_output[i] and has_output[j])
            or (out_sigs[i] == out_sigs[j]).mean() >= minhash.output_jaccard_threshold
        )
    ]
    _chained(out, members, found, ids, n_cur, ("minhash_duplicate", "jaccard", minhash.action))
    alive = [i for i in alive if i - n_cur not in out.dropped]

    # 3. semantic: exact cosines of the embeddings, over curated records and pairs; only matches that touch a pair
    if semantic is not None and semantic.enable:
        if vectors is None or len(vectors) != len(records):
            got = "none" if vectors is None else len(vectors)
            raise ValueError(f"semantic decontamination needs {len(records)} vectors (curated, then pairs), got {got}")
        members = [i for i in range(n_cur) if texts[i].strip()] + [i for i in alive if texts[i].strip()]
        near = cosine_pairs(vectors[members], semantic.cosine_threshold, semantic, seed)
        found = [(members[a], members[b], c) for a, b, c in near if members[b] >= n_cur]
        _chained(out, members, found, ids, n_cur, ("semantic_duplicate", "cosine", semantic.action))
        alive = [i for i in alive if i - n_cur not in out.dropped]

    # 4. references: exact and MinHash, as dedup's reference pass
    for i, detail in lexical_overlaps(keys, alive, references, index, minhash, seed).items():
        out.dropped[i - n_cur] = ("reference_overlap", detail)
    return out


def _chained(
    out: Decontaminated,
    members: list[int],
    found: list[tuple[int, int, float]],
    ids: list[str],
    n_cur: int,
    method: tuple[str, str, str],
) -> None:
    """Cluster `members` by the matches `found` (union-find, the earliest record survives: curated records come
    first) and drop or flag every pair that is not its cluster's survivor; `method`: (reason, score name, action)."""
    reason, score, action = method
    _, matched = clusters(members, found, range(len(ids)))
    for i, match in sorted(matched.items()):
        if i < n_cur:
            continue
        where = "curated record" if match.survivor < n_cur else "synthetic pair"
        detail = f"duplicate of {where} {ids[match.survivor]} ({score} {match.score:.3f})"
        if action == "flag":
            out.flagged.setdefault(i - n_cur, {})[reason] = detail
        else:
            out.dropped[i - n_cur] = (reason, detail)
