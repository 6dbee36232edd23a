"""The probe engine shared by the baseline and probe stages: tasks, model, per-item scores, cache, comparison.

Task files (``probe.tasks``): JSONL, one item per non-blank line; an item's index is its 0-based line number in the
file (``limit``: the first that many items only). Every file is read and checked before any model is loaded; a bad
file stops the stage naming the file, the line and the fix. ``fields`` maps each type's canonical names to the file's:

    multiple_choice  question (text), choices (a list of at least 2 texts), answer (the 0-based index of the right one)
    perplexity       text
    generation       prompt, reference
    knowledge        question, answer

A multiple-choice task may instead name an lm-evaluation-harness task (``harness_task``, e.g. ``arc_easy``): its
items are the harness's own rendering of its documents (``stages/probe/harness.py``), read before any model is
loaded too.

How each type is evaluated (one model: a base checkpoint, optionally with a LoRA adapter, in the probe precision):

* multiple_choice: lm-evaluation-harness is the engine. A task YAML (``output_type: multiple_choice``, metrics acc
  and acc_norm, each choice scored after one space) is generated in a temporary folder over a JSONL of the items
  (the prompt with ``{question}`` filled in, the choices, the answer) and run through ``lm_eval.simple_evaluate`` on
  an ``HFLM`` wrapping the loaded model; the per-item acc / acc_norm are the harness's logged samples.
* perplexity: the harness's ``loglikelihood_rolling`` through the same ``HFLM``: the summed negative log-likelihood
  (nats) of each text's tokens (the text tokenized without special tokens, the first token predicted from the
  model's BOS/prefix token), its token count and its UTF-8 byte count.
* generation / knowledge: greedy decoding of at most ``max_new_tokens`` new tokens from the prompt (question)
  rendered through the variant's template (``alpaca``: ``prompt_without_input``; ``chat_template``: the tokenizer's
  chat template, ``system_prompt`` as system turn when not empty, generation prompt added); decoding stops at EOS,
  and for the alpaca format the text is cut at ``"\\n### "`` or ``"\\n\\n\\n"`` (a new Alpaca section).
  generation scores: ROUGE-L F1 (rouge_score, stemmed), sentence BLEU (sacrebleu, 0-100) and BERTScore F1 (bert_score
  over the local MiniLM, all 6 layers, no baseline rescaling); knowledge scores: exact (normalized prediction ==
  normalized answer), contains (the normalized answer occurs in the normalized prediction, on word boundaries),
  ROUGE-L F1. Normalized: lower case, punctuation and articles (a, an, the) removed, whitespace collapsed (SQuAD).
* showcase: greedy generations for ``probe.showcase_prompts`` (through the template), no scores.

Task scores (:func:`aggregate`): multiple_choice acc, acc_norm (means); perplexity token_perplexity
``exp(sum nll / sum tokens)``, bits_per_byte ``sum nll / sum bytes / ln 2``, byte_perplexity ``2 ** bits_per_byte``;
generation mean rougeL, corpus BLEU (sacrebleu, 0-100), mean bertscore_f1; knowledge mean exact, contains, rougeL.
The main score of each type (:data:`MAIN_METRIC`) decides forgetting and gain.

Cache. Each task's per-item results are stored in ``--cache`` under a sha256 over what they depend on (the sha256
of every file of the model and adapter directories, the resolved precision and device, the task's type, fields,
prompt and limit, the task file's sha256 (a harness task: its rendered items'), the settings that matter to the type,
:data:`CODE_VERSION` and the versions of the libraries that compute the numbers). A hit evaluates nothing; adding
a task evaluates only that task; when every task hits, no model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import re
import string
import tempfile
import time
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.probe import PROBE_FIELDS, ProbeTask
from stages.core.params.template import AlpacaTemplate, ChatTemplate
from stages.variant import lm as _lm

log = logging.getLogger("steep.probe")

# Bump when a change to this module changes any per-item result: it is part of every cache key.
CODE_VERSION = "2"
SHOWCASE = "showcase"
# The score that decides forgetting and gain, per task type, and which way is better for every score.
MAIN_METRIC = {"multiple_choice": "acc", "perplexity": "bits_per_byte", "generation": "rougeL", "knowledge": "contains"}
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("acc", "acc_norm"),
    "perplexity": ("token_perplexity", "bits_per_byte", "byte_perplexity"),
    "generation": ("rougeL", "bleu", "bertscore_f1"),
    "knowledge": ("exact", "contains", "rougeL"),
}
HIGHER_IS_BETTER = {
    "acc": True,
    "acc_norm": True,
    "token_perplexity": False,
    "bits_per_byte": False,
    "byte_perplexity": False,
    "rougeL": True,
    "bleu": True,
    "bertscore_f1": True,
    "exact": True,
    "contains": True,
}
# Alpaca has no end-of-turn token: a model that goes on writes the next section.
ALPACA_STOP = ("\n### ", "\n\n\n")
DIGITS = 6

SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("type", pa.string()),
        ("item", pa.int64()),
        ("prompt", pa.string()),
        ("reference", pa.string()),
        ("prediction", pa.string()),
        ("scores", pa.string()),
    ]
)
PROBE_SCHEMA = pa.schema([*SCHEMA, ("base_prediction", pa.string()), ("base_scores", pa.string())])

Row = dict[str, Any]


def _round(x: float) -> float:
    return round(float(x), DIGITS)


# --- settings -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the evaluation of one variant reads from params.

    Attributes:
        precision: ``probe.precision`` (as_trained, 4bit, bf16, fp32).
        quantization: ``train.<variant>.quantization`` (what as_trained resolves to).
        compute_dtype: ``train.<variant>.compute_dtype``.
        template: ``template.<variant>``.
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
    template: AlpacaTemplate | ChatTemplate
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
    """Read the evaluation settings of `variant` from a scoped params view (baseline's or probe's PARAMS)."""
    probe = params.probe
    train = _params.get(params, f"train.{variant}")
    tasks = tuple(probe.tasks)
    if any(t.name == SHOWCASE for t in tasks):
        raise StageError(f"probe.tasks: the name {SHOWCASE!r} is taken by the showcase generations; rename the task")
    return Settings(
        precision=probe.precision,
        quantization=train.quantization,
        compute_dtype=train.compute_dtype,
        template=_params.get(params, f"template.{variant}"),
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


# --- task files -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """A task entry with its items, read and checked.

    Attributes:
        task: the ``probe.tasks`` entry.
        items: (0-based line index, the item's fields under their canonical names), in file order (a harness task:
            (document index, question / choices / answer), see ``stages/probe/harness.py``).
        sha256: the task file's sha256 (a harness task: its items' and delimiter's).
    """

    task: ProbeTask
    items: tuple[tuple[int, dict[str, Any]], ...]
    sha256: str
    # multiple_choice: the prompt ({question} filled in; None: probe.multiple_choice_prompt) and what goes before
    # each choice. A harness task's question is its whole rendered context: prompt "{question}".
    prompt: str | None = None
    delimiter: str = " "

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def type(self) -> str:
        return self.task.type


def _example(task: ProbeTask) -> str:
    demo = {"question": "Which is a colour?", "choices": ["red", "seven"], "answer": 0, "text": "Some held-out text."}
    demo |= {"prompt": "Name a colour.", "reference": "Red.", "answer": 0 if task.type == "multiple_choice" else "Red"}
    return json.dumps({task.fields[k]: demo[k] for k in PROBE_FIELDS[task.type]})


def _check_item(task: ProbeTask, obj: Any, where: str) -> dict[str, Any]:
    """The item's fields under canonical names; raise StageError saying what is wrong and what is expected."""
    expected = f"expected a JSON object like {_example(task)}"
    if not isinstance(obj, dict):
        raise StageError(f"{where}: got a JSON {type(obj).__name__}; {expected}")
    out: dict[str, Any] = {}
    for canon in PROBE_FIELDS[task.type]:
        name = task.fields[canon]
        if name not in obj:
            raise StageError(
                f"{where}: no field {name!r} (the task's fields map {canon} -> {name!r}); found {sorted(obj)}. "
                f"Fix the line or probe.tasks[{task.name}].fields; {expected}"
            )
        value = obj[name]
        if canon == "choices":
            if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c for c in value):
                raise StageError(
                    f"{where}: field {name!r} must be a list of at least 2 non-empty texts, got {value!r}; {expected}"
                )
        elif canon == "answer" and task.type == "multiple_choice":
            choices = obj.get(task.fields["choices"])
            if isinstance(value, bool) or not isinstance(value, int):
                raise StageError(f"{where}: field {name!r} must be the 0-based index of the right choice (an integer), "
                                 f"got {value!r}; {expected}")  # fmt: skip
            if not 0 <= value < len(choices):
                raise StageError(
                    f"{where}: answer index {value} is out of range for {len(choices)} choices "
                    f"(valid: 0..{len(choices) - 1}; the index is 0-based)"
                )
        elif not isinstance(value, str) or not value.strip():
            raise StageError(f"{where}: field {name!r} must be a non-empty text, got {value!r}; {expected}")
        out[canon] = value
    return out


def read_task(task: ProbeTask) -> TaskData:
    """Read and check a task file (path relative to the working directory, the project root) or a harness task."""
    if task.harness_task is not None:
        from stages.probe import harness as _harness  # imports this module

        return _harness.read(task)
    assert task.path is not None and task.fields is not None  # ProbeTask's validator
    path = Path(task.path)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise StageError(
            f"{path}: task file of probe task {task.name!r} not found; write it (JSONL, one item a line) "
            "or fix probe.tasks[].path (relative to the project root)"
        ) from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise StageError(f"{path}: not UTF-8 text ({e}); save the task file as UTF-8 JSONL") from None
    items = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise StageError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); {_example(task)!s} "
                             "is the expected form, one object a line") from None  # fmt: skip
        items.append((i, _check_item(task, obj, where)))
        if task.limit is not None and len(items) == task.limit:
            break
    if not items:
        raise StageError(f"{path}: task {task.name!r} has no items; add at least one JSON line")
    return TaskData(task, tuple(items), hashlib.sha256(raw).hexdigest(), prompt=task.prompt)


def read_tasks(tasks: tuple[ProbeTask, ...] | list[ProbeTask]) -> list[TaskData]:
    """Read and check every task file (before any model is loaded)."""
    return [read_task(t) for t in tasks]


# --- cache ----------------------------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class TaskCache:
    """One JSON file of per-item rows per cache key, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def get(self, key: str) -> list[Row] | None:
        path = self.root / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["rows"]
        except (json.JSONDecodeError, KeyError, OSError):
            log.warning("%s: unreadable cache entry, evaluating again", path)
            return None

    def put(self, key: str, rows: list[Row]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with _io.atomic_outputs(self.root / f"{key}.json") as (tmp,):
            tmp.write_text(json.dumps({"rows": rows}, sort_keys=True, ensure_ascii=False), encoding="utf-8")


# --- model ----------------------------------------------------------------------------------------------------------


def load_model(model_dir: Path, adapter_dir: Path | None, precision: dict[str, str], device: str) -> Any:
    """The base checkpoint in `precision` (train.load_base: NF4 double quant, 8-bit or plain), plus the adapter."""

    if precision["quantization"] == "int8" and device != "cuda":
        raise StageError(
            "probe.precision as_trained resolves to train quantization 'int8', which bitsandbytes runs on CUDA only; "
            "on CPU set probe.precision to 4bit, bf16 or fp32"
        )
    # load_base reads only these two fields of a TrainSpec
    model = _lm.load_base(model_dir, SimpleNamespace(**precision), device, 0)
    if precision["quantization"] == "none":
        model = model.to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise StageError(f"{adapter_dir}: no adapter_config.json; run `dvc repro train` first")
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    model.eval()
    return model


def load_tokenizer(model_dir: Path) -> Any:
    """The checkpoint's tokenizer (as the template stage loads it), with a pad token (EOS when it has none)."""

    tok = _lm.load_tokenizer(Path(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def render(prompt: str, template: AlpacaTemplate | ChatTemplate, tokenizer: Any) -> str:
    """A user prompt as the variant's model sees it: Alpaca's prompt_without_input, or the chat template."""
    if template.format == "alpaca":
        return template.prompt_without_input.format(instruction=prompt)
    if not tokenizer.chat_template:
        raise StageError(
            "template format chat_template: the tokenizer has no chat template; use a chat model or `format: alpaca`"
        )
    messages = [{"role": "system", "content": template.system_prompt}] if template.system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, text: str, prefix: list[int]) -> list[int]:
    """Token ids of a rendered prompt: the tokenizer's leading specials (BOS) unless the text already has them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the first stop string (all of it when none occurs)."""
    ends = [i for s in stops if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


@contextlib.contextmanager
def quiet_harness() -> Iterator[None]:
    """lm-eval and datasets log every step at INFO; keep warnings only while they run."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class Engine:
    """One model (a base checkpoint, optionally with an adapter) and the evaluation of tasks on it.

    The model loads on first use, so that a run whose tasks all hit the cache loads nothing.
    """

    settings: Settings
    model_dir: Path
    adapter_dir: Path | None = None
    device: str = field(default_factory=_lm.device)

    @cached_property
    def model(self) -> Any:
        precision = self.settings.resolved_precision()
        log.info("loading %s%s (%s) on %s", self.model_dir, f" + {self.adapter_dir}" if self.adapter_dir else "",
                 ", ".join(f"{k} {v}" for k, v in precision.items()), self.device)  # fmt: skip
        return load_model(self.model_dir, self.adapter_dir, precision, self.device)

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.model_dir)

    @cached_property
    def lm(self) -> Any:
        """The harness's HFLM around the loaded model (scores multiple_choice and perplexity)."""
        from lm_eval.models.huggingface import HFLM

        with quiet_harness():
            return HFLM(
                pretrained=self.model, tokenizer=load_tokenizer(self.model_dir), batch_size=self.settings.batch_size
            )

    # --- multiple choice ----------------------------------------------------------------------------------------

    def multiple_choice(self, tasks: list[TaskData]) -> dict[str, list[Row]]:
        """Per-item rows of multiple_choice tasks, all in one ``lm_eval.simple_evaluate`` call."""
        import yaml
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        with tempfile.TemporaryDirectory(prefix="steep-probe-") as tmp:
            names: dict[str, TaskData] = {}
            for t in tasks:
                harness_name = f"steep_{t.name}"
                names[harness_name] = t
                prompt = t.prompt or self.settings.multiple_choice_prompt
                data = Path(tmp) / f"{t.name}.jsonl"
                with data.open("w", encoding="utf-8") as f:
                    for index, it in t.items:
                        doc = {"item": index, "prompt": prompt.format(question=it["question"])}
                        doc |= {"choices": it["choices"], "answer": it["answer"]}
                        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                config = {
                    "task": harness_name,
                    "dataset_path": "json",
                    # cache_dir: the datasets cache of this run only (nothing left in ~/.cache)
                    "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(Path(tmp) / "hf")},
                    "test_split": "test",
                    "output_type": "multiple_choice",
                    "doc_to_text": "prompt",
                    "doc_to_choice": "choices",
                    "doc_to_target": "answer",
                    "target_delimiter": t.delimiter,
                    "num_fewshot": 0,
                    "metric_list": [
                        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                    ],
                }
                (Path(tmp) / f"{harness_name}.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
            with quiet_harness():
                manager = TaskManager(include_path=tmp, include_defaults=False)
                results = simple_evaluate(
                    model=self.lm,
                    tasks=sorted(names),
                    task_manager=manager,
                    log_samples=True,
                    bootstrap_iters=0,
                    batch_size=self.settings.batch_size,
                )
        out: dict[str, list[Row]] = {}
        for harness_name, t in names.items():
            samples = sorted(results["samples"][harness_name], key=lambda s: s["doc_id"])
            rows = []
            for s in samples:
                doc = s["doc"]
                lls = [r[0] for r in s["filtered_resps"]]
                rows.append(
                    {
                        "item": doc["item"],
                        "prompt": s["arguments"][0][0],
                        "reference": doc["choices"][doc["answer"]],
                        "prediction": doc["choices"][int(np.argmax(lls))],
                        "scores": {"acc": float(s["acc"]), "acc_norm": float(s["acc_norm"])},
                    }
                )
            if [r["item"] for r in rows] != [i for i, _ in t.items]:
                raise RuntimeError(f"broken invariant: the harness returned other items for task {t.name}")
            out[t.name] = rows
        return out

    # --- perplexity ---------------------------------------------------------------------------------------------

    def perplexity(self, task: TaskData) -> list[Row]:
        """Per-item summed NLL (nats), token and byte counts through the harness's ``loglikelihood_rolling``."""
        from lm_eval.api.instance import Instance

        lm = self.lm
        texts = [it["text"] for _, it in task.items]
        requests = [
            Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0, metadata=(task.name, i, 1))
            for i, t in enumerate(texts)
        ]
        # The text's own tokens only: a tokenizer that puts BOS before every text (Gemma) would otherwise have the
        # harness score predicting BOS after its BOS prefix token.
        saved, lm.add_bos_token = lm.add_bos_token, False
        try:
            with quiet_harness():
                lls = lm.loglikelihood_rolling(requests, disable_tqdm=False)
        finally:
            lm.add_bos_token = saved
        rows = []
        for (index, _), text, ll in zip(task.items, texts, lls, strict=True):
            tokens = len(lm.tok_encode(text, add_special_tokens=False))
            scores = {"nll": _round(-ll), "tokens": float(tokens), "bytes": float(len(text.encode("utf-8")))}
            rows.append({"item": index, "prompt": text, "reference": "", "prediction": "", "scores": scores})
        return rows

    # --- generation ---------------------------------------------------------------------------------------------

    def generate(self, prompts: list[str], desc: str) -> tuple[list[str], list[str]]:
        """Greedy generations for user prompts rendered through the template; returns (rendered, generated)."""
        import torch
        from transformers import GenerationConfig

        tok = self.tokenizer
        rendered = [render(p, self.settings.template, tok) for p in prompts]
        prefix = _lm.leading_specials(tok)
        enc = [encode_prompt(tok, r, prefix) for r in rendered]
        model = self.model
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos] if cfg_eos is not None else [])
        stops = ALPACA_STOP if self.settings.template.format == "alpaca" else ()
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.settings.max_new_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=tok.pad_token_id,
            stop_strings=list(stops) or None,
        )
        # longest first (less padding per batch); results go back to prompt order
        order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
        out = [""] * len(enc)
        bs = self.settings.batch_size
        bar = tqdm(total=len(order), desc=desc, unit="item", mininterval=2, disable=None)
        for start in range(0, len(order), bs):
            batch = order[start : start + bs]
            width = max(len(enc[i]) for i in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                ids[r, width - len(enc[i]) :] = torch.tensor(enc[i])
                mask[r, width - len(enc[i]) :] = 1
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                    tokenizer=tok if stops else None,
                )
            for r, i in enumerate(batch):
                new = gen[r, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in eos), len(new))
                out[i] = cut_at_stop(tok.decode(new[:end], skip_special_tokens=True), stops).strip()
            bar.update(len(batch))
        bar.close()
        return rendered, out

    def generation(self, task: TaskData) -> list[Row]:
        """Per-item rows of a generation task: ROUGE-L, sentence BLEU, BERTScore F1."""
        prompts = [it["prompt"] for _, it in task.items]
        refs = [it["reference"] for _, it in task.items]
        rendered, preds = self.generate(prompts, desc=task.name)
        f1 = bertscore(preds, refs, self.settings.bertscore_model)
        rows = []
        for (index, _), prompt, ref, pred, bs in zip(task.items, rendered, refs, preds, f1, strict=True):
            scores = {"rougeL": _round(rouge_l(pred, ref)), "bleu": _round(sentence_bleu(pred, ref))}
            scores["bertscore_f1"] = _round(bs)
            rows.append({"item": index, "prompt": prompt, "reference": ref, "prediction": pred, "scores": scores})
        return rows

    def knowledge(self, task: TaskData) -> list[Row]:
        """Per-item rows of a knowledge task: exact, contains, ROUGE-L."""
        rendered, preds = self.generate([it["question"] for _, it in task.items], desc=task.name)
        rows = []
        for (index, it), prompt, pred in zip(task.items, rendered, preds, strict=True):
            scores = {k: _round(v) for k, v in knowledge_scores(pred, it["answer"]).items()}
            rows.append(
                {"item": index, "prompt": prompt, "reference": it["answer"], "prediction": pred, "scores": scores}
            )
        return rows

    def showcase(self) -> list[Row]:
        """Greedy generations for the showcase prompts (no scores)."""
        rendered, preds = self.generate(list(self.settings.showcase_prompts), desc=SHOWCASE)
        return [
            {"item": i, "prompt": r, "reference": "", "prediction": p, "scores": {}}
            for i, (r, p) in enumerate(zip(rendered, preds, strict=True))
        ]

    # --- cache keys ---------------------------------------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        return _io.fingerprint(self.model_dir, self.adapter_dir)

    def _base_key(self) -> dict[str, Any]:
        s = self.settings
        return {
            "code": CODE_VERSION,
            "model": self.fingerprint,
            "precision": s.resolved_precision(),
            "device": self.device,
            "batch_size": s.batch_size,
            "versions": {p: _version(p) for p in ("torch", "transformers", "peft", "bitsandbytes")},
        }

    def _generation_key(self) -> dict[str, Any]:
        s = self.settings
        return {"template": s.template.model_dump(), "max_new_tokens": s.max_new_tokens}

    def task_key(self, t: TaskData) -> str:
        """The cache key of a task's per-item results (only what changes them)."""
        entry = {"type": t.type, "fields": dict(sorted((t.task.fields or {}).items())), "file": t.sha256}
        if t.task.limit is not None:
            entry["limit"] = t.task.limit
        payload = self._base_key() | {"task": entry}
        if t.type == "multiple_choice":
            payload |= {"prompt": t.prompt or self.settings.multiple_choice_prompt, "lm_eval": _version("lm_eval")}
        elif t.type == "perplexity":
            payload |= {"lm_eval": _version("lm_eval")}
        else:
            payload |= self._generation_key()
        if t.type == "generation":
            payload |= {"bertscore_model": self.settings.bertscore_model, "bert_score": _version("bert_score")}
            payload |= {"sacrebleu": _version("sacrebleu"), "rouge_score": _version("rouge_score")}
        if t.type == "knowledge":
            payload |= {"rouge_score": _version("rouge_score")}
        return _key(payload)

    def showcase_key(self) -> str:
        return _key(self._base_key() | self._generation_key() | {"showcase": list(self.settings.showcase_prompts)})


def evaluate(engine: Engine, tasks: list[TaskData], cache_dir: Path) -> tuple[list[Row], dict[str, int]]:
    """Evaluate every task (and the showcase prompts) on the engine's model, through the per-task cache.

    Returns:
        The per-item rows of every task and of the showcase (columns of :data:`SCHEMA`, scores as dicts), sorted by
        (task, item); and ``{"tasks_evaluated": n, "tasks_cached": n}`` (probe tasks only, not the showcase).
    """
    cache = TaskCache(cache_dir)
    done: dict[str, list[Row]] = {}
    todo: list[TaskData] = []
    keys = {t.name: engine.task_key(t) for t in tasks}
    for t in tasks:
        hit = cache.get(keys[t.name])
        if hit is None:
            todo.append(t)
        else:
            done[t.name] = hit
            log.info("%s: cached", t.name)
    mc = [t for t in todo if t.type == "multiple_choice"]
    if mc:
        log.info("multiple choice through lm-evaluation-harness: %s", ", ".join(t.name for t in mc))
        start = time.perf_counter()
        for name, rows in engine.multiple_choice(mc).items():
            cache.put(keys[name], rows)
            done[name] = rows
        log.info("multiple choice done in %.1f s", time.perf_counter() - start)
    for t in [t for t in todo if t.type != "multiple_choice"]:
        log.info("%s: evaluating %d items (%s)", t.name, len(t.items), t.type)
        start = time.perf_counter()
        rows = getattr(engine, t.type)(t)
        cache.put(keys[t.name], rows)
        done[t.name] = rows
        log.info("%s: done in %.1f s", t.name, time.perf_counter() - start)
    for t in tasks:
        scores = aggregate(t.type, done[t.name])
        log.info("%s (%s, %d items): %s", t.name, t.type, len(done[t.name]),
                 ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))  # fmt: skip
    showcase: list[Row] = []
    if engine.settings.showcase_prompts:
        key = engine.showcase_key()
        hit = cache.get(key)
        if hit is None:
            start = time.perf_counter()
            hit = engine.showcase()
            cache.put(key, hit)
            log.info("showcase: %d generations in %.1f s", len(hit), time.perf_counter() - start)
        showcase = hit
    rows = [{"task": t.name, "type": t.type, **r} for t in tasks for r in done[t.name]]
    rows += [{"task": SHOWCASE, "type": SHOWCASE, **r} for r in showcase]
    rows.sort(key=lambda r: (r["task"], r["item"]))
    return rows, {"tasks_evaluated": len(todo), "tasks_cached": len(tasks) - len(todo)}


# --- scores ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_hub() -> Iterator[None]:
    """BERTScore loads a local directory: make sure nothing tries the Hub."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # "Using default tokenizer." on every scorer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge_score, Porter-stemmed tokens)."""
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0-100, exponential smoothing, effective order)."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score


def bleu_stats(prediction: str, reference: str) -> list[float]:
    """sacrebleu's sufficient statistics of one segment: sys_len, ref_len, 4 matched and 4 total n-gram counts."""
    import sacrebleu

    s = sacrebleu.sentence_bleu(prediction, [reference])
    return [float(s.sys_len), float(s.ref_len), *map(float, s.counts), *map(float, s.totals)]


def corpus_bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU (sacrebleu's corpus_bleu, 0-100) of summed segment statistics, shape (..., 10) -> (...)."""
    from sacrebleu.metrics import BLEU

    flat = np.asarray(stats, dtype=np.float64).reshape(-1, 10)
    out = [
        BLEU.compute_bleu(
            [int(x) for x in s[2:6]], [int(x) for x in s[6:10]], int(s[0]), int(s[1]), smooth_method="exp"
        ).score
        for s in flat
    ]
    return np.array(out).reshape(np.asarray(stats).shape[:-1])


def bertscore(predictions: list[str], references: list[str], model: str) -> list[float]:
    """BERTScore F1 per pair with a local encoder (``probe.bertscore_model``), all its layers, no rescaling."""
    import bert_score

    from stages.curate.embed import resolve_model_dir

    model_dir = resolve_model_dir(model)
    if not Path(model_dir).is_dir():
        raise StageError(f"probe.bertscore_model {model!r}: not a local model directory; use package:<name> or a path")
    layers = json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]
    # An empty text has no tokens to match: its F1 is 0 (bert_score itself fails on it with transformers 5).
    # One sentence a batch: bert_score orders sentences through a set (an order that changes with the process's
    # hash seed), and padding in a mixed batch moves the last digits; alone, each embedding is the same every run.
    scored = [i for i, (p, r) in enumerate(zip(predictions, references, strict=True)) if p.strip() and r.strip()]
    out = [0.0] * len(predictions)
    if not scored:
        return out
    with _no_hub(), quiet_harness():
        _, _, f1 = bert_score.score(
            [predictions[i] for i in scored], [references[i] for i in scored], model_type=model_dir,
            num_layers=layers, batch_size=1, rescale_with_baseline=False, idf=False, verbose=False,
            device="cpu",
        )  # fmt: skip
    for i, x in zip(scored, f1, strict=True):
        out[i] = float(x)
    return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, punctuation (any Unicode P*) and articles removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(
        " " if c in "\n\t" else c for c in text if c not in _PUNCT and not unicodedata.category(c).startswith("P")
    )
    return " ".join(_ARTICLES.sub(" ", text).split())


def knowledge_scores(prediction: str, answer: str) -> dict[str, float]:
    """exact, contains (the normalized answer within the normalized prediction, on word boundaries) and rougeL."""
    p, a = normalize_answer(prediction), normalize_answer(answer)
    return {
        "exact": float(p == a),
        "contains": float(bool(a) and f" {a} " in f" {p} "),
        "rougeL": rouge_l(prediction, answer),
    }


# --- task scores, bootstrap, verdicts ---------------------------------------------------------------------------------


def _arrays(task_type: str, rows: list[Row]) -> dict[str, np.ndarray]:
    """Per-item arrays the task scores are computed from, shape (n,) or (n, 10) for BLEU statistics."""
    scores = [r["scores"] if isinstance(r["scores"], dict) else json.loads(r["scores"]) for r in rows]
    if task_type == "perplexity":
        return {k: np.array([s[k] for s in scores], dtype=np.float64) for k in ("nll", "tokens", "bytes")}
    out = {k: np.array([s[k] for s in scores], dtype=np.float64) for k in TASK_METRICS[task_type] if k != "bleu"}
    if task_type == "generation":
        out["bleu_stats"] = np.array([bleu_stats(r["prediction"], r["reference"]) for r in rows], dtype=np.float64)
    return out


def _scores(task_type: str, arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Task scores on the items `idx` (shape (n,) -> scalars, or (B, n) -> one score per resample)."""
    if task_type == "perplexity":
        nll, tokens, nbytes = (arrays[k][idx].sum(axis=-1) for k in ("nll", "tokens", "bytes"))
        bpb = nll / nbytes / math.log(2)
        return {"token_perplexity": np.exp(nll / tokens), "bits_per_byte": bpb, "byte_perplexity": np.exp2(bpb)}
    out = {k: arrays[k][idx].mean(axis=-1) for k in TASK_METRICS[task_type] if k != "bleu"}
    if task_type == "generation":
        out["bleu"] = corpus_bleu_from_stats(arrays["bleu_stats"][idx].sum(axis=-2))
    return {k: out[k] for k in TASK_METRICS[task_type]}


def aggregate(task_type: str, rows: list[Row]) -> dict[str, float]:
    """The task scores of per-item rows (scores as dicts or JSON text), rounded to 6 decimals."""
    scores = _scores(task_type, _arrays(task_type, rows), np.arange(len(rows)))
    return {k: _round(v) for k, v in scores.items()}


def mcnemar_p(base: np.ndarray | list[float], adapted: np.ndarray | list[float]) -> float:
    """Exact (binomial) McNemar p-value, two-sided, of paired 0/1 outcomes; 1.0 when no item changed."""
    from scipy.stats import binomtest

    b, a = np.asarray(base) > 0.5, np.asarray(adapted) > 0.5
    lost, won = int(np.sum(b & ~a)), int(np.sum(~b & a))
    return 1.0 if lost + won == 0 else float(binomtest(won, lost + won, 0.5).pvalue)


def _rng(seed: int, task: str) -> np.random.Generator:
    # one stream per task: adding or reordering tasks leaves every other task's interval unchanged
    return np.random.default_rng([seed, zlib.crc32(task.encode())])


def compare(
    task: str,
    task_type: str,
    base: list[Row],
    adapted: list[Row],
    *,
    seed: int,
    resamples: int,
    confidence: float,
    threshold: float,
) -> dict[str, Any]:
    """Base vs adapted on one task: per score base/adapted/delta and a paired-bootstrap interval of delta; verdicts.

    The same resampled item indices serve base and adapted and every score, and each task score (corpus BLEU, the
    bits-per-byte ratio) is recomputed on each resample. The interval is the percentile interval of the resampled
    deltas at `confidence`. forgetting: the main score is worse by more than `threshold` and the interval excludes 0
    on the worse side; gain: better by more than `threshold` and the interval excludes 0 on the better side.
    """
    n = len(base)
    if [r["item"] for r in base] != [r["item"] for r in adapted]:
        raise RuntimeError(f"broken invariant: task {task}: base and adapted rows are not the same items")
    arr_b, arr_a = _arrays(task_type, base), _arrays(task_type, adapted)
    full = np.arange(n)
    point_b, point_a = _scores(task_type, arr_b, full), _scores(task_type, arr_a, full)
    idx = _rng(seed, task).integers(0, n, size=(resamples, n))
    boot_b, boot_a = _scores(task_type, arr_b, idx), _scores(task_type, arr_a, idx)
    tail = (1 - confidence) / 2 * 100
    out: dict[str, Any] = {}
    raw: dict[str, tuple[float, float, float]] = {}
    for metric in TASK_METRICS[task_type]:
        deltas = np.asarray(boot_a[metric]) - np.asarray(boot_b[metric])
        lo, hi = np.percentile(deltas, [tail, 100 - tail])
        delta = float(point_a[metric] - point_b[metric])
        raw[metric] = (delta, float(lo), float(hi))
        out[metric] = {
            "base": _round(point_b[metric]),
            "adapted": _round(point_a[metric]),
            "delta": _round(delta),
            "ci_low": _round(lo),
            "ci_high": _round(hi),
        }
    if task_type == "multiple_choice":
        out["mcnemar_p"] = _round(mcnemar_p(arr_b["acc"], arr_a["acc"]))
    main = MAIN_METRIC[task_type]
    delta, lo, hi = raw[main]
    sign = 1.0 if HIGHER_IS_BETTER[main] else -1.0  # sign * delta > 0: better
    better, worse_low, better_low = sign * delta, (hi if sign > 0 else -lo), (lo if sign > 0 else -hi)
    out["forgetting"] = int(-better > threshold and worse_low < 0)
    out["gain"] = int(better > threshold and better_low > 0)
    return out


# --- tables ---------------------------------------------------------------------------------------------------------


def to_table(rows: list[Row], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Rows (scores as dicts) as a table of `schema`, scores as JSON text with sorted keys."""

    def enc(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)

    out = []
    for r in rows:
        row = {k: r[k] for k in schema.names}
        row["scores"] = enc(r["scores"])
        if "base_scores" in row:
            row["base_scores"] = enc(r["base_scores"])
        out.append(row)
    return pa.Table.from_pylist(out, schema=schema)


def read_rows(path: Path, schema: pa.Schema = SCHEMA) -> list[Row]:
    """Per-item rows written by the baseline (or probe) stage, scores parsed."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise StageError(f"{path}: cannot read per-item probe results ({e}); rerun `dvc repro baseline`") from None
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise StageError(f"{path}: missing columns {missing}; expected {schema.names} (rerun `dvc repro baseline`)")
    rows = table.select(schema.names).cast(schema).to_pylist()
    for r in rows:
        r["scores"] = json.loads(r["scores"])
    return rows
