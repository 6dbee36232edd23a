"""``common``: settings several stages share (the seed, the sentence-embedding model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.core.params.base import Section

EMBED_FIELDS = ("instruction", "input", "output", "messages", "text")


class Embedding(Section):
    model: str
    fields: list[Literal[EMBED_FIELDS]] = Field(min_length=1)  # type: ignore[valid-type]
    batch_size: int = Field(gt=0)
    max_tokens: int = Field(gt=0)


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
