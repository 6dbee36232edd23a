"""Text signals the moderation rules judge by: truncation, Gopher repetition, language, offensiveness.

A shared module, not a stage: pure functions of a text and a params subsection, each returning why the text
has the defect (a short detail) or None. :mod:`stages.curate.rules` turns them into verdicts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from stages.core.params.moderate import Language, Repetition

# Words a finished sentence does not end on.
_DANGLING = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "that",
        "which",
        "whose",
        "because",
        "if",
        "than",
        "these",
        "those",
        "their",
        "its",
        "his",
        "her",
        "my",
        "your",
        "our",
        "is",
        "are",
        "was",
        "were",
        "been",
        "such",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "must",
        "may",
        "might",
        "i",
    ]
)
_CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)
_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
_TABLE_ROW = re.compile(r"^\s*\|.*$", re.M)


def clip(s: str, n: int = 60) -> str:
    """`s`, cut to `n` characters with an ellipsis."""
    return s if len(s) <= n else s[: n - 1] + "…"


# --- truncation -------------------------------------------------------------------------------------------------------


def truncation(text: str, min_words: int) -> str | None:
    """Why the last sentence of `text` is cut off, or None.

    An open code fence is always a cut. Otherwise only texts of at least `min_words` words are judged, and
    only on evidence that a sentence was left open: a last character that continues a sentence (a comma, a
    colon, a dash, an opening bracket, an ampersand) or a last word that no finished sentence ends on ("the",
    "and", "of", "can"). A missing period alone is no evidence: extractive answers, titles, hashtags, list
    items, verse and code end without one.
    """
    if text.count("```") % 2:
        return "ends inside an open code fence"
    words = text.split()
    if len(words) < min_words:
        return None
    body = text.rstrip()
    last = body[-1]
    last_line = body.splitlines()[-1].strip()
    if last in ",:;-–—([{&":
        if last == "-" and last_line.startswith(("-", "*")):
            return None  # a markdown rule or an empty list item
        return f"ends on {last!r}: {clip(last_line[-40:])!r}"
    last_word = re.sub(r"^\W+|\W+$", "", words[-1]).lower()
    if last.isalpha() and last_word in _DANGLING and len(last_line.split()) >= 3:
        return f"ends on the word {last_word!r}: {clip(last_line[-40:])!r}"
    return None


# --- repetition (Gopher) ----------------------------------------------------------------------------------------------


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(elements that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        seen.add(x)
    return n, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = min(grams.items(), key=lambda kv: (-kv[1], kv[0]))
    return len(gram) * count


def _duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters of the n-grams that repeat an earlier one, overlaps counted once (datatrove's walk)."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(words) - n + 1:
        gram = "".join(words[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def repetition(text: str, cfg: Repetition) -> str | None:
    """Why `text` is repetitive by Gopher's rules (Rae et al. 2021, Table A1), or None.

    The text is judged without fenced code and table rows, and only when at least ``min_words`` words are
    left. Duplicate lines: share of lines that repeat an earlier line, share of characters in them. Top
    n-gram: characters of the most frequent n-gram times its count, over the characters of the text. Duplicate
    n-grams: characters in n-grams that repeat an earlier one, over the characters of the text.
    """
    prose = _TABLE_ROW.sub("", _FENCED.sub("", text)).strip()
    words = prose.split()
    if len(words) < cfg.min_words:
        return None
    lines = [line.strip() for line in prose.splitlines() if line.strip()]
    n_dup, dup_chars = _duplicates(lines)
    if n_dup / len(lines) > cfg.max_duplicate_line_ratio:
        return f"{n_dup} of {len(lines)} lines repeat an earlier one (max ratio {cfg.max_duplicate_line_ratio})"
    total = len(prose)
    if dup_chars / total > cfg.max_duplicate_line_char_ratio:
        return f"repeated lines hold {dup_chars / total:.2f} of chars (max {cfg.max_duplicate_line_char_ratio})"
    for n, limit in cfg.max_top_ngram_ratio.items():
        ratio = _top_ngram_chars(words, n) / total
        if ratio > limit:
            return f"the top {n}-gram holds {ratio:.2f} of chars (max {limit})"
    for n, limit in cfg.max_duplicate_ngram_ratio.items():
        ratio = _duplicate_ngram_chars(words, n) / total
        if ratio > limit:
            return f"repeated {n}-grams hold {ratio:.2f} of chars (max {limit})"
    return None


# --- language ---------------------------------------------------------------------------------------------------------


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


# --- offensiveness ----------------------------------------------------------------------------------------------------


# Texts scored in advance by :func:`toxicity_batch` (the texts of a batch of records, in one call).
_known_toxicity: dict[str, float] = {}


def toxicity(texts: list[str]) -> list[float]:
    """alt-profanity-check's probability that each text is offensive (its model ships with the package).

    A text scored in advance by :func:`toxicity_batch` is looked up; the others are scored here, all in one call.
    """
    missing = [t for t in dict.fromkeys(texts) if t not in _known_toxicity]
    scored = dict(zip(missing, _predict(missing), strict=True)) if missing else {}
    return [_known_toxicity[t] if t in _known_toxicity else scored[t] for t in texts]


def _predict(texts: list[str]) -> list[float]:
    if not texts:
        return []
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(texts)]


@contextmanager
def toxicity_batch(texts: Iterable[str]) -> Iterator[None]:
    """Score `texts` in one call for the :func:`toxicity` calls inside the block (a record at a time, as rules run).

    One call per text costs scikit-learn's input checks each time (~80 ms a record, 70% of the rules' time on
    T0); a row's probability depends on its own text only (a linear model over its sparse n-gram counts, then
    the calibration), so the values are the same bits as one call per text.
    """
    distinct = list(dict.fromkeys(texts))
    _known_toxicity.update(zip(distinct, _predict(distinct), strict=True))
    try:
        yield
    finally:
        _known_toxicity.clear()
