"""Moderate: drop defective records, blank placeholder inputs, redact PII, score records with cleanlab.

Inputs: ``--in`` the pulled records (``data/pulled``, one Parquet file per source); the embedding
cache ``--cache`` (``.steep_cache/embeddings``; moderate fills it, dedup reads it back).
Outputs: ``--out`` the kept records (``data/moderated.parquet``), ``--rejects`` the dropped ones with
stage, reason and detail (``data/rejected/moderate.parquet``), ``--metrics`` counts
(``metrics/moderate.json``).
Run: ``dvc repro moderate``.

The rules are small pure functions ``(record, cfg) -> (keep, reason, detail)``, datatrove style, applied
in this order. Each acts as ``moderate.actions`` says: ``drop`` (the first dropping rule rejects the record
under its reason code), ``flag`` (the record stays; ``meta.moderate.flags`` holds the reason and detail and
``metrics`` count ``flagged_<reason>``) or ``off``. A rule drops by default only where its precision on real
data nobody here wrote is at least 0.9 (``benchmarks/moderation_precision.py``; README's moderation table):

==================== ======================== ======================================================================
rule / reason        applies to               catches
==================== ======================== ======================================================================
control_characters   every text               a C0/C1 control character other than tab, newline, CR (mojibake)
empty_output         output, assistant turns  the text is one of ``empty_output_values`` ("", "N/A", ...), or holds
                                              a ``placeholder_output_patterns`` tag ("<No Output>" anywhere); a
                                              conversation without an assistant turn
too_short            instruction, document    instruction < ``min_instruction_chars``, text < ``min_document_chars``
too_long             every text               output > ``max_output_chars``, text > ``max_document_chars``; any
                                              instruction, input, output or turn > ``max_field_chars``, checked
                                              before anything else reads the record (a 20 MB field costs nothing)
unseen_reference     request, input, output   a ``unseen_reference_patterns`` match in the request (short
                                              paragraphs; not in carried material, not in quotes, a URL not when
                                              the task is about the URL, none in a code task); an input or output
                                              that is only a link
merged_instructions  instruction/input/output a second "Instruction:" block with its "Output:"/"Response:", or an
                                              "Instruction:" header inside the output
canned_response      output, assistant turns  a ``canned_patterns`` match ("As an AI language model", ...), not one
                                              the request holds, nor in an AI role-play (``canned_task_patterns``)
truncated_output     output, assistant turns  >= ``min_words_truncation_check`` words ending inside an open code
                                              fence, on a comma/colon/dash/open bracket, or on "the"/"and"/...;
                                              not ";" (code), emoticons, list values, forms, mirrored material
repetitive           output, document         Gopher's repetition rules and thresholds (``repetition``), on texts of
                                              >= ``repetition.min_words`` words of prose (code, lists, tables,
                                              key-value lines, JSON left out; verse by back-to-back repeats only)
wrong_language       the request              py3langid's top language for the request without its quoted
                                              material not in ``language.allowed`` with probability >=
                                              ``min_confidence``, and no plain sentence of it in an allowed one
toxic                output, assistant turns, alt-profanity-check probability > ``toxicity.max_probability`` on a
                     document paragraphs     text with ``abuse_patterns`` (strong profanity, slurs, insults), unless
                                              the instruction asks to handle offensive text (``task_patterns``)
pii_<entity>         every text               ``pii.action: drop`` drops, ``flag`` flags; ``redact`` rewrites spans
pii_subject          every text               a flag: the task is about the entity ("format this phone number"), so
                                              the record is left as it is
cleanlab_outlier     the record's embedding   only with ``cleanlab.enable_drop_outliers``
cleanlab_near_dup... the record's embedding   a flag in meta (``is_near_duplicate``, ``near_duplicate_of``)
cleanlab_label_issue the record's embedding   only with ``cleanlab.enable_drop_label_issues``
==================== ======================== ======================================================================

"instruction" rows mean the instruction and qa kinds (qa's question is its instruction). Conversations get
the rules on their turns; documents get control characters, length, repetition, language, toxicity, PII.
The rules run record by record in fixed batches (``RULES_BATCH_RECORDS``) across ``common.workers`` processes,
or as tasks on a Ray cluster (``common.executor``; :mod:`stages.core.executor`); the results come back in input
order, so the output is the same bytes for any worker count and either executor.

Normalizations keep the record and are written into its meta: line breaks are written ``\\n`` (``\\r\\n`` and a
lone ``\\r``, e.g. inside a quoted CSV field; ``normalized_line_endings``); mojibake is repaired with ftfy (encoding
fixes only, ``fix_encoding``; ``normalized_encoding``); a placeholder input (``<noinput>``, "N/A",
per ``noinput_placeholders``) is blanked (``normalized_noinput``); with ``pii.action: redact`` each span that
is plausibly a real person's data is replaced by ``<EMAIL>``, ``<PHONE>``, ``<CREDIT_CARD>``, ``<IP_ADDRESS>``
or ``<API_KEY>`` (``redacted_pii_<entity>``, counted per record); :mod:`stages.curate.pii` says what is left
alone (years, measurements, example domains, documentation IPs, fictitious numbers, ...).

Cleanlab: the kept records are embedded (``common.embedding``, through the shared cache) and each source
is checked on its own, since a source is one distribution and a small source mixed into a large one would
look like a cloud of outliers for its kind alone: Datalab's outlier check (``outlier_k``,
``outlier_threshold``) and near-duplicate check (``near_duplicate_k``, ``near_duplicate_threshold``) on every
source with at least ``cleanlab.min_records`` records, and its label check on the records of a source that
carry ``meta.label`` (pull's ``label_field``), kept only where the labels' k-NN vote tells them apart
(``min_label_vote_accuracy``). Scores go into ``meta.moderate.cleanlab``, rounded to 6 decimals; a record is
dropped on them only when ``enable_drop_*`` says so (near-duplicates are flagged only: dedup drops). The
thresholds were set by reading flags on real data (``benchmarks/cleanlab_calibration.py``). Cleanlab gets
the grid vectors of :mod:`stages.curate.embed` (the same bytes on every CPU) in float64, so its distances
differ between BLAS kernels by ~1e-16 only and the 6-decimal scores, ~1e6 times coarser, are the same on
every CPU.

Every kept record gets ``meta["moderate"] = {"passed": [rules it passed], "flags": {reason: detail},
"normalized": [...],
"redacted": {entity: spans}, "cleanlab": {...}}``. Output rows are sorted by id; the same inputs and params
give the same bytes.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.executor import imap_batches
from stages.core.params.common import Embedding, Executor
from stages.core.params.moderate import Cleanlab, Moderate
from stages.core.records import (
    REJECT_SCHEMA,
    Record,
    RecordSpool,
    RecordWriter,
    iter_records,
    order_key,
    rebatched,
    record_count,
    record_files,
    record_text,
)
from stages.curate import cleanlab_checks
from stages.curate.embed import Embedder, embed
from stages.curate.rules import RULES, check_records

NAME = "moderate"  # in the rejects' stage column
STAGE = cli.Stage(
    params=("common.seed", "common.workers", "common.executor", "common.embedding", "moderate"),
    inputs={"in": "pulled records (directory of parquet)"},
    outputs={"out": "kept records (parquet)", "rejects": "rejected records (parquet)"},
    options={"cache": "embedding cache directory (shared by moderate and dedup)"},
)
PARAMS = list(STAGE.params)

log = logging.getLogger("steep.moderate")

# Records per batch of the rules pass (a task of a worker process or of a Ray task); fixed, so batches do not
# depend on the worker count. ~1.5 s of CPU per batch on the T0 corpus (~3 ms a record): few enough tasks
# that sending them costs little (111 on its 55k records), enough to keep dozens of workers busy.
RULES_BATCH_RECORDS = 500

# --- cleanlab -------------------------------------------------------------------------------------


def cleanlab_scores(
    records: list[Record], cfg: Cleanlab, *, seed: int, embedding: Embedding, cache_dir: str | Path
) -> dict[str, int]:
    """Embed `records` and write cleanlab's scores into their ``meta.moderate.cleanlab`` (in place).

    The checks are :func:`stages.curate.cleanlab_checks.cleanlab_scores` (per source, in the order given).
    Returns the counts of flags.
    """
    if not cfg.enable or not records:
        return dict.fromkeys(cleanlab_checks.COUNTS, 0)
    # (N, D), unit norm; cache hits are logged, not put in metrics (they depend on the cache, not the data)
    vectors = embed([record_text(r, embedding.fields) for r in records], embedding, cache_dir)
    scores, counts = cleanlab_checks.cleanlab_scores(
        vectors,
        [r["source"] for r in records],
        [r["meta"].get("label") for r in records],
        [r["id"] for r in records],
        cfg,
        seed=seed,
    )
    for r, s in zip(records, scores, strict=True):
        r["meta"]["moderate"]["cleanlab"].update(s)
    return counts


# --- the whole set --------------------------------------------------------------------------------


def reason_codes(cfg: Moderate) -> list[str]:
    """Every reason code this configuration can drop a record for (each gets a metric, zero or not)."""
    codes = [name for name, _, _ in RULES if cfg.actions[name] == "drop"]
    if cfg.pii.action == "drop":
        codes += [f"pii_{e}" for e in cfg.pii.entities]
    if cfg.cleanlab.enable and cfg.cleanlab.enable_drop_outliers:
        codes.append("cleanlab_outlier")
    if cfg.cleanlab.enable and cfg.cleanlab.enable_drop_label_issues:
        codes.append("cleanlab_label_issue")
    return codes


def flag_codes(cfg: Moderate) -> list[str]:
    """Every reason code this configuration can flag a record for (kept, with the reason in meta)."""
    codes = [name for name, _, _ in RULES if cfg.actions[name] == "flag"]
    if cfg.pii.action == "flag":
        codes += [f"pii_{e}" for e in cfg.pii.entities]
    return [*codes, "pii_subject"]


class _Kept:
    """What cleanlab needs of the records the rules kept, gathered batch by batch in compact columns: each
    record's source and label (one string object per distinct value), id, position in the input (NumPy
    columns) and embedding (float32 rows), a few hundred bytes a record besides its vector."""

    def __init__(self, embedding: Embedding, cache_dir: str | Path, enabled: bool) -> None:
        self.embedding, self.enabled = embedding, enabled
        self.sources: list[str] = []
        self.labels: list[str | None] = []
        self.ids: list[str] = []
        self.values: dict[str, str] = {}  # one object per distinct source, label and file name
        self.keys: list[np.ndarray] = []  # per batch: (source_index, file, row): the first three of order_key
        self.embedder = Embedder(embedding, cache_dir)

    def _one(self, value: str | None) -> str | None:
        return None if value is None else self.values.setdefault(value, value)

    def add(self, records: list[Record]) -> None:
        for r in records:
            self.sources.append(self._one(r["source"]))  # type: ignore[arg-type]
            self.labels.append(self._one(r["meta"].get("label")))
            self.ids.append(r["id"])
        keys = [(source, self._one(file), row) for source, file, row, _ in map(order_key, records)]
        self.keys.append(np.array(keys, dtype=[("source", "i8"), ("file", object), ("row", "i8")]))
        if self.enabled:
            self.embedder.add([record_text(r, self.embedding.fields) for r in records])

    def _order(self) -> np.ndarray:
        """Indices of the records added, sorted by :func:`order_key` (input order, as the checks expect)."""
        if not self.keys:
            return np.zeros(0, dtype=np.int64)
        keys = np.concatenate(self.keys)
        files = sorted(set(keys["file"].tolist()))
        rank = {f: i for i, f in enumerate(files)}
        file_rank = np.array([rank[f] for f in keys["file"].tolist()], dtype=np.int64)
        return np.lexsort((np.array(self.ids), keys["row"], file_rank, keys["source"]))

    def scores(self, cfg: Cleanlab, seed: int) -> tuple[Iterator[dict[str, Any]], dict[str, int]]:
        """Cleanlab's scores per kept record (in the order added) and the flag counts."""
        n = len(self.ids)
        if not cfg.enable or n == 0:
            return itertools.repeat({}, n), dict.fromkeys(cleanlab_checks.COUNTS, 0)
        start = time.perf_counter()
        order = self._order()
        self.keys = []
        vectors = self.embedder.vectors(order)
        in_order, counts = cleanlab_checks.cleanlab_scores(
            vectors,
            [self.sources[i] for i in order],
            [self.labels[i] for i in order],
            [self.ids[i] for i in order],
            cfg,
            seed=seed,
        )
        del vectors
        at = np.empty(n, dtype=np.int64)
        at[order] = np.arange(n)  # where each added record sits in the checks' order
        elapsed = time.perf_counter() - start
        log.info("cleanlab: %d records in %.2f s (%.0f records/s)", n, elapsed, n / max(elapsed, 1e-9))
        return (in_order[j] for j in at.tolist()), counts


def _batches(files: list[Path], size: int) -> Iterator[list[Record]]:
    """The records of the pulled files, file by file, in batches of `size` (the last of a file may be shorter)."""
    for f in files:
        yield from rebatched(iter_records(f), size)


def moderate_files(
    files: list[Path],
    cfg: Moderate,
    *,
    out: Path,
    rejects: Path,
    seed: int,
    embedding: Embedding,
    cache_dir: str | Path,
    workers: int,
    executor: Executor,
) -> dict[str, Any]:
    """Moderate the records of `files` into the record files `out` (kept) and `rejects`; return the metrics.

    Records stream through in batches: the rules run per batch (across ``workers`` processes or on a Ray
    cluster), the kept ones wait in a temporary file with their embeddings computed as they come, cleanlab
    scores them all, and a second pass writes each with its scores (or rejects it on them). Memory holds a
    few batches, the vectors and a few small columns per kept record, never the whole set.

    Args:
        files: the pulled record files (one per source).
        cfg: the ``moderate`` params section.
        out, rejects: the output files (written with :class:`stages.core.records.RecordWriter`).
        seed: ``common.seed`` (cleanlab).
        embedding: ``common.embedding`` (the model and fields embedded for cleanlab).
        cache_dir: the embedding cache directory.
        workers: ``common.workers`` (processes for the rules; 0: every core); the result does not depend on it.
        executor: ``common.executor`` (local processes, or a Ray cluster).

    Returns:
        Flat metrics: total, kept, dropped_<reason>, normalized_*, redacted_pii_<entity>, flagged_<reason>,
        flagged_cleanlab_*.
    """
    total = sum(record_count(f) for f in files)
    dropped = dict.fromkeys(reason_codes(cfg), 0)
    flags = flag_codes(cfg)
    extra: dict[str, Any] = {f"flagged_{code}": 0 for code in flags}
    extra.update(normalized_encoding=0, normalized_noinput=0, normalized_line_endings=0)
    if cfg.pii.action == "redact":
        extra.update({f"redacted_pii_{e}": 0 for e in cfg.pii.entities})
    kept = 0
    gathered = _Kept(embedding, cache_dir, cfg.cleanlab.enable)
    spool = RecordSpool(out.parent, "moderate")
    try:
        with RecordWriter(rejects, REJECT_SCHEMA) as rej, RecordWriter(out) as keep:
            checked = imap_batches(
                functools.partial(check_records, cfg=cfg),
                _batches(files, RULES_BATCH_RECORDS),
                total=total,
                executor=executor,
                workers=workers,
                label="moderate rules",
                log=log,
            )
            for batch in checked:
                passed = []
                for rec, reason, detail in batch:
                    if reason is None:
                        passed.append(rec)
                    else:
                        dropped[reason] += 1
                        rej.write([{**rec, "stage": NAME, "reason": reason, "detail": detail}])
                spool.write(passed)
                gathered.add(passed)
            scores, counts = gathered.scores(cfg.cleanlab, seed)
            extra.update(counts)
            drop_on = [
                ("cleanlab_outlier", "is_outlier", "outlier_score", cfg.cleanlab.enable_drop_outliers),
                ("cleanlab_label_issue", "is_label_issue", "label_score", cfg.cleanlab.enable_drop_label_issues),
            ]
            for rec, score in zip(spool, scores, strict=True):
                moderated = rec["meta"]["moderate"]
                moderated["cleanlab"].update(score)
                hit = next((d for d in drop_on if d[3] and score.get(d[1])), None)
                if hit:
                    dropped[hit[0]] += 1
                    detail = f"cleanlab {hit[2]} {score[hit[2]]}"
                    rej.write([{**rec, "stage": NAME, "reason": hit[0], "detail": detail}])
                    continue
                kept += 1
                keep.write([rec])
                for code in flags:
                    extra[f"flagged_{code}"] += code in moderated["flags"]
                extra["normalized_encoding"] += "encoding" in moderated["normalized"]
                extra["normalized_noinput"] += "noinput" in moderated["normalized"]
                extra["normalized_line_endings"] += "line_endings" in moderated["normalized"]
                if cfg.pii.action == "redact":
                    for e in cfg.pii.entities:
                        extra[f"redacted_pii_{e}"] += e in moderated["redacted"]
    finally:
        spool.close()
    return _io.drop_metrics(total, kept, dropped, **dict(sorted(extra.items())))


def run(
    params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path], cache: str | Path
) -> dict[str, Any]:
    """Moderate ``inputs["in"]`` into ``outputs["out"]`` and ``outputs["rejects"]``; return the metrics.

    Args:
        params: scoped params (common.seed, common.workers, common.executor, common.embedding, moderate).
        inputs: ``{"in": <directory of pulled record files>}``.
        outputs: ``{"out": <kept records parquet>, "rejects": <rejected records parquet>}``.
        cache: the embedding cache directory (shared with dedup).

    Returns:
        Flat metrics: total, kept, dropped_<reason> for every reason, normalizations, redactions, flags.
    """
    files = record_files(inputs["in"])
    with _io.atomic_outputs(outputs["out"], outputs["rejects"]) as (out, rej):
        metrics = moderate_files(
            files,
            params.moderate,
            out=out,
            rejects=rej,
            seed=params.common.seed,
            embedding=params.common.embedding,
            cache_dir=cache,
            workers=params.common.workers,
            executor=params.common.executor,
        )
    dropped = {k: v for k, v in metrics.items() if k.startswith("dropped_") and v}
    log.info("moderate: %d records, %d kept, dropped %s", metrics["total"], metrics["kept"], dropped or "none")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the moderate stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
