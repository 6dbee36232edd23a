"""``template.<variant>``: how records are rendered into model text.

``format`` and ``prompts`` say how a turn is rendered (the probe stages read these two keys, to prompt the model
as it was trained); ``documents_as`` and ``document_prompt`` what becomes of documents (the template stage only).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from stages.core.params.base import Section, check_placeholders


class AlpacaPrompts(Section):
    """``template.<variant>.prompts`` of the alpaca format: how a turn is rendered."""

    with_input: str
    without_input: str
    # later user turns of a conversation
    next_turn: str

    @field_validator("with_input")
    @classmethod
    def _with_input(cls, value: str) -> str:
        return check_placeholders(value, {"instruction", "input"})

    @field_validator("without_input", "next_turn")
    @classmethod
    def _without_input(cls, value: str) -> str:
        return check_placeholders(value, {"instruction"})


class ChatPrompts(Section):
    """``template.<variant>.prompts`` of the chat_template format (the tokenizer's template renders the turns)."""

    # the system turn of records that have none ("": none added)
    system: str


class AlpacaTemplate(Section):
    """``template.<variant>`` with ``format: alpaca``."""

    format: Literal["alpaca"]
    prompts: AlpacaPrompts
    documents_as: Literal["text", "skip"]


class ChatTemplate(Section):
    """``template.<variant>`` with ``format: chat_template``."""

    format: Literal["chat_template"]
    prompts: ChatPrompts
    # text: plain causal-LM text (knowledge infusion), as in alpaca; user_assistant: document_prompt answered by it
    documents_as: Literal["text", "user_assistant", "skip"]
    document_prompt: str = Field(min_length=1)


FORMATS: dict[str, type[AlpacaTemplate] | type[ChatTemplate]] = {
    "alpaca": AlpacaTemplate,
    "chat_template": ChatTemplate,
}

TemplateSpec = Annotated[AlpacaTemplate | ChatTemplate, Field(discriminator="format")]


# The type of the top-level key; what load() validates it against.
SECTION = dict[str, TemplateSpec]
