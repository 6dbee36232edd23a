"""``pull``: the sources to read and how to reach web pages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from stages.core.params.base import Section, unique_names

SOURCE_FORMATS = ("alpaca", "sharegpt", "messages", "qa", "text", "fact")
# Canonical field names per source format; `fields:` in a source maps these to
# the column names of the file.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output"),
    "sharegpt": ("conversations", "from", "value"),
    "messages": ("messages", "role", "content"),
    "qa": ("question", "answer"),
    "text": ("text",),
    # a facts file (stages/core/facts.py) has its own fixed fields: no renames
    "fact": (),
}


class Source(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    format: Literal[SOURCE_FORMATS]  # type: ignore[valid-type]
    location: str
    # Optional per source: column renames, a label column (for cleanlab), and
    # for hf:// locations the pinned revision and split.
    fields: dict[str, str] = Field(default_factory=dict)
    label_field: str | None = None
    # Markers the file appends to its texts (an end-of-text token such as
    # "<|endoftext|>"), removed from the end of every text of the source.
    strip_suffixes: list[str] = Field(default_factory=list)
    revision: str | None = None
    split: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Source:
        allowed = FORMAT_FIELDS[self.format]
        bad = sorted(set(self.fields) - set(allowed))
        if bad:
            raise ValueError(
                f"source {self.name!r}: fields {bad} are not fields of format {self.format!r}; "
                f"map any of {list(allowed)} to your column names"
            )
        if self.location.startswith("hf://"):
            if not self.revision or not self.split:
                raise ValueError(
                    f"source {self.name!r}: an hf:// location needs a pinned `revision` "
                    "(a commit sha or tag) and a `split`, so that a rerun reads the same rows"
                )
        elif self.revision or self.split:
            raise ValueError(f"source {self.name!r}: revision and split apply to hf:// locations only")
        if self.location.startswith(("http://", "https://")) and self.format != "text":
            raise ValueError(
                f"source {self.name!r}: a web page (http/https location) is pulled as one document; "
                f"set `format: text` (got {self.format!r})"
            )
        return self


class Web(Section):
    timeout_s: float = Field(gt=0)
    max_bytes: int = Field(gt=0)
    user_agent: str


class Pull(Section):
    sources: list[Source] = Field(min_length=1)
    web: Web

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[Source]) -> list[Source]:
        unique_names(sources, "source")
        # a name is a file name (data/pulled/<name>.parquet): `Src` and `src` collide on a case-insensitive file system
        folded: dict[str, list[str]] = {}
        for s in sources:
            folded.setdefault(s.name.casefold(), []).append(s.name)
        clashes = [names for names in folded.values() if len(names) > 1]
        if clashes:
            raise ValueError(
                f"source names must differ in more than letter case (each names a file, and file systems that ignore "
                f"case would make them one); clashing: {clashes}. Fix: rename all but one"
            )
        return sources


# The type of the top-level key; what load() validates it against.
SECTION = Pull
