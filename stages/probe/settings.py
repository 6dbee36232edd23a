"""What the evaluation of one variant reads from params, and the command line of the baseline and probe stages."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.params.probe import ProbeTask
from stages.probe import tasks as _tasks
from stages.probe.model import Rendering


@dataclass(frozen=True)
class Settings:
    """What the evaluation of one variant reads from params.

    Attributes:
        precision: ``probe.precision`` (as_trained, 4bit, bf16, fp32).
        quantization: ``train.<variant>.quantization`` (what as_trained resolves to).
        compute_dtype: ``train.<variant>.compute_dtype``.
        template: ``template.<variant>.format`` and ``.prompts`` (how a user turn is rendered).
        batch_size: ``probe.batch_size``.
        max_new_tokens: ``probe.max_new_tokens``.
        multiple_choice_prompt: ``probe.multiple_choice_prompt``.
        bertscore_model: ``probe.bertscore_model``.
        showcase_prompts: ``probe.showcase_prompts``.
        tasks: ``probe.tasks``.
    """

    precision: str
    quantization: str
    compute_dtype: str
    template: Rendering
    batch_size: int
    max_new_tokens: int
    multiple_choice_prompt: str
    bertscore_model: str
    showcase_prompts: tuple[str, ...]
    tasks: tuple[ProbeTask, ...]

    def resolved_precision(self) -> dict[str, str]:
        """The quantization and compute dtype the model is loaded in (``as_trained``: train.<variant>'s)."""
        if self.precision == "as_trained":
            return {"quantization": self.quantization, "compute_dtype": self.compute_dtype}
        if self.precision == "4bit":
            return {"quantization": "nf4_4bit", "compute_dtype": self.compute_dtype}
        return {"quantization": "none", "compute_dtype": {"bf16": "bfloat16", "fp32": "float32"}[self.precision]}


def settings(params: _params.Scoped, variant: str) -> Settings:
    """Read the evaluation settings of `variant` from a scoped params view (baseline's or probe's PARAMS).

    Each task entry is checked against its type in the registry (one StageError lists every problem).
    """
    probe = params.probe
    train = _params.get(params, f"train.{variant}")
    tasks = tuple(probe.tasks)
    _tasks.check_tasks(tasks)
    return Settings(
        precision=probe.precision,
        quantization=train.quantization,
        compute_dtype=train.compute_dtype,
        template=Rendering(
            _params.get(params, f"template.{variant}.format"), _params.get(params, f"template.{variant}.prompts")
        ),
        batch_size=probe.batch_size,
        max_new_tokens=probe.max_new_tokens,
        multiple_choice_prompt=probe.multiple_choice_prompt,
        bertscore_model=probe.bertscore_model,
        showcase_prompts=tuple(probe.showcase_prompts),
        tasks=tasks,
    )


def stage_main(module: Any, variant_help: str, inputs: dict[str, str], out_help: str) -> None:
    """The command line of the baseline and probe stages (the ``main`` of `module`).

    Flags ``--params --variant``, one per input, ``--out --metrics --cache``; runs ``module.run`` on the params view
    of ``module.params_keys(variant)`` and writes the metrics JSON.
    """
    import argparse

    name = module.__spec__.name if module.__spec__ else module.__name__  # "__main__" under python -m
    ap = argparse.ArgumentParser(prog=f"python -m {name}", description=module.__doc__.split("\n")[0])
    ap.add_argument("--params", required=True, type=Path, help="params.yaml")
    ap.add_argument("--variant", required=True, help=variant_help)
    for name, text in inputs.items():
        ap.add_argument(f"--{name}", required=True, type=Path, help=text)
    ap.add_argument("--out", required=True, type=Path, help=out_help)
    ap.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
    ap.add_argument("--cache", required=True, type=Path, help="per-task result cache directory")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keys = module.params_keys(args.variant)
    params = _params.load(args.params, keys)
    log_params(params, keys)
    metrics = module.run(
        params,
        args.variant,
        inputs={name: getattr(args, name) for name in inputs},
        outputs={"out": args.out},
        cache_dir=args.cache,
    )
    with _io.atomic_outputs(args.metrics) as (tmp,):
        _io.write_json(tmp, metrics)


def log_params(params: _params.Scoped, keys: list[str]) -> None:
    """Log the value of each declared key (lists of sections as plain data)."""
    for key in keys:
        value = _params.get(params, key)
        if isinstance(value, list):
            value = [v.model_dump(exclude_none=True) if hasattr(v, "model_dump") else v for v in value]
        cli.log_params(key, value)
