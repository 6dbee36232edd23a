"""``template.<variant>``: how records are rendered into model text."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from stages.core.params.base import Section, check_placeholders


class AlpacaTemplate(Section):
    """``template.<variant>`` with ``format: alpaca``."""

    format: Literal["alpaca"]
    prompt_with_input: str
    prompt_without_input: str
    prompt_next_turn: str
    documents_as: Literal["text", "skip"]

    @field_validator("prompt_with_input")
    @classmethod
    def _with_input(cls, value: str) -> str:
        return check_placeholders(value, {"instruction", "input"})

    @field_validator("prompt_without_input", "prompt_next_turn")
    @classmethod
    def _without_input(cls, value: str) -> str:
        return check_placeholders(value, {"instruction"})


class ChatTemplate(Section):
    """``template.<variant>`` with ``format: chat_template``."""

    format: Literal["chat_template"]
    system_prompt: str
    documents_as: Literal["user_assistant", "skip"]
    document_prompt: str = Field(min_length=1)


FORMATS: dict[str, type[AlpacaTemplate] | type[ChatTemplate]] = {
    "alpaca": AlpacaTemplate,
    "chat_template": ChatTemplate,
}

TemplateSpec = Annotated[AlpacaTemplate | ChatTemplate, Field(discriminator="format")]


# The type of the top-level key; what load() validates it against.
SECTION = dict[str, TemplateSpec]
