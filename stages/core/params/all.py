"""The whole of `params.yaml` validated at once: every section, and the checks across sections.

Every stage validates the whole file through this module before it does any work
(:func:`stages.core.params.base.load`, which imports it by name), and so does
``python -m stages.core.params.all params.yaml``: unknown sections are refused, and the variants' sections agree.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import ValidationError, model_validator

from stages.core.io import StageError
from stages.core.params import (
    common as _common,
)
from stages.core.params import (
    dedup as _dedup,
)
from stages.core.params import (
    moderate as _moderate,
)
from stages.core.params import (
    probe as _probe,
)
from stages.core.params import (
    pull as _pull,
)
from stages.core.params import (
    report as _report,
)
from stages.core.params import (
    synthesize as _synthesize,
)
from stages.core.params import (
    template as _template,
)
from stages.core.params import (
    tokenize as _tokenize,
)
from stages.core.params import (
    train as _train,
)
from stages.core.params import (
    variants as _variants,
)
from stages.core.params.base import Section, format_errors, read_yaml


class Params(Section):
    common: _common.SECTION
    pull: _pull.SECTION
    moderate: _moderate.SECTION
    dedup: _dedup.SECTION
    variants: _variants.SECTION
    template: _template.SECTION
    tokenize: _tokenize.SECTION
    train: _train.SECTION
    synthesize: _synthesize.SECTION
    probe: _probe.SECTION
    report: _report.SECTION

    @model_validator(mode="after")
    def _same_variants(self) -> Params:
        declared = sorted(self.variants)
        for name in ("template", "tokenize", "train"):
            got = sorted(getattr(self, name))
            if got != declared:
                raise ValueError(f"{name} has entries for {got}; it needs exactly one per variant: {declared}")
        return self


def validate(raw: Any, path: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; raise StageError listing every problem."""
    if not isinstance(raw, dict):
        raise StageError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise StageError(format_errors(err, Params, path)) from None


def main() -> None:
    """``python -m stages.core.params.all [params.yaml]``: validate the whole file; exit 1 with every problem."""
    path = sys.argv[1] if len(sys.argv) > 1 else "params.yaml"
    try:
        validate(read_yaml(path), path)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{path}: valid")


if __name__ == "__main__":
    main()
