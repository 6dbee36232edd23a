"""Moderate: drop defective records, blank placeholder inputs, redact PII, score records with cleanlab.

Inputs: ``--in`` the pulled records (``data/pulled``, one Parquet file per source); the embedding
cache ``--cache`` (``.steep_cache/embeddings``; moderate fills it, dedup reads it back).
Outputs: ``--out`` the kept records (``data/moderated.parquet``), ``--rejects`` the dropped ones with
stage, reason and detail (``data/rejected/moderate.parquet``), ``--metrics`` counts
(``metrics/moderate.json``).
Run: ``dvc repro moderate``.

The rules are small pure functions ``(record, cfg) -> (keep, reason, detail)``, datatrove style, applied
in this order; the first one that fails drops the record under its reason code:

==================== ======================== ======================================================================
rule / reason        applies to               drops when
==================== ======================== ======================================================================
control_characters   every text               a C0/C1 control character other than tab, newline, CR
empty_output         output, assistant turns  the text is one of ``empty_output_values`` ("", "N/A", ...);
                                              a conversation without an assistant turn
too_short            instruction, document    instruction < ``min_instruction_chars``, text < ``min_document_chars``
too_long             output, document         output > ``max_output_chars``, text > ``max_document_chars``
unseen_reference     instruction, input       a ``unseen_reference_patterns`` match (URL, "this image", ...)
merged_instructions  instruction/input/output a ``merged_instruction_patterns`` match ("### Instruction:")
canned_response      output, assistant turns  a ``canned_patterns`` match ("As an AI language model", ...)
truncated_output     output, assistant turns  >= ``min_words_truncation_check`` words and no closing
                                              punctuation, an open code fence, or a dangling last word
repetitive           output, document         Gopher ratios: duplicate-line chars, top 3-gram chars
wrong_language       the whole record         py3langid's top language not in ``language.allowed`` with
                                              probability >= ``min_confidence`` (code blocks left out)
toxic                each text (paragraph)    alt-profanity-check probability >  ``toxicity.max_probability``
pii_<entity>         every text               only with ``pii.action: drop``; otherwise spans are redacted
cleanlab_outlier     the record's embedding   only with ``cleanlab.enable_drop_outliers``
cleanlab_label_issue the record's embedding   only with ``cleanlab.enable_drop_label_issues``
==================== ======================== ======================================================================

"instruction" rows mean the instruction and qa kinds (qa's question is its instruction). Conversations get
the rules on their turns; documents get control characters, length, repetition, language, toxicity, PII.

Normalizations keep the record and are written into its meta: a placeholder input (``<noinput>``, "N/A",
per ``noinput_placeholders``) is blanked (``normalized_noinput``); with ``pii.action: redact`` each PII span
is replaced by ``<EMAIL>``, ``<PHONE>``, ``<CREDIT_CARD>``, ``<IP_ADDRESS>`` or ``<API_KEY>``
(``redacted_pii_<entity>``, counted per record).

PII detection uses presidio-analyzer's pattern recognizers directly (email, phone via python-phonenumbers,
credit card with Luhn check, IP) plus an API-key recognizer defined here, without ``AnalyzerEngine`` (which
would load a spaCy model). Presidio's email recognizer validates domains with ``tldextract``, whose default
extractor downloads the public-suffix list on first use; here it runs on tldextract's bundled snapshot, so
nothing reaches for the network. Loopback, unspecified, link-local and multicast IPs (``127.0.0.1``,
``0.0.0.0``, ``::``) name no one and are left alone.

Cleanlab: the kept records are embedded (``common.embedding``, through the shared cache) and each source
is checked on its own, since a source is one distribution and a small source mixed into a large one would
look like a cloud of outliers for its kind alone: Datalab's outlier check on every source with at least
``cleanlab.min_records`` records, and its label check on the records of a source that carry
``meta.label`` (pull's ``label_field``). Scores go into ``meta.moderate.cleanlab``, rounded to 6 decimals;
a record is dropped on them only when ``enable_drop_*`` says so. Cleanlab gets the grid vectors of
:mod:`stages._embed` (the same bytes on every CPU) in float64, so its distances differ between BLAS kernels
by ~1e-16 only and the 6-decimal scores, ~1e6 times coarser, are the same on every CPU.

Every kept record gets ``meta["moderate"] = {"passed": [rules it was checked by], "normalized": [...],
"redacted": {entity: spans}, "cleanlab": {...}}``. Output rows are sorted by id; the same inputs and params
give the same bytes.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from stages import _io, _params
from stages._embed import embed
from stages._records import Record, order_key, read_record_dir, record_text, write_records, write_rejects

PARAMS = ["common.seed", "common.embedding", "moderate"]
STAGE = "moderate"

log = logging.getLogger("steep.moderate")

Verdict = tuple[bool, str | None, str]  # (keep, reason code or None, detail)
Filter = Callable[[Record, _params.Moderate], Verdict]
KEEP: Verdict = (True, None, "")

INSTRUCTION_KINDS = ("instruction", "qa")
ALL_KINDS = ("instruction", "qa", "conversation", "document")

# entity name in params -> (presidio entity type, replacement tag)
PII_TAGS: dict[str, tuple[str, str]] = {
    "email": ("EMAIL_ADDRESS", "<EMAIL>"),
    "phone": ("PHONE_NUMBER", "<PHONE>"),
    "credit_card": ("CREDIT_CARD", "<CREDIT_CARD>"),
    "ip_address": ("IP_ADDRESS", "<IP_ADDRESS>"),
    "api_key": ("API_KEY", "<API_KEY>"),
}

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


def control_characters(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop a record whose text holds a control character (binary junk, broken encodings)."""
    for where, text in _all_texts(record):
        m = _CONTROL.search(text)
        if m:
            return False, "control_characters", f"{where}: U+{ord(m.group()):04X} at char {m.start()}"
    return KEEP


def empty_output(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop an output (or assistant turn) that says nothing: "", "N/A", "none", ..."""
    answers = _answers(record)
    if not answers:
        return False, "empty_output", "conversation has no assistant turn"
    empty = {_norm_value(v) for v in cfg.empty_output_values}
    for where, text in answers:
        if _norm_value(text) in empty:
            return False, "empty_output", f"{where} is {text!r}"
    return KEEP


def too_short(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop an instruction shorter than min_instruction_chars, a document shorter than min_document_chars."""
    if record["kind"] == "document":
        n, limit, what = len(record["text"]), cfg.min_document_chars, "text"
    else:
        n, limit, what = len(record["instruction"]), cfg.min_instruction_chars, "instruction"
    if n < limit:
        return False, "too_short", f"{what} has {n} chars (min {limit})"
    return KEEP


def too_long(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop an output longer than max_output_chars, a document longer than max_document_chars."""
    if record["kind"] == "document":
        n, limit, what = len(record["text"]), cfg.max_document_chars, "text"
    else:
        n, limit, what = len(record["output"]), cfg.max_output_chars, "output"
    if n > limit:
        return False, "too_long", f"{what} has {n} chars (max {limit})"
    return KEEP


def unseen_reference(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop an instruction or input that points at a URL, image or attachment the model cannot see."""
    texts = [(f, record[f]) for f in ("instruction", "input") if record[f]]
    detail = _first_match(cfg.unseen_reference_patterns, texts)
    return (False, "unseen_reference", detail) if detail else KEEP


def merged_instructions(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop a record into which several instructions were merged ("### Instruction:" leaking into a field)."""
    texts = [(f, record[f]) for f in ("instruction", "input", "output") if record[f]]
    detail = _first_match(cfg.merged_instruction_patterns, texts)
    return (False, "merged_instructions", detail) if detail else KEEP


def canned_response(record: Record, cfg: _params.Moderate) -> Verdict:
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


def truncated_output(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop an output (or assistant turn) that stops mid-sentence."""
    for where, text in _answers(record):
        why = truncation(text, cfg.min_words_truncation_check) if text else None
        if why:
            return False, "truncated_output", f"{where}: {why}"
    return KEEP


def repetition(text: str, cfg: _params.Repetition) -> str | None:
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


def repetitive(record: Record, cfg: _params.Moderate) -> Verdict:
    """Drop an output or document that repeats its lines or phrases (degenerate generation, boilerplate)."""
    where = "text" if record["kind"] == "document" else "output"
    why = repetition(record[where], cfg.repetition)
    return (False, "repetitive", f"{where}: {why}") if why else KEEP


@cache
def _language_identifier() -> Any:
    """py3langid's identifier with probabilities normalized; its model ships inside the package."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language(text: str, cfg: _params.Language) -> tuple[str, float] | None:
    """(language, probability) of `text` without its code blocks, or None when too short to judge."""
    prose = " ".join(_CODE_BLOCK.sub(" ", text).split())
    if len(prose) < cfg.min_chars:
        return None
    lang, prob = _language_identifier().classify(prose)
    return str(lang), float(prob)


def wrong_language(record: Record, cfg: _params.Moderate) -> Verdict:
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


def toxic(record: Record, cfg: _params.Moderate) -> Verdict:
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


@cache
def _recognizers() -> dict[str, Any]:
    """Presidio pattern recognizers per entity name, offline (see the module docstring)."""
    import regex
    import tldextract
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    # The bundled public-suffix snapshot, no cache directory, no download.
    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    class PersonalIpRecognizer(IpRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            try:
                ip = ipaddress.ip_interface(pattern_text).ip
            except ValueError:
                return True
            return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast

    class ApiKeyRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            # a secret mixes letters and digits; "YOUR_API_KEY_HERE" and "tokenizer_config" are not secrets
            return bool(re.search(r"\d", pattern_text) and re.search(r"[A-Za-z]", pattern_text))

    api_key = ApiKeyRecognizer(
        supported_entity="API_KEY",
        name="ApiKeyRecognizer",
        patterns=[
            Pattern("openai/anthropic", r"\bsk-(?:proj-|svcacct-|ant-)?[A-Za-z0-9_-]{20,}", 0.9),
            Pattern("aws access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.9),
            Pattern("github", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b", 0.9),
            Pattern("huggingface", r"\bhf_[A-Za-z0-9]{30,}\b", 0.9),
            Pattern("slack", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 0.9),
            Pattern("google", r"\bAIza[0-9A-Za-z_-]{35}", 0.9),
            Pattern("stripe", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}", 0.9),
            Pattern("private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----", 0.9),
            # a long value assigned to a secret-looking name: api_key = "...", "token": "..."
            Pattern(
                "assigned secret",
                r"(?i:(?<=\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd)"
                r"[\"']?\s*[:=]\s*[\"']?))[A-Za-z0-9_\-+/=]{20,}",
                0.6,
            ),
        ],
        # case matters for key prefixes (AKIA, ghp_); presidio's default adds IGNORECASE
        global_regex_flags=regex.DOTALL | regex.MULTILINE,
    )
    return {
        "email": OfflineEmailRecognizer(),
        "phone": PhoneRecognizer(),
        "credit_card": CreditCardRecognizer(),
        "ip_address": PersonalIpRecognizer(),
        "api_key": api_key,
    }


def find_pii(text: str, entities: Iterable[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping PII spans (start, end, entity name) in `text`, in text order.

    Where spans of two recognizers overlap, the higher score wins, then the longer span (a Luhn-valid
    card number beats the phone number it also looks like).
    """
    recognizers = _recognizers()
    found: list[tuple[float, int, int, str]] = []
    for name in entities:
        rec = recognizers[name]
        for r in rec.analyze(text, rec.supported_entities):
            found.append((r.score, r.start, r.end, name))
    found.sort(key=lambda f: (-f[0], -(f[2] - f[1]), f[1], f[3]))
    taken: list[tuple[int, int, str]] = []
    for _, start, end, name in found:
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, name))
    return sorted(taken)


def redact(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each span replaced by its entity's tag (<EMAIL>, <PHONE>, ...)."""
    for start, end, name in sorted(spans, reverse=True):
        text = text[:start] + PII_TAGS[name][1] + text[end:]
    return text


def pii(record: Record, cfg: _params.Moderate) -> Verdict:
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


def redact_record(record: Record, cfg: _params.Moderate) -> dict[str, int]:
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


def normalize_noinput(record: Record, cfg: _params.Moderate) -> list[str]:
    """Blank a placeholder input ("<noinput>", "N/A", ...) in place; return the normalizations made."""
    placeholders = {_norm_value(p) for p in cfg.noinput_placeholders}
    if record["input"] and _norm_value(record["input"]) in placeholders:
        record["input"] = ""
        return ["noinput"]
    return []


def check_record(record: Record, cfg: _params.Moderate) -> tuple[Record, str | None, str]:
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


# --- cleanlab -------------------------------------------------------------------------------------


def _datalab_issues(features: np.ndarray, issue: str, labels: list[str] | None, seed: int) -> Any:
    """Datalab's issues table for one check ("outlier" or "label") on (N, D) unit-norm features."""
    from cleanlab import Datalab

    np.random.seed(seed)  # cleanlab draws from numpy's global generator in places
    data = {"label": labels} if labels is not None else {"row": list(range(len(features)))}
    lab = Datalab(data=data, label_name="label" if labels is not None else None, verbosity=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lab.find_issues(features=features, issue_types={issue: {}})
    for w in caught:
        # Deprecations are about cleanlab's own use of its libraries (pandas 3 deprecates
        # `rename(inplace=True)`, which cleanlab 2.9 calls), not about the data: left out of the log.
        if not issubclass(w.category, DeprecationWarning | FutureWarning):
            log.warning("cleanlab %s check: %s", issue, str(w.message).splitlines()[0])
    return lab.get_issues(issue)


def cleanlab_scores(
    records: list[Record], cfg: _params.Cleanlab, *, seed: int, embedding: _params.Embedding, cache_dir: str | Path
) -> dict[str, int]:
    """Write cleanlab scores into ``meta.moderate.cleanlab`` of `records` (in place), per source.

    Outliers: Datalab's outlier check over the sentence embeddings of each source with at least
    ``min_records`` records. Label issues: Datalab's label check (labels predicted from the embeddings'
    nearest neighbours) over the records of a source that carry ``meta.label``, when there are at least
    ``min_records`` of them with two or more distinct labels. Returns the counts (flags, cache use).
    """
    counts = {"flagged_cleanlab_outlier": 0, "flagged_cleanlab_label_issue": 0}
    if not cfg.enable or not records:
        return counts
    texts = [record_text(r, embedding.fields) for r in records]
    # (N, D), unit norm; cache hits are logged, not put in metrics (they depend on the cache, not the data)
    vectors = embed(texts, embedding, cache_dir)
    sources: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        sources.setdefault(r["source"], []).append(i)
    for source, idx in sources.items():
        if len(idx) < cfg.min_records:
            note = f"source has {len(idx)} records (< cleanlab.min_records {cfg.min_records})"
            log.info("cleanlab: %s skipped: %s", source, note)
            for i in idx:
                records[i]["meta"]["moderate"]["cleanlab"]["skipped"] = note
            continue
        issues = _datalab_issues(vectors[idx].astype(np.float64), "outlier", None, seed)
        for i, score, flag in zip(idx, issues["outlier_score"], issues["is_outlier_issue"], strict=True):
            records[i]["meta"]["moderate"]["cleanlab"].update(
                {"outlier_score": round(float(score), 6), "is_outlier": bool(flag)}
            )
            counts["flagged_cleanlab_outlier"] += bool(flag)
        n_outliers = int(issues["is_outlier_issue"].sum())
        labeled = [i for i in idx if records[i]["meta"].get("label") is not None]
        labels = [str(records[i]["meta"]["label"]) for i in labeled]
        if not labeled:
            log.info("cleanlab: %s: %d outliers in %d records (no labels)", source, n_outliers, len(idx))
            continue
        if len(labeled) < cfg.min_records or len(set(labels)) < 2:
            note = f"{len(labeled)} labeled records, {len(set(labels))} distinct labels (need {cfg.min_records}, 2)"
            log.info("cleanlab: %s: %d outliers; label check skipped: %s", source, n_outliers, note)
            for i in labeled:
                records[i]["meta"]["moderate"]["cleanlab"]["skipped"] = f"label check: {note}"
            continue
        issues = _datalab_issues(vectors[labeled].astype(np.float64), "label", labels, seed)
        for i, score, flag, predicted in zip(
            labeled, issues["label_score"], issues["is_label_issue"], issues["predicted_label"], strict=True
        ):
            records[i]["meta"]["moderate"]["cleanlab"].update(
                {"label_score": round(float(score), 6), "is_label_issue": bool(flag), "predicted_label": str(predicted)}
            )
            counts["flagged_cleanlab_label_issue"] += bool(flag)
        n_label = int(issues["is_label_issue"].sum())
        log.info("cleanlab: %s: %d outliers in %d records, %d label issues", source, n_outliers, len(idx), n_label)
    return counts


# --- the whole set --------------------------------------------------------------------------------


def reason_codes(cfg: _params.Moderate) -> list[str]:
    """Every reason code this configuration can drop a record for (each gets a metric, zero or not)."""
    codes = [name for name, _, _ in RULES if name != "pii"]
    if not cfg.toxicity.enable:
        codes.remove("toxic")
    if cfg.pii.action == "drop":
        codes += [f"pii_{e}" for e in cfg.pii.entities]
    if cfg.cleanlab.enable and cfg.cleanlab.enable_drop_outliers:
        codes.append("cleanlab_outlier")
    if cfg.cleanlab.enable and cfg.cleanlab.enable_drop_label_issues:
        codes.append("cleanlab_label_issue")
    return codes


def moderate_records(
    records: list[Record],
    cfg: _params.Moderate,
    *,
    seed: int,
    embedding: _params.Embedding,
    cache_dir: str | Path,
) -> tuple[list[Record], list[tuple[Record, str, str, str]], dict[str, Any]]:
    """Moderate `records`: the rules per record, then cleanlab over the kept ones.

    Args:
        records: records in the schema of stages._records (not modified).
        cfg: the ``moderate`` params section.
        seed: ``common.seed`` (cleanlab).
        embedding: ``common.embedding`` (the model and fields embedded for cleanlab).
        cache_dir: the embedding cache directory.

    Returns:
        ``(kept, rejects, metrics)``: kept records (moderated copies, in input order), rejects as
        ``(record, "moderate", reason, detail)``, and flat metrics (total, kept, dropped_<reason>,
        normalized_noinput, redacted_pii_<entity>, flagged_cleanlab_*, embedding cache counts).
    """
    records = sorted(records, key=order_key)
    dropped = dict.fromkeys(reason_codes(cfg), 0)
    kept: list[Record] = []
    rejects: list[tuple[Record, str, str, str]] = []
    for record in records:
        rec, reason, detail = check_record(record, cfg)
        if reason is None:
            kept.append(rec)
        else:
            dropped[reason] += 1
            rejects.append((rec, STAGE, reason, detail))
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
            rejects.append((rec, STAGE, hit[0], f"cleanlab {hit[2]} {scores[hit[2]]}"))
        else:
            survivors.append(rec)
    extra["normalized_noinput"] = sum("noinput" in r["meta"]["moderate"]["normalized"] for r in survivors)
    if cfg.pii.action == "redact":
        for e in cfg.pii.entities:
            extra[f"redacted_pii_{e}"] = sum(e in r["meta"]["moderate"]["redacted"] for r in survivors)
    metrics = _io.drop_metrics(len(records), len(survivors), dropped, **dict(sorted(extra.items())))
    return survivors, rejects, metrics


def run(
    params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path], cache_dir: str | Path
) -> dict[str, Any]:
    """Moderate ``inputs["in"]`` into ``outputs["out"]`` and ``outputs["rejects"]``; return the metrics.

    Args:
        params: scoped params (common.seed, common.embedding, moderate).
        inputs: ``{"in": <directory of pulled record files>}``.
        outputs: ``{"out": <kept records parquet>, "rejects": <rejected records parquet>}``.
        cache_dir: the embedding cache directory (shared with dedup).

    Returns:
        Flat metrics: total, kept, dropped_<reason> for every reason, normalizations, redactions, flags.
    """
    cfg: _params.Moderate = params.moderate
    records = read_record_dir(inputs["in"])
    kept, rejects, metrics = moderate_records(
        records, cfg, seed=params.common.seed, embedding=params.common.embedding, cache_dir=cache_dir
    )
    with _io.atomic_outputs(outputs["out"], outputs["rejects"]) as (out, rej):
        write_records(out, kept)
        write_rejects(rej, rejects)
    dropped = {k: v for k, v in metrics.items() if k.startswith("dropped_") and v}
    log.info("moderate: %d records, %d kept, dropped %s", metrics["total"], metrics["kept"], dropped or "none")
    return metrics


def main() -> None:
    """Command line: the flags of the moderate stage's cmd in dvc.yaml."""
    _io.filter_stage_main(STAGE, PARAMS, run, in_help="pulled records (directory of parquet)")


if __name__ == "__main__":
    _io.run_main(main)
