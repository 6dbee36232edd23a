"""Moderation rules: each looks at one record and says keep, or why not (a fixed reason code and a detail).

A shared module, not a stage: the moderate stage applies :data:`RULES` to every pulled record, and the
synthesize stage applies the same :func:`check_record` to every generated pair, so both count the same
reason codes. The rules and their thresholds are described in the moderate stage's docstring; PII spans
are found and redacted by :mod:`stages.curate.pii`.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import numpy as np

from stages.core.params.moderate import Language, Moderate, Repetition
from stages.core.records import Record
from stages.curate.pii import find_pii, redact

log = logging.getLogger("steep.moderate")

Verdict = tuple[bool, str | None, str]  # (keep, reason code or None, detail)
Filter = Callable[[Record, Moderate], Verdict]
KEEP: Verdict = (True, None, "")

INSTRUCTION_KINDS = ("instruction", "qa")
ALL_KINDS = ("instruction", "qa", "conversation", "document")

# C0 and C1 control characters and DEL; tab, newline and carriage return are text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Last characters that close a sentence, a quote, a bracket, a code span, a table row or an HTML tag.
_CLOSERS = frozenset(".!?\"'”’»)]}`*|>;…")
# A last line that is a list item, a heading or a table row need not end in punctuation.
_LIST_LINE = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|[a-zA-Z][.)]|#+|\|)\s*")
# Words a finished answer does not end on.
_DANGLING = (
    "a an the and or but nor of to in on at by for with from as that which who whose because if so than "
    "then this these those their its his her my your our is are was were be been such"
)
_DANGLING_WORDS = frozenset(_DANGLING.split())
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)


# --- text selectors -------------------------------------------------------------------------------


def _all_texts(record: Record) -> list[tuple[str, str]]:
    """Every non-empty content text of the record, as (where, text)."""
    texts = [(f, record[f]) for f in ("instruction", "input", "output", "text") if record[f]]
    texts += [(f"messages[{i}]", m["content"]) for i, m in enumerate(record["messages"]) if m["content"]]
    return texts


def _answers(record: Record) -> list[tuple[str, str]]:
    """The texts the model learns to produce: the output, or every assistant turn (even empty ones)."""
    if record["kind"] == "conversation":
        return [(f"messages[{i}]", m["content"]) for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    return [("output", record["output"])]


def _first_match(patterns: list[str], texts: Iterable[tuple[str, str]]) -> str | None:
    for where, text in texts:
        for i, pattern in enumerate(patterns):
            m = re.search(pattern, text)
            if m:
                return f"{where}: pattern {i} matched {_clip(m.group())!r}"
    return None


def _clip(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _norm_value(s: str) -> str:
    """Lowercase, whitespace collapsed, surrounding spaces and dots removed ("N/A." == "n/a")."""
    return " ".join(s.lower().split()).strip(" .")


# --- the rules ------------------------------------------------------------------------------------


def control_characters(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record whose text holds a control character (binary junk, broken encodings)."""
    for where, text in _all_texts(record):
        m = _CONTROL.search(text)
        if m:
            return False, "control_characters", f"{where}: U+{ord(m.group()):04X} at char {m.start()}"
    return KEEP


def empty_output(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output (or assistant turn) that says nothing: "", "N/A", "none", ..."""
    answers = _answers(record)
    if not answers:
        return False, "empty_output", "conversation has no assistant turn"
    empty = {_norm_value(v) for v in cfg.empty_output_values}
    for where, text in answers:
        if _norm_value(text) in empty:
            return False, "empty_output", f"{where} is {text!r}"
    return KEEP


def too_short(record: Record, cfg: Moderate) -> Verdict:
    """Drop an instruction shorter than min_instruction_chars, a document shorter than min_document_chars."""
    if record["kind"] == "document":
        n, limit, what = len(record["text"]), cfg.min_document_chars, "text"
    else:
        n, limit, what = len(record["instruction"]), cfg.min_instruction_chars, "instruction"
    if n < limit:
        return False, "too_short", f"{what} has {n} chars (min {limit})"
    return KEEP


def too_long(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output longer than max_output_chars, a document longer than max_document_chars."""
    if record["kind"] == "document":
        n, limit, what = len(record["text"]), cfg.max_document_chars, "text"
    else:
        n, limit, what = len(record["output"]), cfg.max_output_chars, "output"
    if n > limit:
        return False, "too_long", f"{what} has {n} chars (max {limit})"
    return KEEP


def unseen_reference(record: Record, cfg: Moderate) -> Verdict:
    """Drop an instruction or input that points at a URL, image or attachment the model cannot see."""
    texts = [(f, record[f]) for f in ("instruction", "input") if record[f]]
    detail = _first_match(cfg.unseen_reference_patterns, texts)
    return (False, "unseen_reference", detail) if detail else KEEP


def merged_instructions(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record into which several instructions were merged ("### Instruction:" leaking into a field)."""
    texts = [(f, record[f]) for f in ("instruction", "input", "output") if record[f]]
    detail = _first_match(cfg.merged_instruction_patterns, texts)
    return (False, "merged_instructions", detail) if detail else KEEP


def canned_response(record: Record, cfg: Moderate) -> Verdict:
    """Drop a canned, deflecting or refusing answer ("As an AI language model...")."""
    detail = _first_match(cfg.canned_patterns, _answers(record))
    return (False, "canned_response", detail) if detail else KEEP


def truncation(text: str, min_words: int) -> str | None:
    """Why `text` looks cut off, or None.

    Only texts of at least `min_words` words are judged. Cut off: an open code fence, or a last character
    that leaves the sentence open (a comma, a colon, a dash, an opening bracket), or a last word that no
    finished sentence ends on ("the", "and", "to"), or no closing punctuation at the end of a prose line.
    Not cut off: closing punctuation, quotes, brackets and code fences; a number; a last line that is a list
    item, heading or table row; a short last line of a multi-line text (verse, a signature, an address).
    """
    words = text.split()
    if len(words) < min_words:
        return None
    if text.count("```") % 2:
        return "ends inside an open code fence"
    body = text.rstrip()
    last = body[-1]
    last_line = body.splitlines()[-1].strip()
    last_word = re.sub(r"^\W+|\W+$", "", words[-1]).lower()
    if last in ",:-–—([{/\\&+=":
        return f"ends on {last!r}: {_clip(last_line[-40:])!r}"
    if last.isalpha() and last_word in _DANGLING_WORDS:
        return f"ends on the word {last_word!r}: {_clip(last_line[-40:])!r}"
    if last in _CLOSERS or last.isdigit() or not last.isalnum():
        return None
    if _LIST_LINE.match(last_line):
        return None
    if "\n" in body and len(last_line.split()) < min_words:
        return None
    return f"no closing punctuation: {_clip(last_line[-40:])!r}"


def truncated_output(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output (or assistant turn) that stops mid-sentence."""
    for where, text in _answers(record):
        why = truncation(text, cfg.min_words_truncation_check) if text else None
        if why:
            return False, "truncated_output", f"{where}: {why}"
    return KEEP


def repetition(text: str, cfg: Repetition) -> str | None:
    """Why `text` is repetitive by Gopher's measures (Rae et al. 2021), or None.

    Duplicate-line ratio: characters in repeated non-empty lines (every occurrence after the first) over
    the characters of all lines. Top 3-gram ratio: characters of the most frequent word 3-gram times its
    count over the characters of all words (only when that 3-gram occurs more than once).
    """
    words = text.split()
    if len(words) < cfg.min_words:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    seen: set[str] = set()
    dup_chars = 0
    for line in lines:
        if line in seen:
            dup_chars += len(line)
        seen.add(line)
    ratio = dup_chars / max(1, sum(len(line) for line in lines))
    if ratio > cfg.max_duplicate_line_ratio:
        return f"duplicate lines hold {ratio:.2f} of chars (max {cfg.max_duplicate_line_ratio})"
    norm = [w.lower() for w in words]
    grams = Counter(zip(norm, norm[1:], norm[2:], strict=False))
    if grams:
        (gram, count), *_ = sorted(grams.items(), key=lambda kv: (-kv[1], kv[0]))
        if count > 1:
            ratio = count * sum(len(w) for w in gram) / max(1, sum(len(w) for w in norm))
            if ratio > cfg.max_top_ngram_ratio:
                return f"3-gram {' '.join(gram)!r} x{count} holds {ratio:.2f} of chars (max {cfg.max_top_ngram_ratio})"
    return None


def repetitive(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output or document that repeats its lines or phrases (degenerate generation, boilerplate)."""
    where = "text" if record["kind"] == "document" else "output"
    why = repetition(record[where], cfg.repetition)
    return (False, "repetitive", f"{where}: {why}") if why else KEEP


@cache
def _language_identifier() -> Any:
    """py3langid's identifier with probabilities normalized; its model ships inside the package."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language(text: str, cfg: Language) -> tuple[str, float] | None:
    """(language, probability) of `text` without its code blocks, or None when too short to judge."""
    prose = " ".join(_CODE_BLOCK.sub(" ", text).split())
    if len(prose) < cfg.min_chars:
        return None
    lang, prob = _language_identifier().classify(prose)
    return str(lang), float(prob)


def wrong_language(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record whose language (all its text, code blocks left out) is confidently not an allowed one.

    The record is judged as a whole, so a translation task (English instruction, French output) is kept.
    """
    found = language("\n\n".join(t for _, t in _all_texts(record)), cfg.language)
    if found is None:
        return KEEP
    lang, prob = found
    if lang not in cfg.language.allowed and prob >= cfg.language.min_confidence:
        return False, "wrong_language", f"{lang} with probability {prob:.3f} (allowed {cfg.language.allowed})"
    return KEEP


def toxicity(texts: list[str]) -> list[float]:
    """alt-profanity-check's probability that each text is offensive (its model ships with the package)."""
    if not texts:
        return []
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(texts)]


def toxic(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record with an offensive text (each field, turn, or document paragraph scored on its own)."""
    parts: list[tuple[str, str]] = []
    for where, text in _all_texts(record):
        if record["kind"] == "document":
            # a long document dilutes a bag-of-words score: score its paragraphs
            paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
            parts += [(f"{where} paragraph {i + 1}", p) for i, p in enumerate(paras)]
        else:
            parts.append((where, text))
    probs = toxicity([t for _, t in parts])
    if probs:
        i = int(np.argmax(probs))
        if probs[i] > cfg.toxicity.max_probability:
            return False, "toxic", f"{parts[i][0]}: probability {probs[i]:.3f} (max {cfg.toxicity.max_probability})"
    return KEEP


# --- PII ------------------------------------------------------------------------------------------


def pii(record: Record, cfg: Moderate) -> Verdict:
    """With pii.action drop: drop a record holding PII, reason pii_<entity> (first entity in params order)."""
    if cfg.pii.action != "drop":
        return KEEP
    hits: Counter[str] = Counter()
    wheres: dict[str, str] = {}
    for where, text in _all_texts(record):
        for _, _, name in find_pii(text, cfg.pii.entities):
            hits[name] += 1
            wheres.setdefault(name, where)
    for name in cfg.pii.entities:
        if hits[name]:
            # the detail names where, not what: the PII itself stays out of the logs and metrics
            return False, f"pii_{name}", f"{wheres[name]}: {hits[name]} {name} span(s)"
    return KEEP


def redact_record(record: Record, cfg: Moderate) -> dict[str, int]:
    """Redact PII in every text of `record` in place; return spans per entity."""
    counts: Counter[str] = Counter()
    for field in ("instruction", "input", "output", "text"):
        if record[field]:
            spans = find_pii(record[field], cfg.pii.entities)
            counts.update(name for _, _, name in spans)
            record[field] = redact(record[field], spans)
    for m in record["messages"]:
        spans = find_pii(m["content"], cfg.pii.entities)
        counts.update(name for _, _, name in spans)
        m["content"] = redact(m["content"], spans)
    return dict(sorted(counts.items()))


# --- one record -----------------------------------------------------------------------------------

# (rule name = reason code, kinds it applies to, filter), in the order they run.
RULES: list[tuple[str, tuple[str, ...], Filter]] = [
    ("control_characters", ALL_KINDS, control_characters),
    ("empty_output", (*INSTRUCTION_KINDS, "conversation"), empty_output),
    ("too_short", (*INSTRUCTION_KINDS, "document"), too_short),
    ("too_long", (*INSTRUCTION_KINDS, "document"), too_long),
    ("unseen_reference", INSTRUCTION_KINDS, unseen_reference),
    ("merged_instructions", INSTRUCTION_KINDS, merged_instructions),
    ("canned_response", (*INSTRUCTION_KINDS, "conversation"), canned_response),
    ("truncated_output", (*INSTRUCTION_KINDS, "conversation"), truncated_output),
    ("repetitive", (*INSTRUCTION_KINDS, "document"), repetitive),
    ("wrong_language", ALL_KINDS, wrong_language),
    ("toxic", ALL_KINDS, toxic),
    ("pii", ALL_KINDS, pii),
]


def normalize_noinput(record: Record, cfg: Moderate) -> list[str]:
    """Blank a placeholder input ("<noinput>", "N/A", ...) in place; return the normalizations made."""
    placeholders = {_norm_value(p) for p in cfg.noinput_placeholders}
    if record["input"] and _norm_value(record["input"]) in placeholders:
        record["input"] = ""
        return ["noinput"]
    return []


def check_record(record: Record, cfg: Moderate) -> tuple[Record, str | None, str]:
    """Moderate one record by the rules (not cleanlab, which needs the whole set).

    Returns ``(moderated copy, None, "")`` when kept: placeholder input blanked, PII redacted (with
    ``pii.action: redact``) and ``meta["moderate"]`` filled in; or ``(record as given, reason, detail)``
    when the first failing rule drops it. The input record is never modified.
    """
    rec = {**record, "messages": [dict(m) for m in record["messages"]], "meta": copy.deepcopy(record["meta"])}
    normalized = normalize_noinput(rec, cfg) if rec["kind"] in INSTRUCTION_KINDS else []
    passed: list[str] = []
    for name, kinds, rule in RULES:
        if rec["kind"] not in kinds or (name == "toxic" and not cfg.toxicity.enable):
            continue
        keep, reason, detail = rule(rec, cfg)
        if not keep:
            return record, reason, detail
        passed.append(name)
    redacted = redact_record(rec, cfg) if cfg.pii.action == "redact" else {}
    rec["meta"]["moderate"] = {"passed": passed, "normalized": normalized, "redacted": redacted, "cleanlab": {}}
    return rec, None, ""
