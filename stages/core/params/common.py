"""``common``: settings several stages share (the seed, the sentence-embedding model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.core.params.base import Section

EMBED_FIELDS = ("instruction", "input", "output", "messages", "text")


class Embedding(Section):
    """How texts become vectors (:mod:`stages.curate.embed`); every field is part of the cache key."""

    # transformer: the sentence-transformers model itself; static: token vectors distilled from it
    kind: Literal["transformer", "static"]
    model: str
    fields: list[Literal[EMBED_FIELDS]] = Field(min_length=1)  # type: ignore[valid-type]
    batch_size: int = Field(gt=0)
    # at most 512: the transformer's positions, and what keeps the static sums exact (static_embed.MAX_TOKENS)
    max_tokens: int = Field(gt=0, le=512)
    # PCA dimensions of the static table (kind static only); at most the model's hidden size (MiniLM: 384)
    static_dims: int = Field(gt=0, le=1024)


class Executor(Section):
    """Where per-batch work runs (:mod:`stages.core.executor`): local processes, or a Ray cluster's tasks."""

    kind: Literal["local", "ray"]
    address: str | None

    @model_validator(mode="after")
    def _address_for_ray_only(self) -> Executor:
        if self.kind == "ray" and not self.address:
            raise ValueError(
                "kind ray needs the address of a running cluster: address: <head host>:<port> (the port of "
                "`ray start --head --port`), or auto for one started on this machine; got none"
            )
        if self.kind == "local" and self.address is not None:
            raise ValueError(f"kind local takes no address (address: null); got {self.address!r}")
        return self


class Common(Section):
    seed: int
    workers: int = Field(ge=0)  # processes for per-record work; 0: every core (os.cpu_count())
    executor: Executor
    embedding: Embedding


# The type of the top-level key; what load() validates it against.
SECTION = Common
