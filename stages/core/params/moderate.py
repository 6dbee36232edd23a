"""``moderate``: the moderation rules' thresholds, PII handling and cleanlab."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from stages.core.params.base import Section

PII_ENTITIES = ("email", "phone", "credit_card", "ip_address", "api_key")


class Language(Section):
    allowed: list[str] = Field(min_length=1)
    min_chars: int = Field(ge=0)
    min_confidence: float = Field(ge=0, le=1)


class Repetition(Section):
    max_duplicate_line_ratio: float = Field(ge=0, le=1)
    max_top_ngram_ratio: float = Field(ge=0, le=1)
    min_words: int = Field(ge=0)


class Toxicity(Section):
    enable: bool
    max_probability: float = Field(ge=0, le=1)


class Pii(Section):
    action: Literal["redact", "drop"]
    entities: list[Literal[PII_ENTITIES]]  # type: ignore[valid-type]


class Cleanlab(Section):
    enable: bool
    enable_drop_outliers: bool
    enable_drop_label_issues: bool
    min_records: int = Field(gt=0)


def _check_regexes(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
    return patterns


class Moderate(Section):
    noinput_placeholders: list[str]
    empty_output_values: list[str]
    unseen_reference_patterns: list[str]
    merged_instruction_patterns: list[str]
    canned_patterns: list[str]
    min_words_truncation_check: int = Field(gt=0)
    min_instruction_chars: int = Field(ge=0)
    max_output_chars: int = Field(gt=0)
    min_document_chars: int = Field(ge=0)
    max_document_chars: int = Field(gt=0)
    language: Language
    repetition: Repetition
    toxicity: Toxicity
    pii: Pii
    cleanlab: Cleanlab

    @field_validator("unseen_reference_patterns", "merged_instruction_patterns", "canned_patterns")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        return _check_regexes(patterns)


# The type of the top-level key; what load() validates it against.
SECTION = Moderate
