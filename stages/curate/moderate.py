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
too_long             output, document         output > ``max_output_chars``, text > ``max_document_chars``
unseen_reference     request, input, output   a ``unseen_reference_patterns`` match in the request (short
                                              paragraphs; not in carried material, not in quotes, a URL not when
                                              the task is about the URL); an input or output that is only a link
merged_instructions  instruction/input/output a second "Instruction:" block with its "Output:"/"Response:", or an
                                              "Instruction:" header inside the output
canned_response      output, assistant turns  a ``canned_patterns`` match ("As an AI language model", ...)
truncated_output     output, assistant turns  >= ``min_words_truncation_check`` words ending inside an open code
                                              fence, on a comma/colon/dash/open bracket, or on "the"/"and"/...
repetitive           output, document         Gopher's repetition rules and thresholds (``repetition``), on texts of
                                              >= ``repetition.min_words`` words, fenced code and tables left out
wrong_language       the request              py3langid's top language for the instruction (user turns; document)
                                              not in ``language.allowed`` with probability >= ``min_confidence``
toxic                output, assistant turns, alt-profanity-check probability > ``toxicity.max_probability``, unless
                     document paragraphs     the instruction asks to handle offensive text (``task_patterns``)
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

Normalizations keep the record and are written into its meta: mojibake is repaired with ftfy (encoding
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
import logging
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.executor import map_batches
from stages.core.params.common import Embedding, Executor
from stages.core.params.moderate import Cleanlab, Moderate
from stages.core.records import Record, order_key, read_record_dir, record_text, write_records, write_rejects
from stages.curate import cleanlab_checks
from stages.curate.embed import embed
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


def moderate_records(
    records: list[Record],
    cfg: Moderate,
    *,
    seed: int,
    embedding: Embedding,
    cache_dir: str | Path,
    workers: int,
    executor: Executor,
) -> tuple[list[Record], list[tuple[Record, str, str, str]], dict[str, Any]]:
    """Moderate `records`: the rules per record, then cleanlab over the kept ones.

    Args:
        records: records in the schema of stages.core.records (not modified).
        cfg: the ``moderate`` params section.
        seed: ``common.seed`` (cleanlab).
        embedding: ``common.embedding`` (the model and fields embedded for cleanlab).
        cache_dir: the embedding cache directory.
        workers: ``common.workers`` (processes for the rules; 0: every core); the result does not depend on it.
        executor: ``common.executor`` (local processes, or a Ray cluster).

    Returns:
        ``(kept, rejects, metrics)``: kept records (moderated copies, in input order), rejects as
        ``(record, "moderate", reason, detail)``, and flat metrics (total, kept, dropped_<reason>,
        normalized_noinput, redacted_pii_<entity>, flagged_<reason>, flagged_cleanlab_*).
    """
    records = sorted(records, key=order_key)
    dropped = dict.fromkeys(reason_codes(cfg), 0)
    kept: list[Record] = []
    rejects: list[tuple[Record, str, str, str]] = []
    checked = map_batches(
        functools.partial(check_records, cfg=cfg),
        records,
        executor=executor,
        workers=workers,
        batch_size=RULES_BATCH_RECORDS,
        label="moderate rules",
        log=log,
    )
    for rec, reason, detail in checked:
        if reason is None:
            kept.append(rec)
        else:
            dropped[reason] += 1
            rejects.append((rec, NAME, reason, detail))
    extra: dict[str, Any] = cleanlab_scores(kept, cfg.cleanlab, seed=seed, embedding=embedding, cache_dir=cache_dir)
    drop_on = [
        ("cleanlab_outlier", "is_outlier", "outlier_score", cfg.cleanlab.enable_drop_outliers),
        ("cleanlab_label_issue", "is_label_issue", "label_score", cfg.cleanlab.enable_drop_label_issues),
    ]
    survivors: list[Record] = []
    for rec in kept:
        scores = rec["meta"]["moderate"]["cleanlab"]
        hit = next((d for d in drop_on if d[3] and scores.get(d[1])), None)
        if hit:
            dropped[hit[0]] += 1
            rejects.append((rec, NAME, hit[0], f"cleanlab {hit[2]} {scores[hit[2]]}"))
        else:
            survivors.append(rec)
    for code in flag_codes(cfg):
        extra[f"flagged_{code}"] = sum(code in r["meta"]["moderate"]["flags"] for r in survivors)
    extra["normalized_encoding"] = sum("encoding" in r["meta"]["moderate"]["normalized"] for r in survivors)
    extra["normalized_noinput"] = sum("noinput" in r["meta"]["moderate"]["normalized"] for r in survivors)
    if cfg.pii.action == "redact":
        for e in cfg.pii.entities:
            extra[f"redacted_pii_{e}"] = sum(e in r["meta"]["moderate"]["redacted"] for r in survivors)
    metrics = _io.drop_metrics(len(records), len(survivors), dropped, **dict(sorted(extra.items())))
    return survivors, rejects, metrics


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
    cfg: Moderate = params.moderate
    records = read_record_dir(inputs["in"])
    kept, rejects, metrics = moderate_records(
        records,
        cfg,
        seed=params.common.seed,
        embedding=params.common.embedding,
        cache_dir=cache,
        workers=params.common.workers,
        executor=params.common.executor,
    )
    with _io.atomic_outputs(outputs["out"], outputs["rejects"]) as (out, rej):
        write_records(out, kept)
        write_rejects(rej, rejects)
    dropped = {k: v for k, v in metrics.items() if k.startswith("dropped_") and v}
    log.info("moderate: %d records, %d kept, dropped %s", metrics["total"], metrics["kept"], dropped or "none")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the moderate stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
