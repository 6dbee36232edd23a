"""Chat behaviour: does an answer end in turn, stay in its turn, and say something other than the documents?

The ``chat_behaviour`` probe type (``stages/probe/types.py``) answers ordinary user prompts greedily through the
variant's template and scores each answer on three checks, 1 (passes) or 0:

    ended          the model ended the answer itself: the last generated token is an end token (the tokenizer's EOS,
                   the generation config's, or the template's end-of-turn token: :func:`end_of_turn_ids`), within
                   ``probe.max_new_tokens``. An answer cut by the budget, or by an Alpaca stop string (a new
                   ``### `` section), did not end itself.
    no_turn_spill  the answer holds no template marker (:func:`turn_markers`): no special token of the tokenizer
                   (``<|im_start|>``), none of the texts the template puts before a user turn (ChatML
                   ``<|im_start|>user``; Alpaca ``### Instruction:``, and the engine's new-section stop ``\\n### ``),
                   and no line that starts with a role name (``User:``, ``Human:``, ``Assistant:``) or a common
                   template's turn marker (:data:`GENERIC_MARKERS`): a model that writes the next user turn itself.
    not_verbatim   no run of ``min_verbatim_words`` consecutive words of the answer occurs in the task's
                   ``documents`` (words: lower-cased ``\\w+`` runs, so punctuation and Markdown do not hide a copy):
                   the answer is not document text recited.
    chat_ok        all three: the main score.

The answer is scored as generated, decoded with its special tokens, up to (not including) its first end token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from stages.probe.model import ALPACA_STOP, Rendering, cut_at_stop
from stages.probe.tables import Row
from stages.probe.tasks import TaskData

# Turn markers of common chat formats, counted at the start of a line (ChatML, Phi, Llama 3, Gemma, Llama 2, Alpaca).
GENERIC_MARKERS = (
    "<|im_start|>", "<|user|>", "<|assistant|>", "<|start_header_id|>", "<start_of_turn>", "[INST]", "### Instruction:"
)  # fmt: skip
_ROLE_LINE = re.compile(r"(?m)^[ \t]*(?:User|Human|Assistant)[ \t]*:")
_WORD = re.compile(r"\w+")
_SECTION = re.compile(r"(?m)^(### [^\n{}]*:)")
_MARK = "STEEPMARK"


def end_of_turn_ids(template_format: str, tokenizer: Any) -> set[int]:
    """The template's end-of-turn token: the special token that follows an assistant turn (empty: none, or alpaca).

    Found by rendering a one-turn conversation through the chat template and reading the first token after the
    assistant's text (ChatML ``<|im_end|>``, Gemma ``<end_of_turn>``, Llama 3 ``<|eot_id|>``).
    """
    if template_format != "chat_template" or not tokenizer.chat_template:
        return set()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARK}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rfind(_MARK) + len(_MARK) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special = set(tokenizer.all_special_ids) | {int(i) for i, t in added.items() if getattr(t, "special", False)}
    first = next((i for i in ids if tokenizer.decode([i]).strip()), None)
    return {first} if first is not None and first in special else set()


def turn_markers(template_format: str, prompts: Any, tokenizer: Any) -> tuple[str, ...]:
    """The texts that mark a new turn of the variant's template, found anywhere in an answer (sorted).

    chat_template: the tokenizer's special tokens, and what the template renders before a user's text (stripped, its
    end-of-turn token removed). alpaca: the section headers of ``prompts`` (``### Instruction:``, ...) and ``\\n### ``,
    where the engine cuts a new section.
    """
    out: set[str] = set()
    if template_format == "alpaca":
        for text in (prompts.with_input, prompts.without_input, prompts.next_turn):
            out |= set(_SECTION.findall(text))
        out.add("\n### ")
    else:
        out |= {t for t in tokenizer.all_special_tokens if t and t not in (tokenizer.pad_token, tokenizer.unk_token)}
        if tokenizer.chat_template:
            messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
            before = tokenizer.apply_chat_template(messages, tokenize=False)
            after = tokenizer.apply_chat_template([*messages, {"role": "user", "content": _MARK}], tokenize=False)
            if after.startswith(before):
                head = after[len(before) : after.find(_MARK)]
                for eot in tokenizer.convert_ids_to_tokens(sorted(end_of_turn_ids(template_format, tokenizer))):
                    head = head.replace(eot, "")
                if head.strip():
                    out.add(head.strip())
    return tuple(sorted(out))


def words(text: str) -> list[str]:
    """The words the verbatim check compares: lower-cased ``\\w+`` runs."""
    return _WORD.findall(text.lower())


def windows(text: str, n: int) -> set[tuple[str, ...]]:
    """Every run of `n` consecutive words of `text`."""
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def first_match(text: str, markers: Iterable[str]) -> str | None:
    """The first template marker in `text`: a marker of :func:`turn_markers` anywhere, or a role or common turn
    marker at the start of a line; None when there is none."""
    hits = [(i, m) for m in markers if (i := text.find(m)) >= 0]
    hits += [(m.start(), m.group(0).strip()) for m in _ROLE_LINE.finditer(text)]
    hits += [(m.start(), g) for g in GENERIC_MARKERS for m in re.finditer(rf"(?m)^[ \t]*{re.escape(g)}", text)]
    return min(hits)[1] if hits else None


def item_scores(
    answer: str, ended: bool, markers: Iterable[str], document_windows: set[tuple[str, ...]], n: int
) -> dict[str, float]:
    """The checks of one answer (module docstring): ended, no_turn_spill, not_verbatim and chat_ok, each 0 or 1.

    Args:
        answer: the generated text, special tokens kept, up to its first end token.
        ended: whether the last generated token was an end token (within the budget).
        markers: the variant's template markers (:func:`turn_markers`).
        document_windows: every `n`-word run of the documents (:func:`windows`).
        n: ``min_verbatim_words``.
    """
    spill = first_match(answer, markers) is not None
    verbatim = bool(windows(answer, n) & document_windows)
    scores = {"ended": float(ended), "no_turn_spill": float(not spill), "not_verbatim": float(not verbatim)}
    return scores | {"chat_ok": float(all(v == 1.0 for v in scores.values()))}


def rows(
    task: TaskData, rendered: list[str], new: list[list[int]], end_ids: set[int], tokenizer: Any, template: Rendering
) -> list[Row]:
    """Per-item rows of a chat_behaviour task from its generations (the engine's new token ids per item).

    An answer ended when its last token is an end token and no Alpaca stop string came first (after a stop string
    the row is padded, and the pad token may be the EOS). Its text: the new tokens decoded with their special
    tokens, end tokens and padding left out.
    """
    n = task.task.min_verbatim_words
    if n is None:
        raise RuntimeError(f"broken invariant: chat_behaviour task {task.name!r} has no min_verbatim_words")
    stops = ALPACA_STOP if template.format == "alpaca" else ()
    markers = turn_markers(template.format, template.prompts, tokenizer)
    docs = set().union(*(windows(text, n) for _, text in task.documents))
    out = []
    for (index, _), prompt, ids in zip(task.items, rendered, new, strict=True):
        text = tokenizer.decode([t for t in ids if t not in end_ids and t != tokenizer.pad_token_id])
        ended = bool(ids) and ids[-1] in end_ids and cut_at_stop(text, stops) == text
        scores = item_scores(text, ended, markers, docs, n)
        out.append({"item": index, "prompt": prompt, "reference": "", "prediction": text, "scores": scores})
    return out
