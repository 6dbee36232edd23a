"""Normalizations: fixes that keep a record, written into its meta (line endings, repaired encoding, blanked
placeholder input); and the bound on field sizes checked before anything reads a record.

A shared module, not a stage: :func:`stages.curate.rules.check_record` applies them before the rules, so the
rules judge the repaired text.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from stages.core.params.moderate import Moderate
from stages.core.records import Record


def norm_value(s: str) -> str:
    """Lowercase, whitespace collapsed, surrounding spaces and dots removed ("N/A." == "n/a")."""
    return " ".join(s.lower().split()).strip(" .")


_LINE_ENDING = re.compile(r"\r\n?")
# Latin-1 supplement and C1 characters: where mojibake ("â\x80\x94" for an em dash) shows itself.
_MOJIBAKE_HINT = re.compile(r"[\x80-\xff]")


@cache
def _ftfy_config() -> Any:
    """ftfy fixing broken encodings only: quotes, widths, ligatures, line breaks and HTML are left as they are."""
    import ftfy

    return ftfy.TextFixerConfig(
        unescape_html=False,
        remove_terminal_escapes=False,
        fix_latin_ligatures=False,
        fix_character_width=False,
        uncurl_quotes=False,
        fix_line_breaks=False,
        remove_control_chars=False,
        normalization="NFC",
        explain=False,
    )


def normalize_encoding(record: Record, cfg: Moderate) -> list[str]:
    """Repair mojibake (UTF-8 read as Latin-1/cp1252) in every text in place with ftfy; return the normalizations.

    Only texts with a Latin-1 or C1 character are handed to ftfy, which changes a text only where a
    different decoding explains it better; what it cannot explain is left to ``control_characters``.
    """
    if not cfg.fix_encoding:
        return []
    import ftfy

    changed = False
    for field in ("instruction", "input", "output", "text"):
        if record[field] and _MOJIBAKE_HINT.search(record[field]):
            fixed = ftfy.fix_text(record[field], _ftfy_config())
            changed |= fixed != record[field]
            record[field] = fixed
    for m in record["messages"]:
        if _MOJIBAKE_HINT.search(m["content"]):
            fixed = ftfy.fix_text(m["content"], _ftfy_config())
            changed |= fixed != m["content"]
            m["content"] = fixed
    return ["encoding"] if changed else []


def normalize_noinput(record: Record, cfg: Moderate) -> list[str]:
    """Blank a placeholder input ("<noinput>", "N/A", ...) in place; return the normalizations made."""
    placeholders = {norm_value(p) for p in cfg.noinput_placeholders}
    if record["input"] and norm_value(record["input"]) in placeholders:
        record["input"] = ""
        return ["noinput"]
    return []


def normalize_line_endings(record: Record) -> list[str]:
    """Write every line break of every text as ``\\n`` in place (``\\r\\n`` from Windows, as a quoted CSV field
    keeps it, and a lone ``\\r``); return the normalizations made. A model trained on ``\\r\\n`` learns to write it."""
    changed = False
    for field in ("instruction", "input", "output", "text"):
        if "\r" in record[field]:
            record[field] = _LINE_ENDING.sub("\n", record[field])
            changed = True
    for m in record["messages"]:
        if "\r" in m["content"]:
            m["content"] = _LINE_ENDING.sub("\n", m["content"])
            changed = True
    return ["line_endings"] if changed else []


def oversized(record: Record, cfg: Moderate) -> str | None:
    """Why a field of `record` is too long to read at all, or None: an instruction, input, output or turn over
    ``max_field_chars``, a text over ``max_document_chars``.

    Every field the model trains on has a bound here, whatever the kind, and
    :func:`stages.curate.rules.check_record` checks it before anything else reads the record (normalization, the
    other rules, the toxicity model), so a 20 MB field costs a length check, not minutes of regular expressions.
    """
    fields = [(f, record[f], cfg.max_field_chars) for f in ("instruction", "input", "output")]
    fields += [(f"messages[{i}]", m["content"], cfg.max_field_chars) for i, m in enumerate(record["messages"])]
    fields.append(("text", record["text"], cfg.max_document_chars))
    for where, text, limit in fields:
        if len(text) > limit:
            name = "max_document_chars" if where == "text" else "max_field_chars"
            return f"{where} has {len(text)} chars ({name} {limit})"
    return None
