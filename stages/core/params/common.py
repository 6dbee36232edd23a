"""``common``: settings several stages share (the seed, the sentence-embedding model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.core.params.base import Section

EMBED_FIELDS = ("instruction", "input", "output", "messages", "text")


class Embedding(Section):
    model: str
    fields: list[Literal[EMBED_FIELDS]] = Field(min_length=1)  # type: ignore[valid-type]
    batch_size: int = Field(gt=0)
    max_tokens: int = Field(gt=0)


class Common(Section):
    seed: int
    embedding: Embedding


# The type of the top-level key; what load() validates it against.
SECTION = Common
