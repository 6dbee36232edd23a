"""``report``: how many examples the report shows."""

from __future__ import annotations

from pydantic import Field

from stages.core.params.base import Section


class Report(Section):
    # rejected examples shown per drop reason
    max_examples_per_reason: int = Field(ge=0)
    # knowledge-gain and generation examples shown per task and variant
    max_examples_per_task: int = Field(ge=0)


# The type of the top-level key; what load() validates it against.
SECTION = Report
