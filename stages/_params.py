"""Typed sections of `params.yaml`, loaded and validated when a stage starts.

Every section is a pydantic model with ``extra="forbid"``: an unknown or
misspelled key fails at load time, and one error lists every problem with the
value given and the names allowed there. Defaults live in ``params.yaml`` only;
the few optional per-source keys below are optional because most sources do
not need them, not to hide a default.

A stage declares the keys it reads in ``PARAMS`` (the same list as its
``params:`` in ``dvc.yaml``) and receives a :class:`Scoped` view that refuses
any other key and records what was read, so a test can hold the code, the
declaration and ``dvc.yaml`` to one another.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages._io import StageError

SOURCE_FORMATS = ("alpaca", "sharegpt", "messages", "qa", "text")
# Canonical field names per source format; `fields:` in a source maps these to
# the column names of the file.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output"),
    "sharegpt": ("conversations", "from", "value"),
    "messages": ("messages", "role", "content"),
    "qa": ("question", "answer"),
    "text": ("text",),
}
EMBED_FIELDS = ("instruction", "input", "output", "messages", "text")
PII_ENTITIES = ("email", "phone", "credit_card", "ip_address", "api_key")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- common -------------------------------------------------------------------


class Embedding(Section):
    model: str
    fields: list[Literal[EMBED_FIELDS]] = Field(min_length=1)  # type: ignore[valid-type]
    batch_size: int = Field(gt=0)
    max_tokens: int = Field(gt=0)


class Common(Section):
    seed: int
    embedding: Embedding


# --- pull ---------------------------------------------------------------------


class Source(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    format: Literal[SOURCE_FORMATS]  # type: ignore[valid-type]
    location: str
    # Optional per source: column renames, a label column (for cleanlab), and
    # for hf:// locations the pinned revision and split.
    fields: dict[str, str] = {}
    label_field: str | None = None
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
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {dupes}")
        return sources


# --- moderate -----------------------------------------------------------------


class Language(Section):
    allowed: list[str] = Field(min_length=1)
    min_chars: int = Field(ge=0)
    min_confidence: float = Field(ge=0, le=1)


class Repetition(Section):
    max_duplicate_line_ratio: float = Field(ge=0, le=1)
    max_top_ngram_ratio: float = Field(ge=0, le=1)
    min_words: int = Field(ge=0)


class Toxicity(Section):
    enable: bool
    max_probability: float = Field(ge=0, le=1)


class Pii(Section):
    action: Literal["redact", "drop"]
    entities: list[Literal[PII_ENTITIES]]  # type: ignore[valid-type]


class Cleanlab(Section):
    enable: bool
    enable_drop_outliers: bool
    enable_drop_label_issues: bool
    min_records: int = Field(gt=0)


def _check_regexes(patterns: list[str]) -> list[str]:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") from None
    return patterns


class Moderate(Section):
    noinput_placeholders: list[str]
    empty_output_values: list[str]
    unseen_reference_patterns: list[str]
    merged_instruction_patterns: list[str]
    canned_patterns: list[str]
    min_words_truncation_check: int = Field(gt=0)
    min_instruction_chars: int = Field(ge=0)
    max_output_chars: int = Field(gt=0)
    min_document_chars: int = Field(ge=0)
    max_document_chars: int = Field(gt=0)
    language: Language
    repetition: Repetition
    toxicity: Toxicity
    pii: Pii
    cleanlab: Cleanlab

    @field_validator("unseen_reference_patterns", "merged_instruction_patterns", "canned_patterns")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        return _check_regexes(patterns)


# --- dedup --------------------------------------------------------------------


class MinHash(Section):
    shingle_words: int = Field(gt=0)
    num_permutations: int = Field(gt=0)
    jaccard_threshold: float = Field(gt=0, le=1)


class Semantic(Section):
    enable: bool
    cosine_threshold: float = Field(gt=0, le=1)


class Reference(Section):
    path: str
    fields: list[str] = Field(min_length=1)


class Dedup(Section):
    minhash: MinHash
    semantic: Semantic
    references: list[Reference]


# --- the whole file -----------------------------------------------------------


class Params(Section):
    common: Common
    pull: Pull
    moderate: Moderate
    dedup: Dedup


def _allowed_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The field names allowed at `loc` (the parent of an unknown key), if known."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return None
        ann = cur.model_fields[part].annotation
        # unwrap list[X] / X | None to X
        for arg in getattr(ann, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                ann = arg
        cur = ann
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return None


def format_errors(err: ValidationError, model: type[BaseModel], path: str) -> str:
    """One message listing every problem: key, value given, and what is allowed."""
    lines = [f"{path}: {err.error_count()} problem(s) in the params:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_at(model, loc[:-1])
            lines.append(f"  - {key}: unknown key (value {e['input']!r}); allowed here: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required key is missing (every key is set in params.yaml)")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  - {key}: {msg} (got {e['input']!r})")
    return "\n".join(lines)


def validate(raw: Any, path: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise StageError listing every problem."""
    if not isinstance(raw, dict):
        raise StageError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise StageError(format_errors(err, Params, path)) from None


class UndeclaredParam(AttributeError):
    """A stage read a params key its PARAMS list (and dvc.yaml) does not declare."""


class Scoped:
    """A read-only view of :class:`Params` limited to the declared key paths.

    Reading a declared path (``p.moderate``, ``p.common.seed``) returns the
    validated value and records the path in ``read``; reading anything else
    raises :class:`UndeclaredParam`, so a stage cannot depend on a key that
    ``dvc.yaml`` does not list for it.
    """

    def __init__(self, params: BaseModel, keys: tuple[str, ...], prefix: str = "", read: set[str] | None = None):
        self._params = params
        self._keys = keys
        self._prefix = prefix
        self.read: set[str] = set() if read is None else read

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        path = self._prefix + name
        value = getattr(self._params, name)
        if path in self._keys:
            self.read.add(path)
            return value
        if any(k.startswith(path + ".") for k in self._keys):
            return Scoped(value, self._keys, path + ".", self.read)
        raise UndeclaredParam(f"this stage reads params key {path!r}, which its PARAMS (and dvc.yaml) does not list")


def scope(params: Params, keys: tuple[str, ...] | list[str]) -> Scoped:
    """Limit validated params to `keys`, checking each key exists."""
    for key in keys:
        cur: Any = params
        for part in key.split("."):
            if not hasattr(cur, part):
                raise StageError(f"PARAMS lists {key!r}, which is not a params key")
            cur = getattr(cur, part)
    return Scoped(params, tuple(keys))


def read_yaml(path: str | Path) -> Any:
    """Parse a params file; a missing or malformed file is a StageError naming it."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: params file not found; run from the project root") from None
    except yaml.YAMLError as e:
        raise StageError(f"{path}: not valid YAML: {e}") from None


def load(path: str | Path, keys: tuple[str, ...] | list[str], overrides: dict[str, Any] | None = None) -> Scoped:
    """Read, validate and scope `path`; `overrides` maps dotted keys to values (for tests)."""
    path = Path(path)
    raw = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        cur = raw
        *parents, last = dotted.split(".")
        for part in parents:
            cur = cur[part]
        cur[last] = value
    return scope(validate(raw, str(path)), keys)
