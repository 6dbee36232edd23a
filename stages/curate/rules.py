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
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import numpy as np

from stages.core.params.moderate import Moderate
from stages.core.records import TEXT_KINDS, Record
from stages.curate import normalize, signals
from stages.curate.normalize import norm_value, normalize_encoding, normalize_noinput
from stages.curate.pii import redact_record
from stages.curate.signals import clip

log = logging.getLogger("steep.moderate")

Verdict = tuple[bool, str | None, str]  # (keep, reason code or None, detail)
Filter = Callable[[Record, Moderate], Verdict]
KEEP: Verdict = (True, None, "")

# doc_qa: a question about a document and its answer, checked as qa; restatement: a one-fact text (written with the
# facts it states: too short for the document length rules, checked for control characters, language and toxicity)
INSTRUCTION_KINDS = ("instruction", "qa", "doc_qa")
ALL_KINDS = ("instruction", "qa", "conversation", "document", "restatement", "doc_qa")

# C0 and C1 control characters and DEL; tab, newline and carriage return are text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# An output that is nothing but a link or an image: a URL, a markdown link or image, an <img> tag.
_LINK_ONLY = re.compile(r"^\s*(?:!?\[[^\]]*\]\(\s*\S+?\s*\)|<img\b[^>]*>|(?:https?://|www\.)\S+)\s*$", re.I)
_IMAGE = re.compile(r"^\s*(?:!\[|<img\b)|\.(?:png|jpe?g|gif|svg|webp|bmp)\b|imgur\.com", re.I)
# An instruction that asks for an open-ended text (an explanation, a story), not a pick among options.
_OPEN_ENDED = re.compile(
    r"(?i)^\W*(?:please\s+)?"
    r"(?:explain|describe|write|generate|create|compose|summari[sz]e|discuss|draft|tell me about)\b"
)
# A quoted string: what a request quotes (a question to compare, a title) is data, not a pointer.
_QUOTED = re.compile(r'"[^"\n]{1,300}"|“[^”\n]{1,300}”')
# An instruction that asks for a link (then a bare link is the right answer, unless it is an image).
_ASKS_FOR_LINK = re.compile(r"(?i)\b(?:url|link|website|web ?site|web page|webpage|address|domain|href|site)\b")


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


def _requests(record: Record, max_words: int) -> list[tuple[str, str]]:
    """The text of the instruction and input that reads as the request, by paragraph.

    A record of at most `max_words` words is all request. A longer one carries material (an article, a
    review, a passage to answer from, a table of facts): what that material mentions is part of it, not a
    pointer to something the model cannot see, so only its first and last paragraphs are read, where a
    request sits, and only when they are short.
    """
    paras = [
        (f"{field} paragraph {i + 1}", para)
        for field in ("instruction", "input")
        for i, para in enumerate(p for p in re.split(r"\n\s*\n", record[field]) if p.strip())
    ]
    if sum(len(p.split()) for _, p in paras) <= max_words:
        return paras
    ends = paras[:1] + paras[-1:] if len(paras) > 1 else []
    return [(w, p) for w, p in ends if len(p.split()) <= max_words // 2]


def _first_match(patterns: list[str], texts: Iterable[tuple[str, str]]) -> str | None:
    for where, text in texts:
        for i, pattern in enumerate(patterns):
            m = re.search(pattern, text)
            if m:
                return f"{where}: pattern {i} matched {clip(m.group())!r}"
    return None


# --- the rules ------------------------------------------------------------------------------------


def control_characters(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record whose text holds a control character (binary junk, broken encodings)."""
    for where, text in _all_texts(record):
        m = _CONTROL.search(text)
        if m:
            return False, "control_characters", f"{where}: U+{ord(m.group()):04X} at char {m.start()}"
    return KEEP


def empty_output(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output (or assistant turn) that says nothing: "", "N/A", an output led by a "<No Output>" tag.

    "none" and "null" (``empty_if_open_ended``) say nothing only as the answer to an open-ended instruction
    ("Explain ...", "Write ..."); to "Which of these numbers is prime?" they are right.
    """
    answers = _answers(record)
    if not answers:
        return False, "empty_output", "conversation has no assistant turn"
    empty = {norm_value(v) for v in cfg.empty_output_values}
    if _OPEN_ENDED.match(record["instruction"]):
        empty |= {norm_value(v) for v in cfg.empty_if_open_ended}
    for where, text in answers:
        if norm_value(text) in empty:
            return False, "empty_output", f"{where} is {text!r}"
    detail = _first_match(cfg.placeholder_output_patterns, answers)
    return (False, "empty_output", f"placeholder: {detail}") if detail else KEEP


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
    """Drop a request that points at a URL, image or attachment the model cannot see, or a link-only output.

    Only the request paragraphs are read (see :func:`_requests`), quoted strings left out. A URL counts where
    the request asks to use what it points at, unless the record carries material of its own (more than
    ``request_max_words`` words) or the instruction is about the URL itself (``url_task_patterns``). A request
    to write or run code (``code_task_patterns``) names URLs, files and images as the code's arguments: no
    pattern applies to it. An input that is only a link is material the model cannot read. An output that is
    only a link or an image reference is caught too, unless the instruction asks for a link (an image link is
    never an answer).
    """
    requests = _requests(record, cfg.request_max_words)
    # a URL inside carried material (a news story's "Read more: http://...") or in a task about the URL
    # itself (cite it, extract its domain) points at nothing the model needs
    carries_material = sum(len(record[f].split()) for f in ("instruction", "input")) > cfg.request_max_words
    url_task = any(re.search(p, record["instruction"]) for p in [*cfg.url_task_patterns, *cfg.code_task_patterns])
    patterns = [p for p in cfg.unseen_reference_patterns if not ((carries_material or url_task) and _matches_url(p))]
    if any(re.search(p, record["instruction"]) for p in cfg.code_task_patterns):
        patterns = []  # code takes the URL, the file or the image as its argument
    requests = [(w, _QUOTED.sub('""', t)) for w, t in requests]
    detail = _first_match(patterns, requests)
    if detail:
        return False, "unseen_reference", detail
    if record["input"] and _LINK_ONLY.match(record["input"]) and not url_task:
        return False, "unseen_reference", f"input is only a link: {clip(record['input'].strip())!r}"
    output = record["output"]
    link_only = bool(output) and _LINK_ONLY.match(output) is not None
    if link_only and (_IMAGE.search(output) or not _ASKS_FOR_LINK.search(record["instruction"])):
        return False, "unseen_reference", f"output is only a link: {clip(output.strip())!r}"
    return KEEP


@cache
def _matches_url(pattern: str) -> bool:
    """Whether a reference pattern is a URL pattern (it matches a bare URL)."""
    return bool(re.search(pattern, "read https://example.com/page"))


def merged_instructions(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record into which another instruction/response block was merged.

    A second block is an "Instruction:" header followed later by an "Output:"/"Response:" header (in any
    field), or an "Instruction:" header inside the output; a lone "Output: 8" is a printed result, not a merge.
    """
    texts = [(f, record[f]) for f in ("instruction", "input", "output") if record[f]]
    detail = _first_match(cfg.merged_instruction_patterns, texts)
    if not detail and record["output"]:
        detail = _first_match(cfg.merged_output_patterns, [("output", record["output"])])
    return (False, "merged_instructions", detail) if detail else KEEP


def canned_response(record: Record, cfg: Moderate) -> Verdict:
    """Drop a canned, deflecting or refusing answer ("As an AI language model...").

    Not where the request asks to play an AI (``canned_task_patterns``), nor where the phrase is one the
    request holds (a string whose vowels the code counts).
    """
    request = _request_text(record) + "\n" + record["input"]
    if any(re.search(p, request) for p in cfg.canned_task_patterns):
        return KEEP
    for where, text in _answers(record):
        for i, pattern in enumerate(cfg.canned_patterns):
            m = re.search(pattern, text)
            if m and m.group().lower() not in request.lower():
                return False, "canned_response", f"{where}: pattern {i} matched {clip(m.group())!r}"
    return KEEP


def truncated_output(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output (or assistant turn) that stops mid-sentence, unless it ends as its material does."""
    request = " ".join(record[f] for f in ("instruction", "input") if record[f]) or _request_text(record)
    for where, text in _answers(record):
        why = signals.truncation(text, cfg.min_words_truncation_check) if text else None
        if why and not signals.mirrors(text, request):
            return False, "truncated_output", f"{where}: {why}"
    return KEEP


def repetitive(record: Record, cfg: Moderate) -> Verdict:
    """Drop an output or document that repeats its lines or phrases (degenerate generation, boilerplate)."""
    where = "text" if record["kind"] == "document" else "output"
    why = signals.repetition(record[where], cfg.repetition)
    return (False, "repetitive", f"{where}: {why}") if why else KEEP


def _request_text(record: Record) -> str:
    """What a record asks, in the language its data is in: the instruction, the user turns, a document."""
    if record["kind"] in TEXT_KINDS:
        return record["text"]
    if record["kind"] == "conversation":
        return "\n\n".join(m["content"] for m in record["messages"] if m["role"] == "user")
    return record["instruction"]


def wrong_language(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record whose request (code blocks left out) is confidently not in an allowed language.

    The request is judged first, not the answer, and without the material it quotes (a review in Spanish
    to classify, a French sentence to translate: :func:`signals.unquoted`). A task that asks for French
    output, a list of Latin species or a lorem-ipsum input is English data when one sentence of its request
    reads as English with ``min_confidence`` (or the request without its names: Latin ones read as Latin), or
    the request as a whole does (its most likely language, p >= 0.5). Otherwise a request too short or too
    mixed for ``min_confidence`` falls back to the request with the answer (the answer alone where the
    request is too short without its quoted material).
    """
    answers = [t for _, t in _answers(record)] if record["kind"] not in TEXT_KINDS else []
    found = signals.request_language(_request_text(record), answers, cfg.language)
    if found is None or found[0] in cfg.language.allowed:
        return KEEP
    lang, prob, where = found
    return False, "wrong_language", f"{where} in {lang} with probability {prob:.3f} (allowed {cfg.language.allowed})"


def _toxic_parts(record: Record, cfg: Moderate) -> list[tuple[str, str]]:
    """(where, text) of what :func:`toxic` scores: none for a task about offensive text."""
    text = record["kind"] in TEXT_KINDS
    if not text and any(re.search(p, _request_text(record)) for p in cfg.toxicity.task_patterns):
        return []
    parts: list[tuple[str, str]] = []
    if text:
        # a long document dilutes a bag-of-words score: score its paragraphs
        paras = [p for p in re.split(r"\n\s*\n", record["text"]) if p.strip()]
        parts = [(f"text paragraph {i + 1}", p) for i, p in enumerate(paras)]
    else:
        parts = [(w, t) for w, t in _answers(record) if t]
    abusive = [(w, t) for w, t in parts if any(re.search(p, t) for p in cfg.toxicity.abuse_patterns)]
    return [(w, t) for w, t in abusive if len(t.split()) >= cfg.toxicity.min_words]


def toxic(record: Record, cfg: Moderate) -> Verdict:
    """Drop a record that teaches offensive text: an output, assistant turn or document paragraph scored so.

    The request is not scored (a review to classify may be rude; the label is not), and a task that asks to
    handle offensive text (``toxicity.task_patterns``: "censor the profanity") is not toxic data. Only a text
    that holds strong profanity or a slur (``toxicity.abuse_patterns``) is scored: the model's bag of words
    scores a mention ("a pig", "stupid", "kill") as it scores abuse.
    """
    parts = _toxic_parts(record, cfg)
    probs = signals.toxicity([t for _, t in parts])
    if probs:
        i = int(np.argmax(probs))
        if probs[i] > cfg.toxicity.max_probability:
            return False, "toxic", f"{parts[i][0]}: probability {probs[i]:.3f} (max {cfg.toxicity.max_probability})"
    return KEEP


# --- PII ------------------------------------------------------------------------------------------


def pii_verdict(rec: Record, cfg: Moderate) -> tuple[Verdict, dict[str, int], dict[str, str]]:
    """PII in `rec` by ``pii.action``: (verdict, spans redacted per entity, flags); redacts `rec` in place.

    redact: plausible personal data is replaced by its tag (:mod:`stages.curate.pii`); drop: a record holding
    some is dropped as ``pii_<entity>``; flag: the record stays as it is, flagged ``pii_<entity>``. Where the
    entity is the task's subject ("format this phone number") the record is never rewritten nor dropped: it
    stays as it is, flagged ``pii_subject``. The details name where and how many, never the PII itself.
    """
    action, entities = cfg.pii.action, cfg.pii.entities
    target = rec if action == "redact" else copy.deepcopy(rec)
    counts, subject = redact_record(target, entities)
    flags = {"pii_subject": f"the task is about {', '.join(subject)}: left as it is"} if subject else {}
    if action == "redact":
        return KEEP, counts, flags
    hit = next((e for e in entities if counts.get(e)), None)
    if hit is None:
        return KEEP, {}, flags
    where = next(w for (w, a), (_, b) in zip(_all_texts(rec), _all_texts(target), strict=True) if a != b)
    if action == "drop":
        return (False, f"pii_{hit}", f"{where}: {counts[hit]} {hit} span(s)"), {}, flags
    flags.update({f"pii_{e}": f"{where}: {counts[e]} {e} span(s)" for e in entities if counts.get(e)})
    return KEEP, {}, flags


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
]


def check_record(record: Record, cfg: Moderate) -> tuple[Record, str | None, str]:
    """Moderate one record by the rules (not cleanlab, which needs the whole set).

    A field over its hard bound (:func:`stages.curate.normalize.oversized`) is judged first, as ``too_long``,
    before anything reads it; then the normalizations (line endings, encoding, placeholder input), then the rules.
    Each rule acts as ``actions`` says: ``drop`` rejects the record under the rule's reason code, ``flag``
    keeps it with the reason and detail in ``meta.moderate.flags``, ``off`` skips the rule. Returns
    ``(moderated copy, None, "")`` when kept: placeholder input blanked, PII handled per ``pii.action`` and
    ``meta["moderate"]`` filled in; or ``(record as given, reason, detail)`` when the first dropping rule
    drops it. The input record is never modified.
    """
    huge = normalize.oversized(record, cfg) if cfg.actions["too_long"] != "off" else None
    if huge and cfg.actions["too_long"] == "drop":
        return record, "too_long", huge
    rec = {**record, "messages": [dict(m) for m in record["messages"]], "meta": copy.deepcopy(record["meta"])}
    normalized = normalize.normalize_line_endings(rec) + normalize_encoding(rec, cfg)
    normalized += normalize_noinput(rec, cfg) if rec["kind"] in INSTRUCTION_KINDS else []
    passed: list[str] = []
    flags: dict[str, str] = {"too_long": huge} if huge else {}
    for name, kinds, rule in RULES:
        action = cfg.actions[name]
        if rec["kind"] not in kinds or action == "off":
            continue
        keep, reason, detail = rule(rec, cfg)
        if keep:
            passed.append(name)
        elif action == "drop":
            return record, reason, detail
        else:
            flags[name] = detail
    (keep, reason, detail), redacted, pii_flags = pii_verdict(rec, cfg)
    if not keep:
        return record, reason, detail
    passed.append("pii")
    rec["meta"]["moderate"] = {
        "passed": passed,
        "flags": flags | pii_flags,
        "normalized": normalized,
        "redacted": redacted,
        "cleanlab": {},
    }
    return rec, None, ""


def check_records(records: Sequence[Record], cfg: Moderate) -> list[tuple[Record, str | None, str]]:
    """:func:`check_record` on each of `records`, in order: one batch of moderate's per-record pass.

    Module level (not in the stage), so a worker process or a Ray task imports this module, not the stage's.
    """
    # the texts the toxic rule will score, scored in one call (as given: a text that normalization changes
    # is scored when its rule runs); a record dropped for an oversized field is never read, so not scored either
    read = [r for r in records if cfg.actions["too_long"] != "drop" or not normalize.oversized(r, cfg)]
    texts = [t for r in read for _, t in _toxic_parts(r, cfg)] if cfg.actions["toxic"] != "off" else []
    with signals.toxicity_batch(texts):
        return [check_record(record, cfg) for record in records]
