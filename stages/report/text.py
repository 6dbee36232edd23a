"""Values and text as the report's cells show them: numbers, counts, shares, p-values, clipped excerpts, and the
question inside a templated prompt.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Characters kept per cell: a rejected prompt, a one-line excerpt (rejected response, detail) and a generated answer.
CLIP_PROMPT = 100
CLIP_SHORT = 160
CLIP_LONG = 600
# The rendered user turn inside a prompt, for showing the question a templated prompt asks (Alpaca, ChatML,
# Gemma, Llama 3): display only; a prompt none of them matches is shown whole.
_USER_TURN = (
    re.compile(r"### Instruction:\n(.*?)\n\n### (?:Input|Response):", re.S),
    re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S),
    re.compile(r"<start_of_turn>user\n(.*?)<end_of_turn>", re.S),
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
)
# Control characters (C0 but tab and newline, DEL, C1) and the bidirectional controls that reorder how a line shows
# (a "Trojan source" text reads differently from what it holds): written out, never passed on.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def fmt_num(value: Any, digits: int = 3, sign: bool = False) -> str:
    """A float with fixed decimals ("—" when absent)."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def fmt_count(value: Any) -> str:
    """A metric value as a reader wants it: thousands separators, 4 significant digits, yes/no."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def fmt_pct(part: float, whole: float) -> str:
    """`part` as a percentage of `whole`, one decimal ("—" when `whole` is 0)."""
    return f"{100 * part / whole:.1f}%" if whole else "—"


def fmt_p(p: Any) -> str:
    """A p-value, three decimals, or ``<0.001`` ("—" when absent)."""
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _visible(text: str) -> str:
    """Control characters written out (``\\x07``, ``\\u202e``): a reject for a control character shows which."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text
    )


def clip(text: str, limit: int, one_line: bool = True) -> str:
    """`text` cut to `limit` characters (an ellipsis marks the cut); `one_line` shows line breaks as ``↵``."""
    text = _visible(text.strip())
    text = re.sub(r"[ \t]*\n[ \t]*", " ↵ ", text) if one_line else re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def question_of(prompt: str) -> str:
    """The user's text inside a templated prompt (the last user turn), or the prompt itself when no known template
    (Alpaca, ChatML, Gemma, Llama 3) matches."""
    for pattern in _USER_TURN:
        found = pattern.findall(prompt)
        if found:
            return found[-1].strip()
    return prompt.strip()
