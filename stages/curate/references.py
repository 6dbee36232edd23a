"""Dedup's reference pass: the held-out reference texts, and the records that overlap them.

A shared module of the dedup stage (:mod:`stages.curate.dedup`): the reference files of ``dedup.references``
are read here, and each remaining record is compared with every reference text by the stage's three methods
(exact key, MinHash, cosine), with the same thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.dedup import Dedup, Reference
from stages.core.params.dedup import MinHash as MinHashParams
from stages.core.records import clean_text
from stages.curate.embed import cosine, embed
from stages.curate.minhash import NearDuplicateIndex, exact_key, normalize_text, signatures_of

# Records compared with the reference texts at once: (512, R) float64 similarities.
COSINE_CHUNK_ROWS = 512


@dataclass(frozen=True)
class ReferenceText:
    """One text of a reference file: where it comes from (as written in params) and its text."""

    path: str
    line: int
    text: str


def read_references(refs: Sequence[Reference]) -> list[ReferenceText]:
    """Read every reference JSONL file; each line's `fields` joined by blank lines make its text.

    Raises:
        StageError: a file is missing, a line is not a JSON object, or lacks a field / has no text.
    """
    out: list[ReferenceText] = []
    for n, ref in enumerate(refs):
        where = f"params.yaml dedup.references[{n}]"
        expected = "one JSON object per line with string fields " + ", ".join(repr(f) for f in ref.fields)
        fix = f"it is listed in {where}.path: fix the path (relative to the project root) or remove the entry"
        for lineno, obj in _io.read_jsonl(ref.path, expected, label="reference file", fix=fix):
            if not isinstance(obj, dict):
                raise StageError(f"{ref.path}, line {lineno}: expected {expected}, got a JSON {type(obj).__name__}")
            missing = [f for f in ref.fields if f not in obj]
            if missing:
                raise StageError(
                    f"{ref.path}, line {lineno}: missing field(s) {missing}; expected {expected}, got keys "
                    f"{sorted(obj)} (or change {where}.fields)"
                )
            bad = [f for f in ref.fields if not isinstance(obj[f], str)]
            if bad:
                raise StageError(f"{ref.path}, line {lineno}: field(s) {bad} are not strings; expected {expected}")
            text = "\n\n".join(t for t in (clean_text(obj[f]) for f in ref.fields) if t)
            if not normalize_text(text):
                raise StageError(
                    f"{ref.path}, line {lineno}: no text in fields {list(ref.fields)}; expected {expected}"
                )
            out.append(ReferenceText(ref.path, lineno, text))
    return out


def reference_overlaps(
    keys: list[str],
    alive: list[int],
    references: list[ReferenceText],
    index: NearDuplicateIndex,
    emb: np.ndarray,
    emb_rows: dict[int, int],
    params: _params.Scoped,
    cache_dir: str | Path,
) -> dict[int, str]:
    """Records among `alive` that overlap a reference text: index -> detail (file:line, method, score).

    The first method that matches wins (exact, then MinHash, then cosine); within a method, the closest
    reference, then the first in file order.
    """
    if not references:
        return {}
    cfg: Dedup = params.dedup
    found = lexical_overlaps(keys, alive, references, index, cfg.minhash, params.common.seed)
    where = [f"{r.path}:{r.line}" for r in references]
    # cosine
    if cfg.semantic.enable:
        rest = [i for i in alive if i not in found and i in emb_rows]
        if rest:
            ref_emb = embed([r.text for r in references], params.common.embedding, cache_dir)
            rows = emb[[emb_rows[i] for i in rest]]
            for lo in range(0, len(rest), COSINE_CHUNK_ROWS):
                sims = cosine(rows[lo : lo + COSINE_CHUNK_ROWS], ref_emb)  # (C, R), exact
                arg = sims.argmax(axis=1)  # first maximum: the earliest reference on ties
                for c, r in enumerate(arg):
                    score = float(sims[c, r])
                    if score >= cfg.semantic.cosine_threshold:
                        found[rest[lo + c]] = f"overlaps {where[r]} (semantic, cosine {score:.3f})"
    return found


def lexical_overlaps(
    keys: list[str],
    alive: list[int],
    references: list[ReferenceText],
    index: NearDuplicateIndex,
    minhash: MinHashParams,
    seed: int,
) -> dict[int, str]:
    """The exact and MinHash part of :func:`reference_overlaps` (synthesize runs it without embeddings).

    Args:
        keys: exact keys (:func:`stages.curate.minhash.exact_key`) of every indexed record.
        alive: the indices of `index` to check.
        references: the reference texts.
        index: the records' LSH index (signatures of ``minhash`` params and ``seed``).
        minhash: ``dedup.minhash``; seed: ``common.seed``.

    Returns:
        index -> detail (file:line, method, score): exact first, then MinHash (the closest reference, then the
        first in file order).
    """
    found: dict[int, str] = {}
    where = [f"{r.path}:{r.line}" for r in references]
    # exact
    ref_by_key: dict[str, int] = {}
    for r, ref in enumerate(references):
        ref_by_key.setdefault(exact_key(ref.text), r)
    for i in alive:
        if keys[i] in ref_by_key:
            found[i] = f"overlaps {where[ref_by_key[keys[i]]]} (exact)"
    # MinHash: query the records' LSH index with each reference signature
    ref_sigs, ref_has = signatures_of([r.text for r in references], minhash, seed)
    members = np.array([i for i in alive if i not in found and index.has_text[i]], dtype=np.int64)
    best: dict[int, tuple[float, int]] = {}
    for r in np.flatnonzero(ref_has):
        for i, score in index.matches(ref_sigs[r], members):
            if i not in best or score > best[i][0]:
                best[i] = (score, int(r))
    for i, (score, r) in best.items():
        found[i] = f"overlaps {where[r]} (minhash, jaccard {score:.3f})"
    return found
