"""``tokenize.<variant>``: sequence length, masking, packing, the validation split and the data mixture."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from stages.core.params.base import Section

# The record kinds of stages.core.records (not imported: a params schema depends on nothing but pydantic).
KINDS = ("instruction", "conversation", "qa", "document", "restatement", "doc_qa")
# A repeat factor: copies of a row in the train split (fractions by a seeded hash of its id; 0 leaves the rows out).
Factor = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]


class Mixture(Section):
    """``tokenize.<variant>.mixture``: repeat factors of the train split, per source and per kind.

    A row's factor is its source's factor times its kind's factor (1 for a source or kind not listed): 3 = three
    passes over it per epoch, 0.5 = a seeded half of it, 0 = none of it. Validation is never repeated.
    """

    sources: dict[str, Factor]
    kinds: dict[Literal[KINDS], Factor]  # type: ignore[valid-type]

    def factor(self, source: str, kind: str) -> float:
        """The repeat factor of a row of `source` and `kind`."""
        return self.sources.get(source, 1.0) * self.kinds.get(kind, 1.0)  # type: ignore[call-overload]


class TokenizeParams(Section):
    """``tokenize.<variant>``."""

    max_tokens: int = Field(ge=2)
    truncation_side: Literal["left", "right"]
    use_completion_only_loss: bool
    use_eos: bool
    use_packing: bool
    use_padding: bool
    validation_ratio: float = Field(ge=0, lt=1)
    # the kinds whose rows may go to validation (by the hash, at validation_ratio); []: every kind. [doc_qa]: the
    # validation loss is measured on held-out qa_seen question/answer pairs, never on document-only facts.
    validation_kinds: list[Literal[KINDS]]  # type: ignore[valid-type]
    mixture: Mixture


# The type of the top-level key; what load() validates it against.
SECTION = dict[str, TokenizeParams]
