"""Models: materialize a variant's pretrained model as a local Hugging Face checkpoint (safetensors).

Inputs: the model that ``variants.<variant>.model.source`` names (forms below); a local source is also a dep in
    ``dvc.yaml``. The conversion cache ``--cache`` (``.steep_cache/models``): one converted checkpoint per
    (source sha256, dtype), and the GGUF files assembled from chunked packages.
Outputs: ``--out`` (``models/<variant>/base``), a checkpoint that ``AutoModelForCausalLM.from_pretrained(dir)`` and
    ``AutoTokenizer.from_pretrained(dir)`` load with no other argument: ``model.safetensors``, ``config.json``,
    ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja`` (when the
    model has a chat template) and ``steep_source.json`` (what it was made from: the source's sha256, the package
    and version or revision, the library versions, the sha256 of every file); ``--metrics``
    (``metrics/models/<variant>.json``): parameters, weights_bytes, vocab_size, layers.
Run: ``dvc repro models@chat`` (= ``python -m stages.variant.models --params params.yaml --variant chat
    --out models/chat/base --cache .steep_cache/models --metrics metrics/models/chat.json``).

How a source is found, converted and cached: :mod:`stages.variant.checkpoints`.
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
    """The model source when it is a local path (a dependency of the stage in dvc.yaml)."""
    return checkpoints.local_source(
        _params.get(params, f"variants.{variant}.model"), f"variants.{variant}.model.source"
    )


STAGE = cli.Stage(
    params=("variants.${key}.model",),
    inputs={},
    outputs={"out": "checkpoint directory to write"},
    options={"cache": "conversion cache directory"},
    local_paths=_local_paths,
)
PARAMS = list(STAGE.params)


def run(
    params: _params.Scoped, *, variant: str, inputs: dict[str, Path], outputs: dict[str, Path], cache: str | Path
) -> dict[str, Any]:
    """Materialize the model ``variants.<variant>.model`` names into ``outputs["out"]``; return the metrics.

    Args:
        params: the scoped params (``variants.<variant>.model``: source and dtype).
        variant: the variant whose model it is.
        inputs: none; the source is named by the params (a local one is a dep in dvc.yaml).
        outputs: ``{"out": <checkpoint directory, e.g. models/chat/base>}``.
        cache: the conversion cache (``.steep_cache/models``).

    Returns:
        Metrics: parameters, weights_bytes (the safetensors files), vocab_size, layers.
    """
    if inputs:
        raise StageError(f"the models stage takes no inputs; got {sorted(inputs)}")
    spec = _params.get(params, f"variants.{variant}.model")
    return checkpoints.summary(checkpoints.materialize(spec, Path(outputs["out"]), Path(cache)))


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the models stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
