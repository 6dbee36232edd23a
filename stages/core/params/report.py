"""``report``: how many examples the report shows."""

from __future__ import annotations

from pydantic import Field

from stages.core.params.base import Section


class Report(Section):
    # rejected examples shown per drop reason
    max_examples_per_reason: int = Field(ge=0)
    # knowledge-gain and generation examples shown per task and variant
    max_examples_per_task: int = Field(ge=0)
    # the bar a rule's measured precision (reviews/*.csv, `steep review`) is held to, by what the rule does:
    # below it the report marks the rule with the params line that makes it act less
    min_drop_precision: float = Field(ge=0, le=1)
    min_flag_precision: float = Field(ge=0, le=1)
    min_rewrite_precision: float = Field(ge=0, le=1)

    def bars(self) -> dict[str, float]:
        """The bar per action (drop, flag, rewrite)."""
        return {"drop": self.min_drop_precision, "flag": self.min_flag_precision, "rewrite": self.min_rewrite_precision}


# The type of the top-level key; what load() validates it against.
SECTION = Report
