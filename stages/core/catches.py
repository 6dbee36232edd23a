"""What curation did to each record, read from the data alone, and the params line that switches each rule.

A :class:`Catch` is one thing moderate or dedup did to one record: a drop (from ``data/rejected/<stage>.parquet``),
a flag or a rewrite (from the kept records' ``meta``). Its reason is named as the stage's metrics count it, so the
two meet: a drop by its reason code (``too_short``, as ``dropped_too_short``), a flag as ``flagged_<code>``
(``flagged_toxic``, ``flagged_cleanlab_outlier``, ``flagged_semantic_duplicate``), a rewrite as
``redacted_pii_<entity>`` or ``normalized_<what>``. One reading for ``steep review``, the report and
``benchmarks/moderation_precision.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stages.core.params.moderate import PII_ENTITIES, RULE_NAMES
from stages.core.records import Record

DROP, FLAG, REWRITE = "drop", "flag", "rewrite"
QUOTED_OFF = '"off"'  # as params.yaml must spell it: a bare off is YAML's false
ACTIONS = (DROP, FLAG, REWRITE)
# cleanlab's checks on a kept record (meta.moderate.cleanlab): (flag, is-key, the score shown as its detail)
_CLEANLAB = (
    ("flagged_cleanlab_outlier", "is_outlier", "outlier_score"),
    ("flagged_cleanlab_near_duplicate", "is_near_duplicate", "near_duplicate_score"),
    ("flagged_cleanlab_label_issue", "is_label_issue", "label_score"),
)


@dataclass(frozen=True, order=True)
class Catch:
    """One thing a stage did to one record: ``action`` is drop, flag or rewrite; ``reason`` as its metrics name it."""

    reason: str
    id: str
    stage: str
    action: str
    detail: str

    @property
    def key(self) -> tuple[str, str]:
        """(record id, reason): what a verdict is kept by."""
        return (self.id, self.reason)


def action_of(reason: str) -> str:
    """What a reason named as the metrics name it does: ``flagged_*`` flags, ``redacted_*`` and ``normalized_*``
    rewrite, any other reason code drops."""
    if reason.startswith("flagged_"):
        return FLAG
    return REWRITE if reason.startswith(("redacted_", "normalized_")) else DROP


def of_reject(row: Record) -> Catch:
    """The drop of a rejected record (a row of ``data/rejected/<stage>.parquet``)."""
    return Catch(row["reason"], row["id"], row["stage"], DROP, row["detail"] or "")


def of_moderated(record: Record) -> list[Catch]:
    """moderate's flags (its rules', PII's and cleanlab's) and rewrites (redactions, normalizations) of a kept
    record, from ``meta.moderate``."""
    m: dict[str, Any] = record["meta"].get("moderate") or {}
    rid = record["id"]
    out = [Catch(f"flagged_{code}", rid, "moderate", FLAG, str(why)) for code, why in (m.get("flags") or {}).items()]
    scores = m.get("cleanlab") or {}
    for reason, flag, score in _CLEANLAB:
        if scores.get(flag):
            detail = f"{score} {scores.get(score)}"
            if reason == "flagged_cleanlab_near_duplicate":
                detail += f"; near {', '.join(scores.get('near_duplicate_of', [])[:3])}"
            if reason == "flagged_cleanlab_label_issue":
                detail += f"; label {record['meta'].get('label')!r}, neighbours say {scores.get('predicted_label')!r}"
            out.append(Catch(reason, rid, "moderate", FLAG, detail))
    for entity, spans in (m.get("redacted") or {}).items():
        out.append(Catch(f"redacted_pii_{entity}", rid, "moderate", REWRITE, f"{spans} {entity} span(s) redacted"))
    for what in m.get("normalized") or []:
        out.append(Catch(f"normalized_{what}", rid, "moderate", REWRITE, _NORMALIZED.get(what, what)))
    return out


_NORMALIZED = {"encoding": "mojibake repaired (ftfy)", "noinput": "placeholder input blanked"}


def of_curated(record: Record) -> list[Catch]:
    """dedup's flags of a kept record, from ``meta.dedup.flags``."""
    flags = (record["meta"].get("dedup") or {}).get("flags") or {}
    return [Catch(f"flagged_{code}", record["id"], "dedup", FLAG, str(why)) for code, why in flags.items()]


def catches(
    rejects: Iterable[Record] = (), moderated: Iterable[Record] = (), curated: Iterable[Record] = ()
) -> list[Catch]:
    """Every catch of a run: the drops of `rejects` (moderate's and dedup's rejected rows), the flags and rewrites
    of moderate's kept records `moderated`, the flags of dedup's kept records `curated`; sorted."""
    out = [of_reject(r) for r in rejects]
    out += [c for r in moderated for c in of_moderated(r)]
    out += [c for r in curated for c in of_curated(r)]
    return sorted(out)


def switch(stage: str, reason: str, action: str) -> str:
    """The params line that makes a rule act less (a drop flags instead, a flag or a rewrite stops), or a
    sentence saying why none does."""
    code = reason.removeprefix("flagged_")
    if code in RULE_NAMES:
        return f"moderate.actions.{code}: {'flag' if action == DROP else QUOTED_OFF}"
    if code.startswith("pii_") and code.removeprefix("pii_") in PII_ENTITIES:
        entity = code.removeprefix("pii_")
        return f"moderate.pii.entities: leave out {entity}" if action == FLAG else "moderate.pii.action: flag"
    if reason.startswith("redacted_pii_"):
        return f"moderate.pii.entities: leave out {reason.removeprefix('redacted_pii_')} (or moderate.pii.action: flag)"
    if code == "pii_subject":
        return "none: a task about the entity keeps it (moderate.pii.entities leaves the entity out)"
    if reason == "normalized_encoding":
        return "moderate.fix_encoding: false"
    if reason == "normalized_noinput":
        return "moderate.noinput_placeholders: leave out the placeholder that is real input"
    if code in ("cleanlab_outlier", "cleanlab_label_issue"):
        which = code.removeprefix("cleanlab_") + "s"
        return f"moderate.cleanlab.enable_drop_{which}: false" if action == DROP else "moderate.cleanlab.enable: false"
    if code == "cleanlab_near_duplicate":
        return "moderate.cleanlab.enable: false"
    if code in ("minhash_duplicate", "semantic_duplicate"):
        method = code.removesuffix("_duplicate")
        if action == DROP:
            return f"dedup.{method}.action: flag"
        return "dedup.semantic.enable: false" if method == "semantic" else "none: flag is dedup.minhash's least action"
    if code == "exact_duplicate":
        return "none: exact duplicates are always dropped"
    if code == "reference_overlap":
        return "dedup.references: leave out the reference file (decontamination)"
    return f"none known for {stage} {reason}"
