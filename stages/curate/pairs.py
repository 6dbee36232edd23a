"""Instruction pairs from completions: parsing what the LLM wrote, and Self-Instruct/Alpaca's filters on a pair.

A shared module, not a stage: the synthesize stage parses every completion with :func:`parse_completion`,
then checks each pair with :func:`check_pair` and the ROUGE-L novelty filter :class:`Novelty`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from stages.core.params.synthesize import SynthFilters

LABELS = {"question": "instruction", "instruction": "instruction", "input": "input", "answer": "output"}
LABELS |= {"output": "output", "response": "output"}
_LABEL_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?\**(" + "|".join(LABELS) + r")\**\s*:\s?(.*)$", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about grounding: an answer of only these is not checked against its chunk.
STOPWORDS = frozenset(
    re.findall(
        r"[a-z]+",
        "a an the and or but if then of to in on at by for with from as is are was were be been being it its this "
        "that these those there here what which who whom whose when where why how do does did done can could should "
        "would will may might must not no yes you your we our they their he she his her i me my so than too very also "
        "just into out up down over under about after before between each every all any some such only own same other",
    )
)


# --- parsing ----------------------------------------------------------------------------------------------------------


@dataclass
class Parsed:
    """The pairs parsed from one completion and the malformed fragments, each with its reason."""

    pairs: list[dict[str, str]]
    malformed: list[tuple[str, str, dict[str, str]]]  # (reason, detail, partial pair)


def _from_json(text: str) -> Parsed | None:
    """Pairs from a JSON object or array of objects, or None when the text is not JSON."""
    start = text.lstrip()
    if not start.startswith(("{", "[")):
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(start)
    except json.JSONDecodeError as e:
        return Parsed([], [("truncated_json", f"JSON stops at char {e.pos}: {e.msg}", {})])
    items = data if isinstance(data, list) else [data]
    pairs, malformed = [], []
    for item in items:
        if not isinstance(item, dict):
            malformed.append(("no_pair_parsed", f"JSON item is not an object: {str(item)[:60]!r}", {}))
            continue
        pair = {"instruction": "", "input": "", "output": ""}
        for k, v in item.items():
            name = LABELS.get(str(k).lower())
            if name and isinstance(v, str):
                pair[name] = v.strip()
        pairs.append(pair)
    return Parsed(pairs, malformed)


def parse_completion(text: str, finished: bool, stop: tuple[str, ...] = (), lead: str = "") -> Parsed:
    """Parse a completion into instruction/input/output pairs.

    Accepts JSON (an object or a list of objects with instruction|question, input, output|answer|response keys)
    or labelled lines (``Question:``/``Instruction:``, ``Input:``, ``Answer:``/``Output:``/``Response:``, a label's
    value running on until the next label). Text from the first of `stop` on (the model starting a new example)
    is ignored.
    `lead` is the label the prompt ended with (``Question:``): the completion continues it, unless it is JSON.
    A pair without an instruction or an answer is malformed; when the completion was cut off by the token
    limit (``finished`` false), its last pair is ``truncated_pair``.
    """
    cuts = [text.index(s) for s in stop if s in text]
    if cuts:
        text, finished = text[: min(cuts)], True
    parsed = _from_json(text)
    if parsed is None:
        text = lead + text
        pairs: list[dict[str, str]] = []
        cur: dict[str, str] | None = None
        name = ""
        for line in text.splitlines():
            m = _LABEL_LINE.match(line)
            if m:
                name = LABELS[m.group(1).lower()]
                if cur is None or name == "instruction" or cur.get(name):
                    cur = {"instruction": "", "input": "", "output": ""}
                    pairs.append(cur)
                cur[name] = m.group(2).strip()
            elif cur is not None and name:
                cur[name] = f"{cur[name]}\n{line}".strip() if line.strip() or cur[name] else cur[name]
        parsed = Parsed(pairs, [])
        if not pairs:
            detail = f"no labelled pair in {text.strip()[:80]!r}" if text.strip() else "empty completion"
            parsed.malformed.append(("no_pair_parsed", detail, {}))
    if parsed.pairs and not finished:
        parsed.malformed.append(("truncated_pair", "the completion ran into max_new_tokens", parsed.pairs.pop()))
    kept = []
    for pair in parsed.pairs:
        pair = {k: v.strip() for k, v in pair.items()}
        if not pair["instruction"]:
            parsed.malformed.append(("empty_instruction", "a pair with no question or instruction", pair))
        elif not pair["output"]:
            parsed.malformed.append(("empty_answer", "a pair with no answer or output", pair))
        else:
            kept.append(pair)
    parsed.pairs = kept
    return parsed


def lead_label(prompt: str) -> str:
    """The label a prompt ends with (``"Question:"``), which its completion continues; "" when none."""
    m = re.search(r"(?:^|\n)([A-Za-z]+:)\s*$", prompt)
    return m.group(1) if m and m.group(1)[:-1].lower() in LABELS else ""


# --- filters ----------------------------------------------------------------------------------------------------------


def content_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words that carry meaning (not in STOPWORDS)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def check_pair(pair: dict[str, str], context: str, cfg: SynthFilters) -> tuple[str | None, str]:
    """Self-Instruct/Alpaca's filters on one pair: (reason, detail), or (None, "") when it passes."""
    words = pair["instruction"].split()
    if len(words) < cfg.min_instruction_words:
        return "instruction_too_short", f"{len(words)} words < min_instruction_words {cfg.min_instruction_words}"
    if len(words) > cfg.max_instruction_words:
        return "instruction_too_long", f"{len(words)} words > max_instruction_words {cfg.max_instruction_words}"
    for word in cfg.blacklist:
        if re.search(rf"\b{re.escape(word)}\b", pair["instruction"], re.IGNORECASE):
            return "blacklisted_word", f"instruction names {word!r}, which a language model cannot see or make"
    if context:
        answer = content_words(pair["output"])
        if answer:
            have = set(content_words(context))
            ratio = sum(w in have for w in answer) / len(answer)
            if ratio < cfg.min_answer_overlap_ratio:
                return "ungrounded_answer", (
                    f"{ratio:.2f} of the answer's content words are in its chunk < min_answer_overlap_ratio "
                    f"{cfg.min_answer_overlap_ratio}"
                )
    return None, ""


class Novelty:
    """ROUGE-L F1 of an instruction against a growing pool (Self-Instruct's novelty filter)."""

    def __init__(self, pool: list[str]):
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._pool: list[list[str]] = []
        for text in pool:
            self.add(text)

    def _tokens(self, text: str) -> list[str]:
        return self._scorer._tokenizer.tokenize(text)

    def add(self, text: str) -> None:
        tokens = self._tokens(text)
        if tokens:
            self._pool.append(tokens)

    def max_score(self, text: str) -> float:
        """The highest ROUGE-L F1 of `text` against the pool (0 for an empty pool)."""
        from rouge_score.rouge_scorer import _score_lcs

        tokens = self._tokens(text)
        if not tokens:
            return 0.0
        return max((_score_lcs(ref, tokens).fmeasure for ref in self._pool), default=0.0)
