"""``probe``: the tasks that measure forgetting and knowledge gain, and the statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from stages.core.params.base import Section, check_placeholders, unique_names


class ProbeTask(Section):
    """One entry of ``probe.tasks``: a local JSONL (``path`` + ``fields``) or an lm-evaluation-harness task by name.

    The checks here are the entry's shape; what a type allows and needs (its fields, harness tasks, a prompt) is
    the task-type registry's (``stages/probe/types.py``), checked by the probe stages before any model loads.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    # a type of the registry: multiple_choice, perplexity, generation, knowledge, chat_behaviour
    type: str = Field(min_length=1)
    # a local JSONL task: its path (relative to the project root) and
    # the canonical names of the type (its registry entry's fields) -> the file's field names
    path: str | None = None
    fields: dict[str, str] | None = None
    # multiple_choice only: the question prompt, {question} filled in; each choice is scored after one space.
    # None: probe.multiple_choice_prompt.
    prompt: str | None = None
    # or a multiple-choice task of lm-evaluation-harness by name (arc_easy, hellaswag, piqa, mmlu_anatomy, ...): its
    # own dataset, prompt, choices and target, read with the harness (the dataset comes from the Hugging Face Hub or
    # the local datasets cache); harness_include: a folder of further harness task YAMLs (the harness's include_path)
    harness_task: str | None = Field(default=None, min_length=1)
    harness_include: str | None = None
    # harness tasks: few-shot examples per item (None: the task's own num_fewshot, else 0), as lm-eval --num_fewshot
    num_fewshot: int | None = Field(default=None, ge=0)
    # chat_behaviour only: files or folders of .md / .txt documents an answer must not recite, and the shortest run
    # of consecutive words that counts as recited
    documents: list[str] | None = None
    min_verbatim_words: int | None = Field(default=None, ge=4)
    # evaluate the first `limit` items only (None: all)
    limit: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ProbeTask:
        if self.name == "showcase":
            raise ValueError("the task name 'showcase' is taken by the rows of probe.showcase_prompts; rename the task")
        if (self.path is None) == (self.harness_task is None):
            raise ValueError(
                f"task {self.name!r}: give either path (a local JSONL, with fields) or harness_task (an "
                "lm-evaluation-harness task name), not both and not neither"
            )
        if self.harness_task is not None:
            if self.fields is not None or self.prompt is not None:
                raise ValueError(
                    f"task {self.name!r}: a harness task brings its own prompt, choices and target "
                    "(doc_to_text, doc_to_choice, doc_to_target); remove fields and prompt"
                )
            return self
        if self.harness_include is not None or self.num_fewshot is not None:
            raise ValueError(f"task {self.name!r}: harness_include and num_fewshot apply with harness_task only")
        if self.prompt is not None:
            check_placeholders(self.prompt, {"question"})
        return self


class Probe(Section):
    # as_trained: the precision train.<variant> trained in (quantization, compute_dtype)
    precision: Literal["as_trained", "4bit", "bf16", "fp32"]
    batch_size: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)
    multiple_choice_prompt: str
    # the paired bootstrap interval of each score's delta (the effect's range; it decides no verdict)
    bootstrap_resamples: int = Field(ge=100)
    confidence: float = Field(gt=0, lt=1)
    # the main score's paired test: random sign patterns where the sign-flip test is not exact
    permutation_resamples: int = Field(ge=1000)
    # a verdict needs the test's p, Holm-adjusted over the variant's tasks, below alpha; the minimum detectable
    # effect is stated at alpha / (number of tasks)
    alpha: float = Field(gt=0, lt=1)
    # ... and a change of the main score beyond this: worse, forgetting; better, gain
    forgetting_threshold: float = Field(ge=0)
    bertscore_model: str
    showcase_prompts: list[str]
    tasks: list[ProbeTask] = Field(min_length=1)
    # harness_include folders are code: a task YAML's `!function` imports and runs Python from its folder
    trust_harness_code: bool

    @field_validator("multiple_choice_prompt")
    @classmethod
    def _mc_prompt(cls, value: str) -> str:
        return check_placeholders(value, {"question"})

    @field_validator("tasks")
    @classmethod
    def _unique(cls, value: list[ProbeTask]) -> list[ProbeTask]:
        return unique_names(value, "task")

    @model_validator(mode="after")
    def _trusted(self) -> Probe:
        untrusted = [f"{t.name!r} ({t.harness_include})" for t in self.tasks if t.harness_include is not None]
        if untrusted and not self.trust_harness_code:
            raise ValueError(
                f"probe.tasks {', '.join(untrusted)}: harness_include is code, not data: lm-evaluation-harness "
                "imports and runs the Python a task YAML names there (`!function`). Read the folder, then set "
                "probe.trust_harness_code: true to run it (or remove harness_include)"
            )
        return self


# The type of the top-level key; what load() validates it against.
SECTION = Probe
