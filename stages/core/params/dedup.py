"""``dedup``: MinHash, semantic and reference-overlap settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.core.params.base import Section


class MinHash(Section):
    action: Literal["drop", "flag"]
    shingle_words: int = Field(gt=0)
    num_permutations: int = Field(gt=0)
    jaccard_threshold: float = Field(gt=0, le=1)
    output_jaccard_threshold: float = Field(ge=0, le=1)


class Ann(Section):
    """The IVF index of the semantic pass (stages.curate.semantic), used from min_records records on."""

    min_records: int = Field(ge=2)
    records_per_list: int = Field(ge=1)
    probe_lists: int = Field(ge=1)
    kmeans_iterations: int = Field(ge=0)
    kmeans_sample_per_list: int = Field(ge=1)


class Semantic(Section):
    enable: bool
    action: Literal["drop", "flag"]
    cosine_threshold: float = Field(gt=0, le=1)
    ann: Ann


class Reference(Section):
    path: str
    fields: list[str] = Field(min_length=1)


class Dedup(Section):
    minhash: MinHash
    semantic: Semantic
    references: list[Reference]


# The type of the top-level key; what load() validates it against.
SECTION = Dedup
