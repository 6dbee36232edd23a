"""``synthesize``: the generator's sampling, the two generators and the filters of their pairs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.core.params.base import Section, check_placeholders
from stages.core.params.variants import ModelSpec


class Generation(Section):
    """``synthesize.generation``: how the generator model samples (every value is part of each call's cache key)."""

    # float32 is the faster dtype on CPU
    dtype: Literal["float32", "bfloat16"]
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    min_p: float = Field(ge=0, lt=1)
    max_new_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    use_chat_template: bool


class DocumentGenerator(Section):
    """``synthesize.documents``: pairs grounded in chunks of the curated documents."""

    enable: bool
    max_chunk_chars: int = Field(ge=200)
    min_chunk_chars: int = Field(ge=1)
    use_prose_only: bool
    # model calls per chunk, each with its own seed
    samples_per_chunk: int = Field(gt=0)
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return check_placeholders(value, {"document"})


class SelfInstruct(Section):
    """``synthesize.self_instruct``: new tasks from seed tasks (Self-Instruct's seed_tasks.jsonl format)."""

    enable: bool
    seed_tasks: str
    num_prompts: int = Field(ge=0)
    seeds_per_prompt: int = Field(gt=0)
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return check_placeholders(value, {"examples"})


class SynthFilters(Section):
    """``synthesize.filters``: Self-Instruct/Alpaca's filters on the parsed pairs."""

    min_instruction_words: int = Field(ge=1)
    max_instruction_words: int = Field(ge=1)
    # words the model cannot act on (matched as whole words, case-insensitive)
    blacklist: list[str]
    # ROUGE-L F1 against the seeds, the existing pairs and earlier generations, above which a pair is dropped
    max_rouge_l: float = Field(gt=0, le=1)
    min_answer_overlap_ratio: float = Field(ge=0, le=1)
    use_moderate_rules: bool
    # min_instruction_words <= max_instruction_words: checked by Section, as every min_*/max_* pair


class Synthesize(Section):
    # the model that generates (the generator stage materializes it into its own checkpoint)
    generator: ModelSpec
    generation: Generation
    documents: DocumentGenerator
    self_instruct: SelfInstruct
    filters: SynthFilters


# The type of the top-level key; what load() validates it against.
SECTION = Synthesize
