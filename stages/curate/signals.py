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
from itertools import pairwise
from typing import Any

from stages.core.params.moderate import Language, Repetition

# Words a finished sentence does not end on: articles, conjunctions, possessives, "of", "as", "than". A stranded
# preposition ends many ("someone to swim with", "what it is made of"... but "of" rarely), and so does a verb.
_DANGLING = frozenset(
    "a an the and or but nor of as than because if whose their its my your our such can".split()  # noqa: SIM905
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
    "and", "of", "can"; not a stranded preposition: "someone to swim with"). A missing period alone is no
    evidence: extractive answers, titles, hashtags, list items, verse and code end without one. Neither is a
    ``;`` (a statement of code or SQL ends on it, as a block ends on its closing bracket), an emoticon
    (``:(``, ``-_-``), an open range after a number ("2012–"), a tokenized closing bracket (``-rrb-``), a
    comma after a finished sentence ("what?,"), a mark after a list item's value, the blank last field of a
    form (two or more lines end on a colon), or a last word that is code (``$a``).
    """
    if text.count("```") % 2:
        return "ends inside an open code fence"
    words = text.split()
    if len(words) < min_words:
        return None
    body = text.rstrip()
    last = body[-1]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    last_line = lines[-1]
    if last in ",:-–—([{&":
        if _complete_ending(body, lines):
            return None
        return f"ends on {last!r}: {clip(last_line[-40:])!r}"
    last_word = re.sub(r"^\W+|\W+$", "", words[-1]).lower()
    prose_word = re.fullmatch(r"[A-Za-z']+[.…]*", words[-1]) is not None
    if last.isalpha() and prose_word and last_word in _DANGLING and len(last_line.split()) >= 3:
        return f"ends on the word {last_word!r}: {clip(last_line[-40:])!r}"
    return None


# a last token that closes what it opened: an emoticon ":(" ";-[" "D:", or a tokenized bracket "-rrb-"
_CLOSED_TOKEN = re.compile(
    r"(?i)(?:[:;=][-'^o]?[()\[\]{}<>|/\\]+|(?:^|\s)[()\[\]{}<>|/\\dD][-'^o]?[:;=]|(?:^|\s)(?:-_-|\^_\^|t_t|-r[rsc]b-))$"
)


def _complete_ending(body: str, lines: list[str]) -> bool:
    """Whether a text ending on a sentence-continuing character is complete all the same."""
    last = body[-1]
    if _CLOSED_TOKEN.search(body):
        return True
    if _LIST_ITEM.match(lines[-1]) or re.fullmatch(r"[-*_=•]+", lines[-1]):
        return True  # a list item or a value in a list ("- venue is the convention center ,"), a markdown rule
    if last in "-–—" and body[-2:-1].isdigit():
        return True  # an open range "2012–"
    if last in ",:" and len(body) > 1 and body.rstrip(",: ")[-1:] in ".?!":
        return True  # a stray mark after a finished sentence: "which will cause what?,"
    # a form left to fill in: two or more short lines end on a colon ("Name:", "Signature:")
    return last == ":" and sum(line.endswith(":") and len(line.split()) <= 6 for line in lines) >= 2


def mirrors(answer: str, request: str) -> bool:
    """Whether `answer` ends as its material does: an option picked verbatim, a paraphrase of a cut sentence.

    Then what looks cut was cut in the request, and the answer is right to follow it.
    """
    words, asked = answer.split(), request.split()
    return " ".join(words[-4:]) in " ".join(asked) or (bool(asked) and asked[-1] == words[-1])


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


def _top_ngram(words: list[str], n: int) -> tuple[str, int]:
    """The most frequent n-gram of `words` and its count (ties: the first in sort order)."""
    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return min(grams.items(), key=lambda kv: (-kv[1], kv[0])) if grams else ("", 0)


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


# Lines that are structure, not prose: their repeats are by design. Code (a statement, a brace, a keyword, a
# comment), list items, table rows, "key: value" and JSON members, dialogue turns ("Speaker: ...").
_CODE_LINE = re.compile(
    r"^(?:[{}()\[\]<>#@$/*]|--|\.\.\.$|(?:def|class|function|return|import|from|using|namespace|package|public|"
    r"private|protected|static|const|let|var|if|elif|else|for|foreach|while|switch|case|try|catch|finally|"
    r"throw|echo|print|printf|SELECT|INSERT|UPDATE|DELETE|CREATE|FROM|WHERE)\b|console\.|System\.|std::)"
    r"|[;{}]$|^\w+(?:\.\w+)*\s*[-+*/]?=[^=]|^\w+(?:\.\w+)*\(.*\);?$"
)
_LIST_ITEM = re.compile(r"^(?:[-*•+>|]\s|\d{1,3}[.):]\s|[a-zA-Z][.)]\s|\(\w{1,3}\)\s)")
_KEY_VALUE = re.compile(r"^\"?[^\s:\"][^:\n]{0,39}\"?:(?:\s|$)")


def _prose_lines(text: str) -> list[str]:
    """The lines of `text` that are prose: fenced code, table rows, structure lines and enumerations left out."""
    text = _TABLE_ROW.sub("", _FENCED.sub("", text))
    lines = [
        line
        for line in (raw.strip() for raw in text.splitlines())
        if line
        and not _CODE_LINE.search(line)
        and not _LIST_ITEM.match(line)
        and not (_KEY_VALUE.match(line) and len(line.split(":", 1)[0].split()) <= 5)
    ]
    # an enumeration ("iteration number 1", "iteration number 2"): lines alike but for their numbers
    raw, masked = Counter(lines), Counter(re.sub(r"\d+", "#", line) for line in lines)
    return [line for line in lines if raw[line] > 1 or masked[re.sub(r"\d+", "#", line)] == 1]


def _is_verse(lines: list[str]) -> bool:
    """Whether prose `lines` read as verse (a poem, lyrics): four or more lines, three in four of 16 words or fewer."""
    return len(lines) >= 4 and sum(len(line.split()) <= 16 for line in lines) >= 0.75 * len(lines)


def repetition(text: str, cfg: Repetition) -> str | None:
    """Why `text` is repetitive by Gopher's rules (Rae et al. 2021, Table A1), or None.

    Only the prose of the text is judged (:func:`_prose_lines`: code, lists, tables, "key: value" lines, JSON
    and dialogue turns repeat by design), and only when at least ``min_words`` words of it are left.
    Duplicate lines: share of lines that repeat an earlier line, share of characters in them. Top n-gram:
    characters of the most frequent n-gram times its count, over the characters of the text. Duplicate
    n-grams: characters in n-grams that repeat an earlier one, over the characters of the text. Verse (a
    poem, a song, :func:`_is_verse`) repeats its chorus by design: there only a line that repeats the line
    right before it counts, and the n-gram rules are not applied. An n-gram rule judges a text only where its
    most frequent n-gram occurs three times or more (twice is a restatement, not a loop).
    """
    lines = _prose_lines(text)
    prose = "\n".join(lines)
    words = prose.split()
    if len(words) < cfg.min_words:
        return None
    verse = _is_verse(lines)
    if verse:
        repeats = [b for a, b in pairwise(lines) if a == b]
        n_dup, dup_chars = len(repeats), sum(map(len, repeats))
    else:
        n_dup, dup_chars = _duplicates(lines)
    kind = "verse lines repeat the line before" if verse else "lines repeat an earlier one"
    if n_dup / len(lines) > cfg.max_duplicate_line_ratio:
        return f"{n_dup} of {len(lines)} {kind} (max ratio {cfg.max_duplicate_line_ratio})"
    total = len(prose)
    if dup_chars / total > cfg.max_duplicate_line_char_ratio:
        return f"repeated lines hold {dup_chars / total:.2f} of chars (max {cfg.max_duplicate_line_char_ratio})"
    if verse:
        return None
    # a phrase said twice is a restatement (an answer that repeats the question's wording); a loop says it
    # three times or more, so an n whose most frequent n-gram occurs fewer than three times is not judged
    top = {n: _top_ngram(words, n) for n in {*cfg.max_top_ngram_ratio, *cfg.max_duplicate_ngram_ratio}}
    for n, limit in cfg.max_top_ngram_ratio.items():
        gram, count = top[n]
        ratio = len(gram) * count / total
        if count >= 3 and ratio > limit:
            return f"the top {n}-gram holds {ratio:.2f} of chars (max {limit})"
    for n, limit in cfg.max_duplicate_ngram_ratio.items():
        if top[n][1] < 3:
            continue
        ratio = _duplicate_ngram_chars(words, n) / total
        if ratio > limit:
            return f"repeated {n}-grams hold {ratio:.2f} of chars (max {limit})"
    return None


# --- language ---------------------------------------------------------------------------------------------------------


# Material a request quotes, in any language: a review to classify, a sentence to translate.
_QUOTED_MATERIAL = re.compile(
    r'"[^"]{20,3000}?"|“[^”]{20,3000}?”|«[^»]{20,3000}?»|‘[^’]{20,3000}?’|(?<![\w\'])\'[^\']{20,3000}?\'(?![\w\'])'
)
_SENTENCE = re.compile(r"(?<=[.?!:])\s+|\n+")


def unquoted(text: str) -> str:
    """`text` without the material it quotes: quoted spans of 20+ characters (``'...'`` not inside a word)."""
    return _QUOTED_MATERIAL.sub(" ", text)


def without_names(text: str) -> str:
    """`text` without its capitalized words past each sentence's first: names say nothing of a language
    ("Quintus Caecilius Metellus was the second son of ..." reads as Latin with them, as English without)."""
    return " ".join(" ".join(s.split()[:1] + [w for w in s.split()[1:] if not w[0].isupper()]) for s in sentences(text))


def sentences(text: str) -> list[str]:
    """`text` split into sentences and lines."""
    return [s for s in _SENTENCE.split(text) if s.strip()]


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


def request_language(request: str, answers: list[str], cfg: Language) -> tuple[str, float, str] | None:
    """(language, probability, what was judged) of a task, or None where it reads as allowed or can't be judged.

    See :func:`stages.curate.rules.wrong_language`: the request without its quoted material first, then any
    plain sentence of it (or it without its names) in an allowed language keeps it, then the request and the
    answers (the answers alone where the request is too short).
    """
    request = unquoted(request)
    found = language(request, cfg)
    if found is not None and found[0] in cfg.allowed and found[1] >= 0.5:
        return None  # the request reads as an allowed language more than as any other
    for sentence in [*sentences(request), without_names(request)]:
        said = language(sentence, cfg)
        if said is not None and said[0] in cfg.allowed and said[1] >= cfg.min_confidence:
            return None  # the task is asked in an allowed language, about material (or names) in another
    if found is not None and found[1] >= cfg.min_confidence:
        return (*found, "request")
    # a request that is all quoted material says nothing of the task's language: the answer does
    found = language("\n\n".join(answers if found is None else [request, *answers]), cfg)
    if found is None or found[1] < cfg.min_confidence:
        return None
    return (*found, "request and answer (the request alone is too short to judge)")


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
