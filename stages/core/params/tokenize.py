"""``tokenize.<variant>``: sequence length, masking, packing and the validation split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.core.params.base import Section


class TokenizeParams(Section):
    """``tokenize.<variant>``."""

    max_tokens: int = Field(ge=2)
    truncation_side: Literal["left", "right"]
    use_completion_only_loss: bool
    use_eos: bool
    use_packing: bool
    use_padding: bool
    validation_ratio: float = Field(ge=0, lt=1)


# The type of the top-level key; what load() validates it against.
SECTION = dict[str, TokenizeParams]
