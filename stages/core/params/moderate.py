"""``moderate``: the moderation rules' thresholds, PII handling and cleanlab."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from stages.core.params.base import Section
from stages.core.params.dedup import Ann

PII_ENTITIES = ("email", "phone", "credit_card", "ip_address", "api_key")
# The moderation rules, in the order they run; each is a reason code.
RULE_NAMES = (
    "control_characters",
    "empty_output",
    "too_short",
    "too_long",
    "unseen_reference",
    "merged_instructions",
    "canned_response",
    "truncated_output",
    "repetitive",
    "wrong_language",
    "toxic",
)
Action = Literal["drop", "flag", "off"]


def _check_regexes(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
    return patterns


class Language(Section):
    allowed: list[str] = Field(min_length=1)
    min_chars: int = Field(ge=0)
    min_confidence: float = Field(ge=0, le=1)


class Repetition(Section):
    max_duplicate_line_ratio: float = Field(ge=0, le=1)
    max_duplicate_line_char_ratio: float = Field(ge=0, le=1)
    max_top_ngram_ratio: dict[int, float]
    max_duplicate_ngram_ratio: dict[int, float]
    min_words: int = Field(ge=0)

    @field_validator("max_top_ngram_ratio", "max_duplicate_ngram_ratio")
    @classmethod
    def _ngrams(cls, ratios: dict[int, float]) -> dict[int, float]:
        bad = {n: r for n, r in ratios.items() if not (1 <= n <= 20 and 0 <= r <= 1)}
        if bad:
            raise ValueError(f"n-gram sizes must be 1..20 and ratios 0..1, got {bad}")
        return dict(sorted(ratios.items()))


class Toxicity(Section):
    max_probability: float = Field(ge=0, le=1)
    min_words: int = Field(ge=1)
    # An instruction that asks to handle offensive text ("censor the profanity") is not toxic data.
    task_patterns: list[str]
    # Abuse, not a mention: a text is scored only when it holds one of these (strong profanity, slurs).
    abuse_patterns: list[str]

    @field_validator("task_patterns", "abuse_patterns")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        return _check_regexes(patterns)


class Pii(Section):
    action: Literal["redact", "drop", "flag"]
    entities: list[Literal[PII_ENTITIES]]  # type: ignore[valid-type]


class Cleanlab(Section):
    enable: bool
    enable_drop_outliers: bool
    enable_drop_label_issues: bool
    min_records: int = Field(gt=0)
    # Datalab's own parameters (cleanlab 2.9): neighbours per check, and the thresholds as Datalab reads
    # them: an outlier's mean k-NN distance exceeds Q3 + (1/outlier_threshold - 1) x IQR; a near-duplicate's
    # nearest neighbour lies within near_duplicate_threshold x the median nearest-neighbour distance.
    outlier_k: int = Field(gt=0)
    outlier_threshold: float = Field(gt=0, le=1)
    near_duplicate_k: int = Field(gt=0)
    near_duplicate_threshold: float = Field(ge=0)
    label_k: int = Field(gt=0)
    min_label_vote_accuracy: float = Field(ge=0, le=1)
    # The neighbour search (stages.curate.knn): exact below ann.min_records records of a source, from there on
    # the IVF index of the semantic pass (same schema as dedup.semantic.ann, its own values).
    ann: Ann

    @model_validator(mode="after")
    def _enough_records(self) -> Cleanlab:
        k = max(self.outlier_k, self.near_duplicate_k, self.label_k)
        if self.min_records <= k:
            raise ValueError(f"min_records ({self.min_records}) must exceed every k (largest: {k})")
        return self


class Moderate(Section):
    actions: dict[Literal[RULE_NAMES], Action]  # type: ignore[valid-type]
    fix_encoding: bool
    noinput_placeholders: list[str]
    empty_output_values: list[str]
    empty_if_open_ended: list[str]
    placeholder_output_patterns: list[str]
    unseen_reference_patterns: list[str]
    url_task_patterns: list[str]
    # A request to write or run code: the URLs, files and images it names are the code's arguments.
    code_task_patterns: list[str]
    request_max_words: int = Field(gt=0)
    merged_instruction_patterns: list[str]
    merged_output_patterns: list[str]
    canned_patterns: list[str]
    # A request to play an AI ("role-play as a sentient AI"): "I am an AI" is then the answer asked for.
    canned_task_patterns: list[str]
    min_words_truncation_check: int = Field(gt=0)
    min_instruction_chars: int = Field(ge=0)
    max_output_chars: int = Field(gt=0)
    min_document_chars: int = Field(ge=0)
    max_document_chars: int = Field(gt=0)
    max_field_chars: int = Field(gt=0)
    language: Language
    repetition: Repetition
    toxicity: Toxicity
    pii: Pii
    cleanlab: Cleanlab

    @field_validator(
        "placeholder_output_patterns",
        "unseen_reference_patterns",
        "url_task_patterns",
        "code_task_patterns",
        "merged_instruction_patterns",
        "merged_output_patterns",
        "canned_patterns",
        "canned_task_patterns",
    )
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        return _check_regexes(patterns)

    @field_validator("actions")
    @classmethod
    def _every_rule(cls, actions: dict[str, str]) -> dict[str, str]:
        missing = [r for r in RULE_NAMES if r not in actions]
        if missing:
            raise ValueError(f"every rule needs an action (drop, flag or off); missing {missing}")
        return {r: actions[r] for r in RULE_NAMES}


# The type of the top-level key; what load() validates it against.
SECTION = Moderate
