"""Typed sections of `params.yaml`, loaded and validated when a stage starts.

Every section is a pydantic model with ``extra="forbid"``: an unknown or
misspelled key fails at load time, and one error lists every problem with the
value given and the names allowed there. Defaults live in ``params.yaml`` only;
the few optional per-source keys below are optional because most sources do
not need them, not to hide a default.

Every section refuses what lax parsing would take silently: a non-finite
float (``.inf``, ``nan``), a boolean where a number is expected (``seed:
true`` is not 1), and a ``min_<x>`` above its ``max_<x>``.

A stage validates the whole file before it does any work (:func:`load`): a
typo in any section stops every stage. It declares the keys it reads in
``PARAMS`` (the same list as its ``params:`` in ``dvc.yaml``) and receives a
:class:`Scoped` view that refuses any other key and records what was read, so
a test can hold the code, the declaration and ``dvc.yaml`` to one another.
"""

from __future__ import annotations

import importlib
import string
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from stages.core.io import StageError


class BoolForNumber:
    """A boolean given where a number is expected, put in its place so that the number's own check fails there.

    Pydantic's lax mode reads ``true`` as 1 for an int or a float; in a numeric key a boolean is a slip, not a 1.
    Swapped for this marker before validation, it fails as "not a valid integer" at its own key, beside every
    other problem of the file, and :func:`format_errors` says what it was.
    """

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _mark_bools(value: Any, ann: Any) -> Any:
    """`value` with every boolean that `ann` expects a number in (at any depth of lists and dicts) marked."""
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        if bool in arms:
            return value
        for arm in arms:
            marked = _mark_bools(value, arm)
            if marked is not value:
                return marked
        return value
    if isinstance(value, bool):
        return BoolForNumber(value) if ann in (int, float) else value
    if origin in (list, tuple, set, frozenset) and isinstance(value, list) and args:
        marked = [_mark_bools(v, args[0]) for v in value]
        return marked if any(m is not v for m, v in zip(marked, value, strict=True)) else value
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        items = [(_mark_bools(k, args[0]), _mark_bools(v, args[1])) for k, v in value.items()]
        changed = any(k2 is not k or v2 is not v for (k2, v2), (k, v) in zip(items, value.items(), strict=True))
        return dict(items) if changed else value
    return value


class Section(BaseModel):
    """A model of params.yaml: unknown keys, non-finite floats, booleans for numbers and min > max refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_number(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: _mark_bools(v, fields[k].annotation) if k in fields else v for k, v in data.items()}

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Section:
        """Every ``min_<x>`` / ``max_<x>`` pair of a model, checked against each other (None: not set)."""
        fields = type(self).model_fields
        problems = []
        for name in fields:
            top = f"max_{name[4:]}"
            if not name.startswith("min_") or top not in fields:
                continue
            low, high = getattr(self, name), getattr(self, top)
            if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
                problems.append(f"{name} ({low}) is above {top} ({high})")
        if problems:
            raise ValueError("; ".join(problems) + ": a minimum cannot exceed its maximum")
        return self


def unique_names(entries: list[Any], what: str) -> list[Any]:
    """`entries` (each with a ``name``) unchanged; a ValueError listing the names given more than once."""
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {repeated}")
    return entries


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"not a valid format string ({e}); write a literal brace as {{{{ or }}}}") from None


def check_placeholders(template: str, expected: set[str]) -> str:
    found = _placeholders(template)
    if found != expected:
        want = ", ".join("{" + n + "}" for n in sorted(expected))
        got = ", ".join("{" + n + "}" for n in sorted(found)) or "none"
        raise ValueError(f"expected the placeholders {want}, found {got}")
    return template


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Annotated, unions, list and dict values)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    args = get_args(ann)
    if get_origin(ann) is dict:
        args = args[1:]
    return [m for arg in args for m in _models_in(arg)]


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str] | None]:
    """Follow a pydantic error location: its key as written in params.yaml, and the names allowed there.

    ``loc`` holds field names, list indexes, dict keys (a variant name) and, inside a tagged union,
    the tag (``template.base.alpaca.colour``), which is left out of the key since params.yaml has no such level.
    """
    candidates: list[type[BaseModel]] = [model]
    shown: list[str] = []
    for part in loc:
        fields = [c for c in candidates if part in c.model_fields]
        tagged = [c for c in candidates if any(part in get_args(f.annotation) for f in c.model_fields.values())]
        if fields:
            candidates = _models_in(fields[0].model_fields[part].annotation)
        elif len(candidates) > 1 and tagged:
            candidates = tagged
            continue
        # else: a list index or a dict key (a variant name): the candidates stay
        shown.append(str(part))
    allowed = list(candidates[0].model_fields) if len(candidates) == 1 else None
    return ".".join(shown), allowed


def format_errors(err: ValidationError, model: type[BaseModel], path: str) -> str:
    """One message listing every problem: key, value given, and what is allowed."""
    lines = [f"{path}: {err.error_count()} problem(s) in the params:"]
    bools: set[str] = set()
    for e in err.errors():
        loc = tuple(e["loc"])
        key = _walk(model, loc)[0] or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _walk(model, loc[:-1])[1]
            lines.append(f"  - {key}: unknown key (value {e['input']!r}); allowed here: {allowed}")
        elif e["type"] == "union_tag_invalid":  # e.g. template.chat.format: the tag picks the section's model
            ctx = e["ctx"]
            lines.append(
                f"  - {key}.{ctx['discriminator'].strip(chr(39))}: expected one of [{ctx['expected_tags']}], "
                f"got {ctx['tag']!r}"
            )
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required key is missing (every key is set in params.yaml)")
        elif isinstance(e["input"], BoolForNumber):
            if key not in bools:  # a union of number types fails once per type: one line
                bools.add(key)
                lines.append(f"  - {key}: expected a number, got a boolean ({str(e['input'].value).lower()})")
        elif e["type"] == "finite_number":
            lines.append(f"  - {key}: expected a finite number; .inf and .nan are refused (got {e['input']!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            # a check across keys of a model names its keys and values itself; the whole mapping adds nothing
            got = "" if isinstance(e["input"], dict) else f" (got {e['input']!r})"
            lines.append(f"  - {key}: {msg}{got}")
    return "\n".join(lines)


class UndeclaredParam(AttributeError):
    """A stage read a params key its PARAMS list (and dvc.yaml) does not declare."""


class Scoped:
    """A read-only view of :class:`Params` limited to the declared key paths.

    Reading a declared path (``p.moderate``, ``p.common.seed``) returns the
    validated value and records the path in ``read``; reading anything else
    raises :class:`UndeclaredParam`, so a stage cannot depend on a key that
    ``dvc.yaml`` does not list for it.
    """

    def __init__(
        self, params: BaseModel | dict[str, Any], keys: tuple[str, ...], prefix: str = "", read: set[str] | None = None
    ):
        self._params = params
        self._keys = keys
        self._prefix = prefix
        self.read: set[str] = set() if read is None else read

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        path = self._prefix + name
        # per-variant sections are mappings (train.chat); the rest are models (moderate.pii)
        value = self._params[name] if isinstance(self._params, dict) else getattr(self._params, name)
        if path in self._keys:
            self.read.add(path)
            return value
        if any(k.startswith(path + ".") for k in self._keys):
            return Scoped(value, self._keys, path + ".", self.read)
        raise UndeclaredParam(f"this stage reads params key {path!r}, which its PARAMS (and dvc.yaml) does not list")


def get(params: Scoped, key: str) -> Any:
    """The value at dotted `key` of a scoped view (``get(p, "train.chat")``); the key must be declared."""
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return value


def of(values: dict[str, Any]) -> Scoped:
    """A scoped view holding `values` at their dotted keys, e.g. ``of({"template.base": section})`` (tests and
    benchmarks that call a stage's run with sections they built)."""
    root: dict[str, Any] = {}
    for dotted, value in values.items():
        cur = root
        *parents, last = dotted.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
        cur[last] = value
    return Scoped(root, tuple(values))


def read_yaml(path: str | Path) -> Any:
    """Parse a params file; a missing or malformed file is a StageError naming it."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path}: params file not found; run from the project root") from None
    except yaml.YAMLError as e:
        raise StageError(f"{path}: not valid YAML: {e}") from None


def scope(params: BaseModel, keys: tuple[str, ...] | list[str]) -> Scoped:
    """Limit validated params to `keys`, checking each key exists."""
    for key in keys:
        cur: Any = params
        for part in key.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            elif not isinstance(cur, dict) and hasattr(cur, part):
                cur = getattr(cur, part)
            elif isinstance(cur, dict):
                raise StageError(f"no {part!r} in {key.rsplit(part, 1)[0].rstrip('.')} (declared: {sorted(cur)})")
            else:
                raise StageError(f"PARAMS lists {key!r}, which is not a params key")
    return Scoped(params, tuple(keys))


def load(path: str | Path, keys: tuple[str, ...] | list[str], overrides: dict[str, Any] | None = None) -> Scoped:
    """Read `path`, validate the whole file, and scope it to `keys`.

    Every section is checked, not only those `keys` fall in: a typo in ``report`` stops ``dvc repro pull`` before
    it does any work, and one error lists every problem of the file. The stage still reads (and declares to DVC)
    only `keys`. The whole file's schema (:mod:`stages.core.params.all`) is imported by name, so a stage's code deps
    in dvc.yaml (:func:`stages.core.code.stage_deps`) hold the schema of the sections it reads, not of every
    section: like another stage's keys, another section's schema can stop the stage, never change its outputs.

    `overrides` maps dotted keys to values (for tests), applied before validation.
    """
    path = Path(path)
    raw = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        cur = raw
        *parents, last = dotted.split(".")
        for part in parents:
            cur = cur[part]
        cur[last] = value
    whole = importlib.import_module("stages.core.params.all")
    return scope(whole.validate(raw, str(path)), keys)
