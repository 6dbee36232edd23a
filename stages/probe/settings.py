"""What the evaluation of one variant reads from params (the baseline and probe stages)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def local_paths(params: _params.Scoped, variant: str | None, inputs: Mapping[str, Path]) -> list[tuple[str, str]]:
    """The local files and folders ``probe.tasks`` names (task files, harness include folders, chat_behaviour
    documents), with who names them: the baseline and probe stages' ``local_paths`` (each must be a dvc.yaml
    dependency of the stage)."""
    tasks = params.probe.tasks
    out = [(t.path, f"probe.tasks {t.name!r}") for t in tasks if t.path is not None]
    out += [(d, f"probe.tasks {t.name!r} (documents)") for t in tasks for d in t.documents or []]
    out += [(t.harness_include, f"probe.tasks {t.name!r} (harness_include)") for t in tasks if t.harness_include]
    return out
