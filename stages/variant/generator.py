"""Generator: materialize the model synthesize generates with (``synthesize.generator``) as a local checkpoint.

Its own params entry and its own checkpoint, so that no variant's model change reaches synthesize (and, through
its pairs, the other variant): by default the same package as the chat variant, converted the same way.

Inputs: the model ``synthesize.generator.source`` names (a local source is also a dep in ``dvc.yaml``); the
    conversion cache ``--cache`` (``.steep_cache/models``, shared with the models stage).
Outputs: ``--out`` (``models/generator``), a checkpoint as the models stage writes one; ``--metrics``
    (``metrics/generator.json``): parameters, weights_bytes, vocab_size, layers.
Run: ``dvc repro generator`` (= ``python -m stages.variant.generator --params params.yaml --out models/generator
    --cache .steep_cache/models --metrics metrics/generator.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import params as _params
from stages.core.io import StageError
from stages.variant import checkpoints


def _local_paths(params: _params.Scoped, variant: str | None, inputs: Mapping[str, Path]) -> list[tuple[str, str]]:
    """The generator's source when it is a local path (a dependency of the stage in dvc.yaml)."""
    return checkpoints.local_source(params.synthesize.generator, "synthesize.generator.source")


STAGE = cli.Stage(
    params=("synthesize.generator",),
    inputs={},
    outputs={"out": "checkpoint directory to write"},
    options={"cache": "conversion cache directory"},
    local_paths=_local_paths,
)
PARAMS = list(STAGE.params)


def run(
    params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path], cache: str | Path
) -> dict[str, Any]:
    """Materialize ``synthesize.generator`` into ``outputs["out"]``; return the metrics (as the models stage's).

    Args:
        params: the scoped params (``synthesize.generator``: source and dtype).
        inputs: none.
        outputs: ``{"out": <checkpoint directory, models/generator>}``.
        cache: the conversion cache (``.steep_cache/models``).
    """
    if inputs:
        raise StageError(f"the generator stage takes no inputs; got {sorted(inputs)}")
    spec = params.synthesize.generator
    return checkpoints.summary(checkpoints.materialize(spec, Path(outputs["out"]), Path(cache)))


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the generator stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
